//! A simulated inventory for development and tests: GPUs described by a spec
//! string, with UUIDs that stay the same across restarts of the same node.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use super::{GpuInfo, GpuInventory, InventoryError};

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
/// order the groups are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuSpec {
    groups: Vec<GpuGroup>,
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

/// GPUs that exist only on paper, all healthy.
#[derive(Debug, Clone)]
pub struct SimulatedInventory {
    gpus: Vec<GpuInfo>,
}

impl SimulatedInventory {
    /// The GPUs of `spec` on the node `node_name`.
    pub fn new(node_name: &str, spec: &GpuSpec) -> Self {
        let gpus = spec
            .groups()
            .iter()
            .flat_map(|g| std::iter::repeat_n(g, g.count as usize))
            .zip(0u32..)
            .map(|(g, index)| GpuInfo {
                uuid: simulated_gpu_uuid(node_name, index),
                index,
                model: g.model_name(),
                memory_bytes: g.memory_gb * BYTES_PER_GB,
                healthy: true,
            })
            .collect();
        SimulatedInventory { gpus }
    }

    /// Parses `spec` and builds the inventory of `node_name` from it.
    pub fn parse(node_name: &str, spec: &str) -> Result<Self, SpecError> {
        Ok(Self::new(node_name, &spec.parse()?))
    }
}

impl GpuInventory for SimulatedInventory {
    fn gpus(&self) -> Result<Vec<GpuInfo>, InventoryError> {
        Ok(self.gpus.clone())
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
}
