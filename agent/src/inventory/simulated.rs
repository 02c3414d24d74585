//! A simulated inventory for development and tests: GPUs described by a spec
//! string, with UUIDs that stay the same across restarts of the same node,
//! telemetry that follows a load curve, and faults injected from a file.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::warn;

use super::{
    GpuInfo, GpuInventory, GpuSample, HealthEvent, HealthEventKind, InventoryError, RemappedRows,
};

/// The most GPUs one simulated node may declare.
pub const MAX_SIMULATED_GPUS: u32 = 1024;

/// The largest memory size one simulated GPU may declare, in GB.
const MAX_MEMORY_GB: u64 = 1 << 20;

/// Bytes in one "GB" of a spec: GPU vendors' "80GB" are binary gigabytes.
const BYTES_PER_GB: u64 = 1 << 30;

/// A parsed GPU spec: one or more groups, e.g. `2xH100-80GB,1xT4-16GB`.
///
/// Each group is `<count>x<model>-<memory>GB`. The model is what precedes the
/// last `-` and may itself contain dashes (`1xRTX-6000-48GB`); the memory is
/// whole binary gigabytes and must be given. GPUs are numbered from 0 in the
/// order the groups are written. `none` is a node without GPUs (CPU-only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuSpec {
    groups: Vec<GpuGroup>,
}

impl GpuSpec {
    /// No GPUs: a CPU-only node.
    pub fn none() -> GpuSpec {
        GpuSpec { groups: vec![] }
    }

    /// How many GPUs it declares.
    pub fn count(&self) -> usize {
        self.groups.iter().map(|g| g.count as usize).sum()
    }
}

/// One group of identical GPUs in a [`GpuSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuGroup {
    /// How many GPUs of this kind, at least 1.
    pub count: u32,
    /// The model name without its memory size, e.g. `A100`.
    pub model: String,
    /// Memory of each GPU in whole binary gigabytes, at least 1.
    pub memory_gb: u64,
}

impl GpuGroup {
    /// The model as reported to the scheduler, e.g. `A100-80GB`.
    pub fn model_name(&self) -> String {
        format!("{}-{}GB", self.model, self.memory_gb)
    }
}

impl GpuSpec {
    /// The groups in the order they were written.
    pub fn groups(&self) -> &[GpuGroup] {
        &self.groups
    }

    /// The number of GPUs over all groups.
    pub fn gpu_count(&self) -> u32 {
        self.groups.iter().map(|g| g.count).sum()
    }
}

impl fmt::Display for GpuSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.groups.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}x{}", g.count, g.model_name())?;
        }
        Ok(())
    }
}

/// Why a GPU spec could not be parsed. Each message quotes the offending
/// entry and shows an example of what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Nothing but whitespace was given.
    #[error("empty GPU spec, expected e.g. 4xA100-80GB")]
    Empty,
    /// Two commas with nothing between them, or a trailing comma.
    #[error("{spec:?}: empty entry, expected e.g. 2xH100-80GB,1xT4-16GB")]
    EmptyEntry {
        /// The whole spec.
        spec: String,
    },
    /// The entry does not start with a number.
    #[error("{entry:?}: missing count, expected e.g. 4xA100-80GB")]
    MissingCount {
        /// The entry at fault.
        entry: String,
    },
    /// The count is not followed by `x`.
    #[error("{entry:?}: expected 'x' after the count, e.g. 4xA100-80GB")]
    MissingSeparator {
        /// The entry at fault.
        entry: String,
    },
    /// The count is 0 or too large.
    #[error("{entry:?}: invalid count {count:?}, expected a whole number from 1 to {max}", max = MAX_SIMULATED_GPUS)]
    InvalidCount {
        /// The entry at fault.
        entry: String,
        /// The count as written.
        count: String,
    },
    /// Nothing between `x` and the memory size.
    #[error("{entry:?}: missing model name, expected e.g. 4xA100-80GB")]
    MissingModel {
        /// The entry at fault.
        entry: String,
    },
    /// The model name has characters other than letters, digits, `-`, `_`, `.`.
    #[error("{entry:?}: invalid model name {model:?}, expected letters, digits, '-', '_' or '.'")]
    InvalidModel {
        /// The entry at fault.
        entry: String,
        /// The model as written.
        model: String,
    },
    /// No `-<N>GB` at the end.
    #[error("{entry:?}: missing memory size, expected e.g. 4xA100-80GB")]
    MissingMemory {
        /// The entry at fault.
        entry: String,
    },
    /// A memory size that is not a whole, non-zero number of GB.
    #[error(
        "{entry:?}: invalid memory size {size:?}, expected whole gigabytes from 1 such as 80GB"
    )]
    InvalidMemory {
        /// The entry at fault.
        entry: String,
        /// The memory size as written.
        size: String,
    },
    /// All groups together declare more GPUs than a node may have.
    #[error("{spec:?}: {count} GPUs in total, more than the {max} a simulated node may have", max = MAX_SIMULATED_GPUS)]
    TooManyGpus {
        /// The whole spec.
        spec: String,
        /// The total declared.
        count: u64,
    },
}

