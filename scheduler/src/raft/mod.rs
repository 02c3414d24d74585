//! The replicated log: raft-rs driven by one task, durable in redb.
//!
//! - `storage`: raft's `Storage` over redb (log, hard state, configuration).
//! - `driver`: the task that owns `RawNode`, turns proposals into log
//!   entries and applies committed entries to the state machine.
//! - `logger`: raft-rs's slog records forwarded to tracing.

mod driver;
mod logger;
mod storage;

pub use driver::{Leadership, LogEntry, ProposeError, Replica, ReplicaConfig};
pub use storage::{RaftStore, StorageError};
