//! Jobs with an image run as containers through an OCI runtime (crun).
//!
//! For each job the agent writes a bundle (`<work_dir>/bundles/<job>/
//! config.json`, see `spec`) whose root is the image's root filesystem,
//! read-only, with the job's working directory mounted read-write at
//! `/work`; makes and limits the job's cgroup (see `cgroup`); and starts
//! `crun run` inside that cgroup, in the job's process group, with the
//! job's logs as its output. The container's main process is the job: crun
//! exits with its exit code (128 + the signal when a signal ended it).
//! When it has exited, the agent reads the cgroup's OOM kill counter and
//! CPU time, kills whatever is left in the cgroup, deletes the container
//! from crun's state (`<work_dir>/runtime`) and removes bundle and cgroup.
//!
//! Each job runs as uid = gid = the tenant base + its tenant's offset
//! (no capabilities, no new privileges), sees only its GPUs' device nodes,
//! and from data level 2 on has its own network namespace with loopback
//! only, unless the agent allows egress for that level.

mod cgroup;
pub mod devices;
pub mod spec;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::images::{ImageError, ImageStore};
pub use cgroup::{CgroupVersion, Cgroups};
pub(crate) use cgroup::{JobCgroup, Limits};
use devices::{DeviceError, GpuUnit, STANDARD_DEVICE_RULES};
use spec::{ContainerSpec, CONTAINER_PATH, CONTAINER_WORK_DIR};

/// The uid of tenant offset 0 unless the agent is told otherwise; far
/// above the uids of a node's own users and services.
pub const DEFAULT_TENANT_UID_BASE: u32 = 200_000;

/// The processes a container job may have at once unless configured.
pub const DEFAULT_PIDS_LIMIT: u64 = 4096;

/// The cgroup (relative to each hierarchy's root) the agents' job cgroups
/// are made under unless configured.
pub const DEFAULT_CGROUP_PARENT: &str = "edupool";

/// From this data level on, a job has no network but loopback.
pub const ISOLATED_DATA_LEVEL: u32 = 2;

/// What the wrapper exits with when the job's cgroup cannot be entered.
const ENTER_FAILED: i32 = 125;

/// Moves itself into the job's cgroup (every `cgroup.procs` given before
/// `--`), then becomes the runtime; with `--hide-unified DIR` first
/// unmounts DIR (it runs in a private mount namespace then).
const ENTER_SCRIPT: &str = r#"if [ "$1" = "--hide-unified" ]; then umount "$2" || exit 125; shift 2; fi
while [ "$1" != "--" ]; do echo $$ > "$1" || exit 125; shift; done
shift
exec "$@""#;

/// The NVIDIA driver files mounted read-only into jobs with GPUs, as
/// NVIDIA's container toolkit does for the `utility` and `compute`
/// capabilities; those missing on the node are skipped.
pub const DEFAULT_DRIVER_FILES: [&str; 14] = [
    "/usr/bin/nvidia-smi",
    "/usr/bin/nvidia-debugdump",
    "/usr/bin/nvidia-persistenced",
    "/usr/bin/nvidia-cuda-mps-control",
    "/usr/bin/nvidia-cuda-mps-server",
    "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
    "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
    "/usr/lib/x86_64-linux-gnu/libcudadebugger.so.1",
    "/usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so.1",
    "/usr/lib/x86_64-linux-gnu/libnvidia-nvvm.so.4",
    "/usr/lib/x86_64-linux-gnu/libnvidia-opencl.so.1",
    "/usr/lib/x86_64-linux-gnu/libnvidia-cfg.so.1",
    "/usr/lib/x86_64-linux-gnu/libnvidia-allocator.so.1",
    "/run/nvidia-persistenced/socket",
];

/// How the agent runs container jobs.
#[derive(Debug, Clone)]
pub struct ContainerDriver {
    /// The runtime binary (crun).
    pub runtime: PathBuf,
    /// Its first `--version` line, for logs.
    pub version: String,
    /// Where images are found.
    pub images: ImageStore,
    /// The node's cgroup hierarchy.
    pub cgroups: Cgroups,
    /// Job cgroups are made under `<cgroup_parent>/<agent>/`.
    pub cgroup_parent: PathBuf,
    /// Tenant offset 0's uid and gid.
    pub tenant_uid_base: u32,
    /// Where GPU device nodes are looked up (`/dev`).
    pub device_root: PathBuf,
    /// Driver files bind-mounted read-only into jobs with GPUs.
    pub driver_files: Vec<PathBuf>,
    /// Data levels of 2 and above whose jobs may still use the network.
    pub egress_levels: Vec<u32>,
    /// The PID limit of each job.
    pub pids_limit: u64,
    /// Each GPU unit's device, by UUID.
    pub gpu_units: BTreeMap<String, GpuUnit>,
}

/// What a job asks of its container.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resources {
    pub(crate) cpu_millicores: u64,
    pub(crate) memory_bytes: u64,
    pub(crate) data_level: u32,
    pub(crate) tenant_uid_offset: u32,
}