impl FromStr for GpuSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(SpecError::Empty);
        }
        if spec == "none" {
            return Ok(GpuSpec::none());
        }
        let groups = spec
            .split(',')
            .map(|entry| {
                let entry = entry.trim();
                if entry.is_empty() {
                    Err(SpecError::EmptyEntry {
                        spec: spec.to_owned(),
                    })
                } else {
                    parse_group(entry)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let count: u64 = groups.iter().map(|g| u64::from(g.count)).sum();
        if count > u64::from(MAX_SIMULATED_GPUS) {
            return Err(SpecError::TooManyGpus {
                spec: spec.to_owned(),
                count,
            });
        }
        Ok(GpuSpec { groups })
    }
}

fn parse_group(entry: &str) -> Result<GpuGroup, SpecError> {
    let err_entry = || entry.to_owned();
    let digits = entry.len() - entry.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return Err(SpecError::MissingCount { entry: err_entry() });
    }
    let (count_str, rest) = entry.split_at(digits);
    let Some(rest) = rest.strip_prefix(['x', 'X']) else {
        return Err(SpecError::MissingSeparator { entry: err_entry() });
    };
    let count = match count_str.parse::<u32>() {
        Ok(n) if (1..=MAX_SIMULATED_GPUS).contains(&n) => n,
        _ => {
            return Err(SpecError::InvalidCount {
                entry: err_entry(),
                count: count_str.to_owned(),
            })
        }
    };
    let Some((model, size)) = rest.rsplit_once('-') else {
        return Err(if rest.is_empty() {
            SpecError::MissingModel { entry: err_entry() }
        } else {
            SpecError::MissingMemory { entry: err_entry() }
        });
    };
    let memory_gb = parse_memory(entry, size)?;
    if model.is_empty() {
        return Err(SpecError::MissingModel { entry: err_entry() });
    }
    if !model
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(SpecError::InvalidModel {
            entry: err_entry(),
            model: model.to_owned(),
        });
    }
    Ok(GpuGroup {
        count,
        model: model.to_owned(),
        memory_gb,
    })
}

/// Parses the part after the model's last `-`: `80GB` (any case).
fn parse_memory(entry: &str, size: &str) -> Result<u64, SpecError> {
    let invalid = || SpecError::InvalidMemory {
        entry: entry.to_owned(),
        size: size.to_owned(),
    };
    let number = match size.len().checked_sub(2) {
        Some(cut) if size.is_char_boundary(cut) && size[cut..].eq_ignore_ascii_case("gb") => {
            &size[..cut]
        }
        // A bare number is a size without its unit; anything else is part of
        // the model name, and the size was left out.
        _ if !size.is_empty() && size.bytes().all(|b| b.is_ascii_digit()) => return Err(invalid()),
        _ => {
            return Err(SpecError::MissingMemory {
                entry: entry.to_owned(),
            })
        }
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    match number.parse::<u64>() {
        Ok(n) if (1..=MAX_MEMORY_GB).contains(&n) => Ok(n),
        _ => Err(invalid()),
    }
}

/// The UUID a simulated GPU gets: derived from the node name and the GPU's
/// index only, so it is the same on every start of the same node, and shaped
/// like NVIDIA's (`GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`).
pub fn simulated_gpu_uuid(node_name: &str, index: u32) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"edupool simulated gpu\0");
    hasher.update(node_name.as_bytes());
    hasher.update(b"\0");
    hasher.update(index.to_be_bytes());
    let hex = hex::encode(&hasher.finalize()[..16]);
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The period of the simulated load curve.
const LOAD_PERIOD_SECS: f64 = 60.0;

