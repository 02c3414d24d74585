//! Domain types of the replicated state. These are what the log and the
//! snapshots store; protobuf types are converted to and from them at the
//! API edge only, so a change of the wire schema never breaks the log.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use super::host::{Host, HostDimension};
use super::usage::Usage;

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
    /// GPUs per task (each task runs on one node).
    pub gpus: u32,
    /// Tasks of a gang: all start together on distinct nodes of one site,
    /// or none does. 1 for a single-node job.
    #[serde(default = "one")]
    pub nodes: u32,
    pub class: JobClass,
    /// Seconds; the agent ends the job after this long.
    pub walltime_secs: u64,
    /// Seconds between SIGTERM and SIGKILL.
    pub grace_period_secs: u64,
    pub on_node_lost: OnNodeLost,
    /// Requeues allowed after a node loss.
    pub max_retries: u32,
    // Policy fields default when absent, so entries written before
    // they existed still replay.
    /// Order among the tenant's own jobs of one class; higher first.
    #[serde(default)]
    pub priority: i32,
    /// Thousandths of one GPU (1-999) for small work; 0 = whole GPUs.
    #[serde(default)]
    pub gpu_fraction: u32,
    #[serde(default)]
    pub constraints: Constraints,
    /// Go back to the queue when preempted (default), or end `failed`.
    #[serde(default = "yes")]
    pub requeue_on_preempt: bool,
    /// Write-only variables: given to the job's process with `env`, never
    /// shown by a read (docs/security.md, "Secret environment values").
    #[serde(default)]
    pub secret_env: SecretEnv,
    /// The root filesystem it runs in, by name in the nodes' image stores
    /// (see [`valid_image_name`]); `None`: a host process, only on nodes
    /// that allow host jobs.
    #[serde(default)]
    pub image: Option<String>,
    /// Thousandths of a CPU core per task, resolved at the API edge (the
    /// pool's default per GPU when the caller gave none), so the log holds
    /// the real number; 0 in an entry written before host resources
    /// existed: no host request.
    #[serde(default)]
    pub cpu_millicores: u64,
    /// Host memory per task in bytes, resolved like `cpu_millicores`.
    #[serde(default)]
    pub memory_bytes: u64,
}

/// Secret environment variables of a job. Kept in the replicated spec so
/// that whichever replica leads can start the job; its `Debug` shows the
/// names only, so a logged spec leaks no value.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretEnv(pub BTreeMap<String, String>);

impl SecretEnv {
    /// What a read shows in place of a value.
    pub const MASK: &'static str = "***";

    /// The names, each with the mask for its value.
    pub fn masked(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.0.keys().map(|k| (k.clone(), Self::MASK.to_string()))
    }
}

impl std::fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.masked()).finish()
    }
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

impl JobSpec {
    /// Thousandths of a GPU the job holds on each of its GPUs.
    pub fn milli_per_gpu(&self) -> u32 {
        if self.gpu_fraction == 0 {
            WHOLE_GPU
        } else {
            self.gpu_fraction
        }
    }

    /// GPU demand of one task in thousandths.
    pub fn task_milli(&self) -> u64 {
        u64::from(self.gpus) * u64::from(self.milli_per_gpu())
    }

    /// GPU demand of the whole job in thousandths.
    pub fn demand_milli(&self) -> u64 {
        self.task_milli()
            .saturating_mul(u64::from(self.nodes.max(1)))
    }

    /// CPU and host memory one task holds on its node.
    pub fn host(&self) -> Host {
        Host {
            cpu_millicores: self.cpu_millicores,
            memory_bytes: self.memory_bytes,
        }
    }

    /// A job that needs no GPU (CPU-only work).
    pub fn cpu_only(&self) -> bool {
        self.gpus == 0
    }
}

/// Where a job may run.
///
/// GPU models and classes are sets (any one will do), sorted and without
/// duplicates: that is the one form the API writes. The single
/// `gpu_model`/`gpu_class` are only read from entries written before the
/// sets existed (the API leaves them `None`); [`Constraints::allows_model`]
/// and [`Constraints::allows_class`] read both forms.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Constraints {
    /// An exact GPU model, e.g. `A100-80GB` (entries before `gpu_models`).
    pub gpu_model: Option<String>,
    /// A GPU class, e.g. `A100` (entries before `gpu_classes`).
    pub gpu_class: Option<String>,
    pub min_gpu_memory_bytes: u64,
    /// Only nodes of this site.
    pub site: Option<String>,
    /// Nodes of this site first, others if none fits.
    pub preferred_site: Option<String>,
    /// Data classification level 0-3; only nodes certified at or above it.
    pub data_level: u8,
    /// Any of these GPU models; empty: any model.
    #[serde(default)]
    pub gpu_models: Vec<String>,
    /// Any of these GPU classes; empty: any class.
    #[serde(default)]
    pub gpu_classes: Vec<String>,
}

