//! Real NVIDIA GPUs through NVML.
//!
//! `libnvidia-ml.so.1` is loaded when the backend is opened, not linked:
//! the agent builds and starts anywhere, and on a machine without the
//! driver [`NvmlInventory::open`] says so in one line
//! ([`InventoryError::Unavailable`]).
//!
//! NVML stays initialised for the life of the process (it is opened once
//! and leaked), so that devices and the event set can be kept without
//! borrowing from a value that moves.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, P2pCapabilitiesIndex, P2pStatus, TemperatureSensor,
};
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::{Device, EventSet, Nvml};
use tracing::{debug, warn};

use super::{
    GpuInfo, GpuInventory, GpuProcess, GpuSample, HealthEvent, HealthEventKind, InventoryError,
    MigInfo, MigInstance, RemappedRows,
};

const BACKEND: &str = "nvml";

/// The most NVLinks a GPU has (NVML's `NVML_NVLINK_MAX_LINKS`).
const MAX_NVLINKS: u32 = 18;

/// GPUs read through NVML.
pub struct NvmlInventory {
    nvml: &'static Nvml,
    /// XID and ECC events of every GPU that supports them; `None` when no
    /// GPU does (events are then not watched, only telemetry).
    events: Mutex<Option<EventSet<'static>>>,
    /// Energy integrated from power for GPUs without an energy counter
    /// (older than Volta): uuid -> (last reading, watts then, joules so far).
    integrated: Mutex<HashMap<String, (Instant, f64, f64)>>,
    /// The UUID of each index as last read, to name a GPU that has since
    /// fallen off the bus and no longer answers.
    uuids: Mutex<Vec<String>>,
}

impl std::fmt::Debug for NvmlInventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlInventory").finish_non_exhaustive()
    }
}

fn unavailable(reason: String) -> InventoryError {
    InventoryError::Unavailable {
        backend: BACKEND,
        reason,
    }
}

fn query(what: &str, err: NvmlError) -> InventoryError {
    InventoryError::Query {
        backend: BACKEND,
        reason: format!("{what}: {err}"),
    }
}

impl NvmlInventory {
    /// Loads NVML (from `lib_path`, or `libnvidia-ml.so.1` on the library
    /// path), initialises it and registers for XID and ECC events.
    pub fn open(lib_path: Option<&Path>) -> Result<Self, InventoryError> {
        let mut builder = Nvml::builder();
        if let Some(path) = lib_path {
            builder.lib_path(path.as_os_str());
        }
        let nvml = builder.init().map_err(|err| match err {
            NvmlError::LibloadingError(e) => unavailable(format!(
                "cannot load {} ({e}); is the NVIDIA driver installed?",
                lib_path
                    .map_or(OsStr::new("libnvidia-ml.so.1"), |p| p.as_os_str())
                    .to_string_lossy()
            )),
            NvmlError::DriverNotLoaded => {
                unavailable("the NVIDIA kernel driver is not loaded".into())
            }
            NvmlError::NoPermission => {
                unavailable("no permission to talk to the NVIDIA driver".into())
            }
            other => unavailable(format!("NVML did not initialise: {other}")),
        })?;
        let nvml: &'static Nvml = Box::leak(Box::new(nvml));
        let events = register_events(nvml);
        Ok(NvmlInventory {
            nvml,
            events: Mutex::new(events),
            integrated: Mutex::new(HashMap::new()),
            uuids: Mutex::new(vec![]),
        })
    }