/// Simulated GPUs: the GPUs of a spec, with a load curve that drives their
/// power, energy, utilisation, memory, temperature and clocks, and, for
/// development and tests only, faults read from a file (see
/// [`parse_fault_line`]).
///
/// Each GPU's load follows `0.5 + 0.5 sin(2πt/60s + φ)` from the moment
/// the inventory was made, its phase `φ` set by its index; power goes from
/// 15% of the model's power limit at no load to the limit at full load, and
/// the energy counter is the exact integral of that power.
#[derive(Debug)]
pub struct SimulatedInventory {
    gpus: Vec<GpuInfo>,
    started: Instant,
    fault_file: Option<PathBuf>,
    state: Mutex<SimState>,
}

#[derive(Debug, Default)]
struct SimState {
    /// How far the fault file has been read.
    offset: u64,
    gpus: Vec<SimGpu>,
}

#[derive(Debug, Clone, Default)]
struct SimGpu {
    ecc_volatile: u64,
    ecc_aggregate: u64,
    retired_pending: bool,
    /// Row remapping; `None` for models that retire pages instead.
    remap: Option<RemappedRows>,
    lost: bool,
    throttle: Vec<String>,
}

impl SimulatedInventory {
    /// The GPUs of `spec` on the node `node_name`.
    pub fn new(node_name: &str, spec: &GpuSpec) -> Self {
        let mut gpus: Vec<GpuInfo> = vec![];
        for g in spec.groups() {
            let first = gpus.len() as u32;
            for index in first..first + g.count {
                let mut info = GpuInfo::basic(
                    simulated_gpu_uuid(node_name, index),
                    index,
                    g.model_name(),
                    g.memory_gb * BYTES_PER_GB,
                );
                info.pci_bus_id = Some(format!("00000000:{:02X}:00.0", 0x10 + index));
                info.compute_capability = compute_capability(&g.model).map(str::to_owned);
                info.power_limit_watts = Some(power_limit_watts(&g.model));
                info.driver_version = Some(format!("simulated-{}", env!("CARGO_PKG_VERSION")));
                // Like an HGX board: data-centre GPUs of one group are
                // linked to each other.
                if has_nvlink(&g.model) {
                    info.nvlink_peers = (first..first + g.count)
                        .filter(|&peer| peer != index)
                        .map(|peer| format!("00000000:{:02X}:00.0", 0x10 + peer))
                        .collect();
                }
                gpus.push(info);
            }
        }
        let state = SimState {
            offset: 0,
            gpus: gpus
                .iter()
                .map(|g| SimGpu {
                    remap: remaps_rows(&g.model).then(RemappedRows::default),
                    ..SimGpu::default()
                })
                .collect(),
        };
        SimulatedInventory {
            gpus,
            started: Instant::now(),
            fault_file: None,
            state: Mutex::new(state),
        }
    }

    /// Parses `spec` and builds the inventory of `node_name` from it.
    pub fn parse(node_name: &str, spec: &str) -> Result<Self, SpecError> {
        Ok(Self::new(node_name, &spec.parse()?))
    }

    /// Reads faults from `path` (for development and tests only): every
    /// line appended to it is applied once, see [`parse_fault_line`]. The
    /// file need not exist yet; lines already in it when the agent starts
    /// are applied too.
    pub fn with_fault_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.fault_file = Some(path.into());
        self
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn gpu_position(&self, gpu: &str) -> Option<usize> {
        self.gpus
            .iter()
            .position(|g| g.uuid == gpu || g.index.to_string() == gpu)
    }

    /// Applies the complete lines appended to the fault file since the last
    /// call, and returns the events they raise.
    fn read_faults(&self) -> Vec<HealthEvent> {
        let Some(path) = &self.fault_file else {
            return vec![];
        };
        let mut state = self.lock();
        let Ok(text) = std::fs::read(path) else {
            return vec![];
        };
        let start = (state.offset as usize).min(text.len());
        let Some(end) = text[start..].iter().rposition(|&b| b == b'\n') else {
            return vec![];
        };
        let end = start + end + 1;
        state.offset = end as u64;
        let mut events = vec![];
        for line in String::from_utf8_lossy(&text[start..end]).lines() {
            match parse_fault_line(line) {
                Ok(None) => {}
                Ok(Some(fault)) => match self.gpu_position(&fault.gpu) {
                    Some(at) => {
                        let uuid = self.gpus[at].uuid.clone();
                        match apply_fault(&mut state.gpus[at], &fault.fault) {
                            Ok(Some(kind)) => events.push(HealthEvent { uuid, kind }),
                            Ok(None) => {}
                            Err(error) => warn!(line, error, "fault file: line ignored"),
                        }
                    }
                    None => warn!(line, "fault file: no such simulated GPU"),
                },
                Err(error) => warn!(line, %error, "fault file: line ignored"),
            }
        }
        events
    }

