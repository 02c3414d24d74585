//! Domain types of the replicated state. These are what the log and the
//! snapshots store; protobuf types are converted to and from them at the
//! API edge only, so a change of the wire schema never breaks the log.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Unix time in milliseconds. Time enters the state machine only as a
/// value stamped on each log entry by the proposer.
pub type Millis = i64;

/// A job's identity: a number assigned in log order, shown as `j-<n>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "j-{}", self.0)
    }
}

impl FromStr for JobId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix("j-")
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n > 0)
            .map(JobId)
            .ok_or_else(|| format!("'{s}' is not a job id; job ids look like j-42"))
    }
}

/// Priority classes, highest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobClass {
    Inference,
    Training,
    Batch,
    Scavenger,
}

impl JobClass {
    pub fn name(self) -> &'static str {
        match self {
            JobClass::Inference => "inference",
            JobClass::Training => "training",
            JobClass::Batch => "batch",
            JobClass::Scavenger => "scavenger",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnNodeLost {
    Requeue,
    Fail,
}

/// A validated job specification with the pool's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub gpus: u32,
    pub class: JobClass,
    /// Seconds; the agent ends the job after this long.
    pub walltime_secs: u64,
    /// Seconds between SIGTERM and SIGKILL.
    pub grace_period_secs: u64,
    pub on_node_lost: OnNodeLost,
    /// Requeues allowed after a node loss.
    pub max_retries: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Pending,
    Assigned,
    Running,
    Cancelling,
    Succeeded,
    Failed,
    Cancelled,
    Lost,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Lost
        )
    }

    /// Holds GPUs on a node.
    pub fn is_placed(self) -> bool {
        matches!(
            self,
            JobState::Assigned | JobState::Running | JobState::Cancelling
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Assigned => "assigned",
            JobState::Running => "running",
            JobState::Cancelling => "cancelling",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Lost => "lost",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub tenant: String,
    pub spec: JobSpec,
    pub state: JobState,
    pub node: Option<String>,
    pub gpus: Vec<String>,
    pub exit_code: Option<i32>,
    pub reason: String,
    pub submitted_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    /// 1 on the first run, +1 for each requeue.
    pub attempt: u32,
    /// GPU time and energy over all attempts, as the agents reported them.
    #[serde(default)]
    pub usage: Usage,
    /// Set when a GPU of the job failed: the job is being stopped, and its
    /// exit requeues it (per its spec) instead of ending it.
    #[serde(default)]
    pub gpu_fault: Option<String>,
}

/// What a job used, in integer milli-units so that the replicated state
/// stays exact (`Eq`) on every replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// GPU time: GPUs x milliseconds.
    pub gpu_ms: u64,
    /// Energy of the job's GPUs, millijoules.
    pub energy_mj: u64,
}

impl Usage {
    pub fn plus(self, other: Usage) -> Usage {
        Usage {
            gpu_ms: self.gpu_ms.saturating_add(other.gpu_ms),
            energy_mj: self.energy_mj.saturating_add(other.energy_mj),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub name: String,
    pub created_at: Millis,
}

/// One GPU as the agent reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub uuid: String,
    pub index: u32,
    pub model: String,
    pub memory_bytes: u64,
    pub healthy: bool,
    /// The agent's reason when it reports the GPU unhealthy.
    #[serde(default)]
    pub health_reason: String,
    /// Where the GPU sits, for topology-aware placement: its PCI bus id
    /// and the PCI bus ids of its NVLink peers (empty when unknown).
    #[serde(default)]
    pub pci_bus_id: String,
    #[serde(default)]
    pub nvlink_peers: Vec<String>,
    /// CUDA compute capability, e.g. `8.0`; empty when unknown.
    #[serde(default)]
    pub compute_capability: String,
}

/// A GPU the scheduler saw fail. It stays out of placement until an admin
/// clears it, whatever the agent reports later: recovery is never silent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuFault {
    pub reason: String,
    pub since: Millis,
    /// The agent reports the GPU healthy again (it was reset); only now may
    /// an admin clear the fault.
    pub reset_seen: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    pub info: GpuInfo,
    pub assigned: Option<JobId>,
    #[serde(default)]
    pub fault: Option<GpuFault>,
}

impl Gpu {
    /// May be given to a job: the agent reports it healthy and no fault is
    /// waiting to be cleared.
    pub fn usable(&self) -> bool {
        self.info.healthy && self.fault.is_none()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// The agent is connected.
    Ready,
    /// The agent disconnected; its jobs are presumed still running.
    Down,
    /// The agent was gone longer than the timeout; its jobs were requeued or failed.
    Lost,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub gpus: Vec<Gpu>,
    pub status: NodeStatus,
    pub cordoned: bool,
    pub draining: bool,
    pub agent_version: String,
    pub status_since: Millis,
}

impl Node {
    pub fn schedulable(&self) -> bool {
        self.status == NodeStatus::Ready && !self.cordoned && !self.draining
    }

    pub fn free_gpus(&self) -> impl Iterator<Item = &Gpu> {
        self.gpus
            .iter()
            .filter(|g| g.usable() && g.assigned.is_none())
    }
}