    fn devices(&self) -> Result<Vec<Device<'static>>, InventoryError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|e| query("device count", e))?;
        (0..count)
            .map(|i| {
                self.nvml
                    .device_by_index(i)
                    .map_err(|e| query(&format!("device {i}"), e))
            })
            .collect()
    }

    fn info(
        &self,
        index: u32,
        device: &Device<'static>,
        versions: &(Option<String>, Option<String>),
    ) -> Result<GpuInfo, InventoryError> {
        let uuid = device.uuid().map_err(|e| query("uuid", e))?;
        let model = device.name().map_err(|e| query("name", e))?;
        let memory = device.memory_info().map_err(|e| query("memory info", e))?;
        let mut info = GpuInfo::basic(uuid, index, model, memory.total);
        info.pci_bus_id = device.pci_info().ok().map(|p| p.bus_id);
        info.compute_capability = device
            .cuda_compute_capability()
            .ok()
            .map(|c| format!("{}.{}", c.major, c.minor));
        info.mig = mig_info(device);
        info.nvlink_peers = nvlink_peers(device);
        info.power_limit_watts = device
            .enforced_power_limit()
            .ok()
            .map(|mw| f64::from(mw) / 1e3);
        info.driver_version = versions.0.clone();
        info.cuda_version = versions.1.clone();
        Ok(info)
    }

    fn versions(&self) -> (Option<String>, Option<String>) {
        let driver = self.nvml.sys_driver_version().ok();
        let cuda = self.nvml.sys_cuda_driver_version().ok().map(|v| {
            format!(
                "{}.{}",
                nvml_wrapper::cuda_driver_version_major(v),
                nvml_wrapper::cuda_driver_version_minor(v)
            )
        });
        (driver, cuda)
    }

    /// The UUID last seen at `index`, for a GPU that no longer answers.
    fn known_uuid(&self, index: u32) -> String {
        let uuids = self.uuids.lock().unwrap_or_else(PoisonError::into_inner);
        uuids
            .get(index as usize)
            .cloned()
            .unwrap_or_else(|| format!("index-{index}"))
    }

    fn lost(&self, index: u32, error: &NvmlError) -> GpuSample {
        warn!(index, %error, "GPU does not answer");
        GpuSample {
            uuid: self.known_uuid(index),
            lost: true,
            ..Default::default()
        }
    }

    fn sample_device(&self, index: u32, device: &Device<'static>) -> GpuSample {
        let uuid = match device.uuid() {
            Ok(uuid) => uuid,
            // A GPU that no longer answers its UUID is gone.
            Err(e) => return self.lost(index, &e),
        };
        let mut lost = false;
        let mut ok = Answers { lost: &mut lost };
        let utilization = ok.get(device.utilization_rates());
        let memory = ok.get(device.memory_info());
        let temperature = ok.get(device.temperature(TemperatureSensor::Gpu));
        let power_mw = ok.get(device.power_usage());
        let energy_mj = ok.get(device.total_energy_consumption());
        let sm_clock = ok.get(device.clock_info(Clock::SM));
        let ecc_volatile =
            ok.get(device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile));
        let ecc_aggregate =
            ok.get(device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Aggregate));
        let pending = ok.get(device.are_pages_pending_retired()).unwrap_or(false);
        let remapped_rows = ok.get(remapped_rows(device));
        let throttle = ok
            .get(device.current_throttle_reasons())
            .map(|reasons| {
                reasons
                    .iter_names()
                    .map(|(name, _)| name.to_ascii_lowercase())
                    .filter(|name| name != "gpu_idle" && name != "none")
                    .collect()
            })
            .unwrap_or_default();
        let processes = ok
            .get(device.running_compute_processes())
            .unwrap_or_default()
            .into_iter()
            .map(|p| GpuProcess {
                pid: p.pid,
                memory_bytes: match p.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => Some(bytes),
                    UsedGpuMemory::Unavailable => None,
                },
            })
            .collect();
        let power_watts = power_mw.map(|mw| f64::from(mw) / 1e3);
        let energy_joules = match energy_mj {
            Some(mj) => Some(mj as f64 / 1e3),
            None => power_watts.map(|w| self.integrate(&uuid, w)),
        };
        GpuSample {
            uuid,
            utilization_ratio: utilization.map(|u| f64::from(u.gpu) / 100.0),
            memory_used_bytes: memory.as_ref().map(|m| m.used),
            memory_total_bytes: memory.as_ref().map(|m| m.total),
            temperature_celsius: temperature.map(f64::from),
            power_watts,
            energy_joules,
            sm_clock_hz: sm_clock.map(|mhz| u64::from(mhz) * 1_000_000),
            ecc_volatile_uncorrected: ecc_volatile,
            ecc_aggregate_uncorrected: ecc_aggregate,
            retired_pages_pending: pending,
            remapped_rows,
            throttle_reasons: throttle,
            processes,
            lost,
        }
    }

    /// Trapezoid integration of power for GPUs without an energy counter.
    fn integrate(&self, uuid: &str, watts: f64) -> f64 {
        let mut integrated = self
            .integrated
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let entry = integrated
            .entry(uuid.to_owned())
            .or_insert((now, watts, 0.0));
        let dt = now.duration_since(entry.0).as_secs_f64();
        entry.2 += 0.5 * (entry.1 + watts) * dt;
        entry.0 = now;
        entry.1 = watts;
        entry.2
    }
}

