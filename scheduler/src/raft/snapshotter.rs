//! Snapshots taken off the driver's path.
//!
//! The driver copies the state at its applied index (the only part that
//! holds the state lock), then hands the copy to a blocking thread that
//! encodes it and saves it, compacting the log behind it. Meanwhile the
//! driver goes on ticking, stepping, appending and applying; it learns of
//! the result from a channel and only then answers who waited for the
//! snapshot. At most one runs at a time.
//!
//! What keeps the store consistent with entries appended meanwhile:
//! compaction stops at the snapshot's own index (applied, hence committed
//! and never rewritten); the store keeps a snapshot only when it is newer
//! than its latest, so one installed from the leader in the meantime wins;
//! and all store writes share one writer lock. At shutdown an encode in
//! progress stops early and nothing is written; a save already started
//! completes as one redb transaction.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::prelude::Snapshot;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::driver::ProposeError;
use super::snapshot::SnapshotEnvelope;
use super::storage::{RaftStore, StorageError};

/// Who waits for a snapshot to be taken (`Replica::snapshot_now`).
pub(super) type Waiter = oneshot::Sender<Result<SnapshotEnvelope, ProposeError>>;

/// Called on the snapshot thread once the snapshot at the given index is
/// encoded, before it is saved (tests hold a snapshot there).
pub(super) type BeforeSave = Arc<dyn Fn(u64) + Send + Sync>;

/// The snapshot being written, as the driver tracks it.
pub(super) struct InFlight {
    pub index: u64,
    pub waiters: Vec<Waiter>,
}

/// What to write: the copied state and where the log may be cut.
pub(super) struct Job {
    pub env: SnapshotEnvelope,
    /// The snapshot's metadata (index, term, configuration); no data yet.
    pub snap: Snapshot,
    pub compact_to: u64,
    /// Time spent copying the state on the driver.
    pub copy: Duration,
    /// Size of the last snapshot, to size the encoding buffer.
    pub size_hint: usize,
}

/// How a snapshot ended, sent back to the driver.
pub(super) struct Done {
    pub index: u64,
    pub compact_to: u64,
    pub copy: Duration,
    pub encode: Duration,
    pub save: Duration,
    pub result: Result<Written, StorageError>,
}

pub(super) enum Written {
    /// Saved as the latest snapshot, `bytes` long; the log was compacted.
    Saved { env: SnapshotEnvelope, bytes: usize },
    /// Not kept: a newer snapshot (from the leader) is already stored.
    Superseded { env: SnapshotEnvelope },
    /// The replica is stopping: nothing was written.
    Abandoned,
}

/// Encodes and saves `job` (on a blocking thread).
pub(super) fn write(
    store: &RaftStore,
    job: Job,
    stop: &CancellationToken,
    before_save: Option<&BeforeSave>,
) -> Done {
    let Job {
        env,
        mut snap,
        compact_to,
        copy,
        size_hint,
    } = job;
    let index = env.index;
    let started = Instant::now();
    let mut out = StopAware::new(stop, size_hint + size_hint / 8);
    let encoded = env.encode_to(&mut out);
    let encode = started.elapsed();
    let done = |save, result| Done {
        index,
        compact_to,
        copy,
        encode,
        save,
        result,
    };
    if encoded.is_err() || stop.is_cancelled() {
        // The only refusal is the stop: serde encodes every state.
        return done(Duration::ZERO, Ok(Written::Abandoned));
    }
    if let Some(hook) = before_save {
        hook(index);
    }
    if stop.is_cancelled() {
        return done(Duration::ZERO, Ok(Written::Abandoned));
    }
    let bytes = out.buf.len();
    snap.data = out.buf.into();
    let started = Instant::now();
    let result = store.save_snapshot(&snap, compact_to).map(|saved| {
        if saved {
            Written::Saved { env, bytes }
        } else {
            Written::Superseded { env }
        }
    });
    done(started.elapsed(), result)
}

/// A growing buffer that refuses more bytes once `stop` is cancelled, so
/// an encode in progress at shutdown ends early instead of holding the
/// shutdown up for seconds.
struct StopAware<'a> {
    buf: Vec<u8>,
    stop: &'a CancellationToken,
    next_check: usize,
}

/// Bytes encoded between two looks at the stop token.
const CHECK_EVERY: usize = 1 << 20;

impl<'a> StopAware<'a> {
    fn new(stop: &'a CancellationToken, capacity: usize) -> Self {
        StopAware {
            buf: Vec::with_capacity(capacity),
            stop,
            next_check: 0,
        }
    }
}

impl Write for StopAware<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.buf.len() >= self.next_check {
            if self.stop.is_cancelled() {
                return Err(io::Error::other("the replica is stopping"));
            }
            self.next_check = self.buf.len() + CHECK_EVERY;
        }
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