/// Why a container job could not be set up; becomes its exit reason.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ContainerError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("tenant uid offset {offset} over the base {base} is past the largest uid")]
    UidOverflow { base: u32, offset: u32 },
    #[error("cannot create the job's cgroup")]
    Cgroup(#[source] io::Error),
    #[error("cannot write the job's bundle {}", path.display())]
    Bundle {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A container, as the journal keeps it so that a restarted agent can
/// remove it whatever its configuration is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ContainerRecord {
    /// crun's container id (the job id).
    pub(crate) id: String,
    pub(crate) runtime: PathBuf,
    /// crun's `--root`.
    pub(crate) state_dir: PathBuf,
    pub(crate) bundle: PathBuf,
    pub(crate) cgroup: JobCgroup,
    /// The job's memory limit, bytes (0: none), for the OOM reason.
    pub(crate) memory_bytes: u64,
}

/// A container ready to start: the command that starts it.
pub(crate) struct Prepared {
    pub(crate) program: OsString,
    pub(crate) args: Vec<OsString>,
    pub(crate) record: ContainerRecord,
}

impl ContainerDriver {
    /// The agent's own folder under the cgroup parent: several agents on a
    /// machine (tests, dev) keep their jobs apart by work directory.
    pub fn agent_cgroup(&self, work_dir: &Path) -> PathBuf {
        let digest = Sha256::digest(work_dir.as_os_str().as_encoded_bytes());
        self.cgroup_parent.join(&hex::encode(digest)[..12])
    }

    /// The uid (and gid) of a tenant's jobs.
    pub(crate) fn tenant_uid(&self, offset: u32) -> Result<u32, ContainerError> {
        self.tenant_uid_base
            .checked_add(offset)
            .filter(|uid| *uid != u32::MAX)
            .ok_or(ContainerError::UidOverflow {
                base: self.tenant_uid_base,
                offset,
            })
    }

    /// Whether jobs at `data_level` get their own network namespace.
    pub(crate) fn isolates_network(&self, data_level: u32) -> bool {
        data_level >= ISOLATED_DATA_LEVEL && !self.egress_levels.contains(&data_level)
    }

    /// Writes the bundle and makes the cgroup of job `job_id`, whose
    /// working directory `job_dir` exists; returns how to start it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn prepare(
        &self,
        work_dir: &Path,
        job_id: &str,
        job_dir: &Path,
        image: &str,
        command: &[String],
        env: Vec<String>,
        gpu_uuids: &[String],
        resources: Resources,
    ) -> Result<Prepared, ContainerError> {
        let rootfs = self.images.rootfs(image)?;
        let uid = self.tenant_uid(resources.tenant_uid_offset)?;
        let devices = devices::gpu_nodes(&self.device_root, &self.gpu_units, gpu_uuids)?;
        let read_only_binds = if devices.is_empty() {
            vec![]
        } else {
            self.driver_files
                .iter()
                .filter(|p| p.exists())
                .map(|p| p.display().to_string())
                .collect()
        };
        let mut rules: Vec<String> = STANDARD_DEVICE_RULES
            .iter()
            .map(|r| (*r).to_owned())
            .collect();
        rules.extend(devices.iter().map(devices::DeviceNode::rule));
        let mut full_env = vec![
            format!("PATH={CONTAINER_PATH}"),
            format!("HOME={CONTAINER_WORK_DIR}"),
        ];
        full_env.extend(env);
        let spec = ContainerSpec {
            hostname: job_id.to_owned(),
            rootfs: rootfs.display().to_string(),
            args: command.to_vec(),
            env: full_env,
            uid,
            work_dir: job_dir.display().to_string(),
            isolate_network: self.isolates_network(resources.data_level),
            devices,
            read_only_binds,
        };

        let rel = self.agent_cgroup(work_dir).join(job_id);
        let cgroup = self.cgroups.job(&rel);
        let limits = Limits {
            cpu_millicores: resources.cpu_millicores,
            memory_bytes: resources.memory_bytes,
            pids: self.pids_limit,
            devices: rules,
        };
        let bundle = work_dir.join("bundles").join(job_id);
        let record = ContainerRecord {
            id: job_id.to_owned(),
            runtime: self.runtime.clone(),
            state_dir: work_dir.join("runtime"),
            bundle: bundle.clone(),
            cgroup: cgroup.clone(),
            memory_bytes: resources.memory_bytes,
        };
        // A leftover of an earlier run of the same job goes first.
        remove(&record);
        write_bundle(&bundle, &spec).map_err(|source| ContainerError::Bundle {
            path: bundle.clone(),
            source,
        })?;
        if let Err(err) = cgroup.create(&self.cgroups, &rel, &limits) {
            let _ = cgroup.remove();
            let _ = fs::remove_dir_all(&bundle);
            return Err(ContainerError::Cgroup(err));
        }
        let (program, args) = self.command(&record);
        Ok(Prepared {
            program,
            args,
            record,
        })
    }

    /// `[unshare -m --propagation private] sh -c ENTER_SCRIPT ... -- crun
    /// --cgroup-manager=disabled --root STATE run --bundle B ID`.
    fn command(&self, record: &ContainerRecord) -> (OsString, Vec<OsString>) {
        let mut args: Vec<OsString> = vec![];
        if self.cgroups.hide_unified() {
            args.extend(["--mount", "--propagation", "private", "sh"].map(OsString::from));
        }
        args.extend(["-c", ENTER_SCRIPT, "edupool-enter-cgroup"].map(OsString::from));
        if self.cgroups.hide_unified() {
            args.push("--hide-unified".into());
            args.push(self.cgroups.unified_mount().into());
        }
        args.extend(record.cgroup.procs_files().into_iter().map(OsString::from));
        args.push("--".into());
        args.push(self.runtime.clone().into());
        args.push("--cgroup-manager=disabled".into());
        args.push("--root".into());
        args.push(record.state_dir.clone().into());
        args.push("run".into());
        args.push("--bundle".into());
        args.push(record.bundle.clone().into());
        args.push(record.id.clone().into());
        let program = if self.cgroups.hide_unified() {
            "unshare"
        } else {
            "sh"
        };
        (program.into(), args)
    }
}