    fn sample_of(&self, info: &GpuInfo, sim: &SimGpu, elapsed: f64) -> GpuSample {
        if sim.lost {
            return GpuSample {
                uuid: info.uuid.clone(),
                lost: true,
                ..Default::default()
            };
        }
        let limit = info.power_limit_watts.unwrap_or(DEFAULT_POWER_WATTS);
        let idle = IDLE_SHARE * limit;
        let omega = std::f64::consts::TAU / LOAD_PERIOD_SECS;
        let phase = f64::from(info.index) * 0.7;
        let load = 0.5 + 0.5 * (omega * elapsed + phase).sin();
        // The integral of idle + (limit - idle) * load over [0, elapsed].
        let energy = idle * elapsed
            + (limit - idle)
                * (0.5 * elapsed + 0.5 / omega * (phase.cos() - (omega * elapsed + phase).cos()));
        GpuSample {
            uuid: info.uuid.clone(),
            utilization_ratio: Some(load),
            memory_used_bytes: Some(((0.1 + 0.6 * load) * info.memory_bytes as f64) as u64),
            memory_total_bytes: Some(info.memory_bytes),
            temperature_celsius: Some(30.0 + 50.0 * load),
            power_watts: Some(idle + (limit - idle) * load),
            energy_joules: Some(energy),
            sm_clock_hz: Some(((1_000.0 + 400.0 * load) * 1e6) as u64),
            ecc_volatile_uncorrected: Some(sim.ecc_volatile),
            ecc_aggregate_uncorrected: Some(sim.ecc_aggregate),
            retired_pages_pending: sim.retired_pending,
            remapped_rows: sim.remap,
            throttle_reasons: sim.throttle.clone(),
            processes: vec![],
            lost: false,
        }
    }
}

/// Power at no load, as a share of the power limit.
const IDLE_SHARE: f64 = 0.15;
/// The power limit of models not known below.
const DEFAULT_POWER_WATTS: f64 = 250.0;

fn power_limit_watts(model: &str) -> f64 {
    let m = model.to_ascii_uppercase();
    match () {
        _ if m.contains("H100") || m.contains("H200") || m.contains("H800") => 700.0,
        _ if m.contains("A100") || m.contains("A800") => 400.0,
        _ if m.contains("V100") => 300.0,
        _ if m.contains("L40") => 300.0,
        _ if m.contains("T4") || m.contains("L4") => 70.0,
        _ => DEFAULT_POWER_WATTS,
    }
}

fn compute_capability(model: &str) -> Option<&'static str> {
    let m = model.to_ascii_uppercase();
    match () {
        _ if m.contains("H100") || m.contains("H200") || m.contains("H800") => Some("9.0"),
        _ if m.contains("A100") || m.contains("A800") => Some("8.0"),
        _ if m.contains("L40") || m.contains("L4") => Some("8.9"),
        _ if m.contains("V100") => Some("7.0"),
        _ if m.contains("T4") => Some("7.5"),
        _ => None,
    }
}

/// Whether `model` names one of `kinds` (e.g. "A100" in "A100-80GB").
fn is_one_of(model: &str, kinds: &[&str]) -> bool {
    let m = model.to_ascii_uppercase();
    kinds.iter().any(|k| m.contains(k))
}

/// Models that remap rows of device memory after errors (Ampere data-centre
/// GPUs and later); older ones retire pages.
fn remaps_rows(model: &str) -> bool {
    is_one_of(model, &["H100", "H200", "H800", "A100", "A800"])
}

/// Data-centre GPUs with NVLink: those that remap rows, and the V100.
fn has_nvlink(model: &str) -> bool {
    remaps_rows(model) || is_one_of(model, &["V100"])
}

/// One line of a fault file: a GPU (index or UUID) and what happens to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultLine {
    /// The GPU's index or UUID.
    pub gpu: String,
    /// What happens.
    pub fault: Fault,
}

