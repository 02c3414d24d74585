//! Budget gauges, computed from the replicated ledger and price book at
//! scrape time by the same function the submit check uses.

use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, Opts};

use crate::state::billing;
use crate::state::{Millis, State};

/// `edupool_tenant_budget_used_ratio{tenant, kind}`: the tenant's spending
/// in its current budget period over its soft and hard limit. Every tenant
/// appears with both kinds; a limit not set reads 0.
pub fn families(state: &State, now: Millis) -> Vec<MetricFamily> {
    let ratio = GaugeVec::new(
        Opts::new(
            "edupool_tenant_budget_used_ratio",
            "The tenant's spending this budget period over its budget limit (kind soft or hard); 0 when that limit is not set.",
        ),
        &["tenant", "kind"],
    )
    .expect("valid metric");
    let accounts = state.accounts();
    for t in state.tenants() {
        let name = t.name.as_str();
        let (mut soft, mut hard) = (0.0, 0.0);
        if let Some(b) = accounts.budgets.get(name) {
            let used = billing::budget_status(accounts, name, b, now).used as f64;
            let of = |limit: Option<u64>| match limit {
                // A zero limit is reached at once.
                Some(0) if used == 0.0 => 1.0,
                Some(0) => f64::INFINITY,
                Some(l) => used / l as f64,
                None => 0.0,
            };
            soft = of(b.soft);
            hard = of(b.hard);
        }
        ratio.with_label_values(&[name, "soft"]).set(soft);
        ratio.with_label_values(&[name, "hard"]).set(hard);
    }
    prometheus::core::Collector::collect(&ratio)
}
