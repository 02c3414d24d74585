//! The node's CPU and memory: what the agent reports jobs may use, after
//! a system reserve kept for the operating system, the agent and the
//! container runtime (docs/agent.md, "CPU and memory").
//!
//! On a real node the totals come from the machine: the CPUs this process
//! may run on (its affinity and cpuset, through
//! `std::thread::available_parallelism`) and `MemTotal` in
//! `/proc/meminfo`. Simulated nodes (tests, development) report what they
//! are told, by default sized to their simulated GPUs.

use std::num::NonZeroUsize;

use clap::Args;

/// CPU in thousandths of a core, memory in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostResources {
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
}

impl HostResources {
    /// What is left for jobs once `reserve` is set aside (never below 0).
    pub fn minus(self, reserve: HostResources) -> HostResources {
        HostResources {
            cpu_millicores: self.cpu_millicores.saturating_sub(reserve.cpu_millicores),
            memory_bytes: self.memory_bytes.saturating_sub(reserve.memory_bytes),
        }
    }

    /// A simulated node's totals when none are given: 8 cores and 64 GiB
    /// per GPU (a common 8-GPU server's share), at least 8 cores and
    /// 32 GiB (a CPU-only node).
    pub fn simulated(gpus: usize) -> HostResources {
        let gpus = gpus as u64;
        HostResources {
            cpu_millicores: (gpus * 8_000).max(8_000),
            memory_bytes: (gpus * (64 << 30)).max(32 << 30),
        }
    }
}

/// This machine's totals: the CPUs this process may use and its memory.
pub fn detect() -> std::io::Result<HostResources> {
    let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get) as u64;
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let memory_bytes = mem_total(&meminfo).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no MemTotal line in /proc/meminfo",
        )
    })?;
    Ok(HostResources {
        cpu_millicores: cpus * 1000,
        memory_bytes,
    })
}

/// `MemTotal:  16315204 kB` in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// The command-line flags of the node's CPU and memory.
#[derive(Debug, Clone, Args)]
pub struct HostArgs {
    /// CPU kept back from jobs for the system, the agent and the runtime:
    /// cores (1, 0.5) or millicores (500m).
    #[arg(long, value_name = "CPU", default_value = "1", value_parser = edupool_table::units::parse_cpu)]
    pub reserve_cpu: u64,

    /// Memory kept back from jobs likewise, e.g. 2GiB.
    #[arg(long, value_name = "BYTES", default_value = "2GiB", value_parser = edupool_table::units::parse_memory)]
    pub reserve_memory: u64,

    /// Development and tests only: the node's total CPU instead of this
    /// machine's [default with simulated GPUs: 8 cores per GPU, at least 8].
    #[arg(long, value_name = "CPU", value_parser = edupool_table::units::parse_cpu)]
    pub simulate_cpu: Option<u64>,

    /// Development and tests only: the node's total memory instead of this
    /// machine's [default with simulated GPUs: 64GiB per GPU, at least 32GiB].
    #[arg(long, value_name = "BYTES", value_parser = edupool_table::units::parse_memory)]
    pub simulate_memory: Option<u64>,
}

impl HostArgs {
    /// What the node reports: its totals (simulated when the GPUs are, or
    /// when given) less the reserve.
    pub fn allocatable(&self, simulated_gpus: Option<usize>) -> std::io::Result<HostResources> {
        let base = match simulated_gpus {
            Some(n) => HostResources::simulated(n),
            None if self.simulate_cpu.is_some() && self.simulate_memory.is_some() => {
                HostResources::default()
            }
            None => detect()?,
        };
        let total = HostResources {
            cpu_millicores: self.simulate_cpu.unwrap_or(base.cpu_millicores),
            memory_bytes: self.simulate_memory.unwrap_or(base.memory_bytes),
        };
        Ok(total.minus(HostResources {
            cpu_millicores: self.reserve_cpu,
            memory_bytes: self.reserve_memory,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_reads_kilobytes() {
        let text = "MemTotal:       16315204 kB\nMemFree:         1234 kB\n";
        assert_eq!(mem_total(text), Some(16_315_204 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn this_machine_reports_some_cpu_and_memory() {
        let h = detect().unwrap();
        assert!(h.cpu_millicores >= 1000 && h.memory_bytes > 0, "{h:?}");
    }

    fn args(simulate_cpu: Option<u64>, simulate_memory: Option<u64>) -> HostArgs {
        HostArgs {
            reserve_cpu: 1000,
            reserve_memory: 2 << 30,
            simulate_cpu,
            simulate_memory,
        }
    }

    #[test]
    fn the_reserve_is_taken_from_the_totals() {
        let simulated = args(None, None).allocatable(Some(2)).unwrap();
        assert_eq!(
            simulated,
            HostResources {
                cpu_millicores: 15_000,
                memory_bytes: 126 << 30
            }
        );
        let given = args(Some(4000), Some(8 << 30)).allocatable(None).unwrap();
        assert_eq!(
            given,
            HostResources {
                cpu_millicores: 3000,
                memory_bytes: 6 << 30
            }
        );
        // A reserve larger than the node leaves nothing, not an error.
        let tiny = args(Some(500), Some(1 << 30)).allocatable(None).unwrap();
        assert_eq!(tiny, HostResources::default());
    }
}
