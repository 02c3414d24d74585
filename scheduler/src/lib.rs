//! The edupool scheduler.
//!
//! The pure parts (`state`, `planner`, `fragmentation`) live in
//! `edupool-core` and are re-exported here; this crate is the edges.
//!
//! - `raft`: the replicated log, re-exported from `edupool-raft`.
//! - `api`: the gRPC services (jobs, admin, agents), authentication and the
//!   one place where errors become gRPC statuses.
//! - `sessions`: the leader's view of connected agents (observed state).
//! - `control`: leader-only loops: planning, node liveness, effect delivery.
//! - `server`: `run(config, shutdown)`, which wires all of the above.
//! - `tls`: the listener's TLS and who a client certificate speaks for.
//! - `metrics`: Prometheus metrics and their `/metrics` listener.
//! - `process`: logging and signal handling shared by the binaries.

pub mod api;
pub mod control;
pub mod metrics;
pub mod process;
pub mod server;
pub mod sessions;
pub mod tls;

pub use edupool_core::{fragmentation, planner, state};
pub use edupool_raft as raft;
