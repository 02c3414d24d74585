//! The job observer: turns applied effects into job metrics (state
//! transitions, queueing delay, placement latency).
//!
//! It follows `JobChanged` effects and reads each job's record, keeping
//! only the last state it saw of each unfinished job (to name the
//! transition and time the wait). Only the leader counts, so summing a
//! counter over all replicas gives the pool's figure.

use std::collections::HashMap;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::edge::edge;
use crate::control::now_millis;
use crate::raft::Replica;
use crate::state::{Effect, Job, JobId, JobState, Millis, State};

/// What the observer last saw of an unfinished job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    state: JobState,
    /// When the job entered `state`, if the observer knows.
    since: Option<Millis>,
}

/// A change worth recording, computed without touching the metrics so it
/// can be tested on its own.
#[derive(Debug, PartialEq)]
pub(crate) struct Change {
    pub from: &'static str,
    pub to: &'static str,
    pub priority: &'static str,
    pub queue_delay_secs: Option<f64>,
    pub placement_latency_secs: Option<f64>,
    /// First preemption for it to its GPUs, when the placement reclaimed
    /// borrowed GPUs.
    pub reclaim_latency_secs: Option<f64>,
}

#[derive(Default)]
pub(crate) struct Observer {
    seen: HashMap<JobId, Seen>,
}

impl Observer {
    /// Starts from the state as it is: jobs already in the pool are known
    /// by state, and a waiting job's wait counts from its submission.
    pub(crate) fn seed(state: &State) -> Observer {
        let seen = state
            .live_jobs()
            .map(|j| {
                (
                    j.id,
                    Seen {
                        state: j.state,
                        since: first_wait_start(j),
                    },
                )
            })
            .collect();
        Observer { seen }
    }

    /// Records that `job` is now as its record says, at `now`.
    pub(crate) fn observe(&mut self, job: &Job, now: Millis) -> Option<Change> {
        let previous = self.seen.get(&job.id).copied();
        if previous.map(|p| p.state) == Some(job.state) {
            return None;
        }
        let from = previous.map_or("new", |p| p.state.name());
        let since_prev = previous.and_then(|p| p.since);
        let secs = |start: Millis| (now - start).max(0) as f64 / 1000.0;
        let left_queue = previous.is_some_and(|p| p.state == JobState::Pending);
        let queue_delay_secs = match job.state {
            s if left_queue && s.is_placed() => since_prev.map(secs),
            _ => None,
        };
        let was_assigned = previous.is_some_and(|p| p.state == JobState::Assigned);
        let placement_latency_secs = match job.state {
            JobState::Running if was_assigned => since_prev.map(secs),
            _ => None,
        };
        if job.state.is_final() {
            self.seen.remove(&job.id);
        } else {
            let since = match (previous, job.state) {
                (None, JobState::Pending) => first_wait_start(job),
                _ => Some(now),
            };
            self.seen.insert(
                job.id,
                Seen {
                    state: job.state,
                    since,
                },
            );
        }
        let reclaim_latency_secs = match job.state {
            s if left_queue && s.is_placed() => job.reclaim_ms().map(|ms| ms as f64 / 1000.0),
            _ => None,
        };
        Some(Change {
            from,
            to: job.state.name(),
            priority: job.spec.class.name(),
            queue_delay_secs,
            placement_latency_secs,
            reclaim_latency_secs,
        })
    }
}

/// A job on its first attempt has waited since its submission.
fn first_wait_start(j: &Job) -> Option<Millis> {
    (j.state == JobState::Pending && j.attempt == 1).then_some(j.submitted_at)
}

fn record(change: &Change) {
    let e = edge();
    e.job_transitions
        .with_label_values(&[change.from, change.to, change.priority])
        .inc();
    if let Some(d) = change.queue_delay_secs {
        e.queue_delay
            .with_label_values(&[change.priority])
            .observe(d);
    }
    if let Some(d) = change.placement_latency_secs {
        e.placement_latency.observe(d);
    }
    if change.to == JobState::Preempting.name() {
        e.preemptions.with_label_values(&[change.priority]).inc();
    }
    if let Some(d) = change.reclaim_latency_secs {
        e.reclaim_latency.observe(d);
    }
}

