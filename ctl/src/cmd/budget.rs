//! `edupoolctl budget ...`: tenants' spending limits per period.

use std::io;

use clap::Subcommand;
use edupool_proto::v1::SetBudgetRequest;
use edupoolctl::{commands::Ctl, usage};

#[derive(Debug, Subcommand)]
pub enum BudgetCommand {
    /// Set or remove a tenant's budget (admins)
    #[command(after_help = "Examples:\n  \
        edupoolctl budget set uni-b --soft 800 --hard 1000\n  \
        edupoolctl budget set uni-b --remove")]
    Set {
        /// The tenant
        tenant: String,
        /// The budget period (UTC)
        #[arg(long, default_value = "month", value_parser = ["day", "week", "month"])]
        period: String,
        /// Over it: a warning in reports and an alert
        #[arg(long, value_parser = usage::parse_money, value_name = "AMOUNT")]
        soft: Option<i64>,
        /// Over it: only scavenger jobs are accepted until the period ends
        #[arg(long, value_parser = usage::parse_money, value_name = "AMOUNT")]
        hard: Option<i64>,
        /// Remove the tenant's budget
        #[arg(long, conflicts_with_all = ["soft", "hard"])]
        remove: bool,
    },
    /// Budgets and this period's spending [tenants: their own]
    List {
        /// Only this tenant
        #[arg(long)]
        tenant: Option<String>,
    },
}

impl BudgetCommand {
    /// Whether running it twice does no harm: only `list`.
    pub fn is_repeatable(&self) -> bool {
        matches!(self, BudgetCommand::List { .. })
    }

    pub async fn run(&self, ctl: &mut Ctl<io::Stdout>) -> anyhow::Result<()> {
        match self {
            BudgetCommand::Set {
                tenant,
                period,
                soft,
                hard,
                remove,
            } => {
                if !remove && soft.is_none() && hard.is_none() {
                    anyhow::bail!("give --soft, --hard or both (or --remove)");
                }
                ctl.set_budget(SetBudgetRequest {
                    tenant: tenant.clone(),
                    period: period.clone(),
                    soft_milli: *soft,
                    hard_milli: *hard,
                    remove: *remove,
                })
                .await?;
            }
            BudgetCommand::List { tenant } => {
                ctl.list_budgets(tenant.as_deref()).await?;
            }
        }
        Ok(())
    }
}
