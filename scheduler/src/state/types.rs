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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    pub info: GpuInfo,
    pub assigned: Option<JobId>,
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
            .filter(|g| g.info.healthy && g.assigned.is_none())
    }
}
