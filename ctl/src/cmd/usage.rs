//! `edupoolctl usage ...`: usage reports, the settlement between members,
//! the ledger export.

use std::io;

use clap::{Args, Subcommand, ValueEnum};
use edupoolctl::{
    commands::Ctl,
    usage::{self, UsageFormat},
};

/// A time range `[from, to)`; a run counts in the range in which it ended.
#[derive(Debug, Args)]
pub struct Range {
    /// Start, inclusive: 2026-11-01 (midnight UTC) or 2026-11-01T08:00:00Z
    /// [default: the start of this month, UTC]
    #[arg(long, value_parser = usage::parse_time, value_name = "TIME")]
    pub from: Option<i64>,
    /// End, exclusive [default: now]
    #[arg(long, value_parser = usage::parse_time, value_name = "TIME")]
    to: Option<i64>,
}

impl Range {
    pub fn start_ms(&self) -> i64 {
        self.from
            .unwrap_or_else(|| usage::month_start(std::time::SystemTime::now()))
    }

    pub fn to_ms(&self) -> i64 {
        self.to.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        })
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReportBy {
    Day,
    Job,
    Model,
    Class,
}

#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// GPU-hours, energy and charges, grouped; tenants see only their own
    #[command(after_help = "Examples:\n  \
        edupoolctl usage report --from 2026-11-01 --to 2026-12-01 --by model\n  \
        edupoolctl usage report --tenant uni-b --from 2026-11-01 -o csv")]
    Report {
        /// The tenant [default: your own; admins: every tenant]
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        range: Range,
        /// How to group the runs
        #[arg(long, value_enum, default_value_t = ReportBy::Day)]
        by: ReportBy,
    },
    /// Per member: what it owes for use of others' GPUs, is owed for
    /// lending its own, and the net (admins)
    Settlement {
        #[command(flatten)]
        range: Range,
    },
    /// One CSV row per ledger entry with its charge (-o json for JSON)
    Export {
        /// The tenant [default: your own; admins: every tenant]
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        range: Range,
    },
}

impl UsageCommand {
    /// Whether running it twice does no harm: all of them only read.
    pub fn is_repeatable(&self) -> bool {
        true
    }

    pub async fn run(&self, ctl: &mut Ctl<io::Stdout>, format: UsageFormat) -> anyhow::Result<()> {
        match self {
            UsageCommand::Report { tenant, range, by } => {
                let by = match by {
                    ReportBy::Day => "day",
                    ReportBy::Job => "job",
                    ReportBy::Model => "model",
                    ReportBy::Class => "class",
                };
                ctl.usage_report(
                    tenant.as_deref(),
                    range.start_ms(),
                    range.to_ms(),
                    by,
                    format,
                )
                .await?;
            }
            UsageCommand::Settlement { range } => {
                ctl.usage_settlement(range.start_ms(), range.to_ms(), format)
                    .await?;
            }
            UsageCommand::Export { tenant, range } => {
                ctl.usage_export(tenant.as_deref(), range.start_ms(), range.to_ms(), format)
                    .await?;
            }
        }
        Ok(())
    }
}
