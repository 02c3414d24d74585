//! Commands (the log's entries), their outcomes, effects and rejections.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::audit::{Actor, AuditResult};
use super::ledger::{Budget, PriceChange};
use super::security::ApiToken;
use super::types::{
    Capacity, GpuInfo, JobClass, JobId, JobSpec, JobUsage, Millis, NodeLabels, Quota,
};

/// Where one task of a job goes: a node and GPUs on it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskPlacement {
    pub node: String,
    pub gpus: Vec<String>,
}

/// Every change to the pool. Commands are appended to the replicated log
/// and applied in order on every replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    CreateTenant {
        name: String,
        token_hash: String,
    },
    SubmitJob {
        tenant: String,
        spec: JobSpec,
    },
    /// A job array: `count` jobs of one spec with consecutive ids, each
    /// told its index in its environment (see [`ARRAY_INDEX_ENV`]); all
    /// are submitted or none.
    SubmitArray {
        tenant: String,
        spec: JobSpec,
        count: u32,
    },
    /// `tenant: None` is an admin acting on any tenant's job.
    CancelJob {
        tenant: Option<String>,
        job: JobId,
        reason: String,
    },
    /// An agent opened a session and reported its GPUs.
    NodeConnected {
        node: String,
        gpus: Vec<GpuInfo>,
        agent_version: String,
    },
    /// An agent's session ended; its jobs are presumed still running.
    NodeDisconnected {
        node: String,
    },
    /// An agent was gone longer than the timeout.
    NodeLost {
        node: String,
    },
    SetNodeSchedulable {
        node: String,
        cordoned: bool,
        draining: bool,
    },
    /// A planner decision: run the job's tasks on these GPUs, on the
    /// given terms.
    PlaceJob {
        job: JobId,
        tasks: Vec<TaskPlacement>,
        capacity: Capacity,
    },
    JobStarted {
        node: String,
        job: JobId,
        started_at: Millis,
    },
    JobExited {
        node: String,
        job: JobId,
        exit_code: Option<i32>,
        reason: String,
        finished_at: Millis,
        /// GPU time and energy of this run, as the agent measured them.
        #[serde(default)]
        usage: JobUsage,
    },
    /// The node's agent no longer has a job the log placed there.
    JobVanished {
        node: String,
        job: JobId,
        reason: String,
    },
    /// A planner decision: stop a borrowing job so a tenant below its
    /// guarantee gets its GPUs.
    PreemptJob {
        job: JobId,
        reason: String,
        /// The pending job within its guarantee the GPUs are freed for.
        for_job: Option<JobId>,
    },
    SetTenantQuota {
        tenant: String,
        gpu_class: String,
        quota: Quota,
    },
    SetTenantShare {
        tenant: String,
        weight_milli: u32,
        equity_milli: u32,
    },
    /// Caps the GPUs of one GPU class that a job class may hold within the
    /// tenant's guarantee; `None` removes the cap.
    SetClassCap {
        tenant: String,
        job_class: JobClass,
        max_gpus: Option<u32>,
    },
    /// Replaces the node's labels.
    LabelNode {
        node: String,
        labels: NodeLabels,
    },
    /// A GPU's health changed. `healthy: false` (from the agent) marks it
    /// failed: it leaves placement and the job on it is stopped and
    /// requeued per its spec. `healthy: true` from the agent
    /// (`cleared_by: None`) only notes that the GPU was reset; it returns
    /// to placement when an admin clears it (`cleared_by: Some(who)`).
    GpuHealthChanged {
        node: String,
        gpu: String,
        healthy: bool,
        reason: String,
        cleared_by: Option<String>,
    },
    /// A new version of the price book (admins).
    SetPrices(PriceChange),
    /// Sets (`Some`) or removes a tenant's budget (admins).
    SetBudget {
        tenant: String,
        budget: Option<Budget>,
    },
    /// A new API token; the state assigns its id and creation time.
    CreateToken {
        token: ApiToken,
    },
    /// Refuses the token from now on, on every replica that applied this.
    RevokeToken {
        id: String,
    },
    /// The kill switch (see `security.rs`).
    SuspendTenant {
        tenant: String,
        reason: String,
        stop_running: bool,
        /// The token id of who suspended it.
        by: String,
    },
    ResumeTenant {
        tenant: String,
    },
    /// An admin or job-control action with who asked for it: applies
    /// `cmd` and appends an audit record with its result.
    Audited {
        actor: Actor,
        action: String,
        /// Empty: the object the command produced (a new job or token).
        target: String,
        cmd: Box<Command>,
    },
    /// Records an action that is not a state change (replica set
    /// membership) in the audit trail, or counts a denied or failed call
    /// among the refused calls.
    RecordAudit {
        actor: Actor,
        action: String,
        target: String,
        result: AuditResult,
    },
    /// A submission (`SubmitJob` or `SubmitArray`, possibly audited) named
    /// by the client's request id: applied once; a repeat within the
    /// window answers with what the first created (see `request_ids`).
    SubmitOnce {
        request_id: String,
        cmd: Box<Command>,
    },
}