/// Reads optional values: a query the GPU does not support is `None`; one
/// that finds the GPU gone also marks it lost.
struct Answers<'a> {
    lost: &'a mut bool,
}

impl Answers<'_> {
    fn get<T>(&mut self, answer: Result<T, NvmlError>) -> Option<T> {
        match answer {
            Ok(v) => Some(v),
            Err(NvmlError::GpuLost) => {
                *self.lost = true;
                None
            }
            Err(_) => None,
        }
    }
}

/// Registers every GPU that supports them for critical XID and double bit
/// ECC events. GPUs that cannot be registered are still watched through
/// their telemetry (ECC counters, pending retirements).
fn register_events(nvml: &'static Nvml) -> Option<EventSet<'static>> {
    let mut set = match nvml.create_event_set() {
        Ok(set) => set,
        Err(e) => {
            warn!(error = %e, "NVML event set unavailable; XID errors will not be seen");
            return None;
        }
    };
    let wanted = EventTypes::CRITICAL_XID_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR;
    let count = nvml.device_count().unwrap_or(0);
    let mut registered = 0;
    for i in 0..count {
        let Ok(device) = nvml.device_by_index(i) else {
            continue;
        };
        let supported = device
            .supported_event_types()
            .unwrap_or(EventTypes::empty());
        let types = supported & wanted;
        if types.is_empty() {
            debug!(index = i, "GPU supports no XID or ECC events");
            continue;
        }
        match device.register_events(types, set) {
            Ok(back) => {
                set = back;
                registered += 1;
            }
            Err(e) => {
                warn!(index = i, error = %e, "cannot register for GPU events");
                // The set is freed on failure; start a new one.
                match nvml.create_event_set() {
                    Ok(fresh) => set = fresh,
                    Err(_) => return None,
                }
            }
        }
    }
    (registered > 0).then_some(set)
}

/// The GPU's row remapping, read as NVML's four remapped-row fields (the
/// values `nvmlDeviceGetRemappedRows` returns). GPUs before Ampere answer
/// `NotSupported`.
fn remapped_rows(device: &Device<'static>) -> Result<RemappedRows, NvmlError> {
    use nvml_wrapper::sys_exports::field_id::{
        NVML_FI_DEV_REMAPPED_COR, NVML_FI_DEV_REMAPPED_FAILURE, NVML_FI_DEV_REMAPPED_PENDING,
        NVML_FI_DEV_REMAPPED_UNC,
    };
    let ids = [
        NVML_FI_DEV_REMAPPED_COR,
        NVML_FI_DEV_REMAPPED_UNC,
        NVML_FI_DEV_REMAPPED_PENDING,
        NVML_FI_DEV_REMAPPED_FAILURE,
    ]
    .map(FieldId);
    let values = device
        .field_values_for(&ids)?
        .into_iter()
        .map(|sample| Ok(count(sample?.value?)))
        .collect::<Result<Vec<u64>, NvmlError>>()?;
    let [correctable, uncorrectable, pending, failed] = values[..] else {
        return Err(NvmlError::Unknown);
    };
    Ok(RemappedRows {
        correctable,
        uncorrectable,
        pending: pending != 0,
        failed: failed != 0,
    })
}

/// A field value as a count (NVML picks the width per field and driver).
fn count(value: SampleValue) -> u64 {
    match value {
        SampleValue::U32(v) => u64::from(v),
        SampleValue::U64(v) => v,
        SampleValue::I64(v) => u64::try_from(v).unwrap_or(0),
        SampleValue::F64(v) => v.max(0.0) as u64,
    }
}

fn mig_info(device: &Device<'static>) -> Option<MigInfo> {
    let mode = device.mig_mode().ok()?;
    let enabled = mode.current == 1;
    let mut instances = vec![];
    if enabled {
        let max = device.mig_device_count().unwrap_or(0);
        for index in 0..max {
            // Slots without an instance answer NotFound.
            let Ok(mig) = device.mig_device_by_index(index) else {
                continue;
            };
            let (Ok(uuid), Ok(memory)) = (mig.uuid(), mig.memory_info()) else {
                continue;
            };
            let name = mig.name().unwrap_or_default();
            instances.push(MigInstance {
                uuid,
                index,
                name,
                memory_bytes: memory.total,
            });
        }
    }
    Some(MigInfo { enabled, instances })
}

/// The PCI bus ids at the other end of the GPU's active NVLinks: peer
/// GPUs on boards where GPUs are linked directly, NVSwitches on boards
/// where they are linked through switches (see [`add_p2p_peers`]).
fn nvlink_peers(device: &Device<'static>) -> Vec<String> {
    let mut peers: Vec<String> = (0..MAX_NVLINKS)
        .filter_map(|link| {
            let link = device.link_wrapper_for(link);
            match link.is_active() {
                Ok(true) => link.remote_pci_info().ok().map(|p| p.bus_id),
                _ => None,
            }
        })
        .collect();
    peers.sort();
    peers.dedup();
    peers
}

/// Adds to each GPU's NVLink peers the bus ids of the GPUs it reaches over
/// NVLink by the driver's peer-to-peer status. On HGX boards every NVLink
/// ends at an NVSwitch, so the links' remote ends name switches and not
/// GPUs; the peer-to-peer status names the GPUs themselves.
fn add_p2p_peers(devices: &[Device<'static>], gpus: &mut [GpuInfo]) {
    add_linked_peers(gpus, |a, b| {
        matches!(
            devices[a].p2p_status(&devices[b], P2pCapabilitiesIndex::NvLink),
            Ok(P2pStatus::Ok)
        )
    });
}

/// Adds to each GPU's NVLink peers the bus id of every other GPU that
/// `linked(a, b)` (by position, asked once per pair) says it reaches.
fn add_linked_peers(gpus: &mut [GpuInfo], linked: impl Fn(usize, usize) -> bool) {
    let mut found: Vec<Vec<String>> = vec![vec![]; gpus.len()];
    for a in 0..gpus.len() {
        for b in a + 1..gpus.len() {
            if let (Some(bus_a), Some(bus_b)) = (&gpus[a].pci_bus_id, &gpus[b].pci_bus_id) {
                if linked(a, b) {
                    found[a].push(bus_b.clone());
                    found[b].push(bus_a.clone());
                }
            }
        }
    }
    for (gpu, more) in gpus.iter_mut().zip(found) {
        gpu.nvlink_peers.extend(more);
        gpu.nvlink_peers.sort();
        gpu.nvlink_peers.dedup();
    }
}

impl GpuInventory for NvmlInventory {
    fn gpus(&self) -> Result<Vec<GpuInfo>, InventoryError> {
        let versions = self.versions();
        let devices = self.devices()?;
        let mut gpus = devices
            .iter()
            .zip(0u32..)
            .map(|(device, index)| self.info(index, device, &versions))
            .collect::<Result<Vec<_>, _>>()?;
        add_p2p_peers(&devices, &mut gpus);
        *self.uuids.lock().unwrap_or_else(PoisonError::into_inner) =
            gpus.iter().map(|g| g.uuid.clone()).collect();
        Ok(gpus)
    }

    /// Every GPU, one at a time: a GPU that fell off the bus is sampled as
    /// lost (under the UUID it last had) instead of failing the round.
    fn sample(&self) -> Result<Vec<GpuSample>, InventoryError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|e| query("device count", e))?;
        Ok((0..count)
            .map(|index| match self.nvml.device_by_index(index) {
                Ok(device) => self.sample_device(index, &device),
                Err(e) => self.lost(index, &e),
            })
            .collect())
    }

    fn wait_for_events(&self, timeout: Duration) -> Result<Vec<HealthEvent>, InventoryError> {
        let guard = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(set) = guard.as_ref() else {
            drop(guard);
            std::thread::sleep(timeout);
            return Ok(vec![]);
        };
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        match set.wait(timeout_ms) {
            Ok(event) => {
                let uuid = event
                    .device
                    .uuid()
                    .map_err(|e| query("uuid of an event's GPU", e))?;
                let mut events = vec![];
                if event.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                    let code = match event.event_data {
                        Some(XidError::Value(code)) => code,
                        _ => 0,
                    };
                    events.push(HealthEvent {
                        uuid: uuid.clone(),
                        kind: HealthEventKind::Xid(code),
                    });
                }
                if event.event_type.contains(EventTypes::DOUBLE_BIT_ECC_ERROR) {
                    events.push(HealthEvent {
                        uuid,
                        kind: HealthEventKind::UncorrectableEcc,
                    });
                }
                Ok(events)
            }
            Err(NvmlError::Timeout) => Ok(vec![]),
            // A GPU fell off the bus while waiting: telemetry will show
            // which one.
            Err(NvmlError::GpuLost) => Ok(vec![]),
            Err(e) => Err(query("waiting for GPU events", e)),
        }
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_driver_library_is_one_clear_error() {
        let err = NvmlInventory::open(Some(Path::new("/nonexistent/libnvidia-ml.so.1")))
            .expect_err("no driver at that path");
        let text = err.to_string();
        assert!(
            matches!(
                err,
                InventoryError::Unavailable {
                    backend: "nvml",
                    ..
                }
            ),
            "{text}"
        );
        assert!(text.contains("/nonexistent/libnvidia-ml.so.1"), "{text}");
        assert!(text.contains("is the NVIDIA driver installed?"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn gpus_linked_through_switches_become_each_others_peers() {
        let mut gpus: Vec<GpuInfo> = (0..4u32)
            .map(|i| {
                let mut g = GpuInfo::basic(format!("GPU-{i}"), i, "H100".into(), 1);
                g.pci_bus_id = Some(format!("00000000:{:02X}:00.0", 0x10 + i));
                g
            })
            .collect();
        // GPU 0's own links end at a switch, which is kept as it was read.
        gpus[0].nvlink_peers = vec!["00000000:A0:00.0".into()];
        // 0, 1 and 2 share a switch; 3 has no NVLink; 2 has no bus id.
        gpus[2].pci_bus_id = None;
        add_linked_peers(&mut gpus, |a, b| a < 3 && b < 3);
        let peers: Vec<Vec<&str>> = gpus
            .iter()
            .map(|g| g.nvlink_peers.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            peers,
            [
                vec!["00000000:11:00.0", "00000000:A0:00.0"],
                vec!["00000000:10:00.0"],
                vec![],
                vec![],
            ]
        );
        let converted: Vec<Vec<u32>> = gpus
            .iter()
            .map(|g| crate::convert::nvlink_peer_indexes(g, &gpus))
            .collect();
        assert_eq!(converted, [vec![1], vec![0], vec![], vec![]]);
    }
}
