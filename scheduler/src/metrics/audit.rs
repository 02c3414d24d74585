//! What the audit trail dropped, from the replicated state at scrape time
//! (docs/monitoring.md, `EdupoolAuditRecordsDropped`).

use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, Opts};

use crate::state::State;

/// `edupool_audit_records_dropped_total{reason}`: accepted records past
/// their retention (`expired`), accepted records dropped inside it because
/// the trail was full (`over_capacity`), and refused-call aggregates
/// dropped to make room (`refused_aggregate`). Every reason is always
/// there, so a rule over it has data from the first scrape.
pub fn families(state: &State) -> Vec<MetricFamily> {
    let dropped = IntCounterVec::new(
        Opts::new(
            "edupool_audit_records_dropped_total",
            "Audit records dropped from the replicated trail, by reason: expired (past retention), over_capacity (the trail was full: an export that fell behind lost them) or refused_aggregate (refused-call aggregates pushed out).",
        ),
        &["reason"],
    )
    .expect("valid metric");
    let d = state.audit_dropped();
    for (reason, n) in [
        ("expired", d.expired),
        ("over_capacity", d.over_capacity),
        ("refused_aggregate", d.refused),
    ] {
        dropped.with_label_values(&[reason]).inc_by(n);
    }
    prometheus::core::Collector::collect(&dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Actor, AuditResult, Command, AUDIT_KEEP_MS};

    fn dropped(s: &State, reason: &str) -> Option<u64> {
        let families = families(s);
        let m = families[0]
            .get_metric()
            .iter()
            .find(|m| m.get_label().iter().any(|l| l.value() == reason))?;
        Some(m.get_counter().get_value() as u64)
    }

    #[test]
    fn expired_records_are_counted_and_every_reason_is_there_from_the_start() {
        let mut s = State::default();
        for reason in ["expired", "over_capacity", "refused_aggregate"] {
            assert_eq!(dropped(&s, reason), Some(0), "{reason}");
        }
        let record = Command::RecordAudit {
            actor: Actor::default(),
            action: "cluster.snapshot".into(),
            target: String::new(),
            result: AuditResult::Ok,
        };
        s.apply(record.clone(), 1_000).unwrap();
        s.apply(record, 1_000 + AUDIT_KEEP_MS + 1).unwrap();
        assert_eq!(dropped(&s, "expired"), Some(1));
        assert_eq!(dropped(&s, "over_capacity"), Some(0));
    }
}
