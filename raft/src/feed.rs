//! The committed entries the driver applied, handed on to whoever keeps
//! a copy of the state (a [`crate::Mirror`]), batch by batch.
//!
//! The driver never waits for a subscriber: each subscriber has a bounded
//! queue, and one whose queue is full is dropped from the feed, as is
//! every subscriber when a snapshot replaces the state. The subscriber
//! sees its queue closed and copies the state afresh; that is rare, and
//! cheaper than a driver that waits.

use std::sync::{Arc, Mutex};

use raft::prelude::Entry;
use tokio::sync::mpsc;

/// Entries applied together, in log order, with their indexes.
pub type Batch = Arc<Vec<Entry>>;

/// The subscribers' queues, shared by the driver (which sends) and the
/// replica handle (which adds).
#[derive(Clone, Default)]
pub(crate) struct Feed(Arc<Mutex<Vec<mpsc::Sender<Batch>>>>);

impl Feed {
    /// A new subscriber's queue, holding at most `capacity` batches.
    pub fn subscribe(&self, capacity: usize) -> mpsc::Receiver<Batch> {
        let (tx, rx) = mpsc::channel(capacity);
        self.subscribers().push(tx);
        rx
    }

    /// Hands `entries`, just applied, to every subscriber that has room;
    /// drops those that have none or have gone.
    pub fn publish(&self, entries: Vec<Entry>) {
        let mut subscribers = self.subscribers();
        if subscribers.is_empty() || entries.is_empty() {
            return;
        }
        let batch: Batch = Arc::new(entries);
        subscribers.retain(|tx| tx.try_send(batch.clone()).is_ok());
    }

    /// The state was replaced by a snapshot: every subscriber's copy
    /// misses the entries it stands for.
    pub fn cut(&self) {
        self.subscribers().clear();
    }

    fn subscribers(&self) -> std::sync::MutexGuard<'_, Vec<mpsc::Sender<Batch>>> {
        // A panic while holding this lock cannot leave the list invalid.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
