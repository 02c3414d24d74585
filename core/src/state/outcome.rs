//! The vocabulary every sub-machine speaks: what a command produced
//! (`Outcome`), the orders it gives the edges (`Effect`), why it changed
//! nothing (`Rejection`), and how a task ended (`TaskEnd`). It imports
//! no sub-machine.

use thiserror::Error;

use super::types::{Job, JobId};

/// The result of applying one command: an outcome and effects, or a
/// rejection that changed nothing.
pub type Applied = Result<(Outcome, Vec<Effect>), Rejection>;

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
    /// The state broke one of its own invariants where this command
    /// needed it (a bug, never the caller's fault): the command is refused
    /// whole and changes nothing, so every replica refuses it alike and
    /// none crashes; the edge logs it and counts it
    /// (`edupool_apply_inconsistent_total`).
    #[error("the state is inconsistent: {what}")]
    Inconsistent { what: String },
}

impl Rejection {
    /// A broken invariant, described for the error log.
    pub fn inconsistent(what: impl Into<String>) -> Rejection {
        Rejection::Inconsistent { what: what.into() }
    }
}

/// How one task of a placed job ended.
pub(crate) enum TaskEnd {
    Exited {
        exit_code: Option<i32>,
        reason: String,
        /// Energy the agent measured for the task, if it could.
        energy_mj: Option<u64>,
    },
    Lost(String),
}

/// Stop orders for every task of the job still running.
pub(crate) fn stop_tasks(job: &Job, reason: &str) -> Vec<Effect> {
    job.tasks
        .iter()
        .filter(|t| !t.finished)
        .map(|t| Effect::StopJob {
            node: t.node.clone(),
            job: job.id,
            grace_secs: job.spec.grace_period_secs,
            reason: reason.to_string(),
        })
        .collect()
}
