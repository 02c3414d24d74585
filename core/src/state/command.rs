//! Commands: the log's entries. Each names what it changes; `apply`
//! hands it to the sub-machine that owns that part of the state.

use serde::{Deserialize, Serialize};

use super::jobs::TaskPlacement;
use super::ledger::{Budget, PriceChange};
use super::security::{Actor, ApiToken, AuditResult};
use super::types::{
    Capacity, GpuInfo, JobClass, JobId, JobSpec, JobUsage, Millis, NodeLabels, Quota,
};

/// Every change to the pool. Commands are appended to the replicated log
/// and applied in order on every replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    CreateTenant {
        name: String,
        token_hash: String,
    },
    /// Gives every tenant without a uid offset one (see
    /// `Tenant::uid_offset`). The leader proposes it after creating a
    /// tenant and whenever it sees a tenant without one (tenants of a
    /// snapshot or log from before offsets existed), so that every replica
    /// assigns them at the same entry, however it came by those tenants.
    AssignUidOffsets,
    /// Starts the recent job mix's tally (see `Mix`): the leader proposes
    /// it when the tally is not counting yet, so that every replica starts
    /// counting at the same entry. Applying it again changes nothing.
    StartMixTally,
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
    /// An agent opened a session and reported its GPUs, the images in
    /// its store and whether it runs jobs without one.
    NodeConnected {
        node: String,
        gpus: Vec<GpuInfo>,
        agent_version: String,
        #[serde(default)]
        images: Vec<String>,
        /// An entry that predates the field came from an agent that ran
        /// every job as a host process.
        #[serde(default = "yes")]
        allows_host_jobs: bool,
        /// CPU (thousandths of a core) and memory (bytes) jobs may use on
        /// the node; 0 in entries from before agents reported them.
        #[serde(default)]
        cpu_millicores: u64,
        #[serde(default)]
        memory_bytes: u64,
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

fn yes() -> bool {
    true
}
