//! The cgroup each container job runs in, created and limited by the agent.
//!
//! The agent, not the runtime, owns the job's cgroup (`<parent>/<agent>/
//! <job>`): it writes the CPU, memory, PID and (v1) device limits, starts
//! the runtime inside it (so everything the job forks is in it too), and
//! reads it after the job's main process has exited, when the runtime has
//! already removed whatever it made itself: the OOM kill counter says
//! whether the memory limit killed the job, the CPU counter what the job
//! used. Then the agent kills what is left in it and removes it. A cgroup
//! outlives a crashed agent, so a restarted agent finds every process of
//! every job it started there (see `recover` in the runner).
//!
//! Both hierarchies work: v1 (a directory per controller: memory, cpu,
//! cpuacct, pids, devices) and v2 (one directory; devices are then fenced
//! by the device nodes the container gets, see `devices`).

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// The CFS period the CPU quota is given in, microseconds (100 ms).
pub(crate) const CPU_PERIOD_US: u64 = 100_000;

/// The v1 controllers a job's cgroup is made in.
const V1_CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "devices"];

/// Which cgroup hierarchy the node has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupVersion {
    /// One directory per controller.
    V1,
    /// The unified hierarchy.
    V2,
}

/// The node's cgroup file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroups {
    root: PathBuf,
    version: CgroupVersion,
    /// A v1 node that also mounts the unified hierarchy with controllers
    /// in it ("hybrid"), which crun refuses: the runtime is then started
    /// in a private mount namespace without that mount.
    hide_unified: bool,
}

impl fmt::Display for Cgroups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.version, self.hide_unified) {
            (CgroupVersion::V2, _) => f.write_str("cgroup v2"),
            (CgroupVersion::V1, false) => f.write_str("cgroup v1"),
            (CgroupVersion::V1, true) => f.write_str("cgroup v1 (hybrid)"),
        }
    }
}

impl Cgroups {
    /// Detects the hierarchy mounted at `root` (normally `/sys/fs/cgroup`).
    pub fn detect(root: &Path) -> io::Result<Cgroups> {
        if root.join("cgroup.controllers").is_file() {
            return Ok(Cgroups {
                root: root.to_owned(),
                version: CgroupVersion::V2,
                hide_unified: false,
            });
        }
        for controller in V1_CONTROLLERS {
            if !root.join(controller).join("cgroup.procs").is_file() {
                return Err(io::Error::other(format!(
                    "no cgroup v2 at {} and no cgroup v1 {controller} controller at {}",
                    root.display(),
                    root.join(controller).display()
                )));
            }
        }
        let unified = fs::read_to_string(root.join("unified/cgroup.controllers"))
            .map(|c| !c.trim().is_empty())
            .unwrap_or(false);
        Ok(Cgroups {
            root: root.to_owned(),
            version: CgroupVersion::V1,
            hide_unified: unified,
        })
    }

    /// The hierarchy's version.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// Whether the runtime must be started without the unified mount.
    pub(crate) fn hide_unified(&self) -> bool {
        self.hide_unified
    }

    /// The mount point of the unified hierarchy on a hybrid node.
    pub(crate) fn unified_mount(&self) -> PathBuf {
        self.root.join("unified")
    }

    /// The cgroup `rel` (a relative path) in every hierarchy it lives in;
    /// nothing is created.
    pub(crate) fn job(&self, rel: &Path) -> JobCgroup {
        let dirs = match self.version {
            CgroupVersion::V2 => vec![self.root.join(rel)],
            CgroupVersion::V1 => V1_CONTROLLERS
                .iter()
                .map(|c| self.root.join(c).join(rel))
                .collect(),
        };
        JobCgroup {
            version: self.version,
            dirs,
        }
    }

    /// The names of the cgroups directly under `rel` (the jobs of one
    /// agent), from the memory hierarchy.
    pub(crate) fn children(&self, rel: &Path) -> Vec<String> {
        let dir = match self.version {
            CgroupVersion::V2 => self.root.join(rel),
            CgroupVersion::V1 => self.root.join("memory").join(rel),
        };
        let Ok(entries) = fs::read_dir(dir) else {
            return vec![];
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| {
                let e = e.ok()?;
                e.file_type().ok()?.is_dir().then_some(())?;
                e.file_name().into_string().ok()
            })
            .collect();
        names.sort();
        names
    }

