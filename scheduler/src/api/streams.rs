//! The long-lived streams of `JobService`: `WatchJobs` (every change to a
//! tenant's jobs, from the change history in `changes`) and
//! `FollowJobLogs` (a log as it is written).
//!
//! Both are bounded: a tenant may hold `MAX_STREAMS_PER_TENANT` open at
//! once on a replica, each buffers `STREAM_BUFFER` messages, and a reader
//! that takes nothing for `SLOW_READER` is ended with a status saying so
//! (one buffer slot is kept for that status).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edupool_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::Status;

use super::changes::{ChangeLog, TooOld};
use super::Caller;

/// Open WatchJobs and FollowJobLogs streams one tenant may hold on one
/// replica (admins and auditors count together as one).
pub const MAX_STREAMS_PER_TENANT: usize = 32;
/// Messages a stream holds for a reader before it waits.
pub const STREAM_BUFFER: usize = 64;
/// How long a full stream waits for its reader before ending it.
pub const SLOW_READER: Duration = Duration::from_secs(30);
/// Changes one read of the history takes at most.
const READ_BATCH: usize = 256;
/// How often a followed log is read again once everything was sent.
pub const LOG_POLL: Duration = Duration::from_millis(250);

pub type Events<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Counts open streams per tenant.
#[derive(Clone, Default)]
pub struct StreamLimits {
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open stream; closing it (dropping this) frees its place.
pub struct Slot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl StreamLimits {
    /// A place for one more stream of the caller's tenant, or
    /// RESOURCE_EXHAUSTED.
    pub fn open(&self, caller: &Caller, what: &str) -> Result<Slot, Status> {
        let key = caller.tenant_scope().unwrap_or("").to_string();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key.clone()).or_default();
        if *n >= MAX_STREAMS_PER_TENANT {
            let who = if key.is_empty() {
                "admins and auditors".to_string()
            } else {
                format!("tenant '{key}'")
            };
            return Err(Status::resource_exhausted(format!(
                "{who} already hold {MAX_STREAMS_PER_TENANT} open watch and log streams on this replica, the most allowed; close one before opening another {what}"
            )));
        }
        *n += 1;
        Ok(Slot {
            open: self.open.clone(),
            key,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The sending end of a bounded stream that ends a slow reader with a
/// status instead of buffering for it.
pub struct Sender<T> {
    tx: mpsc::Sender<Result<T, Status>>,
    slow_reader: Duration,
    _slot: Slot,
}

/// Why a stream stopped sending.
#[derive(Debug)]
pub struct Closed;

/// A bounded stream for `slot`'s holder: the sender and the response.
pub fn channel<T: Send + 'static>(slot: Slot) -> (Sender<T>, Events<T>) {
    channel_with(slot, SLOW_READER)
}

fn channel_with<T: Send + 'static>(slot: Slot, slow_reader: Duration) -> (Sender<T>, Events<T>) {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let tx = Sender {
        tx,
        slow_reader,
        _slot: slot,
    };
    (tx, Box::pin(ReceiverStream::new(rx)))
}

impl<T> Sender<T> {
    /// Sends `item`, waiting up to `SLOW_READER` for room; a reader that
    /// does not make room in time gets an ABORTED status and the stream ends.
    pub async fn send(&self, item: T) -> Result<(), Closed> {
        // Two places: one for the item, one kept for a closing status.
        match tokio::time::timeout(self.slow_reader, self.tx.reserve_many(2)).await {
            Ok(Ok(mut permits)) => {
                if let Some(p) = permits.next() {
                    p.send(Ok(item));
                }
                Ok(())
            }
            Ok(Err(_)) => Err(Closed),
            Err(_) => {
                let _ = self.tx.try_send(Err(Status::aborted(format!(
                    "the client read nothing for {} s while {STREAM_BUFFER} messages waited; the stream was ended so the server does not buffer for it; read faster, or open it again",
                    self.slow_reader.as_secs_f64()
                ))));
                Err(Closed)
            }
        }
    }

    /// Ends the stream with `status`.
    pub async fn fail(&self, status: Status) {
        let _ = self.tx.send(Err(status)).await;
    }

    /// Resolves when the client has gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// OUT_OF_RANGE for a revision the history no longer holds.
pub fn too_old(from: u64, t: TooOld) -> Status {
    Status::out_of_range(format!(
        "revision {from} is older than this replica's job change history, which holds the changes after revision {}; re-list the jobs (ListJobs) and watch again from now (start_revision 0), or resume from revision {} or later",
        t.floor,
        t.floor + 1
    ))
}

/// Sends `caller`'s jobs' changes from the history, from revision `from`
/// (0: from now, after an opening event), until the client goes.
pub async fn watch_jobs(log: ChangeLog, caller: Caller, from: u64, tx: Sender<pb::WatchJobsEvent>) {
    let mut grew = log.subscribe();
    let mut next = from;
    if from == 0 {
        let through = log.through();
        next = through + 1;
        let opening = pb::WatchJobsEvent {
            job: None,
            revision: through,
        };
        if tx.send(opening).await.is_err() {
            return;
        }
    }
    loop {
        grew.borrow_and_update();
        let read = log.read(next, READ_BATCH, |c| caller.sees_tenant(&c.tenant));
        let (changes, after) = match read {
            Ok(r) => r,
            Err(t) => {
                // The history moved past what this reader had taken.
                tx.fail(Status::aborted(format!(
                    "this watch fell behind the job change history (it holds {} changes); {}",
                    super::changes::HISTORY_EVENTS,
                    too_old(next, t).message()
                )))
                .await;
                return;
            }
        };
        let caught_up = changes.is_empty();
        for c in changes {
            let event = pb::WatchJobsEvent {
                job: Some(c.job),
                revision: c.revision,
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
        next = after;
        if !caught_up {
            continue;
        }
        tokio::select! {
            _ = tx.closed() => return,
            r = grew.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;
    use crate::state::Role;

    fn member(tenant: &str) -> Caller {
        Caller {
            token_id: "t".into(),
            name: "t".into(),
            role: Role::Member,
            tenant: Some(tenant.into()),
        }
    }

    #[tokio::test]
    async fn slow_readers_are_ended_and_streams_limited_per_tenant() {
        let limits = StreamLimits::default();
        let slot = limits.open(&member("zju"), "a test stream").unwrap();
        let (tx, mut rx) = channel_with::<usize>(slot, Duration::from_millis(50));
        let mut sent = 0;
        while tx.send(sent).await.is_ok() {
            sent += 1;
        }
        // One place was kept for the status.
        assert_eq!(sent, STREAM_BUFFER - 1);
        drop(tx);
        let mut got = vec![];
        while let Some(item) = rx.next().await {
            got.push(item);
        }
        let last = got.pop().unwrap().unwrap_err();
        assert_eq!(last.code(), tonic::Code::Aborted);
        assert!(
            last.message().contains("read nothing for 0.05 s"),
            "{}",
            last.message()
        );
        assert_eq!(got.len(), sent);
        // The ended stream's place is free again: all of them can open.
        for _ in 0..MAX_STREAMS_PER_TENANT {
            std::mem::forget(limits.open(&member("zju"), "x").unwrap());
        }
        let err = limits.open(&member("zju"), "WatchJobs").err().unwrap();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(limits.open(&member("other"), "x").is_ok());
    }
}