/// What a command produced, for the proposer's reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    None,
    Tenant(String),
    Job(JobId),
    /// The jobs of an array: `count` consecutive ids from `first`.
    Jobs {
        first: JobId,
        count: u32,
    },
    Node(String),
    Token(String),
}

/// Orders for the edges. Only the leader delivers them; every replica
/// computes them, so they stay a pure function of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    StartJob {
        node: String,
        job: JobId,
    },
    StopJob {
        node: String,
        job: JobId,
        grace_secs: u64,
        reason: String,
    },
    /// The exit is recorded; the agent may drop its record of the job.
    ForgetJob {
        node: String,
        job: JobId,
    },
    /// The job's record changed (for watchers).
    JobChanged(JobId),
}

/// Why a command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Rejection {
    #[error("tenant '{0}' already exists")]
    TenantExists(String),
    #[error("tenant '{0}' does not exist")]
    UnknownTenant(String),
    #[error("job {0} does not exist")]
    UnknownJob(JobId),
    #[error("node '{0}' does not exist")]
    UnknownNode(String),
    #[error("job {job} has already finished ({state})")]
    JobFinished { job: JobId, state: &'static str },
    #[error("the pool has no nodes yet, so no job can be placed; start an agent first")]
    PoolEmpty,
    #[error(
        "job asks for {requested} GPUs on one node, but the largest node in the pool has {largest}"
    )]
    NoNodeCanHold { requested: u32, largest: u32 },
    #[error("job {job} is {state}, not pending")]
    NotPending { job: JobId, state: &'static str },
    #[error("node '{node}' cannot take job {job}: {why}")]
    BadPlacement {
        job: JobId,
        node: String,
        why: String,
    },
    #[error("job {job} is not placed on node '{node}'")]
    NotOnNode { job: JobId, node: String },
    /// No registered node could ever run the job.
    #[error("no node in the pool can run this job: {0}")]
    Infeasible(String),
    #[error("job {job} cannot be preempted: {why}")]
    NotPreemptible { job: JobId, why: String },
    #[error("node '{node}' has no GPU {gpu}")]
    UnknownGpu { node: String, gpu: String },
    #[error("invalid token: {0}")]
    BadToken(String),
    #[error("token '{0}' does not exist")]
    UnknownToken(String),
    #[error("tenant '{tenant}' is suspended{}", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    TenantSuspended { tenant: String, reason: String },
    #[error("GPU {gpu} on node '{node}' is not marked unhealthy; there is nothing to clear")]
    GpuNotFaulty { node: String, gpu: String },
    #[error("GPU {gpu} on node '{node}' cannot be cleared yet: its agent has not reported it healthy since it failed ({reason}); reset the GPU first")]
    GpuNotReset {
        node: String,
        gpu: String,
        reason: String,
    },
    #[error("invalid prices: {0}")]
    BadPrice(String),
    #[error("no node in the pool has GPU model '{0}'; prices are set for models the pool has (see `edupoolctl node list`)")]
    UnknownGpuModel(String),
    #[error("invalid budget: {0}")]
    BadBudget(String),
    #[error("tenant '{tenant}' is over its hard budget for {period}: {used} {currency} used of {limit} {currency}; only scavenger jobs are accepted until the period ends or an admin raises the budget")]
    OverBudget {
        tenant: String,
        period: String,
        used: String,
        limit: String,
        currency: String,
    },
    #[error("a job array holds 1 to {max} jobs, not {count}")]
    BadArraySize { count: u32, max: u32 },
    #[error("invalid request id: {0}")]
    BadRequestId(String),
    #[error("request id '{request_id}' was already used for a different submission (job {first}); a retry must send the same spec, a new submission needs a new request id")]
    RequestIdReused { request_id: String, first: JobId },
    #[error("only a job submission can carry a request id")]
    NotASubmission,
}

/// The most jobs one array may hold in the state (the API's limit is at
/// most this): one log entry creates them all in one apply.
pub const MAX_ARRAY: u32 = 100_000;
/// Environment of each job of an array: its index (0 to size - 1), the
/// array's size, and the first job's id, which names the array.
pub const ARRAY_INDEX_ENV: &str = "EDUPOOL_ARRAY_INDEX";
pub const ARRAY_SIZE_ENV: &str = "EDUPOOL_ARRAY_SIZE";
pub const ARRAY_JOB_ID_ENV: &str = "EDUPOOL_ARRAY_JOB_ID";
