//! The driver's snapshot bookkeeping: when a snapshot is due, the one
//! being written (by `snapshotter`, off the driver's path) and who waits
//! for it.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use raft::prelude::Snapshot;
use raft::Storage as _;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ReplicaConfig;
use crate::machine::Machine;
use crate::metrics::RaftMetrics;
use crate::snapshot::{SnapshotEnvelope, SNAPSHOT_FORMAT};
use crate::snapshotter::{spawn, BeforeSave, Done, Job, Written};
use crate::step::ProposeError;
use crate::storage::{RaftStore, StorageError};

/// Who waits for a snapshot to be taken (`Replica::snapshot_now`).
pub(crate) type Waiter = oneshot::Sender<Result<SnapshotEnvelope, ProposeError>>;

/// The snapshot being written, as the driver tracks it.
struct InFlight {
    index: u64,
    waiters: Vec<Waiter>,
}

pub(crate) struct Snapshots {
    id: u64,
    store: RaftStore,
    machine: Arc<RwLock<Machine>>,
    /// Who waits for the next snapshot to be taken.
    waiters: Vec<Waiter>,
    /// A snapshot was asked for (membership change, raft for a follower)
    /// and is taken as soon as none is being written.
    due: bool,
    /// The snapshot being encoded and saved in the background, if any.
    in_flight: Option<InFlight>,
    done: mpsc::UnboundedSender<Done>,
    before_save: Option<BeforeSave>,
    tracker: TaskTracker,
    stop: CancellationToken,
    every: u64,
    log_ratio: f64,
    keep_entries: u64,
    max_log_bytes: u64,
    metrics: RaftMetrics,
}

impl Snapshots {
    pub(crate) fn new(
        config: &ReplicaConfig,
        store: RaftStore,
        machine: Arc<RwLock<Machine>>,
        done: mpsc::UnboundedSender<Done>,
        before_save: Option<BeforeSave>,
        tracker: &TaskTracker,
        stop: &CancellationToken,
    ) -> Snapshots {
        Snapshots {
            id: config.id,
            store,
            machine,
            waiters: Vec::new(),
            due: false,
            in_flight: None,
            done,
            before_save,
            tracker: tracker.clone(),
            stop: stop.clone(),
            every: config.snapshot_entries.max(1),
            log_ratio: config.snapshot_log_ratio.max(0.0),
            keep_entries: config.keep_entries,
            max_log_bytes: config.snapshot_bytes.max(1),
            metrics: config.metrics.clone(),
        }
    }

    /// `waiter` gets the next snapshot taken. It is started right after
    /// the driver's current batch, so it covers everything applied so far
    /// (or, while another is being written, as soon as that one is done).
    pub(crate) fn ask(&mut self, waiter: Waiter) {
        self.waiters.push(waiter);
    }

    /// Takes one as soon as none is being written, if anything was
    /// applied since the last.
    pub(crate) fn want(&mut self) {
        self.due = true;
    }

    /// The index of the snapshot being written, if any.
    pub(crate) fn in_flight(&self) -> Option<u64> {
        self.in_flight.as_ref().map(|f| f.index)
    }

    /// The log bytes that `snapshot_entries` waits for: the last
    /// snapshot's size times the ratio, capped at half the log's limit so
    /// that a huge state is still snapshotted before that limit forces a
    /// snapshot that keeps no entries for lagging followers.
    fn log_bytes_for_snapshot(&self, snap_bytes: u64) -> u64 {
        let wanted = (snap_bytes as f64 * self.log_ratio) as u64;
        wanted.min(self.max_log_bytes / 2)
    }

    fn in_snapshot_turn(&self, applied: u64) -> bool {
        snapshot_turn(
            &self.store.conf_state().voters,
            self.id,
            applied,
            self.every,
        )
    }

    /// A copy of the state at the applied index, in its envelope. The
    /// state lock is held only for the copy, never for the encoding.
    fn snapshot_envelope(&self) -> SnapshotEnvelope {
        let m = self.machine.read().expect("state lock poisoned");
        let term = self.store.term(m.applied).unwrap_or(0);
        SnapshotEnvelope {
            v: SNAPSHOT_FORMAT,
            index: m.applied,
            term,
            peers: self.store.peers(),
            state: m.state.state().clone(),
        }
    }