impl Constraints {
    /// Whether a GPU of this model may be used.
    pub fn allows_model(&self, model: &str) -> bool {
        self.gpu_model.as_deref().is_none_or(|m| m == model)
            && (self.gpu_models.is_empty() || self.gpu_models.iter().any(|m| m == model))
    }

    /// Whether a GPU of this class may be used.
    pub fn allows_class(&self, class: &str) -> bool {
        self.gpu_class.as_deref().is_none_or(|c| c == class)
            && (self.gpu_classes.is_empty() || self.gpu_classes.iter().any(|c| c == class))
    }

    /// Whether it names GPU models or classes at all.
    pub fn names_gpu_kind(&self) -> bool {
        self.gpu_model.is_some()
            || self.gpu_class.is_some()
            || !self.gpu_models.is_empty()
            || !self.gpu_classes.is_empty()
    }

    /// The models and classes it asks for, for messages: `model A or B,
    /// class C`; empty when it names none.
    pub fn describe_gpu_kind(&self) -> String {
        let set = |one: &Option<String>, many: &[String]| -> Vec<String> {
            let mut all: Vec<String> = one.iter().chain(many).cloned().collect();
            all.sort();
            all.dedup();
            all
        };
        let mut parts = vec![];
        let models = set(&self.gpu_model, &self.gpu_models);
        if !models.is_empty() {
            parts.push(format!("model {}", models.join(" or ")));
        }
        let classes = set(&self.gpu_class, &self.gpu_classes);
        if !classes.is_empty() {
            parts.push(format!("class {}", classes.join(" or ")));
        }
        parts.join(", ")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Pending,
    Assigned,
    Running,
    Cancelling,
    /// Stop ordered to give its GPUs to a tenant below its guarantee.
    Preempting,
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
            JobState::Assigned | JobState::Running | JobState::Cancelling | JobState::Preempting
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Assigned => "assigned",
            JobState::Running => "running",
            JobState::Cancelling => "cancelling",
            JobState::Preempting => "preempting",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Lost => "lost",
        }
    }
}

/// One task of a placed job: its node and GPUs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub node: String,
    pub gpus: Vec<String>,
    /// The node's owner when it is not the job's tenant (who lent it).
    pub lender: Option<String>,
    /// The agent reported this task's process started.
    pub started: bool,
    /// The task's process has ended (or was lost); its GPUs are free.
    pub finished: bool,
}

/// Why a job that had a task fail is ending, kept until its other tasks
/// have stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    Failed {
        exit_code: Option<i32>,
        reason: String,
    },
    Lost {
        reason: String,
    },
}

/// On what terms a job holds its GPUs, decided when it is placed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capacity {
    /// Within its guarantee, on nodes it contributed.
    Own,
    /// Within its guarantee, on other members' nodes.
    #[default]
    Guaranteed,
    /// Above its guarantee: preemptible when an owner claims it back.
    Borrowed,
    /// A scavenger job on idle capacity, charged against nothing.
    Idle,
}

