//! Committed entries the state machine refused as inconsistent: `apply`
//! found one of its own invariants broken (a bug), refused the command
//! whole and left the state as it was. Every replica refuses the same
//! entry alike, so none crashes and they stay identical; this makes the
//! refusal loud: an error naming the log index, and
//! `edupool_apply_inconsistent_total`.

use edupool_core::state::{Applied, Rejection};

use super::metrics::RaftMetrics;

/// Logs `applied` if it is a refusal for inconsistency; says whether it
/// was.
pub fn report(index: u64, applied: &Applied) -> bool {
    let Err(Rejection::Inconsistent { what }) = applied else {
        return false;
    };
    tracing::error!(
        index,
        "log entry refused: the state is inconsistent ({what}); nothing was changed"
    );
    true
}

/// Whether `applied` is a refusal for inconsistency, which the step
/// reports as `Action::Inconsistent` for the driver to count.
pub fn is_inconsistent(applied: &Applied) -> bool {
    matches!(applied, Err(Rejection::Inconsistent { .. }))
}

/// Counts one refusal for inconsistency.
pub fn count(metrics: &RaftMetrics) {
    metrics.apply_inconsistent.inc();
}

#[cfg(test)]
mod tests {
    use edupool_core::state::{Indexed, Outcome, State};
    use raft::prelude::{Entry, EntryType};

    use super::*;
    use crate::apply_entry;

    #[test]
    fn only_an_inconsistent_refusal_is_reported_and_counted() {
        let metrics = RaftMetrics::new();
        let ok: Applied = Ok((Outcome::None, vec![]));
        let refused: Applied = Err(Rejection::UnknownTenant("t".into()));
        for other in [ok, refused] {
            assert!(!report(3, &other));
            assert!(!is_inconsistent(&other));
        }
        let broken: Applied = Err(Rejection::inconsistent("job j-1 vanished"));
        assert!(report(5, &broken));
        assert!(is_inconsistent(&broken));
        count(&metrics);
        assert_eq!(metrics.apply_inconsistent.get(), 1);
    }

    #[test]
    fn an_entry_that_does_not_decode_changes_nothing() {
        let mut state = Indexed::default();
        let unknown_format = br#"{"v":99,"at":1,"cmd":{"type":"node_lost","node":"n"}}"#;
        for data in [&b"\xff\x00not json"[..], b"{\"v\":1}", unknown_format] {
            let mut entry = Entry::default();
            entry.set_entry_type(EntryType::EntryNormal);
            entry.index = 9;
            entry.data = data.to_vec().into();
            let applied = apply_entry(&mut state, &entry);
            assert_eq!(applied, Ok((Outcome::None, vec![])));
            assert_eq!(*state.state(), State::default());
        }
    }
}
