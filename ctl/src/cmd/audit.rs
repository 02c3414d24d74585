//! `edupoolctl audit ...`: the audit trail of admin and job-control
//! actions (admins, auditors).

use std::{io, time::Duration};

use clap::Subcommand;
use edupoolctl::{audit::RefusedFilter, commands::Ctl, security::AuditFilter};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit records, oldest first (the newest --limit that match)
    #[command(after_help = "Examples:\n  \
        edupoolctl audit list --tenant zju --since 24h\n  \
        edupoolctl audit list --action job. --output json")]
    List {
        /// Records of this tenant's tokens or about its jobs
        #[arg(long)]
        tenant: Option<String>,
        /// Records of this token (id or name)
        #[arg(long)]
        actor: Option<String>,
        /// This action (e.g. job.cancel), or a prefix ending in '.' (e.g. token.)
        #[arg(long)]
        action: Option<String>,
        /// From this time: RFC 3339 or a duration ago (2h, 7d)
        #[arg(long, value_parser = edupoolctl::security::parse_time, value_name = "TIME")]
        since: Option<i64>,
        /// Up to this time: RFC 3339 or a duration ago
        #[arg(long, value_parser = edupoolctl::security::parse_time, value_name = "TIME")]
        until: Option<i64>,
        /// At most this many records [default: 1000]
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
    },
    /// Every accepted record after a sequence number, oldest first, one
    /// JSON line each; fails, naming the range, if some were dropped
    #[command(after_help = "Examples:\n  \
        edupoolctl audit export --after 0 >> audit.jsonl\n  \
        edupoolctl audit export --after \"$(tail -n1 audit.jsonl | jq .seq)\" --follow >> audit.jsonl")]
    Export {
        /// Records after this sequence number (0: from the first)
        #[arg(long, default_value_t = 0, value_name = "SEQ")]
        after: u64,
        /// Keep going: poll for new records until stopped
        #[arg(long)]
        follow: bool,
        /// How often --follow asks for new records
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration, value_name = "DURATION")]
        poll: Duration,
    },
    /// Refused calls (rejected or denied), counted per caller, action and
    /// result, most recently seen first
    Refused {
        /// Calls of this tenant's tokens
        #[arg(long)]
        tenant: Option<String>,
        /// Calls of this token (id or name)
        #[arg(long)]
        actor: Option<String>,
        /// This action, or a prefix ending in '.'
        #[arg(long)]
        action: Option<String>,
    },
}

impl AuditCommand {
    /// Whether running it twice does no harm: all of them only read.
    pub fn is_repeatable(&self) -> bool {
        true
    }

    pub async fn run(&self, ctl: &mut Ctl<io::Stdout>) -> anyhow::Result<()> {
        match self {
            AuditCommand::List {
                tenant,
                actor,
                action,
                since,
                until,
                limit,
            } => {
                ctl.list_audit(AuditFilter {
                    tenant: tenant.clone(),
                    actor: actor.clone(),
                    action: action.clone(),
                    since_ms: *since,
                    until_ms: *until,
                    limit: *limit,
                })
                .await?;
            }
            AuditCommand::Export {
                after,
                follow,
                poll,
            } => {
                ctl.export_audit(*after, follow.then_some(*poll)).await?;
            }
            AuditCommand::Refused {
                tenant,
                actor,
                action,
            } => {
                ctl.list_refused_calls(RefusedFilter {
                    tenant: tenant.clone(),
                    actor: actor.clone(),
                    action: action.clone(),
                })
                .await?;
            }
        }
        Ok(())
    }
}