/// What a fault file line does to a simulated GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `xid CODE`: an XID error event.
    Xid(u64),
    /// `ecc [COUNT]`: uncorrectable ECC errors (default 1), with an event.
    Ecc(u64),
    /// `retire`: memory pages wait to be retired at the next reset.
    RetirePages,
    /// `remap`: a row is remapped after an uncorrectable error; the
    /// remapping waits for the next reset (A100, H100 and later).
    RemapRow,
    /// `remap-failed`: a remapping failed (no spare row left); a reset
    /// does not clear it.
    RemapFailed,
    /// `lost`: the GPU falls off the bus.
    Lost,
    /// `thermal` or `power`: clocks held down (not a fault by itself).
    Throttle(&'static str),
    /// `reset`: the GPU is reset; every fault above is gone but a failed
    /// remapping.
    Reset,
}

/// Parses one line of a fault file: `<gpu> <fault> [value]`, where `<gpu>`
/// is an index or UUID and `<fault>` is `xid CODE`, `ecc [COUNT]`,
/// `retire`, `remap`, `remap-failed`, `lost`, `thermal`, `power` or
/// `reset`. Blank lines and lines starting with `#` are `None`.
pub fn parse_fault_line(line: &str) -> Result<Option<FaultLine>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let number = |what: &str| -> Result<u64, String> {
        match words.get(2) {
            Some(w) => w
                .parse()
                .map_err(|_| format!("{what}: expected a whole number, got {w:?}")),
            None => Err(format!("{what}: missing number, e.g. `0 xid 79`")),
        }
    };
    let fault = match (words.len(), words.get(1).copied()) {
        (_, None) => return Err("expected `<gpu> <fault> [value]`, e.g. `0 xid 79`".into()),
        (3, Some("xid")) => Fault::Xid(number("xid")?),
        (2, Some("ecc")) => Fault::Ecc(1),
        (3, Some("ecc")) => Fault::Ecc(number("ecc")?),
        (2, Some("retire")) => Fault::RetirePages,
        (2, Some("remap")) => Fault::RemapRow,
        (2, Some("remap-failed")) => Fault::RemapFailed,
        (2, Some("lost")) => Fault::Lost,
        (2, Some("thermal")) => Fault::Throttle("hw_thermal_slowdown"),
        (2, Some("power")) => Fault::Throttle("sw_power_cap"),
        (2, Some("reset")) => Fault::Reset,
        (2, Some("xid")) => return Err("xid: missing code, e.g. `0 xid 79`".into()),
        (_, Some(other)) => {
            return Err(format!(
                "unknown fault {other:?} (or wrong number of values); expected xid CODE, \
                 ecc [COUNT], retire, remap, remap-failed, lost, thermal, power or reset"
            ))
        }
    };
    Ok(Some(FaultLine {
        gpu: words[0].to_owned(),
        fault,
    }))
}

/// Applies one fault to a GPU and returns the driver event it raises; an
/// error for a fault the GPU's model cannot have.
fn apply_fault(gpu: &mut SimGpu, fault: &Fault) -> Result<Option<HealthEventKind>, String> {
    match fault {
        Fault::Xid(code) => return Ok(Some(HealthEventKind::Xid(*code))),
        Fault::Ecc(count) => {
            gpu.ecc_volatile += count;
            gpu.ecc_aggregate += count;
            return Ok(Some(HealthEventKind::UncorrectableEcc));
        }
        Fault::RetirePages => gpu.retired_pending = true,
        Fault::RemapRow => {
            let remap = remapping(gpu)?;
            remap.uncorrectable += 1;
            remap.pending = true;
        }
        Fault::RemapFailed => remapping(gpu)?.failed = true,
        Fault::Lost => gpu.lost = true,
        Fault::Throttle(reason) => {
            if !gpu.throttle.iter().any(|r| r == reason) {
                gpu.throttle.push((*reason).to_owned());
            }
        }
        Fault::Reset => {
            // Volatile counters restart with the driver; aggregate ones and
            // remapped rows stay, and a pending remapping takes effect.
            *gpu = SimGpu {
                ecc_aggregate: gpu.ecc_aggregate,
                remap: gpu.remap.map(|r| RemappedRows {
                    pending: false,
                    ..r
                }),
                ..SimGpu::default()
            };
            return Ok(Some(HealthEventKind::Reset));
        }
    }
    Ok(None)
}

/// The GPU's row remapping, or why a fault on it cannot be applied.
fn remapping(gpu: &mut SimGpu) -> Result<&mut RemappedRows, String> {
    gpu.remap
        .as_mut()
        .ok_or_else(|| "this model retires pages instead of remapping rows".into())
}

/// How often a waiting [`SimulatedInventory::wait_for_events`] looks at
/// the fault file.
const FAULT_POLL: Duration = Duration::from_millis(50);

