//! The replicated log: raft-rs driven by one task per replica, durable in
//! redb, replicated over gRPC. It applies committed commands to
//! `edupool-core`'s state machine and depends on nothing above it: the
//! scheduler hands in its metrics and TLS settings.
//!
//! - `storage`: raft's `Storage` over redb (log, hard state, configuration,
//!   snapshot, peer addresses), bounded by compaction.
//! - `driver`: the task that owns `RawNode`, turns proposals into log
//!   entries, applies committed entries to the state machine, serves
//!   ReadIndex reads and membership changes, and takes snapshots.
//! - `transport`: peer messages over the tonic `RaftService`, batched per
//!   peer through bounded queues.
//! - `snapshot`: the versioned snapshot envelope; restore from a backup.
//! - `snapshotter`: snapshots encoded and saved off the driver's path.
//! - `status`: the `RaftStatus` a replica publishes.
//! - `metrics`: what the log reports, handed in by the caller.
//! - `peer_auth`: which certificate may speak for a replica.
//! - `logger`: raft-rs's slog records forwarded to tracing.
//! - `refused`: entries `apply` refused as inconsistent, logged and counted.
//! - `failpoints`: test-only faults (the `failpoints` feature).

mod driver;
#[cfg(feature = "failpoints")]
pub mod failpoints;
mod logger;
mod metrics;
pub mod peer_auth;
mod refused;
mod snapshot;
mod snapshotter;
mod status;
mod storage;
mod transport;

#[cfg(test)]
mod sim;

pub use driver::{
    apply_entry, DriverEnd, Leadership, LogEntry, MembershipChange, ProposeError, Replica,
    ReplicaConfig,
};
pub use metrics::RaftMetrics;
pub use snapshot::{replay_data_dir, restore_backup, SnapshotEnvelope, SNAPSHOT_FORMAT};
pub use status::{MemberStatus, RaftStatus, Role};
pub use storage::{Peers, RaftStore, StorageError};
pub use transport::{peer_only, RaftServer, MAX_RAFT_MESSAGE_BYTES, MAX_SNAPSHOT_BYTES};