    /// v2 only: lets the cgroups under `rel`'s parent use the memory, cpu
    /// and pids controllers (each ancestor must enable them for its
    /// children).
    fn enable_controllers(&self, rel: &Path) -> io::Result<()> {
        let mut dir = self.root.clone();
        for part in rel.parent().into_iter().flat_map(Path::components) {
            write(&dir.join("cgroup.subtree_control"), "+memory +cpu +pids")?;
            dir.push(part);
            fs::create_dir_all(&dir)?;
        }
        write(&dir.join("cgroup.subtree_control"), "+memory +cpu +pids")
    }
}

/// What a job's cgroup holds it to. 0 means no limit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Limits {
    pub(crate) cpu_millicores: u64,
    pub(crate) memory_bytes: u64,
    pub(crate) pids: u64,
    /// v1 device cgroup rules (`c 195:0 rwm`), after `a` is denied; v2
    /// ignores them.
    pub(crate) devices: Vec<String>,
}

/// One job's cgroup, in each hierarchy directory it lives in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JobCgroup {
    version: CgroupVersion,
    dirs: Vec<PathBuf>,
}

impl JobCgroup {
    fn file(&self, controller: &str, name: &str) -> PathBuf {
        let dir = match self.version {
            CgroupVersion::V2 => &self.dirs[0],
            CgroupVersion::V1 => self
                .dirs
                .iter()
                .find(|d| d.components().any(|c| c.as_os_str() == controller))
                .unwrap_or(&self.dirs[0]),
        };
        dir.join(name)
    }

    /// The `cgroup.procs` files a process writes its pid to, to enter.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Creates the cgroup (under `cgroups`) and writes its limits.
    pub(crate) fn create(&self, cgroups: &Cgroups, rel: &Path, limits: &Limits) -> io::Result<()> {
        if self.version == CgroupVersion::V2 {
            cgroups.enable_controllers(rel)?;
        }
        for dir in &self.dirs {
            fs::create_dir_all(dir)?;
        }
        match self.version {
            CgroupVersion::V1 => self.limit_v1(limits),
            CgroupVersion::V2 => self.limit_v2(limits),
        }
    }

    fn limit_v1(&self, limits: &Limits) -> io::Result<()> {
        if limits.memory_bytes > 0 {
            let bytes = limits.memory_bytes.to_string();
            write(&self.file("memory", "memory.limit_in_bytes"), &bytes)?;
            // Swap counts against the limit too where the kernel accounts
            // it; without swap accounting there is no such file.
            let memsw = self.file("memory", "memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write(&memsw, &bytes)?;
            }
        }
        if limits.cpu_millicores > 0 {
            write(
                &self.file("cpu", "cpu.cfs_period_us"),
                &CPU_PERIOD_US.to_string(),
            )?;
            write(
                &self.file("cpu", "cpu.cfs_quota_us"),
                &cpu_quota_us(limits.cpu_millicores).to_string(),
            )?;
        }
        if limits.pids > 0 {
            write(&self.file("pids", "pids.max"), &limits.pids.to_string())?;
        }
        write(&self.file("devices", "devices.deny"), "a")?;
        for rule in &limits.devices {
            write(&self.file("devices", "devices.allow"), rule)?;
        }
        Ok(())
    }

    fn limit_v2(&self, limits: &Limits) -> io::Result<()> {
        if limits.memory_bytes > 0 {
            write(
                &self.file("memory", "memory.max"),
                &limits.memory_bytes.to_string(),
            )?;
            let swap = self.file("memory", "memory.swap.max");
            if swap.exists() {
                write(&swap, "0")?;
            }
        }
        if limits.cpu_millicores > 0 {
            let quota = cpu_quota_us(limits.cpu_millicores);
            write(
                &self.file("cpu", "cpu.max"),
                &format!("{quota} {CPU_PERIOD_US}"),
            )?;
        }
        if limits.pids > 0 {
            write(&self.file("pids", "pids.max"), &limits.pids.to_string())?;
        }
        Ok(())
    }

