//! The recent history of job changes that `WatchJobs` serves from: one
//! batch per applied log entry that changed jobs, keyed by the entry's
//! index (its revision, the same on every replica), bounded in size.
//!
//! A task follows the replica's applied effects and records each changed
//! job as it reads it then (so a job may show a state a few entries newer
//! than its revision: close changes can merge, none is lost). Watchers
//! read from a revision onwards; one that asks for a revision the history
//! no longer holds, or that falls that far behind, is told so.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use edupool_proto::v1 as pb;
use tokio::sync::{broadcast::error::RecvError, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::convert;
use crate::raft::Replica;
use crate::state::Effect;

/// How many job events the history keeps (about 300 bytes each).
pub const HISTORY_EVENTS: usize = 20_000;

/// One job as it changed at a revision, with its tenant for filtering.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub revision: u64,
    pub tenant: Arc<str>,
    pub job: pb::Job,
}

/// Why a read from the history cannot go on.
#[derive(Debug, PartialEq, Eq)]
pub struct TooOld {
    /// The history holds every change after this revision.
    pub floor: u64,
}

#[derive(Debug, Default)]
struct History {
    changes: VecDeque<Change>,
    /// Every change after this revision is in `changes`.
    floor: u64,
    /// The latest revision recorded (or skipped as changing no job).
    through: u64,
    capacity: usize,
}

impl History {
    fn new(start: u64, capacity: usize) -> History {
        History {
            changes: VecDeque::new(),
            floor: start,
            through: start,
            capacity,
        }
    }

    fn record(&mut self, revision: u64, jobs: impl IntoIterator<Item = (Arc<str>, pb::Job)>) {
        if revision <= self.through {
            return;
        }
        for (tenant, job) in jobs {
            self.changes.push_back(Change {
                revision,
                tenant,
                job,
            });
        }
        self.through = revision;
        while self.changes.len() > self.capacity {
            if let Some(old) = self.changes.pop_front() {
                self.floor = self.floor.max(old.revision);
            }
        }
        // A revision is held whole or not at all.
        while self
            .changes
            .front()
            .is_some_and(|c| c.revision <= self.floor)
        {
            self.changes.pop_front();
        }
    }

    /// Forget everything: changes up to `revision` are not known one by one
    /// (a snapshot was installed, or the effects stream was missed).
    fn restart(&mut self, revision: u64) {
        self.changes.clear();
        self.floor = revision.max(self.floor);
        self.through = self.floor;
    }

    /// Up to `max` changes from revision `from` on that `keep` admits; and
    /// the revision to read from next.
    fn read(
        &self,
        from: u64,
        max: usize,
        keep: impl Fn(&Change) -> bool,
    ) -> Result<(Vec<Change>, u64), TooOld> {
        if from <= self.floor {
            return Err(TooOld { floor: self.floor });
        }
        let start = self.changes.partition_point(|c| c.revision < from);
        let mut out = Vec::new();
        let mut next = from.max(self.through + 1);
        for c in self.changes.range(start..) {
            if out.len() >= max {
                next = c.revision;
                // Never stop inside a revision: the next read starts with it.
                out.retain(|o: &Change| o.revision < c.revision);
                if out.is_empty() {
                    // A single revision larger than `max`: send it whole.
                    out.extend(
                        self.changes
                            .range(start..)
                            .skip_while(|o| o.revision < c.revision)
                            .take_while(|o| o.revision == c.revision)
                            .filter(|o| keep(o))
                            .cloned(),
                    );
                    next = c.revision + 1;
                }
                return Ok((out, next));
            }
            if keep(c) {
                out.push(c.clone());
            }
        }
        Ok((out, next))
    }
}

/// The shared history and a signal that it grew.
#[derive(Clone)]
pub struct ChangeLog {
    history: Arc<Mutex<History>>,
    grew: watch::Receiver<u64>,
}

impl ChangeLog {
    /// Starts recording what `replica` applies from now on, on `tasks`.
    pub fn start(replica: &Replica, tasks: &TaskTracker, stop: CancellationToken) -> ChangeLog {
        Self::with_capacity(replica, tasks, stop, HISTORY_EVENTS)
    }

    pub fn with_capacity(
        replica: &Replica,
        tasks: &TaskTracker,
        stop: CancellationToken,
        capacity: usize,
    ) -> ChangeLog {
        // Subscribe before reading the index, so nothing falls between.
        let applied = replica.subscribe();
        let (start, ()) = replica.read_at(|_| ());
        let history = Arc::new(Mutex::new(History::new(start, capacity)));
        let (tx, grew) = watch::channel(start);
        tasks.spawn(record(replica.clone(), applied, history.clone(), tx, stop));
        ChangeLog { history, grew }
    }

