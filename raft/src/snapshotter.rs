//! Snapshots taken off the driver's path.
//!
//! The driver copies the state at its applied index (the only part that
//! holds the state lock), then hands the copy to a low-priority thread
//! that encodes it and writes it to a file of its own; a blocking thread
//! then has the store adopt the file as its latest snapshot, compacting
//! the log behind it. Meanwhile the
//! driver goes on ticking, stepping, appending and applying; it learns of
//! the result from a channel and only then answers who waited for the
//! snapshot. At most one runs at a time.
//!
//! What keeps the store consistent with entries appended meanwhile:
//! compaction stops at the snapshot's own index (applied, hence committed
//! and never rewritten); the store keeps a snapshot only when it is newer
//! than its latest, so one installed from the leader in the meantime wins;
//! and all store writes share one writer lock. At shutdown an encode in
//! progress stops early and nothing is written; a file already written
//! is adopted in one redb transaction.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::prelude::{Entry, Snapshot};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::snapshot::SnapshotEnvelope;
use crate::storage::{RaftStore, SnapshotFile, StorageError};

/// Called on the snapshot thread once the snapshot at the given index is
/// encoded, before it is saved (tests hold a snapshot there).
pub(super) type BeforeSave = Arc<dyn Fn(u64) + Send + Sync>;

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

/// How much lower than the replica's other threads the snapshot thread
/// runs (a nice value). Encoding a large state takes seconds of CPU; at
/// the same priority it takes the cores from the threads that serve,
/// append and replicate, and the latency of every submission meanwhile
/// shows it. Lowered, it uses what they leave, as a database's compaction
/// threads do.
pub(super) const SNAPSHOT_NICE: i32 = 10;

/// Writes `job` in two steps, and sends how it ended to `done`: it is
/// encoded and written to its file on a thread of its own started at a
/// lower CPU priority (a priority once lowered cannot be raised again
/// without privilege, so no pooled thread is used), then adopted by the
/// store on a blocking thread at normal priority, because adopting holds
/// the store's writer lock, which the driver's appends wait for. The log
/// entries the snapshot replaced go back to the low-priority thread to be
/// freed. `tracker` waits for both at shutdown.
pub(super) fn spawn(
    tracker: &TaskTracker,
    store: RaftStore,
    job: Job,
    stop: CancellationToken,
    hook: Option<BeforeSave>,
    done: mpsc::UnboundedSender<Done>,
) {
    let (index, compact_to, copy) = (job.env.index, job.compact_to, job.copy);
    let (tx, rx) = oneshot::channel();
    let encoder = {
        let stop = stop.clone();
        let store = store.clone();
        std::thread::Builder::new()
            .name("edupool-snapshot".into())
            .spawn(move || {
                lower_priority();
                let encoded = write(&store, encode(job, &stop, hook.as_ref()), &stop);
                // Only the adopting thread holds the store from here on:
                // a stopped replica's store closes once it is done.
                drop(store);
                let (free, compacted) = std::sync::mpsc::channel::<Vec<Entry>>();
                let _ = tx.send((encoded, free));
                drop(compacted.recv());
            })
    };
    if let Err(e) = encoder {
        // The system refused a thread: the driver hears of it as a failed
        // save, as of any other failed write to the store.
        let _ = done.send(Done {
            index,
            compact_to,
            copy,
            encode: Duration::ZERO,
            save: Duration::ZERO,
            result: Err(StorageError::Io(format!(
                "starting the snapshot thread: {e}"
            ))),
        });
        return;
    }
    tracker.spawn(async move {
        let Ok((encoded, free)) = rx.await else {
            return;
        };
        let saved = tokio::task::spawn_blocking(move || adopt(&store, encoded, free)).await;
        match saved {
            Ok(d) => {
                let _ = done.send(d);
            }
            Err(e) => tracing::error!("the snapshot save did not finish: {e}"),
        }
    });
}

/// Lowers the calling thread's CPU priority by [`SNAPSHOT_NICE`]. Where
/// that is refused the snapshot is still taken, at normal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        // On Linux a thread id names one thread to setpriority(2). The
        // value is relative to the replica's own: a replica started under
        // `nice` keeps its snapshots below it.
        let tid = Some(rustix::thread::gettid());
        let lowered = getpriority_process(tid)
            .and_then(|now| setpriority_process(tid, (now + SNAPSHOT_NICE).min(19)));
        if let Err(e) = lowered {
            tracing::debug!("could not lower the snapshot thread's priority: {e}");
        }
    }
}

/// A snapshot encoded and written, to be adopted.
pub(super) struct Encoded {
    /// `job.snap.data` holds the encoding.
    job: Job,
    encode: Duration,
    /// Time spent writing the file.
    write: Duration,
    file: Step,
}

/// How far a snapshot got before it was adopted.
enum Step {
    /// Written to this file.
    File(SnapshotFile),
    /// Not written: a snapshot as new is stored already.
    NotNewer,
    /// The replica began to stop: nothing was written.
    Stopped,
    Failed(StorageError),
}

/// Encodes `job`'s state; then calls the test hook, if any. `None`: the
/// replica began to stop meanwhile.
fn encode(
    mut job: Job,
    stop: &CancellationToken,
    before_save: Option<&BeforeSave>,
) -> (Job, Option<Duration>) {
    let started = Instant::now();
    let mut out = StopAware::new(stop, job.size_hint + job.size_hint / 8);
    // The only refusal is the stop: serde encodes every state.
    if job.env.encode_to(&mut out).is_err() {
        return (job, None);
    }
    let encode = started.elapsed();
    job.snap.data = out.buf.into();
    if !stop.is_cancelled() {
        if let Some(hook) = before_save {
            hook(job.env.index);
        }
    }
    (job, Some(encode))
}

/// Writes an encoded snapshot to its file, unless the replica is stopping.
fn write(
    store: &RaftStore,
    (job, encode): (Job, Option<Duration>),
    stop: &CancellationToken,
) -> Encoded {
    let started = Instant::now();
    let file = match encode {
        Some(_) if !stop.is_cancelled() => match store.write_snapshot(&job.snap) {
            Ok(Some(f)) => Step::File(f),
            Ok(None) => Step::NotNewer,
            Err(e) => Step::Failed(e),
        },
        _ => Step::Stopped,
    };
    Encoded {
        job,
        encode: encode.unwrap_or_default(),
        write: started.elapsed(),
        file,
    }
}

/// Makes a written snapshot the store's latest, compacting the log
/// behind it; the compacted entries go to `free`.
fn adopt(store: &RaftStore, encoded: Encoded, free: std::sync::mpsc::Sender<Vec<Entry>>) -> Done {
    let Encoded {
        job,
        encode,
        write,
        file,
    } = encoded;
    let Job {
        env,
        snap,
        compact_to,
        copy,
        ..
    } = job;
    let (index, bytes) = (env.index, snap.data.len());
    let started = Instant::now();
    let result = match file {
        Step::File(f) => store.adopt_snapshot(&snap, f, compact_to).map(|adopted| {
            let _ = free.send(adopted.compacted);
            if adopted.saved {
                Written::Saved { env, bytes }
            } else {
                Written::Superseded { env }
            }
        }),
        Step::NotNewer => Ok(Written::Superseded { env }),
        Step::Stopped => Ok(Written::Abandoned),
        Step::Failed(e) => Err(e),
    };
    Done {
        index,
        compact_to,
        copy,
        encode,
        save: write + started.elapsed(),
        result,
    }
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
