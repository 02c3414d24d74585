//! What GPUs this node has.
//!
//! [`GpuInventory`] is the one interface the rest of the agent uses; each
//! backend implements it. Today there is [`SimulatedInventory`], built from a
//! spec such as `4xA100-80GB`; an NVML backend for real hardware implements
//! the same trait.

mod simulated;

use serde::Serialize;

pub use simulated::{simulated_gpu_uuid, GpuGroup, GpuSpec, SimulatedInventory, SpecError};

/// One GPU as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuInfo {
    /// The driver's stable identifier, e.g. `GPU-5f0c3a1e-...`; jobs see
    /// their GPUs through `CUDA_VISIBLE_DEVICES=<uuid>,...`.
    pub uuid: String,
    /// The device's index on this node, from 0.
    pub index: u32,
    /// The model with its memory size, e.g. `A100-80GB`.
    pub model: String,
    /// Total device memory in bytes.
    pub memory_bytes: u64,
    /// False when the device reports an error and should not be given to jobs.
    pub healthy: bool,
}

/// A source of the node's GPU inventory.
///
/// [`gpus`](GpuInventory::gpus) may block (an NVML query takes milliseconds
/// and can hang on a wedged driver), so async callers run it on a blocking
/// thread. It is asked again on every connection to the scheduler, so a
/// backend reports the health of each device as it is at that moment.
pub trait GpuInventory: Send + Sync {
    /// Every GPU of this node, ordered by index.
    fn gpus(&self) -> Result<Vec<GpuInfo>, InventoryError>;

    /// A short name of the backend for logs and `inventory` output, e.g.
    /// `simulated` or `nvml`.
    fn backend(&self) -> &'static str;
}

/// Why an inventory could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InventoryError {
    /// The backend cannot work on this machine at all, e.g. the driver
    /// library is missing; asking again will not help.
    #[error("the {backend} GPU backend is unavailable: {reason}")]
    Unavailable {
        /// The backend's [`GpuInventory::backend`] name.
        backend: &'static str,
        /// What is missing, for people.
        reason: String,
    },
    /// One query failed; a later one may succeed.
    #[error("the {backend} GPU backend could not list the GPUs: {reason}")]
    Query {
        /// The backend's [`GpuInventory::backend`] name.
        backend: &'static str,
        /// What went wrong, for people.
        reason: String,
    },
}