    /// The latest revision the history has recorded.
    pub fn through(&self) -> u64 {
        self.lock().through
    }

    /// See [`History::read`].
    pub fn read(
        &self,
        from: u64,
        max: usize,
        keep: impl Fn(&Change) -> bool,
    ) -> Result<(Vec<Change>, u64), TooOld> {
        self.lock().read(from, max, keep)
    }

    /// Checks that reading from `from` is possible now.
    pub fn check(&self, from: u64) -> Result<(), TooOld> {
        let h = self.lock();
        if from <= h.floor {
            return Err(TooOld { floor: h.floor });
        }
        Ok(())
    }

    /// A receiver that changes whenever the history grows.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.grew.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn record(
    replica: Replica,
    mut applied: tokio::sync::broadcast::Receiver<crate::raft::AppliedEffects>,
    history: Arc<Mutex<History>>,
    grew: watch::Sender<u64>,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            next = applied.recv() => next,
        };
        let through = match next {
            Ok(p) if p.snapshot => restart(&history, p.index),
            Ok(p) => {
                let ids: Vec<_> = p
                    .iter()
                    .filter_map(|e| match e {
                        Effect::JobChanged(id) => Some(*id),
                        _ => None,
                    })
                    .collect();
                let jobs = replica.read(|s| {
                    ids.iter()
                        .filter_map(|id| s.job(*id))
                        .map(|j| (Arc::from(j.tenant.as_str()), convert::job_summary(j)))
                        .collect::<Vec<_>>()
                });
                let mut h = history.lock().unwrap_or_else(|e| e.into_inner());
                h.record(p.index, jobs);
                h.through
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "job change history missed applied entries; it starts again"
                );
                let (now, ()) = replica.read_at(|_| ());
                restart(&history, now)
            }
            Err(RecvError::Closed) => return,
        };
        grew.send_replace(through);
    }
}

fn restart(history: &Mutex<History>, revision: u64) -> u64 {
    let mut h = history.lock().unwrap_or_else(|e| e.into_inner());
    h.restart(revision);
    h.through
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> (Arc<str>, pb::Job) {
        (
            Arc::from("t"),
            pb::Job {
                id: id.into(),
                ..Default::default()
            },
        )
    }

    fn ids(changes: &[Change]) -> Vec<(u64, String)> {
        changes
            .iter()
            .map(|c| (c.revision, c.job.id.clone()))
            .collect()
    }

    #[test]
    fn reads_from_a_revision_and_never_splits_one() {
        let mut h = History::new(10, 100);
        h.record(11, [job("a"), job("b")]);
        h.record(13, [job("c")]);
        let (got, next) = h.read(11, 100, |_| true).unwrap();
        assert_eq!(
            ids(&got),
            [(11, "a".into()), (11, "b".into()), (13, "c".into())]
        );
        assert_eq!(next, 14);
        // A page ends before a revision it cannot hold whole.
        let (got, next) = h.read(11, 2, |_| true).unwrap();
        assert_eq!(ids(&got), [(11, "a".into()), (11, "b".into())]);
        assert_eq!(next, 13);
        let (got, next) = h.read(11, 1, |_| true).unwrap();
        assert_eq!(got.len(), 2, "one revision is sent whole");
        assert_eq!(next, 12);
        let (got, next) = h.read(14, 10, |_| true).unwrap();
        assert!(got.is_empty());
        assert_eq!(next, 14);
    }

    #[test]
    fn a_revision_the_history_no_longer_holds_is_too_old() {
        let mut h = History::new(10, 2);
        assert_eq!(h.read(10, 5, |_| true), Err(TooOld { floor: 10 }));
        h.record(11, [job("a")]);
        h.record(12, [job("b")]);
        h.record(13, [job("c"), job("d")]);
        // Revision 11 and 12 were dropped to keep two events.
        assert_eq!(h.read(12, 5, |_| true), Err(TooOld { floor: 12 }));
        let (got, _) = h.read(13, 5, |_| true).unwrap();
        assert_eq!(ids(&got), [(13, "c".into()), (13, "d".into())]);
        h.restart(20);
        assert_eq!(h.read(20, 5, |_| true), Err(TooOld { floor: 20 }));
        assert!(h.read(21, 5, |_| true).unwrap().0.is_empty());
    }

    #[test]
    fn filters_by_what_the_reader_may_see() {
        let mut h = History::new(0, 10);
        h.record(1, [job("a"), (Arc::from("other"), pb::Job::default())]);
        let (got, next) = h.read(1, 10, |c| &*c.tenant == "t").unwrap();
        assert_eq!(ids(&got), [(1, "a".into())]);
        assert_eq!(next, 2);
    }
}
