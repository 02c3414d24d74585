//! Generated gRPC types and services of `edupool.v1`, and the few
//! constants both ends of a message must agree on:
//! `edupool.proto` (the pool's API), `cluster.proto` (raft messages
//! between replicas and the operators' `ClusterService`) and `usage.proto`
//! (the usage ledger, prices and budgets), one package.
//!
//! Domain code converts to and from these types at its edges; the
//! replicated state never stores them.
#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("edupool.v1");
}

/// The encoded `FileDescriptorSet`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/edupool_descriptor.bin"));

/// The `JobReport.reason` of a job an agent stopped because the agent
/// restarted and could not re-adopt it: the scheduler treats such a run as
/// vanished (the node-loss rules apply), not as the job's own failure.
pub const AGENT_RESTART_REASON: &str = "stopped: the node agent restarted";
