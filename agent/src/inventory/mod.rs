//! What GPUs this node has, how they are doing, and what they use.
//!
//! [`GpuInventory`] is the one interface the rest of the agent uses; each
//! backend implements it:
//!
//! - [`NvmlInventory`]: real NVIDIA GPUs through NVML (`libnvidia-ml`,
//!   loaded at run time, so the agent builds and starts on machines
//!   without the driver).
//! - [`SimulatedInventory`]: GPUs described by a spec such as
//!   `4xA100-80GB`, with power and utilisation curves and health faults
//!   injected from a file, so every path is exercised without a GPU.
//!
//! Every method may block (an NVML call takes milliseconds and can hang on
//! a wedged driver): async callers run them on a blocking thread.

mod nvml;
mod simulated;

use std::time::Duration;

use serde::Serialize;

pub use nvml::NvmlInventory;
pub use simulated::{
    parse_fault_line, simulated_gpu_uuid, Fault, FaultLine, GpuGroup, GpuSpec, SimulatedInventory,
    SpecError,
};

/// One GPU as the agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuInfo {
    /// The driver's stable identifier, e.g. `GPU-5f0c3a1e-...`; jobs see
    /// their GPUs through `CUDA_VISIBLE_DEVICES=<uuid>,...`.
    pub uuid: String,
    /// The device's index on this node, from 0.
    pub index: u32,
    /// The model: the driver's name (e.g. `NVIDIA A100-SXM4-80GB`), or for
    /// simulated GPUs the model with its memory size (e.g. `A100-80GB`).
    pub model: String,
    /// Total device memory in bytes.
    pub memory_bytes: u64,
    /// False when the device reports an error and should not be given to jobs.
    pub healthy: bool,
    /// Why the GPU is unhealthy; `None` when healthy.
    pub health_reason: Option<String>,
    /// PCI bus id, e.g. `00000000:3B:00.0`.
    pub pci_bus_id: Option<String>,
    /// CUDA compute capability, e.g. `8.0`.
    pub compute_capability: Option<String>,
    /// MIG mode and instances; `None` where the GPU has no MIG support.
    pub mig: Option<MigInfo>,
    /// PCI bus ids of the devices at the other end of active NVLinks.
    pub nvlink_peers: Vec<String>,
    /// The enforced power limit in watts.
    pub power_limit_watts: Option<f64>,
    /// The driver version, e.g. `550.54.15`.
    pub driver_version: Option<String>,
    /// The CUDA version the driver supports, e.g. `12.4`.
    pub cuda_version: Option<String>,
}

impl GpuInfo {
    /// A healthy GPU with only the basic facts known.
    pub fn basic(uuid: String, index: u32, model: String, memory_bytes: u64) -> Self {
        GpuInfo {
            uuid,
            index,
            model,
            memory_bytes,
            healthy: true,
            health_reason: None,
            pci_bus_id: None,
            compute_capability: None,
            mig: None,
            nvlink_peers: vec![],
            power_limit_watts: None,
            driver_version: None,
            cuda_version: None,
        }
    }
}

/// A GPU's MIG (multi-instance GPU) state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigInfo {
    /// MIG mode is on now.
    pub enabled: bool,
    /// The GPU instances, each scheduled as a GPU of its own.
    pub instances: Vec<MigInstance>,
}

/// One MIG instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigInstance {
    /// `MIG-...`; jobs see it through `CUDA_VISIBLE_DEVICES` like a GPU.
    pub uuid: String,
    /// The instance's index on its parent GPU.
    pub index: u32,
    /// The instance's name as the driver gives it.
    pub name: String,
    /// The instance's memory in bytes.
    pub memory_bytes: u64,
}

/// The units the scheduler may give to jobs: each GPU, except that a GPU in
/// MIG mode is replaced by its MIG instances.
pub fn schedulable_units(gpus: &[GpuInfo]) -> Vec<GpuInfo> {
    let mut units = vec![];
    for gpu in gpus {
        match &gpu.mig {
            Some(mig) if mig.enabled && !mig.instances.is_empty() => {
                units.extend(mig.instances.iter().map(|m| GpuInfo {
                    uuid: m.uuid.clone(),
                    model: format!("{} MIG {}", gpu.model, m.name),
                    memory_bytes: m.memory_bytes,
                    mig: None,
                    ..gpu.clone()
                }));
            }
            _ => units.push(gpu.clone()),
        }
    }
    units
}

