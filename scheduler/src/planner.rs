//! The planner: a pure function from the state to placement decisions.
//!
//! Only the leader runs it; its decisions are proposed as `PlaceJob`
//! commands, so a placement is durable before any agent hears of it, and
//! `State::apply` re-checks each one (a stale decision is rejected, never
//! applied twice).
//!
//! Placement here is first fit of whole GPUs on one node: jobs in
//! priority-class order, then submission order; nodes by name; the
//! lowest-indexed free GPUs of the first node that has enough.

use std::collections::BTreeMap;

use crate::state::{JobId, State};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub job: JobId,
    pub node: String,
    pub gpus: Vec<String>,
}

/// At most this many placements per round, so one round stays short.
pub const MAX_DECISIONS_PER_ROUND: usize = 1024;

pub fn plan(state: &State) -> Vec<Decision> {
    // Free GPUs per schedulable node, lowest index first.
    let mut free: BTreeMap<&str, Vec<(u32, &str)>> = state
        .nodes()
        .filter(|n| n.schedulable())
        .map(|n| {
            let mut gpus: Vec<(u32, &str)> = n
                .free_gpus()
                .map(|g| (g.info.index, g.info.uuid.as_str()))
                .collect();
            gpus.sort_unstable();
            (n.name.as_str(), gpus)
        })
        .filter(|(_, gpus)| !gpus.is_empty())
        .collect();

    let mut queue: Vec<_> = state.pending_jobs().collect();
    queue.sort_by_key(|j| (j.spec.class, j.submitted_at, j.id));

    let mut decisions = vec![];
    for job in queue {
        if decisions.len() == MAX_DECISIONS_PER_ROUND || free.is_empty() {
            break;
        }
        let want = job.spec.gpus as usize;
        let Some((&node, gpus)) = free.iter_mut().find(|(_, g)| g.len() >= want) else {
            continue;
        };
        let taken: Vec<String> = gpus.drain(..want).map(|(_, u)| u.to_string()).collect();
        if gpus.is_empty() {
            free.remove(node);
        }
        decisions.push(Decision {
            job: job.id,
            node: node.to_string(),
            gpus: taken,
        });
    }
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests_support::*;
    use std::collections::BTreeSet;

    #[test]
    fn first_fit_in_class_then_submission_order() {
        let mut s = State::default();
        tenant(&mut s, "zju");
        node(&mut s, "n1", 4);
        node(&mut s, "n2", 8);
        let a = submit(&mut s, "zju", 4, crate::state::JobClass::Batch);
        let b = submit(&mut s, "zju", 6, crate::state::JobClass::Batch);
        let c = submit(&mut s, "zju", 2, crate::state::JobClass::Inference);
        let d = plan(&s);
        assert_eq!(
            d,
            vec![
                Decision {
                    job: c,
                    node: "n1".into(),
                    gpus: vec![uuid("n1", 0), uuid("n1", 1)]
                },
                Decision {
                    job: a,
                    node: "n2".into(),
                    gpus: (0..4).map(|i| uuid("n2", i)).collect()
                },
            ]
        );
        // b (6 GPUs) fits nowhere once a and c hold theirs.
        assert!(!d.iter().any(|x| x.job == b));
    }

    #[test]
    fn skips_cordoned_down_and_busy_gpus() {
        let mut s = State::default();
        tenant(&mut s, "zju");
        node(&mut s, "n1", 2);
        node(&mut s, "n2", 2);
        node(&mut s, "n3", 2);
        apply_ok(
            &mut s,
            crate::state::Command::SetNodeSchedulable {
                node: "n1".into(),
                cordoned: true,
                draining: false,
            },
        );
        apply_ok(
            &mut s,
            crate::state::Command::NodeDisconnected { node: "n2".into() },
        );
        let a = submit(&mut s, "zju", 1, crate::state::JobClass::Batch);
        let b = submit(&mut s, "zju", 1, crate::state::JobClass::Batch);
        let c = submit(&mut s, "zju", 1, crate::state::JobClass::Batch);
        let d = plan(&s);
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].job, d[0].node.as_str()), (a, "n3"));
        assert_eq!((d[1].job, d[1].node.as_str()), (b, "n3"));
        assert_ne!(d[0].gpus, d[1].gpus);
        assert!(!d.iter().any(|x| x.job == c));
    }

    #[test]
    fn decisions_apply_cleanly_and_never_share_a_gpu() {
        let mut s = State::default();
        tenant(&mut s, "zju");
        for i in 0..5 {
            node(&mut s, &format!("n{i}"), 3);
        }
        for k in 0..40 {
            submit(&mut s, "zju", 1 + k % 3, crate::state::JobClass::Batch);
        }
        for d in plan(&s) {
            apply_ok(
                &mut s,
                crate::state::Command::PlaceJob {
                    job: d.job,
                    node: d.node,
                    gpus: d.gpus,
                },
            );
        }
        let mut seen = BTreeSet::new();
        for j in s.jobs().filter(|j| j.state.is_placed()) {
            for g in &j.gpus {
                assert!(seen.insert(g.clone()), "GPU {g} given twice");
            }
        }
        assert_eq!(seen.len(), 15, "all 15 GPUs in use");
        assert!(plan(&s).is_empty());
    }
}