impl Capacity {
    pub fn name(self) -> &'static str {
        match self {
            Capacity::Own => "own",
            Capacity::Guaranteed => "guaranteed",
            Capacity::Borrowed => "borrowed",
            Capacity::Idle => "idle",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub tenant: String,
    pub spec: JobSpec,
    pub state: JobState,
    /// Where its tasks run; empty while pending.
    pub tasks: Vec<Task>,
    pub exit_code: Option<i32>,
    pub reason: String,
    pub submitted_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    /// 1 on the first run, +1 for each requeue.
    pub attempt: u32,
    /// The GPU class it was placed on (for accounting against quotas).
    pub gpu_class: Option<String>,
    pub preemptions: u32,
    /// When it last entered the queue (submission or requeue).
    pub queued_at: Millis,
    /// When it was last placed.
    pub placed_at: Option<Millis>,
    /// The terms of its current or last placement.
    pub capacity: Capacity,
    /// Its current or last placement needed other jobs preempted first.
    pub reclaimed: bool,
    /// When the first job was preempted for it in its current or last
    /// stay in the queue: the start of its reclaim latency.
    #[serde(default)]
    pub claimed_at: Option<Millis>,
    /// Set when one task failed or was lost while others still run.
    pub ending: Option<Ending>,
    /// GPU time and energy over all attempts, as the agents reported them.
    #[serde(default)]
    pub usage: JobUsage,
    /// Set when a GPU of the job failed: the job is being stopped, and its
    /// exit requeues it (per its spec) instead of ending it.
    #[serde(default)]
    pub gpu_fault: Option<String>,
}

impl Job {
    /// The nodes its tasks run on, in task order.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.tasks.iter().map(|t| t.node.as_str())
    }

    /// Thousandths of a GPU it holds now, over all its tasks still
    /// running (a gang holds nodes x gpus; a fraction its share): the one
    /// count of GPUs in use that tenant views and reports use.
    pub fn held_gpu_milli(&self) -> u64 {
        if !self.state.is_placed() {
            return 0;
        }
        let live = self.tasks.iter().filter(|t| !t.finished).count() as u64;
        self.spec.task_milli() * live
    }

    /// CPU and host memory it holds now, over all its live tasks.
    pub fn held_host(&self) -> Host {
        if !self.state.is_placed() {
            return Host::default();
        }
        self.tasks
            .iter()
            .filter(|t| !t.finished)
            .fold(Host::default(), |sum, _| sum.plus(self.spec.host()))
    }

    pub fn runs_on(&self, node: &str) -> bool {
        self.tasks.iter().any(|t| t.node == node)
    }

    /// All GPU UUIDs it holds, in task order.
    pub fn gpu_uuids(&self) -> impl Iterator<Item = &str> {
        self.tasks
            .iter()
            .flat_map(|t| t.gpus.iter().map(String::as_str))
    }

    /// The time from entering the queue to its GPUs, for a placement
    /// within its guarantee (the reclaim latency when others had to be
    /// preempted for it).
    pub fn wait_ms(&self) -> Option<Millis> {
        self.placed_at.map(|p| (p - self.queued_at).max(0))
    }

    /// How long its GPUs took to be reclaimed: from the first preemption
    /// for it to its placement. Its wait before that (behind its own
    /// tenant's work, or for the planner to find it within its
    /// guarantee) is not reclaiming.
    pub fn reclaim_ms(&self) -> Option<Millis> {
        if !self.reclaimed {
            return None;
        }
        Some((self.placed_at? - self.claimed_at?).max(0))
    }
}

/// What a job used, in integer milli-units so that the replicated state
/// stays exact (`Eq`) on every replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobUsage {
    /// GPU time: GPUs x milliseconds.
    pub gpu_ms: u64,
    /// Energy of the job's GPUs, millijoules.
    pub energy_mj: u64,
}

