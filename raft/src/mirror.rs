//! A private copy of the applied state that its holder reads without any
//! lock: the leader's planner plans on one, so that a planning round
//! never holds the driver's lock and the driver never waits for it.
//!
//! Applying is deterministic, so the copy is kept current by applying
//! the committed entries the driver applied, in the same order, with the
//! same function (`machine::apply_logged`): from the same index, the
//! same entries give the same state. The entries come from the driver's
//! feed (`feed`) in batches, each entry with its log index. A copy that
//! missed entries (its queue was full, a snapshot replaced the driver's
//! state, or the indexes it receives skip) copies the driver's state
//! once more under the read lock, and says so ([`CatchUp::resynced`]).
//!
//! It costs memory: a second state, whose jobs are shared with the
//! driver's (`Arc`) until either side changes them (docs/operations.md).

use std::sync::{Arc, RwLock};
use std::time::Instant;

use edupool_core::state::Indexed;
use raft::prelude::Entry;
use tokio::sync::mpsc::{self, error::TryRecvError};

use crate::feed::{Batch, Feed};
use crate::machine::{apply_logged, Machine};

/// How many applied batches the copy may fall behind before the driver
/// drops it from the feed (a batch is what one `Ready` committed: a few
/// entries to a few hundred). At thousands of batches a second, this is
/// more than a planning round and its commit take.
pub const FEED_CAPACITY: usize = 4096;

/// The most fresh copies one catch-up takes before it gives up and plans
/// on what it has (a copy of a moment ago is still a true state).
const MAX_RESYNCS: u32 = 3;

/// The state as the driver applied it up to [`Mirror::applied`], held
/// privately.
pub struct Mirror {
    copy: Machine,
    feed: mpsc::Receiver<Batch>,
    source: Arc<RwLock<Machine>>,
    subscribers: Feed,
    capacity: usize,
}

/// What [`Mirror::catch_up`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CatchUp {
    /// Entries applied to the copy.
    pub applied: u64,
    /// Times the copy was taken afresh from the driver's state.
    pub resynced: u32,
}

impl Mirror {
    /// Subscribes to the feed and copies the driver's state, under its
    /// read lock, so that every entry applied after the copy reaches the
    /// feed (entries the copy already holds are skipped by index).
    pub(crate) fn start(
        source: Arc<RwLock<Machine>>,
        subscribers: Feed,
        capacity: usize,
    ) -> Mirror {
        let started = Instant::now();
        let (copy, feed) = copy(&source, &subscribers, capacity);
        tracing::debug!(
            at = copy.applied,
            took = ?started.elapsed(),
            "copied the applied state for the planner"
        );
        Mirror {
            copy,
            feed,
            source,
            subscribers,
            capacity,
        }
    }

    /// The copy, as of [`Mirror::applied`].
    pub fn state(&self) -> &Indexed {
        &self.copy.state
    }

    /// The log index the copy reflects.
    pub fn applied(&self) -> u64 {
        self.copy.applied
    }

    /// Applies every batch the feed holds now, copying afresh if entries
    /// were missed. The copy may still lag the driver by the batch it is
    /// applying: it is always a state the log passed through.
    pub fn catch_up(&mut self) -> CatchUp {
        let mut done = CatchUp::default();
        while done.resynced < MAX_RESYNCS {
            match self.feed.try_recv() {
                Ok(batch) => match self.take(&batch) {
                    Some(n) => done.applied += n,
                    None => self.resync(&mut done, "the log skipped entries"),
                },
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.resync(
                    &mut done,
                    "the feed was cut (full, or a snapshot installed)",
                ),
            }
        }
        done
    }

    /// Waits until the feed has a batch (or was cut), then catches up;
    /// safe to cancel while waiting (nothing is taken until it returns).
    pub async fn follow(&mut self) -> CatchUp {
        let mut done = CatchUp::default();
        match self.feed.recv().await {
            Some(batch) => match self.take(&batch) {
                Some(n) => done.applied += n,
                None => self.resync(&mut done, "the log skipped entries"),
            },
            None => self.resync(
                &mut done,
                "the feed was cut (full, or a snapshot installed)",
            ),
        }
        let more = self.catch_up();
        CatchUp {
            applied: done.applied + more.applied,
            resynced: done.resynced + more.resynced,
        }
    }

    /// Applies the entries of `batch` the copy does not hold yet; `None`
    /// if one is missing before them.
    fn take(&mut self, batch: &[Entry]) -> Option<u64> {
        let mut n = 0;
        for entry in batch {
            if entry.index <= self.copy.applied {
                continue;
            }
            if entry.index != self.copy.applied + 1 {
                return None;
            }
            // Refusals were reported by the driver; the copy refuses alike.
            let _ = apply_logged(&mut self.copy.state, entry, false);
            self.copy.applied = entry.index;
            n += 1;
        }
        Some(n)
    }

    fn resync(&mut self, done: &mut CatchUp, why: &str) {
        let started = Instant::now();
        let from = self.copy.applied;
        // The old queue goes first, so the driver stops filling it.
        let (copy, feed) = {
            self.feed.close();
            copy(&self.source, &self.subscribers, self.capacity)
        };
        self.copy = copy;
        self.feed = feed;
        done.resynced += 1;
        tracing::debug!(
            why,
            from,
            to = self.copy.applied,
            took = ?started.elapsed(),
            "the planner's copy of the state was taken afresh"
        );
    }

    /// The SHA-256 (hex) of the copy's serialized state, as
    /// `Replica::state_hash` gives the driver's.
    pub fn state_hash(&self) -> (u64, String) {
        (
            self.copy.applied,
            crate::replica::hash(self.copy.state.state()),
        )
    }
}

/// Subscribes and copies the driver's state in one step: under the read
/// lock the driver applies nothing, so every later entry reaches the new
/// queue.
fn copy(
    source: &RwLock<Machine>,
    subscribers: &Feed,
    capacity: usize,
) -> (Machine, mpsc::Receiver<Batch>) {
    let m = source.read().unwrap_or_else(|e| e.into_inner());
    let feed = subscribers.subscribe(capacity);
    let copy = Machine {
        state: m.state.clone(),
        applied: m.applied,
    };
    (copy, feed)
}
