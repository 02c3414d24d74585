//! `edupoolctl price ...`: the price book: GPU-hour and energy prices,
//! discounts, lending credit.

use std::io;

use clap::Subcommand;
use edupool_proto::v1::SetPricesRequest;
use edupoolctl::{commands::Ctl, usage};

#[derive(Debug, Subcommand)]
pub enum PriceCommand {
    /// Add a price version (admins); what is not given carries over from the
    /// latest version
    #[command(after_help = "Examples:\n  \
        edupoolctl price set --currency CNY --gpu-hour A100-80GB=8 --gpu-hour A100-80GB:batch=6 \\\n      \
        --energy-per-kwh 0.8 --free-gpu-hours 1 --equity-discount uni-b=20 --lending-credit 70\n  \
        edupoolctl price set --effective-from 2026-11-10 --gpu-hour A100-80GB=10")]
    Set {
        /// When the version takes effect; never in the past [default: now]
        #[arg(long, value_parser = usage::parse_time, value_name = "TIME")]
        effective_from: Option<i64>,
        /// ISO 4217 code, required the first time and fixed afterwards
        #[arg(long)]
        currency: Option<String>,
        /// Price of a GPU-hour of a model, for one job class or all:
        /// MODEL[:CLASS]=AMOUNT (repeatable)
        #[arg(long, value_parser = usage::parse_gpu_price, value_name = "MODEL[:CLASS]=AMOUNT")]
        gpu_hour: Vec<edupool_proto::v1::GpuHourPrice>,
        /// Price of a kWh of GPU energy
        #[arg(long, value_parser = usage::parse_money, value_name = "AMOUNT")]
        energy_per_kwh: Option<i64>,
        /// GPU-hours free to each tenant per calendar month
        #[arg(long, value_parser = usage::parse_money, value_name = "HOURS")]
        free_gpu_hours: Option<i64>,
        /// Percent off a tenant's bill: TENANT=PERCENT, 0 removes it (repeatable)
        #[arg(long, value_parser = usage::parse_discount, value_name = "TENANT=PERCENT")]
        equity_discount: Vec<edupool_proto::v1::EquityDiscount>,
        /// Percent of a run's GPU charge credited to the member whose node ran it
        #[arg(long, value_name = "PERCENT")]
        lending_credit: Option<i64>,
    },
    /// Every price version, oldest first
    List,
}

impl PriceCommand {
    /// Whether running it twice does no harm: only `list`.
    pub fn is_repeatable(&self) -> bool {
        matches!(self, PriceCommand::List)
    }

    pub async fn run(&self, ctl: &mut Ctl<io::Stdout>) -> anyhow::Result<()> {
        match self {
            PriceCommand::Set {
                effective_from,
                currency,
                gpu_hour,
                energy_per_kwh,
                free_gpu_hours,
                equity_discount,
                lending_credit,
            } => {
                ctl.set_prices(SetPricesRequest {
                    effective_from_ms: *effective_from,
                    currency: currency.clone().unwrap_or_default(),
                    gpu_hour: gpu_hour.clone(),
                    energy_per_kwh_milli: *energy_per_kwh,
                    free_milli_gpu_hours: *free_gpu_hours,
                    equity_discounts: equity_discount.clone(),
                    lending_credit_percent: *lending_credit,
                })
                .await?;
            }
            PriceCommand::List => {
                ctl.list_prices().await?;
            }
        }
        Ok(())
    }
}