impl JobUsage {
    pub fn plus(self, other: JobUsage) -> JobUsage {
        JobUsage {
            gpu_ms: self.gpu_ms.saturating_add(other.gpu_ms),
            energy_mj: self.energy_mj.saturating_add(other.energy_mj),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub name: String,
    pub created_at: Millis,
    pub policy: TenantPolicy,
    pub usage: Usage,
    /// Its identity on nodes: its jobs run as uid = gid = the node's
    /// `--tenant-uid-base` plus this. Given by `AssignUidOffsets` right
    /// after it is created: one more than the highest assigned, never
    /// reused. 0: not assigned yet.
    #[serde(default)]
    pub uid_offset: u32,
}

/// A tenant's GPUs of one class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// `None`: the healthy GPUs of this class on the nodes it owns.
    pub guaranteed: Option<u32>,
    /// GPUs it may borrow above its guarantee; `None`: unlimited.
    pub borrow_limit: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantPolicy {
    /// Per GPU class; a class not listed has the default quota.
    pub quotas: BTreeMap<String, Quota>,
    /// Fair-share weight in thousandths (1000 = 1.0).
    pub weight_milli: u32,
    /// Multiplier on the weight for under-resourced members, in thousandths.
    pub equity_milli: u32,
    /// Most GPUs of its guarantee a job class may hold (per GPU class).
    pub class_caps: BTreeMap<JobClass, u32>,
    /// Stops new work (the kill switch).
    pub suspended: bool,
}

impl Default for TenantPolicy {
    fn default() -> Self {
        TenantPolicy {
            quotas: BTreeMap::new(),
            weight_milli: 1000,
            equity_milli: 1000,
            class_caps: BTreeMap::new(),
            suspended: false,
        }
    }
}

impl TenantPolicy {
    pub fn quota(&self, gpu_class: &str) -> Quota {
        self.quotas.get(gpu_class).copied().unwrap_or_default()
    }

    /// Weight times equity, in millionths.
    pub fn effective_weight(&self) -> u64 {
        u64::from(self.weight_milli) * u64::from(self.equity_milli)
    }
}

/// Pool-wide policy settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolPolicy {
    /// Fair-share usage halves over this long.
    pub half_life_ms: u64,
    /// Final jobs (succeeded, failed, cancelled, lost) kept in full; older
    /// ones (by id) are archived into per-tenant totals, so memory and
    /// snapshots stay bounded however long the pool runs.
    #[serde(default = "default_final_jobs_kept")]
    pub final_jobs_kept: usize,
    /// Ledger entries (runs) kept one by one; older ones are rolled up
    /// into per-day totals (see `Accounts::rolled`).
    #[serde(default = "default_ledger_runs_kept")]
    pub ledger_runs_kept: usize,
}

/// How many final jobs the pool keeps in full by default.
pub const DEFAULT_FINAL_JOBS_KEPT: usize = 50_000;

fn default_final_jobs_kept() -> usize {
    DEFAULT_FINAL_JOBS_KEPT
}

/// How many runs the ledger keeps one by one by default: at a few hundred
/// bytes each, about 100 MB per replica.
pub const DEFAULT_LEDGER_RUNS_KEPT: usize = 250_000;

fn default_ledger_runs_kept() -> usize {
    DEFAULT_LEDGER_RUNS_KEPT
}

impl Default for PoolPolicy {
    fn default() -> Self {
        PoolPolicy {
            half_life_ms: 7 * 24 * 3600 * 1000,
            final_jobs_kept: DEFAULT_FINAL_JOBS_KEPT,
            ledger_runs_kept: DEFAULT_LEDGER_RUNS_KEPT,
        }
    }
}

/// What a tenant's archived final jobs add up to (see `State::archive`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Archived {
    pub jobs: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub lost: u64,
    /// GPU time and energy over all their attempts.
    pub usage: JobUsage,
}

impl JobClass {
    /// How much a GPU-second of this class counts towards fair-share
    /// usage, in thousandths.
    pub fn usage_weight_milli(self) -> u64 {
        match self {
            JobClass::Inference | JobClass::Training => 1000,
            JobClass::Batch => 750,
            JobClass::Scavenger => 0,
        }
    }

    pub const ALL: [JobClass; 4] = [
        JobClass::Inference,
        JobClass::Training,
        JobClass::Batch,
        JobClass::Scavenger,
    ];
}

/// One GPU as the agent reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub uuid: String,
    pub index: u32,
    pub model: String,
    pub memory_bytes: u64,
    pub healthy: bool,
    /// Indexes of the GPUs on the same node it shares a fast link
    /// (NVLink) with; empty when the node reports none.
    #[serde(default)]
    pub peers: Vec<u32>,
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

impl GpuInfo {
    /// A healthy GPU with no links and no topology: what a simulated or
    /// test node reports.
    pub fn plain(uuid: String, index: u32, model: String, memory_bytes: u64) -> GpuInfo {
        GpuInfo {
            uuid,
            index,
            model,
            memory_bytes,
            healthy: true,
            peers: vec![],
            health_reason: String::new(),
            pci_bus_id: String::new(),
            nvlink_peers: vec![],
            compute_capability: String::new(),
        }
    }
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

/// A whole GPU is this many thousandths.
pub const WHOLE_GPU: u32 = 1000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    pub info: GpuInfo,
    /// Jobs holding this GPU and how many thousandths of it each holds:
    /// one job with 1000, or fractional jobs summing to at most 1000.
    pub holders: BTreeMap<JobId, u32>,
    /// Set when the scheduler saw the GPU fail; cleared only by an admin.
    #[serde(default)]
    pub fault: Option<GpuFault>,
}