fn write_bundle(bundle: &Path, spec: &ContainerSpec) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(bundle)?;
    let json = serde_json::to_vec_pretty(&spec.config()).map_err(io::Error::other)?;
    fs::write(bundle.join("config.json"), json)
}

/// The exit status of the wrapper, as the job's own: crun gives a signal
/// as 128 + its number.
pub(crate) fn job_status(code: i32) -> Result<super::ExitOutcome, String> {
    match code {
        ENTER_FAILED => Err("cannot enter the job's cgroup (see stderr.log)".to_owned()),
        129..=192 => Ok(super::ExitOutcome::Signal(code - 128)),
        code => Ok(super::ExitOutcome::Code(code)),
    }
}

/// The reason of a job its memory limit killed.
pub(crate) fn oom_reason(limit_bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    let limit = if limit_bytes.is_multiple_of(GIB) || limit_bytes >= 10 * GIB {
        format!("{} GiB", limit_bytes.div_ceil(GIB))
    } else {
        format!("{} MiB", limit_bytes.div_ceil(MIB))
    };
    format!("out of memory (limit {limit})")
}

/// Kills everything in the container's cgroup (after `grace` with SIGTERM
/// first, when there is one) and waits until it is empty; deletes the
/// container from the runtime's state; removes bundle and cgroup.
/// Blocking. Returns whether any process was left to stop.
pub(crate) fn stop_and_remove(record: &ContainerRecord, grace: Option<Duration>) -> bool {
    let cgroup = &record.cgroup;
    let mut found = false;
    if let Some(grace) = grace {
        if cgroup.signal(nix::sys::signal::Signal::SIGTERM) {
            found = true;
            let deadline = Instant::now().checked_add(grace);
            while !cgroup.pids().is_empty() && deadline.is_some_and(|d| Instant::now() < d) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let mut warned = Instant::now();
    while cgroup.signal(nix::sys::signal::Signal::SIGKILL) {
        found = true;
        if warned.elapsed() >= Duration::from_secs(30) {
            warn!(job = %record.id, pids = ?cgroup.pids(), "processes of a container job do not die");
            warned = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    remove(record);
    found
}

/// Deletes the container from the runtime's state and removes its bundle
/// and (empty) cgroup; what is not there is fine.
fn remove(record: &ContainerRecord) {
    if record.state_dir.join(&record.id).exists() {
        let deleted = std::process::Command::new(&record.runtime)
            .arg("--root")
            .arg(&record.state_dir)
            .args(["delete", "--force", &record.id])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if !deleted.is_ok_and(|s| s.success()) {
            warn!(job = %record.id, "the runtime could not delete the container");
        }
    }
    if let Err(err) = fs::remove_dir_all(&record.bundle) {
        if err.kind() != io::ErrorKind::NotFound {
            warn!(job = %record.id, %err, "cannot remove the job's bundle");
        }
    }
    if let Err(err) = record.cgroup.remove() {
        warn!(job = %record.id, %err, "cannot remove the job's cgroup");
    }
}

/// Finds the runtime: `path` if given, else `crun` on `PATH`.
pub fn find_runtime(path: Option<&Path>) -> io::Result<PathBuf> {
    if let Some(path) = path {
        return if path.is_file() {
            Ok(path.to_owned())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no runtime at {}", path.display()),
            ))
        };
    }
    let dirs = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&dirs)
        .map(|dir| dir.join("crun"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "crun is not on PATH"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_oom_reasons_read_like_the_job_ended() {
        assert!(matches!(
            job_status(0),
            Ok(super::super::ExitOutcome::Code(0))
        ));
        assert!(matches!(
            job_status(3),
            Ok(super::super::ExitOutcome::Code(3))
        ));
        assert!(matches!(
            job_status(137),
            Ok(super::super::ExitOutcome::Signal(9))
        ));
        assert!(job_status(125).is_err());
        assert_eq!(oom_reason(4 << 30), "out of memory (limit 4 GiB)");
        assert_eq!(oom_reason(64 << 20), "out of memory (limit 64 MiB)");
        assert_eq!(oom_reason((12 << 30) + 1), "out of memory (limit 13 GiB)");
    }
}