    /// Starts a snapshot at the applied index in the background when one
    /// is due: enough entries applied since the last and a log large
    /// enough beside the last snapshot, the log over its size, or one
    /// asked for. Never while one is being written: the
    /// reasons wait, and the log's size is looked at again once that one
    /// has compacted it.
    pub(crate) fn maybe_start(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        let applied = self.machine.read().expect("state lock").applied;
        let (snap_index, _, snap_bytes) = self.store.snapshot_info();
        let log_bytes = self.store.log_bytes();
        let too_big = log_bytes > self.max_log_bytes;
        let by_entries = applied.saturating_sub(snap_index) >= self.every
            && log_bytes >= self.log_bytes_for_snapshot(snap_bytes)
            && self.in_snapshot_turn(applied);
        let asked = !self.waiters.is_empty();
        let due = asked || (applied > snap_index && (self.due || too_big || by_entries));
        if !due {
            // Nothing applied since the last snapshot: it already serves.
            self.due = false;
            return;
        }
        self.due = false;
        let copying = Instant::now();
        let env = self.snapshot_envelope();
        let copy = copying.elapsed();
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = env.index;
        meta.term = env.term;
        meta.set_conf_state(self.store.conf_state());
        // Never keep index 1: see `bootstrap`. A log over its size keeps
        // nothing behind the snapshot.
        let keep = if too_big { 0 } else { self.keep_entries };
        let compact_to = env.index.saturating_sub(keep).max(1);
        self.in_flight = Some(InFlight {
            index: env.index,
            waiters: std::mem::take(&mut self.waiters),
        });
        let job = Job {
            env,
            snap,
            compact_to,
            copy,
            size_hint: snap_bytes as usize,
        };
        spawn(
            &self.tracker,
            self.store.clone(),
            job,
            self.stop.clone(),
            self.before_save.clone(),
            self.done.clone(),
        );
    }

    /// Finishes the snapshot written in the background: answers who
    /// waited for it. A failed save stops the replica, as any failed
    /// write to the store does.
    pub(crate) fn finish(&mut self, done: Done, leader: bool) -> Result<(), StorageError> {
        let waiters = self.in_flight.take().map(|f| f.waiters).unwrap_or_default();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let env = match done.result {
            Ok(Written::Saved { env, bytes }) => {
                tracing::debug!(
                    replica = self.id,
                    leader,
                    index = done.index,
                    compact_to = done.compact_to,
                    bytes,
                    copy_ms = ms(done.copy),
                    encode_ms = ms(done.encode),
                    save_ms = ms(done.save),
                    "snapshot taken, log compacted"
                );
                let phases = &self.metrics.snapshot_duration;
                for (phase, took) in [
                    ("copy", done.copy),
                    ("encode", done.encode),
                    ("save", done.save),
                ] {
                    phases
                        .with_label_values(&[phase])
                        .observe(took.as_secs_f64());
                }
                env
            }
            Ok(Written::Superseded { env }) => {
                tracing::debug!(
                    index = done.index,
                    "snapshot not kept: the latest one is as new (installed from the leader meanwhile, or nothing applied since)"
                );
                env
            }
            Ok(Written::Abandoned) => {
                for w in waiters {
                    let _ = w.send(Err(ProposeError::Stopped));
                }
                return Ok(());
            }
            Err(e) => {
                for w in waiters {
                    let _ = w.send(Err(ProposeError::Storage(StorageError::Io(e.to_string()))));
                }
                return Err(e);
            }
        };
        let mut waiters = waiters;
        if let Some(last) = waiters.pop() {
            for w in waiters {
                let _ = w.send(Ok(env.clone()));
            }
            let _ = last.send(Ok(env));
        }
        Ok(())
    }
}

/// Whether `applied` entries put replica `id` in its turn to snapshot by
/// entries: the voters take turns of `every` entries each, in the order
/// of their ids, so that they do not all encode and write a large
/// snapshot at the same moment (the entry count and the state's size,
/// hence the moment a snapshot falls due, are the same on all of them).
/// Not a voter (a learner catching up): any time.
fn snapshot_turn(voters: &[u64], id: u64, applied: u64, every: u64) -> bool {
    let mut voters = voters.to_vec();
    voters.sort_unstable();
    match voters.iter().position(|v| *v == id) {
        Some(slot) => (applied / every.max(1)) % voters.len() as u64 == slot as u64,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voters_take_turns_to_snapshot() {
        let turns = |id, applied| snapshot_turn(&[3, 1, 2], id, applied, 100);
        for (applied, whose) in [(0, 1), (99, 1), (100, 2), (250, 3), (300, 1), (1_334, 2)] {
            for id in 1..=3 {
                assert_eq!(turns(id, applied), id == whose, "replica {id} at {applied}");
            }
        }
        assert!(turns(4, 100), "a learner snapshots any time");
        assert!(snapshot_turn(&[1], 1, 12_345, 100), "one voter: always");
    }
}
