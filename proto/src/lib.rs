//! Generated gRPC types and services of `edupool.v1`, and nothing else:
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
