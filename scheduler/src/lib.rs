//! The edupool scheduler.
//!
//! - `state`: the replicated state machine (pure: commands in, effects out).
//! - `planner`: pure placement decisions over the state.
//! - `raft`: the replicated log (raft-rs), its durable storage and driver task.
//! - `api`: the gRPC services (jobs, admin, agents), authentication and the
//!   one place where errors become gRPC statuses.
//! - `sessions`: the leader's view of connected agents (observed state).
//! - `control`: leader-only loops: planning, node liveness, effect delivery.
//! - `server`: `run(config, shutdown)`, which wires all of the above.
//! - `tls`: the listener's TLS and who a client certificate speaks for.
//! - `dev`: the one-process dev pool and its sample workloads.
//! - `metrics`: Prometheus metrics and their `/metrics` listener.
//! - `fragmentation`: how much free GPU capacity the expected jobs could
//!   not use (the packing measure).
//! - `simulate`: trace replay through the same code, with a virtual clock.

pub mod api;
pub mod control;
pub mod dev;
pub mod fragmentation;
pub mod metrics;
pub mod planner;
pub mod raft;
pub mod server;
pub mod sessions;
pub mod simulate;
pub mod state;
pub mod tls;
