//! The replicated log: raft-rs driven by one task per replica, durable in
//! redb, replicated over gRPC. It applies committed commands to
//! `edupool-core`'s state machine and depends on nothing above it: the
//! scheduler hands in its metrics and TLS settings.
//!
//! - `storage`: raft's `Storage` over redb (log, hard state, configuration,
//!   snapshot, peer addresses), bounded by compaction.
//! - `step`: the I/O-free step: raft-rs's `RawNode` and the proposals and
//!   reads waiting on it; handling a `Ready` returns the actions to take.
//! - `machine`: log entries and the one function that applies them.
//! - `driver`: the task that owns the step, feeds it requests, peer
//!   messages and ticks, and performs its actions (storage, peers,
//!   waiters); `snapshots` decides when it takes a snapshot.
//! - `replica`: the `Replica` handle the scheduler holds; `config` its
//!   settings.
//! - `feed`: the entries the driver applied, handed on in bounded
//!   batches; `mirror`: a private copy of the state kept current from
//!   them, which the leader's planner reads without the driver's lock.
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

mod config;
mod driver;
#[cfg(feature = "failpoints")]
pub mod failpoints;
mod feed;
mod logger;
mod machine;
mod metrics;
mod mirror;
pub mod peer_auth;
mod refused;
mod replica;
mod snapshot;
mod snapshots;
mod snapshotter;
mod status;
mod step;
mod storage;
mod transport;

#[cfg(test)]
mod mirror_tests;
#[cfg(test)]
mod replica_tests;
#[cfg(test)]
mod sim;

pub use config::ReplicaConfig;
pub use driver::{AppliedEffects, DriverEnd};
pub use machine::{apply_entry, LogEntry};
pub use metrics::RaftMetrics;
pub use mirror::{CatchUp, Mirror, FEED_CAPACITY};
pub use replica::Replica;
pub use snapshot::{replay_data_dir, restore_backup, SnapshotEnvelope, SNAPSHOT_FORMAT};
pub use status::{MemberStatus, RaftStatus, Role};
pub use step::{Leadership, MembershipChange, ProposeError, Published};
pub use storage::{Peers, RaftStore, StorageError};
pub use transport::{peer_only, RaftServer, MAX_RAFT_MESSAGE_BYTES, MAX_SNAPSHOT_BYTES};