impl Gpu {
    /// May be given to a job: the agent reports it healthy and no fault is
    /// waiting to be cleared.
    pub fn usable(&self) -> bool {
        self.info.healthy && self.fault.is_none()
    }

    pub fn used_milli(&self) -> u32 {
        self.holders.values().fold(0, |a, b| a.saturating_add(*b))
    }

    pub fn free_milli(&self) -> u32 {
        if self.usable() {
            WHOLE_GPU.saturating_sub(self.used_milli())
        } else {
            0
        }
    }

    /// Usable and held by nobody.
    pub fn is_free(&self) -> bool {
        self.usable() && self.holders.is_empty()
    }
}

/// The GPU class of a model: its family, the name before the first '-'
/// (`A100-80GB` is class `A100`).
pub fn gpu_class_of(model: &str) -> &str {
    // A byte scan: the planner asks this of every GPU every round.
    match model.bytes().position(|b| b == b'-') {
        Some(i) => &model[..i],
        None => model,
    }
}

/// What admins say about a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLabels {
    /// The member that contributed the node; its healthy GPUs count
    /// towards that member's guarantee.
    pub owner: Option<String>,
    pub site: Option<String>,
    /// The highest data classification level (0-3) the node is certified for.
    pub data_level: u8,
    /// Overrides the GPU class derived from the model.
    pub gpu_class: Option<String>,
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
    pub labels: NodeLabels,
    /// The images in the node's store, sorted, as its agent reported them.
    #[serde(default)]
    pub images: Vec<String>,
    /// Its agent runs jobs without an image as host processes. A record
    /// that predates the field was written for an agent that ran every job
    /// that way, so it reads `true`.
    #[serde(default = "yes")]
    pub allows_host_jobs: bool,
    /// Thousandths of a CPU core jobs may use, as the agent reported it
    /// (after the node's system reserve); 0 from an agent that reports
    /// none, which then holds no job that asks for CPU.
    #[serde(default)]
    pub cpu_millicores: u64,
    /// Host memory jobs may use, in bytes, likewise.
    #[serde(default)]
    pub memory_bytes: u64,
    /// What the placed jobs' live tasks here hold, summed: derived from
    /// the jobs, kept exact by `apply` and rebuilt when a state is loaded,
    /// so never serialized (a positional record does not see it).
    #[serde(skip)]
    pub host_held: Host,
}

/// The most image names one node may report.
pub const MAX_NODE_IMAGES: usize = 1024;

/// An image's name as the nodes' stores hold it: 1-128 letters, digits,
/// `.`, `_`, `-` or `:`, not starting with `.` (so never `.` or `..`, and
/// never a path).
pub fn valid_image_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

pub const DEFAULT_SITE: &str = "default";

impl Node {
    pub fn site(&self) -> &str {
        self.labels.site.as_deref().unwrap_or(DEFAULT_SITE)
    }

    pub fn gpu_class<'a>(&'a self, gpu: &'a Gpu) -> &'a str {
        self.labels
            .gpu_class
            .as_deref()
            .unwrap_or_else(|| gpu_class_of(&gpu.info.model))
    }

    pub fn schedulable(&self) -> bool {
        self.status == NodeStatus::Ready && !self.cordoned && !self.draining
    }

    pub fn free_gpus(&self) -> impl Iterator<Item = &Gpu> {
        self.gpus.iter().filter(|g| g.is_free())
    }

    /// Whether the node reports the image (its list is kept sorted).
    pub fn has_image(&self, image: &str) -> bool {
        self.images
            .binary_search_by(|i| i.as_str().cmp(image))
            .is_ok()
    }

    /// Whether the node can run the job's software: its image, or, for a
    /// job without one, host processes.
    pub fn runs(&self, spec: &JobSpec) -> bool {
        match &spec.image {
            Some(image) => self.has_image(image),
            None => self.allows_host_jobs,
        }
    }
    /// CPU and memory jobs may use here in all.
    pub fn host_allocatable(&self) -> Host {
        Host {
            cpu_millicores: self.cpu_millicores,
            memory_bytes: self.memory_bytes,
        }
    }

    /// CPU and memory not held by jobs.
    pub fn host_free(&self) -> Host {
        self.host_allocatable().minus(self.host_held)
    }
}
