//! `edupoolctl tenant ...`: create, list, configure and suspend tenants
//! (admins).

use std::io;

use clap::{
    builder::{PossibleValuesParser, TypedValueParser as _},
    Subcommand,
};
use edupoolctl::{
    commands::Ctl,
    jobfile::Class,
    policy::{parse_weight, Count},
};

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and print its token, which is shown only once
    Create {
        /// The tenant's name
        name: String,
    },
    /// List tenants and what they use
    List,
    /// Show a tenant's guarantee, use, borrowing, lending, fair-share usage and queue
    Show {
        /// The tenant's name
        name: String,
    },
    /// Set a tenant's quota for one GPU class
    #[command(after_help = "Examples:\n  \
        edupoolctl tenant set-quota zju --class A100 --guaranteed 16 --borrow-limit 8\n  \
        edupoolctl tenant set-quota hdu --class A100 --guaranteed auto --borrow-limit unlimited")]
    SetQuota {
        /// The tenant's name
        name: String,
        /// The GPU class, e.g. A100
        #[arg(long = "class", value_name = "CLASS")]
        gpu_class: String,
        /// Guaranteed GPUs, or `auto`: the healthy GPUs of the nodes it owns
        #[arg(long, value_name = "N|auto", default_value = "auto",
              value_parser = |s: &str| Count::parse(s, &["auto"]))]
        guaranteed: Count,
        /// GPUs it may borrow above the guarantee, or `unlimited`
        #[arg(long, value_name = "N|unlimited", default_value = "unlimited",
              value_parser = |s: &str| Count::parse(s, &["unlimited"]))]
        borrow_limit: Count,
    },
    /// Set a tenant's fair-share weight and equity multiplier
    SetShare {
        /// The tenant's name
        name: String,
        /// Fair-share weight, e.g. 1.5 [default: unchanged]
        #[arg(long, value_parser = parse_weight)]
        weight: Option<u32>,
        /// Multiplier on the weight for under-resourced members, e.g. 2 [default: unchanged]
        #[arg(long, value_parser = parse_weight)]
        equity: Option<u32>,
    },
    /// Cap how many GPUs of its guarantee one job class of a tenant may hold
    SetCap {
        /// The tenant's name
        name: String,
        /// The job class
        #[arg(
            long,
            value_parser = PossibleValuesParser::new(Class::ALL.map(Class::name))
                .try_map(|s| s.parse::<Class>())
        )]
        job_class: Class,
        /// The cap in GPUs, or `none` to remove it
        #[arg(long, value_name = "N|none",
              value_parser = |s: &str| Count::parse(s, &["none"]))]
        max_gpus: Count,
    },
    /// The kill switch: refuse the tenant's submissions and stop placing its
    /// pending jobs; with --stop-running also stop its running jobs now
    Suspend {
        /// The tenant's name
        name: String,
        /// Stop its running jobs at once (SIGTERM, then SIGKILL after their grace period)
        #[arg(long)]
        stop_running: bool,
        /// Why; submitters are told this
        #[arg(long)]
        reason: Option<String>,
    },
    /// Let a suspended tenant submit again and its pending jobs be placed
    Resume {
        /// The tenant's name
        name: String,
    },
}

impl TenantCommand {
    /// Whether running it twice does no harm: `list` and `show`.
    pub fn is_repeatable(&self) -> bool {
        matches!(self, TenantCommand::List | TenantCommand::Show { .. })
    }

    pub async fn run(&self, ctl: &mut Ctl<io::Stdout>) -> anyhow::Result<()> {
        match self {
            TenantCommand::Create { name } => {
                ctl.create_tenant(name).await?;
            }
            TenantCommand::List => {
                ctl.list_tenants().await?;
            }
            TenantCommand::Show { name } => {
                ctl.show_tenant(name).await?;
            }
            TenantCommand::SetQuota {
                name,
                gpu_class,
                guaranteed,
                borrow_limit,
            } => {
                ctl.set_quota(name, gpu_class, *guaranteed, *borrow_limit)
                    .await?;
            }
            TenantCommand::SetShare {
                name,
                weight,
                equity,
            } => {
                ctl.set_share(name, weight.unwrap_or(0), equity.unwrap_or(0))
                    .await?;
            }
            TenantCommand::SetCap {
                name,
                job_class,
                max_gpus,
            } => {
                ctl.set_class_cap(name, (*job_class).into(), *max_gpus)
                    .await?;
            }
            TenantCommand::Suspend {
                name,
                stop_running,
                reason,
            } => {
                ctl.suspend_tenant(name, reason.clone(), *stop_running)
                    .await?;
            }
            TenantCommand::Resume { name } => {
                ctl.resume_tenant(name).await?;
            }
        }
        Ok(())
    }
}