impl GpuInventory for SimulatedInventory {
    fn gpus(&self) -> Result<Vec<GpuInfo>, InventoryError> {
        Ok(self.gpus.clone())
    }

    fn sample(&self) -> Result<Vec<GpuSample>, InventoryError> {
        let elapsed = self.started.elapsed().as_secs_f64();
        let state = self.lock();
        Ok(self
            .gpus
            .iter()
            .zip(&state.gpus)
            .map(|(info, sim)| self.sample_of(info, sim, elapsed))
            .collect())
    }

    fn wait_for_events(&self, timeout: Duration) -> Result<Vec<HealthEvent>, InventoryError> {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.read_faults();
            let left = deadline.saturating_duration_since(Instant::now());
            if !events.is_empty() || left.is_zero() {
                return Ok(events);
            }
            std::thread::sleep(left.min(FAULT_POLL));
        }
    }

    fn backend(&self) -> &'static str {
        "simulated"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(count: u32, model: &str, memory_gb: u64) -> GpuGroup {
        GpuGroup {
            count,
            model: model.to_owned(),
            memory_gb,
        }
    }

    #[test]
    fn parses_single_and_mixed_specs() {
        let spec: GpuSpec = "4xA100-80GB".parse().unwrap();
        assert_eq!(spec.groups(), [group(4, "A100", 80)]);
        assert_eq!(spec.gpu_count(), 4);

        let spec: GpuSpec = " 2xH100-80GB , 1XRTX-6000-48gb,1xT4-16GB ".parse().unwrap();
        assert_eq!(
            spec.groups(),
            [
                group(2, "H100", 80),
                group(1, "RTX-6000", 48),
                group(1, "T4", 16)
            ]
        );
        assert_eq!(spec.to_string(), "2xH100-80GB,1xRTX-6000-48GB,1xT4-16GB");
        assert_eq!(spec.to_string().parse::<GpuSpec>().unwrap(), spec);
    }

    #[test]
    fn rejects_bad_specs_with_precise_messages() {
        let cases = [
            ("", "empty GPU spec, expected e.g. 4xA100-80GB"),
            ("  ", "empty GPU spec, expected e.g. 4xA100-80GB"),
            (
                "4xA100",
                r#""4xA100": missing memory size, expected e.g. 4xA100-80GB"#,
            ),
            (
                "4xRTX-A6000",
                r#""4xRTX-A6000": missing memory size, expected e.g. 4xA100-80GB"#,
            ),
            (
                "A100-80GB",
                r#""A100-80GB": missing count, expected e.g. 4xA100-80GB"#,
            ),
            (
                "4A100-80GB",
                r#""4A100-80GB": expected 'x' after the count, e.g. 4xA100-80GB"#,
            ),
            (
                "0xA100-80GB",
                r#""0xA100-80GB": invalid count "0", expected a whole number from 1 to 1024"#,
            ),
            (
                "99999999999xA100-80GB",
                r#""99999999999xA100-80GB": invalid count "99999999999", expected a whole number from 1 to 1024"#,
            ),
            (
                "4x-80GB",
                r#""4x-80GB": missing model name, expected e.g. 4xA100-80GB"#,
            ),
            (
                "4x",
                r#""4x": missing model name, expected e.g. 4xA100-80GB"#,
            ),
            (
                "4xA100-80",
                r#""4xA100-80": invalid memory size "80", expected whole gigabytes from 1 such as 80GB"#,
            ),
            (
                "4xA100-0GB",
                r#""4xA100-0GB": invalid memory size "0GB", expected whole gigabytes from 1 such as 80GB"#,
            ),
            (
                "4xA100-GB",
                r#""4xA100-GB": invalid memory size "GB", expected whole gigabytes from 1 such as 80GB"#,
            ),
            (
                "4xA100-8.5GB",
                r#""4xA100-8.5GB": invalid memory size "8.5GB", expected whole gigabytes from 1 such as 80GB"#,
            ),
            (
                "4xA 100-80GB",
                r#""4xA 100-80GB": invalid model name "A 100", expected letters, digits, '-', '_' or '.'"#,
            ),
            (
                "4xA100-80GB,",
                r#""4xA100-80GB,": empty entry, expected e.g. 2xH100-80GB,1xT4-16GB"#,
            ),
            (
                "1000xA100-80GB,25xT4-16GB",
                r#""1000xA100-80GB,25xT4-16GB": 1025 GPUs in total, more than the 1024 a simulated node may have"#,
            ),
        ];
        for (spec, message) in cases {
            let err = spec.parse::<GpuSpec>().unwrap_err();
            assert_eq!(err.to_string(), message, "spec {spec:?}");
        }
    }

    #[test]
    fn uuids_are_stable_distinct_and_nvidia_shaped() {
        let a = simulated_gpu_uuid("node-a", 0);
        assert_eq!(a, simulated_gpu_uuid("node-a", 0));
        assert_ne!(a, simulated_gpu_uuid("node-a", 1));
        assert_ne!(a, simulated_gpu_uuid("node-b", 0));
        // Pinned: a change here renames every simulated GPU in the pool.
        assert_eq!(a, "GPU-dc16485c-2282-37c1-56ab-2fcc920adc82");
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(parts[0], "GPU");
        assert_eq!(
            parts[1..].iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[1..].iter().all(|p| p
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())));
    }

    #[test]
    fn inventory_numbers_gpus_across_groups() {
        let inv = SimulatedInventory::parse("node-a", "2xH100-80GB,1xT4-16GB").unwrap();
        let gpus = inv.gpus().unwrap();
        assert_eq!(inv.backend(), "simulated");
        assert_eq!(
            gpus.iter()
                .map(|g| (g.index, g.model.as_str(), g.memory_bytes, g.healthy))
                .collect::<Vec<_>>(),
            [
                (0, "H100-80GB", 80 << 30, true),
                (1, "H100-80GB", 80 << 30, true),
                (2, "T4-16GB", 16 << 30, true),
            ]
        );
        for g in &gpus {
            assert_eq!(g.uuid, simulated_gpu_uuid("node-a", g.index));
        }
        // The same node with the same spec sees the same GPUs.
        assert_eq!(
            SimulatedInventory::parse("node-a", "2xH100-80GB,1xT4-16GB")
                .unwrap()
                .gpus()
                .unwrap(),
            gpus
        );
    }

    #[test]
    fn simulated_gpus_carry_the_richer_facts() {
        let inv = SimulatedInventory::parse("node-a", "2xH100-80GB,1xT4-16GB").unwrap();
        let gpus = inv.gpus().unwrap();
        assert_eq!(gpus[0].compute_capability.as_deref(), Some("9.0"));
        assert_eq!(gpus[0].power_limit_watts, Some(700.0));
        assert_eq!(gpus[0].pci_bus_id.as_deref(), Some("00000000:10:00.0"));
        assert_eq!(gpus[0].nvlink_peers, ["00000000:11:00.0"]);
        assert_eq!(gpus[2].compute_capability.as_deref(), Some("7.5"));
        assert!(gpus[2].nvlink_peers.is_empty());
    }

    #[test]
    fn power_curve_and_energy_counter_agree() {
        let inv = SimulatedInventory::parse("node-a", "1xA100-80GB").unwrap();
        let info = &inv.gpus[0];
        let sim = SimGpu::default();
        let mut last = 0.0;
        // Integrate the power curve numerically over a full period: the
        // counter must match, and always grow.
        let steps = 6_000;
        let dt = LOAD_PERIOD_SECS / f64::from(steps);
        let mut integral = 0.0;
        for k in 0..steps {
            let t = f64::from(k) * dt;
            let a = inv.sample_of(info, &sim, t);
            let b = inv.sample_of(info, &sim, t + dt);
            integral += 0.5 * (a.power_watts.unwrap() + b.power_watts.unwrap()) * dt;
            let energy = b.energy_joules.unwrap();
            assert!(energy > last);
            last = energy;
            let power = a.power_watts.unwrap();
            assert!((60.0..=400.0).contains(&power), "{power}");
        }
        assert!(
            (integral - last).abs() < 1e-3 * last,
            "{integral} vs {last}"
        );
        // Mean power over a period is the middle of idle and limit.
        assert!((last / LOAD_PERIOD_SECS - 230.0).abs() < 0.5, "{last}");
    }

    #[test]
    fn fault_lines_parse_with_precise_errors() {
        let ok = |line: &str| parse_fault_line(line).unwrap().map(|f| (f.gpu, f.fault));
        assert_eq!(ok("0 xid 79"), Some(("0".into(), Fault::Xid(79))));
        assert_eq!(ok("  GPU-x ecc "), Some(("GPU-x".into(), Fault::Ecc(1))));
        assert_eq!(ok("1 ecc 3"), Some(("1".into(), Fault::Ecc(3))));
        assert_eq!(ok("1 retire"), Some(("1".into(), Fault::RetirePages)));
        assert_eq!(ok("1 remap"), Some(("1".into(), Fault::RemapRow)));
        assert_eq!(ok("1 remap-failed"), Some(("1".into(), Fault::RemapFailed)));
        assert_eq!(ok("1 lost"), Some(("1".into(), Fault::Lost)));
        assert_eq!(
            ok("1 thermal"),
            Some(("1".into(), Fault::Throttle("hw_thermal_slowdown")))
        );
        assert_eq!(ok("1 reset"), Some(("1".into(), Fault::Reset)));
        assert_eq!(ok("# a comment"), None);
        assert_eq!(ok(""), None);
        for (line, error) in [
            ("0", "expected `<gpu> <fault> [value]`, e.g. `0 xid 79`"),
            ("0 xid", "xid: missing code, e.g. `0 xid 79`"),
            ("0 xid x", "xid: expected a whole number, got \"x\""),
            ("0 melt", "unknown fault \"melt\""),
            (
                "0 remap 2",
                "unknown fault \"remap\" (or wrong number of values)",
            ),
        ] {
            let err = parse_fault_line(line).unwrap_err();
            assert!(err.starts_with(error), "{line:?}: {err}");
        }
    }

    fn append(path: &std::path::Path, text: &str) {
        let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    }

    #[test]
    fn faults_from_the_file_become_events_and_telemetry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults");
        let inv = SimulatedInventory::parse("node-a", "2xA100-80GB")
            .unwrap()
            .with_fault_file(&path);
        let uuid = |i| simulated_gpu_uuid("node-a", i);
        // No file yet: nothing, after the wait.
        assert_eq!(inv.wait_for_events(Duration::from_millis(1)).unwrap(), []);
        std::fs::write(
            &path,
            "0 xid 79\n1 ecc 2\n1 retire\n# note\n9 lost\n0 thermal\n1 res",
        )
        .unwrap();
        let events = inv.wait_for_events(Duration::from_millis(1)).unwrap();
        assert_eq!(
            events,
            [
                HealthEvent {
                    uuid: uuid(0),
                    kind: HealthEventKind::Xid(79)
                },
                HealthEvent {
                    uuid: uuid(1),
                    kind: HealthEventKind::UncorrectableEcc
                },
            ]
        );
        let samples = inv.sample().unwrap();
        assert_eq!(samples[0].throttle_reasons, ["hw_thermal_slowdown"]);
        assert_eq!(samples[1].ecc_volatile_uncorrected, Some(2));
        assert!(samples[1].retired_pages_pending);
        // The unfinished last line is applied once it is complete.
        append(&path, "et\n");
        assert_eq!(
            inv.wait_for_events(Duration::from_millis(1)).unwrap(),
            [HealthEvent {
                uuid: uuid(1),
                kind: HealthEventKind::Reset
            }]
        );
        let samples = inv.sample().unwrap();
        assert_eq!(samples[1].ecc_volatile_uncorrected, Some(0));
        assert_eq!(samples[1].ecc_aggregate_uncorrected, Some(2));
        assert!(!samples[1].retired_pages_pending);
    }

    #[test]
    fn rows_are_remapped_on_ampere_and_later_and_a_failure_outlives_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults");
        let inv = SimulatedInventory::parse("node-a", "1xH100-80GB,1xV100-32GB")
            .unwrap()
            .with_fault_file(&path);
        let samples = inv.sample().unwrap();
        assert_eq!(samples[0].remapped_rows, Some(RemappedRows::default()));
        assert_eq!(samples[1].remapped_rows, None, "a V100 retires pages");
        std::fs::write(&path, "0 remap\n1 remap\n").unwrap();
        assert_eq!(inv.wait_for_events(Duration::from_millis(1)).unwrap(), []);
        let samples = inv.sample().unwrap();
        let pending = RemappedRows {
            uncorrectable: 1,
            pending: true,
            ..RemappedRows::default()
        };
        assert_eq!(samples[0].remapped_rows, Some(pending));
        assert_eq!(samples[1].remapped_rows, None, "the V100's line is ignored");

        append(&path, "0 remap-failed\n0 reset\n");
        inv.wait_for_events(Duration::from_millis(1)).unwrap();
        let after_reset = inv.sample().unwrap()[0].remapped_rows.unwrap();
        assert_eq!(
            after_reset,
            RemappedRows {
                uncorrectable: 1,
                pending: false,
                failed: true,
                correctable: 0,
            }
        );
    }
}