/// Follows applied effects until `stop`.
pub async fn run(replica: Replica, stop: CancellationToken) {
    let mut applied = replica.subscribe();
    let leadership = replica.leadership();
    let mut observer = replica.read(|s| Observer::seed(s.state()));
    loop {
        let changed: Vec<JobId> = tokio::select! {
            _ = stop.cancelled() => return,
            r = applied.recv() => match r {
                Ok(effects) => effects
                    .iter()
                    .filter_map(|e| match e {
                        Effect::JobChanged(id) => Some(*id),
                        _ => None,
                    })
                    .collect(),
                // Missed effects: compare every job still in view.
                Err(RecvError::Lagged(_)) => replica.read(|s| {
                    s.live_jobs().map(|j| j.id)
                        .chain(observer.seen.keys().copied())
                        .collect()
                }),
                Err(RecvError::Closed) => return,
            },
        };
        let now = now_millis();
        let leading = leadership.borrow().is_leader;
        let changes: Vec<Change> = replica.read(|s| {
            changed
                .iter()
                .filter_map(|id| s.job(*id))
                .filter_map(|j| observer.observe(j, now))
                .collect()
        });
        if leading {
            changes.iter().for_each(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests_support::*;
    use crate::state::{Command, JobClass};

    fn job(s: &State, id: JobId) -> Job {
        s.job(id).expect("exists").clone()
    }

    #[test]
    fn a_job_through_its_life_gives_transitions_and_waits() {
        let mut s = State::default();
        tenant(&mut s, "zju");
        node(&mut s, "n1", 1);
        let mut o = Observer::seed(&s);
        // `apply_ok` stamps entries at 1 000 ms.
        let id = submit(&mut s, "zju", 1, JobClass::Batch);
        let c = o.observe(&job(&s, id), 1_000).expect("a new job");
        assert_eq!((c.from, c.to, c.priority), ("new", "pending", "batch"));
        assert_eq!(o.observe(&job(&s, id), 1_500), None, "no change, no count");

        apply_ok(
            &mut s,
            Command::PlaceJob {
                job: id,
                tasks: vec![crate::state::TaskPlacement {
                    node: "n1".into(),
                    gpus: vec![uuid("n1", 0)],
                }],
                capacity: crate::state::Capacity::Guaranteed,
            },
        );
        let c = o.observe(&job(&s, id), 4_000).expect("placed");
        assert_eq!((c.from, c.to), ("pending", "assigned"));
        assert_eq!(c.queue_delay_secs, Some(3.0));

        apply_ok(
            &mut s,
            Command::JobStarted {
                node: "n1".into(),
                job: id,
                started_at: 4_200,
            },
        );
        let c = o.observe(&job(&s, id), 4_250).expect("started");
        assert_eq!((c.from, c.to), ("assigned", "running"));
        assert_eq!(c.placement_latency_secs, Some(0.25));

        apply_ok(
            &mut s,
            Command::JobExited {
                node: "n1".into(),
                job: id,
                exit_code: Some(0),
                reason: String::new(),
                finished_at: 9_000,
                usage: Default::default(),
            },
        );
        let c = o.observe(&job(&s, id), 9_000).expect("ended");
        assert_eq!((c.from, c.to), ("running", "succeeded"));
        assert!(o.seen.is_empty(), "finished jobs are forgotten");
    }

    #[test]
    fn a_seeded_waiting_job_counts_its_wait_from_submission() {
        let mut s = State::default();
        tenant(&mut s, "zju");
        node(&mut s, "n1", 1);
        let id = submit(&mut s, "zju", 1, JobClass::Inference);
        let mut o = Observer::seed(&s);
        apply_ok(
            &mut s,
            Command::PlaceJob {
                job: id,
                tasks: vec![crate::state::TaskPlacement {
                    node: "n1".into(),
                    gpus: vec![uuid("n1", 0)],
                }],
                capacity: crate::state::Capacity::Guaranteed,
            },
        );
        let c = o.observe(&job(&s, id), 61_000).expect("placed");
        assert_eq!(c.queue_delay_secs, Some(60.0));
        assert_eq!(c.priority, "inference");
    }
}