/// The MIG instances that stand for each GPU in MIG mode, by the GPU's
/// UUID: a health change of the GPU applies to each of them.
pub fn mig_units(gpus: &[GpuInfo]) -> std::collections::HashMap<String, Vec<String>> {
    gpus.iter()
        .filter_map(|g| match &g.mig {
            Some(mig) if mig.enabled && !mig.instances.is_empty() => Some((
                g.uuid.clone(),
                mig.instances.iter().map(|m| m.uuid.clone()).collect(),
            )),
            _ => None,
        })
        .collect()
}

/// One reading of a GPU's telemetry. A value the device does not support
/// is `None`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct GpuSample {
    /// The GPU.
    pub uuid: String,
    /// Share of the last sample period in which a kernel ran, 0 to 1.
    pub utilization_ratio: Option<f64>,
    /// Device memory in use, bytes.
    pub memory_used_bytes: Option<u64>,
    /// Device memory in all, bytes.
    pub memory_total_bytes: Option<u64>,
    /// Die temperature.
    pub temperature_celsius: Option<f64>,
    /// Power draw now.
    pub power_watts: Option<f64>,
    /// Energy used since the counter started (driver load, or the agent's
    /// start where it is integrated from power), joules.
    pub energy_joules: Option<f64>,
    /// SM clock.
    pub sm_clock_hz: Option<u64>,
    /// Uncorrectable ECC errors since the driver loaded.
    pub ecc_volatile_uncorrected: Option<u64>,
    /// Uncorrectable ECC errors over the device's life.
    pub ecc_aggregate_uncorrected: Option<u64>,
    /// Memory pages wait to be retired at the next reset (GPUs before
    /// Ampere; later ones remap rows instead, see `remapped_rows`).
    pub retired_pages_pending: bool,
    /// Row remapping of device memory (A100, H100 and later); `None` where
    /// the GPU does not remap rows.
    pub remapped_rows: Option<RemappedRows>,
    /// Why the clocks are held down now, e.g. `hw_thermal_slowdown`.
    pub throttle_reasons: Vec<String>,
    /// Processes using the GPU and their memory.
    pub processes: Vec<GpuProcess>,
    /// The GPU has fallen off the bus or no longer answers.
    pub lost: bool,
}

/// What a GPU's row remapping shows: rows of device memory replaced by
/// spare rows after errors, over the device's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct RemappedRows {
    /// Rows remapped after correctable errors.
    pub correctable: u64,
    /// Rows remapped after uncorrectable errors.
    pub uncorrectable: u64,
    /// A remapping waits for the next reset to take effect.
    pub pending: bool,
    /// A remapping failed (no spare row was left): the GPU needs service.
    pub failed: bool,
}

/// A process on a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuProcess {
    /// Its process id.
    pub pid: u32,
    /// Device memory it holds, bytes, where the driver tells.
    pub memory_bytes: Option<u64>,
}

/// Something the driver reported about a GPU's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    /// The GPU.
    pub uuid: String,
    /// What happened.
    pub kind: HealthEventKind,
}

/// The kinds of [`HealthEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthEventKind {
    /// An XID error with its code.
    Xid(u64),
    /// An uncorrectable (double bit) ECC error.
    UncorrectableEcc,
    /// The GPU was reset; earlier faults are gone.
    Reset,
}

/// A source of the node's GPU inventory, telemetry and health events.
///
/// [`gpus`](GpuInventory::gpus) is asked again on every connection to the
/// scheduler, so a backend reports each device as it is at that moment.
pub trait GpuInventory: Send + Sync {
    /// Every GPU of this node, ordered by index.
    fn gpus(&self) -> Result<Vec<GpuInfo>, InventoryError>;

    /// One telemetry reading of every GPU, ordered by index.
    fn sample(&self) -> Result<Vec<GpuSample>, InventoryError>;

    /// Waits up to `timeout` for health events and returns those that came
    /// (none when the time ran out).
    fn wait_for_events(&self, timeout: Duration) -> Result<Vec<HealthEvent>, InventoryError>;

    /// A short name of the backend for logs and `inventory` output, e.g.
    /// `simulated` or `nvml`.
    fn backend(&self) -> &'static str;

    /// The summed energy counters of `uuids`, joules; `None` when one of
    /// them has no counter.
    fn energy_joules(&self, uuids: &[String]) -> Result<Option<f64>, InventoryError> {
        let samples = self.sample()?;
        let mut total = 0.0;
        for uuid in uuids {
            match samples.iter().find(|s| &s.uuid == uuid) {
                Some(GpuSample {
                    energy_joules: Some(joules),
                    ..
                }) => total += joules,
                _ => return Ok(None),
            }
        }
        Ok(Some(total))
    }
}

