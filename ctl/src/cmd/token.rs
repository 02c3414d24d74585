//! `edupoolctl token ...`: API tokens with roles.

use std::{io, time::Duration};

use clap::{builder::PossibleValuesParser, Subcommand};
use edupoolctl::{commands::Ctl, security::NewToken};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints its secret, which is shown only once
    #[command(after_help = "Examples:\n  \
        edupoolctl token create --role member --tenant zju --name alice --expires 30d\n  \
        edupoolctl token create --role auditor --name compliance")]
    Create {
        /// What the token may do (see docs/security.md, "Roles")
        #[arg(long, value_parser = PossibleValuesParser::new(
            ["admin", "tenant-admin", "member", "auditor", "agent"]))]
        role: String,
        /// The tenant of a tenant-admin or member token
        #[arg(long)]
        tenant: Option<String>,
        /// Who or what the token is for
        #[arg(long)]
        name: Option<String>,
        /// Refuse the token after this long, e.g. 30d or 12h [default: never]
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        expires: Option<Duration>,
    },
    /// List tokens (never their secrets)
    List {
        /// Only this tenant's tokens
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a token: every replica refuses it once it has applied this
    Revoke {
        /// The token's id, as `token list` shows it
        id: String,
    },
}

impl TokenCommand {
    /// Whether running it twice does no harm: only `list`.
    pub fn is_repeatable(&self) -> bool {
        matches!(self, TokenCommand::List { .. })
    }

    pub async fn run(&self, ctl: &mut Ctl<io::Stdout>) -> anyhow::Result<()> {
        match self {
            TokenCommand::Create {
                role,
                tenant,
                name,
                expires,
            } => {
                ctl.create_token(NewToken {
                    role: role.clone(),
                    tenant: tenant.clone(),
                    name: name.clone(),
                    expires_in: *expires,
                })
                .await?;
            }
            TokenCommand::List { tenant } => {
                ctl.list_tokens(tenant.clone()).await?;
            }
            TokenCommand::Revoke { id } => {
                ctl.revoke_token(id).await?;
            }
        }
        Ok(())
    }
}
