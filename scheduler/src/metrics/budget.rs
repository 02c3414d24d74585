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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::billing::Period;
    use crate::state::tests_support::*;
    use crate::state::{Budget, Command, GpuPrice, JobClass, JobUsage, PriceChange, TaskPlacement};

    fn ratio(families: &[MetricFamily], tenant: &str, kind: &str) -> Option<f64> {
        let name = families[0].name();
        super::super::pool::tests::value(families, name, &[("kind", kind), ("tenant", tenant)])
    }

    #[test]
    fn the_ratio_is_spending_over_each_limit_and_zero_without_one() {
        let mut s = State::default();
        tenant(&mut s, "zju");
        tenant(&mut s, "hdu");
        node(&mut s, "n1", 1);
        let at = |s: &mut State, cmd: Command, t: Millis| {
            s.apply(cmd, t).expect("applied");
        };
        at(
            &mut s,
            Command::SetPrices(PriceChange {
                effective_from: Some(0),
                currency: Some("CNY".into()),
                gpu_hour: vec![GpuPrice {
                    model: "A100-80GB".into(),
                    class: None,
                    per_gpu_hour: 4_000,
                }],
                ..PriceChange::default()
            }),
            0,
        );
        let budget = Budget {
            period: Period::Month,
            soft: Some(2_000),
            hard: Some(8_000),
        };
        at(
            &mut s,
            Command::SetBudget {
                tenant: "zju".into(),
                budget: Some(budget),
            },
            0,
        );
        let job = submit(&mut s, "zju", 1, JobClass::Batch);
        let placement = TaskPlacement {
            node: "n1".into(),
            gpus: vec![uuid("n1", 0)],
        };
        at(
            &mut s,
            Command::PlaceJob {
                job,
                tasks: vec![placement],
                capacity: Default::default(),
            },
            0,
        );
        at(
            &mut s,
            Command::JobStarted {
                node: "n1".into(),
                job,
                started_at: 0,
            },
            0,
        );
        // One GPU-hour at 4.000: twice the soft limit, half the hard one.
        at(
            &mut s,
            Command::JobExited {
                node: "n1".into(),
                job,
                exit_code: Some(0),
                reason: String::new(),
                finished_at: 3_600_000,
                usage: JobUsage::default(),
            },
            3_600_000,
        );
        let f = families(&s, 3_600_000);
        assert_eq!(ratio(&f, "zju", "soft"), Some(2.0));
        assert_eq!(ratio(&f, "zju", "hard"), Some(0.5));
        assert_eq!(ratio(&f, "hdu", "soft"), Some(0.0));
        assert_eq!(ratio(&f, "hdu", "hard"), Some(0.0));
    }
}
