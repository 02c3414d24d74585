//! Which device nodes a container job gets: the standard ones, and for its
//! GPUs exactly their `/dev/nvidiaN` plus the driver's control devices.
//!
//! The nodes are looked up under the agent's device root (`/dev`, or a
//! folder of test nodes made with `mknod`); a node that is not there is
//! left out. Each one found is created in the container's own `/dev` with
//! its real major and minor numbers and, on cgroup v1, allowed in the
//! job's device cgroup after everything else is denied.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::inventory::GpuInfo;

/// The control devices every GPU job needs besides its own GPUs'.
pub(crate) const NVIDIA_CONTROL_DEVICES: [&str; 3] =
    ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"];

/// Device cgroup rules for what the runtime itself creates in every
/// container (null, zero, full, random, urandom, tty, ptmx, pts).
pub(crate) const STANDARD_DEVICE_RULES: [&str; 8] = [
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
];

/// The minor number, and so the `/dev/nvidiaN` node, of the GPU with this
/// NVML index. The driver numbers its device nodes in the order NVML
/// enumerates GPUs; this is the one place that assumes it.
pub fn gpu_device_minor(nvml_index: u32) -> u32 {
    nvml_index
}

/// A GPU unit a job can be given, by UUID: the minor of the GPU (the
/// parent GPU for a MIG instance), and whether it is a MIG instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuUnit {
    /// `/dev/nvidia<minor>`.
    pub minor: u32,
    /// A MIG instance: its parent GPU's MIG capability devices are added.
    pub mig: bool,
}

/// The device of each GPU and MIG instance of the inventory, by UUID.
pub fn gpu_units(gpus: &[GpuInfo]) -> BTreeMap<String, GpuUnit> {
    let mut units = BTreeMap::new();
    for gpu in gpus {
        let minor = gpu_device_minor(gpu.index);
        units.insert(gpu.uuid.clone(), GpuUnit { minor, mig: false });
        for instance in gpu.mig.iter().flat_map(|m| &m.instances) {
            units.insert(instance.uuid.clone(), GpuUnit { minor, mig: true });
        }
    }
    units
}

/// A device node as the container gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceNode {
    /// The path inside the container, e.g. `/dev/nvidia0`.
    pub(crate) path: String,
    pub(crate) major: u64,
    pub(crate) minor: u64,
}

impl DeviceNode {
    /// The v1 device cgroup rule that allows it.
    pub(crate) fn rule(&self) -> String {
        format!("c {}:{} rwm", self.major, self.minor)
    }
}

/// Why a job's GPUs cannot be given to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DeviceError {
    #[error("GPU {0} is not in this node's inventory")]
    UnknownGpu(String),
    #[error("GPU {uuid} has no device node {path}")]
    MissingGpuNode { uuid: String, path: String },
}

/// The device nodes of the GPUs `uuids` (each must be known and have its
/// node under `device_root`), then the control devices and, for MIG
/// instances, the capability devices found there.
pub(crate) fn gpu_nodes(
    device_root: &Path,
    units: &BTreeMap<String, GpuUnit>,
    uuids: &[String],
) -> Result<Vec<DeviceNode>, DeviceError> {
    let mut nodes: Vec<DeviceNode> = vec![];
    let mut mig_parents = vec![];
    for uuid in uuids {
        let unit = units
            .get(uuid)
            .ok_or_else(|| DeviceError::UnknownGpu(uuid.clone()))?;
        let name = format!("nvidia{}", unit.minor);
        let node = char_device(device_root, &name).ok_or_else(|| DeviceError::MissingGpuNode {
            uuid: uuid.clone(),
            path: device_root.join(&name).display().to_string(),
        })?;
        if !nodes.contains(&node) {
            nodes.push(node);
        }
        if unit.mig && !mig_parents.contains(&unit.minor) {
            mig_parents.push(unit.minor);
        }
    }
    if nodes.is_empty() {
        return Ok(nodes);
    }
    nodes.extend(
        NVIDIA_CONTROL_DEVICES
            .iter()
            .filter_map(|name| char_device(device_root, name)),
    );
    for parent in mig_parents {
        nodes.extend(mig_capability_nodes(device_root, parent));
    }
    Ok(nodes)
}

/// The MIG capability devices (`nvidia-caps/nvidia-capN`) that the driver
/// lists for GPU `minor` in `/proc/driver/nvidia-caps/mig-minors`.
fn mig_capability_nodes(device_root: &Path, minor: u32) -> Vec<DeviceNode> {
    let Ok(text) = fs::read_to_string("/proc/driver/nvidia-caps/mig-minors") else {
        return vec![];
    };
    let prefix = format!("gpu{minor}/");
    text.lines()
        .filter(|line| line.starts_with(&prefix))
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter_map(|cap| char_device(device_root, &format!("nvidia-caps/nvidia-cap{cap}")))
        .collect()
}

/// `device_root/name` if it is a character device.
fn char_device(device_root: &Path, name: &str) -> Option<DeviceNode> {
    let meta = fs::metadata(device_root.join(name)).ok()?;
    if !meta.file_type().is_char_device() {
        return None;
    }
    let rdev = meta.rdev();
    Some(DeviceNode {
        path: format!("/dev/{name}"),
        major: nix::sys::stat::major(rdev),
        minor: nix::sys::stat::minor(rdev),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_map_uuids_to_the_gpu_index_and_unknown_gpus_are_refused() {
        let mut a = GpuInfo::basic("GPU-a".into(), 0, "A100".into(), 1);
        a.mig = Some(crate::inventory::MigInfo {
            enabled: true,
            instances: vec![crate::inventory::MigInstance {
                uuid: "MIG-a1".into(),
                index: 0,
                name: "1g.10gb".into(),
                memory_bytes: 1,
            }],
        });
        let b = GpuInfo::basic("GPU-b".into(), 3, "A100".into(), 1);
        let units = gpu_units(&[a, b]);
        assert_eq!(
            units["GPU-b"],
            GpuUnit {
                minor: 3,
                mig: false
            }
        );
        assert_eq!(
            units["MIG-a1"],
            GpuUnit {
                minor: 0,
                mig: true
            }
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            gpu_nodes(dir.path(), &units, &["GPU-x".into()]),
            Err(DeviceError::UnknownGpu("GPU-x".into()))
        );
        // A regular file is no device node.
        fs::write(dir.path().join("nvidia3"), "").unwrap();
        assert!(matches!(
            gpu_nodes(dir.path(), &units, &["GPU-b".into()]),
            Err(DeviceError::MissingGpuNode { .. })
        ));
        assert_eq!(gpu_nodes(dir.path(), &units, &[]), Ok(vec![]));
    }
}