    /// The processes in the cgroup.
    pub(crate) fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .procs_files()
            .iter()
            .filter_map(|f| fs::read_to_string(f).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Sends `signal` to every process in the cgroup; true if any was there.
    pub(crate) fn signal(&self, signal: Signal) -> bool {
        self.signal_except(signal, None)
    }

    /// Like [`signal`](JobCgroup::signal), sparing process `spare`.
    pub(crate) fn signal_except(&self, signal: Signal, spare: Option<i32>) -> bool {
        let pids: Vec<i32> = self
            .pids()
            .into_iter()
            .filter(|pid| Some(*pid) != spare)
            .collect();
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), signal);
        }
        !pids.is_empty()
    }

    /// How many processes the kernel killed for going over the memory
    /// limit; 0 when the counter cannot be read.
    pub(crate) fn oom_kills(&self) -> u64 {
        let (name, key) = match self.version {
            CgroupVersion::V1 => ("memory.oom_control", "oom_kill"),
            CgroupVersion::V2 => ("memory.events", "oom_kill"),
        };
        fs::read_to_string(self.file("memory", name))
            .ok()
            .and_then(|text| keyed(&text, key))
            .unwrap_or(0)
    }

    /// CPU time used by everything that ran in the cgroup, nanoseconds.
    pub(crate) fn cpu_nanos(&self) -> Option<u64> {
        match self.version {
            CgroupVersion::V1 => fs::read_to_string(self.file("cpuacct", "cpuacct.usage"))
                .ok()?
                .trim()
                .parse()
                .ok(),
            CgroupVersion::V2 => fs::read_to_string(self.file("cpu", "cpu.stat"))
                .ok()
                .and_then(|t| keyed(&t, "usage_usec"))
                .map(|us| us.saturating_mul(1000)),
        }
    }

    /// Removes the cgroup; it must be empty. Missing directories are fine.
    pub(crate) fn remove(&self) -> io::Result<()> {
        for dir in &self.dirs {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

/// The CFS quota for `millicores` per [`CPU_PERIOD_US`]; at least 1 ms,
/// the kernel's minimum.
pub(crate) fn cpu_quota_us(millicores: u64) -> u64 {
    (millicores.saturating_mul(CPU_PERIOD_US) / 1000).max(1000)
}

/// The value of `key` in `key value` lines.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot write {value:?} to {}: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_and_counters() {
        assert_eq!(cpu_quota_us(1000), 100_000);
        assert_eq!(cpu_quota_us(250), 25_000);
        assert_eq!(cpu_quota_us(1), 1000);
        assert_eq!(cpu_quota_us(u64::MAX), u64::MAX / 1000);
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(keyed(v1, "oom_kill"), Some(2));
        let v2 = "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed(v2, "oom_kill"), Some(1));
        assert_eq!(keyed(v2, "missing"), None);
    }

    #[test]
    fn a_v1_job_cgroup_lives_in_each_controller() {
        let dir = tempfile::tempdir().unwrap();
        for c in V1_CONTROLLERS {
            fs::create_dir_all(dir.path().join(c)).unwrap();
            fs::write(dir.path().join(c).join("cgroup.procs"), "").unwrap();
        }
        let cgroups = Cgroups::detect(dir.path()).unwrap();
        assert_eq!(cgroups.to_string(), "cgroup v1");
        let job = cgroups.job(Path::new("edupool/a1/j1"));
        assert_eq!(job.procs_files().len(), 5);
        assert_eq!(
            job.file("cpuacct", "cpuacct.usage"),
            dir.path().join("cpuacct/edupool/a1/j1/cpuacct.usage")
        );
        let none = tempfile::tempdir().unwrap();
        let err = Cgroups::detect(none.path()).unwrap_err().to_string();
        assert!(err.contains("no cgroup v2"), "{err}");
    }
}
