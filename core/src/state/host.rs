//! Host resources: the CPU (thousandths of a core) and memory (bytes) a
//! task asks for, a node offers, and its placed jobs hold. Integers, so
//! every replica adds them up alike.

use serde::{Deserialize, Serialize};

/// An amount of host resources: CPU in thousandths of a core, memory in
/// bytes. Integers, so every replica sums them alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Host {
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
}

impl Host {
    pub fn plus(self, other: Host) -> Host {
        Host {
            cpu_millicores: self.cpu_millicores.saturating_add(other.cpu_millicores),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }

    pub fn minus(self, other: Host) -> Host {
        Host {
            cpu_millicores: self.cpu_millicores.saturating_sub(other.cpu_millicores),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
        }
    }

    /// Whether `want` fits in this much, in every dimension.
    pub fn holds(self, want: Host) -> bool {
        want.cpu_millicores <= self.cpu_millicores && want.memory_bytes <= self.memory_bytes
    }

    /// The first dimension of `want` that does not fit in this much.
    pub fn short_of(self, want: Host) -> Option<HostDimension> {
        if want.cpu_millicores > self.cpu_millicores {
            Some(HostDimension::Cpu)
        } else if want.memory_bytes > self.memory_bytes {
            Some(HostDimension::Memory)
        } else {
            None
        }
    }
}

/// A host resource a job asks for besides GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostDimension {
    Cpu,
    Memory,
}

impl HostDimension {
    pub fn name(self) -> &'static str {
        match self {
            HostDimension::Cpu => "CPU",
            HostDimension::Memory => "memory",
        }
    }
}