impl<T: GpuInventory + ?Sized> GpuInventory for std::sync::Arc<T> {
    fn gpus(&self) -> Result<Vec<GpuInfo>, InventoryError> {
        (**self).gpus()
    }

    fn sample(&self) -> Result<Vec<GpuSample>, InventoryError> {
        (**self).sample()
    }

    fn wait_for_events(&self, timeout: Duration) -> Result<Vec<HealthEvent>, InventoryError> {
        (**self).wait_for_events(timeout)
    }

    fn backend(&self) -> &'static str {
        (**self).backend()
    }

    fn energy_joules(&self, uuids: &[String]) -> Result<Option<f64>, InventoryError> {
        (**self).energy_joules(uuids)
    }
}

/// Some GPUs of another inventory: a node shared with work outside the
/// pool offers only these, by UUID. GPUs not on the node are not invented.
pub struct OnlyGpus<I> {
    inner: I,
    uuids: Vec<String>,
}

impl<I: GpuInventory> OnlyGpus<I> {
    /// The GPUs of `inner` whose UUIDs are in `uuids`.
    pub fn new(inner: I, uuids: Vec<String>) -> Self {
        OnlyGpus { inner, uuids }
    }

    fn keeps(&self, uuid: &str) -> bool {
        self.uuids.iter().any(|u| u == uuid)
    }
}

impl<I: GpuInventory> GpuInventory for OnlyGpus<I> {
    fn gpus(&self) -> Result<Vec<GpuInfo>, InventoryError> {
        let mut gpus = self.inner.gpus()?;
        gpus.retain(|g| self.keeps(&g.uuid));
        Ok(gpus)
    }

    fn sample(&self) -> Result<Vec<GpuSample>, InventoryError> {
        let mut samples = self.inner.sample()?;
        samples.retain(|s| self.keeps(&s.uuid));
        Ok(samples)
    }

    fn wait_for_events(&self, timeout: Duration) -> Result<Vec<HealthEvent>, InventoryError> {
        let mut events = self.inner.wait_for_events(timeout)?;
        events.retain(|e| self.keeps(&e.uuid));
        Ok(events)
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mig_instances_replace_their_gpu_as_schedulable_units() {
        let plain = GpuInfo::basic("GPU-a".into(), 0, "A100".into(), 80 << 30);
        let mut split = GpuInfo::basic("GPU-b".into(), 1, "A100".into(), 80 << 30);
        split.mig = Some(MigInfo {
            enabled: true,
            instances: vec![
                MigInstance {
                    uuid: "MIG-1".into(),
                    index: 0,
                    name: "3g.40gb".into(),
                    memory_bytes: 40 << 30,
                },
                MigInstance {
                    uuid: "MIG-2".into(),
                    index: 1,
                    name: "3g.40gb".into(),
                    memory_bytes: 40 << 30,
                },
            ],
        });
        let units = schedulable_units(&[plain.clone(), split.clone()]);
        assert_eq!(
            mig_units(&[plain.clone(), split]),
            [(
                "GPU-b".to_owned(),
                vec!["MIG-1".to_owned(), "MIG-2".to_owned()]
            )]
            .into_iter()
            .collect()
        );
        assert_eq!(
            units
                .iter()
                .map(|u| (u.uuid.as_str(), u.index, u.model.as_str(), u.memory_bytes))
                .collect::<Vec<_>>(),
            [
                ("GPU-a", 0, "A100", 80 << 30),
                ("MIG-1", 1, "A100 MIG 3g.40gb", 40 << 30),
                ("MIG-2", 1, "A100 MIG 3g.40gb", 40 << 30),
            ]
        );
        assert_eq!(units[0], plain);
    }

    #[test]
    fn only_gpus_keeps_the_named_ones() {
        let all = SimulatedInventory::parse("n1", "3xT4-16GB").unwrap();
        let keep = simulated_gpu_uuid("n1", 1);
        let only = OnlyGpus::new(all, vec![keep.clone(), "GPU-elsewhere".into()]);
        let gpus = only.gpus().unwrap();
        assert_eq!(
            gpus.iter()
                .map(|g| (g.index, g.uuid.as_str()))
                .collect::<Vec<_>>(),
            [(1, keep.as_str())]
        );
        assert_eq!(only.sample().unwrap().len(), 1);
        assert_eq!(only.backend(), "simulated");
    }
}
