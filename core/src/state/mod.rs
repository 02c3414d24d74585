//! The replicated state machine: pure and synchronous.
//!
//! `State::apply(cmd, at)` is the only way the pool changes. It performs no
//! I/O and reads no clock: `at` is the time stamped on the log entry, so
//! every replica that applies the same log ends in the same state.

mod audit;
pub mod billing;
mod command;
mod free;
mod holdings;
mod ledger;
mod lifecycle;
mod packed;
mod queues;
mod request_ids;
mod run_table;
mod security;
mod types;

#[cfg(test)]
mod audit_tests;
#[cfg(test)]
mod ledger_tests;
#[cfg(test)]
mod request_ids_tests;
#[cfg(test)]
mod security_tests;
#[cfg(test)]
mod tests;
/// Builders for tests, here and in the crates above (feature `test-support`).
#[cfg(any(test, feature = "test-support"))]
pub mod tests_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use audit::{
    Actor, AuditDropped, AuditGap, AuditRecord, AuditResult, RefusedCalls, AUDIT_FIELD_BYTES,
    AUDIT_KEEP_MS, AUDIT_MAX_RECORDS, AUDIT_REFUSED_KEYS,
};
pub use command::{
    Command, Effect, Outcome, Rejection, TaskPlacement, ARRAY_INDEX_ENV, ARRAY_JOB_ID_ENV,
    ARRAY_SIZE_ENV, MAX_ARRAY,
};
pub use free::{BucketKey, Contributed, Free, FreeCapacity, Layout};
pub use holdings::{Holdings, TenantHoldings};
pub use ledger::{
    Accounts, Budget, GpuPrice, LedgerEntry, Money, PriceBook, PriceChange, PriceVersion, RunEnd,
};
use lifecycle::TaskEnd;
pub use queues::{Queues, TenantQueue};
pub use request_ids::{
    check_request_id, RequestIds, SeenRequest, MAX_REQUEST_ID_LEN, REQUEST_IDS_PER_TENANT,
    REQUEST_ID_WINDOW,
};
pub use security::{ApiToken, Role, Suspension, TokenGrant};
pub use types::*;

/// The result of applying one command: an outcome and effects, or a
/// rejection that changed nothing.
pub type Applied = Result<(Outcome, Vec<Effect>), Rejection>;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredState")]
pub struct State {
    tenants: BTreeMap<String, Tenant>,
    /// SHA-256 of a tenant's initial token (hex) -> tenant name; other
    /// tokens are in `security`.
    tokens: BTreeMap<String, String>,
    /// Nodes and jobs are positional records in binary snapshots (`packed`).
    #[serde(with = "packed")]
    nodes: free::Nodes,
    #[serde(with = "packed")]
    jobs: BTreeMap<JobId, Arc<Job>>,
    /// Jobs waiting for GPUs, in submission order.
    pending: BTreeSet<JobId>,
    /// Jobs holding GPUs (`JobState::is_placed`), so that the planner's
    /// per-round books need not walk every job the pool ever ran, nor the
    /// pending ones (derived, like `live`).
    #[serde(skip_serializing)]
    placed: BTreeSet<JobId>,
    last_job: u64,
    policy: PoolPolicy,
    /// The usage ledger, price book and budgets (absent in snapshots
    /// taken before they existed).
    #[serde(default)]
    accounts: Accounts,
    /// Tokens with roles, suspensions and the audit trail.
    #[serde(default)]
    security: security::Security,
    /// Every job not yet final (pending, placed, stopping): an index kept
    /// exact by `apply`, so what looks at live work (the planner's books,
    /// the jobs on a node) reads these instead of the whole history. It
    /// is derived from `jobs`, so snapshots leave it out and loading one
    /// rebuilds it.
    #[serde(skip_serializing)]
    live: BTreeSet<JobId>,
    /// Every final job still kept in full, by id (derived, like `live`).
    #[serde(skip_serializing)]
    done: BTreeSet<JobId>,
    /// The pending jobs of each tenant in the planner's orders (derived,
    /// like `live`).
    #[serde(skip_serializing)]
    queues: Queues,
    /// Free GPU capacity by bucket and the GPUs each owner contributes,
    /// for the planner (derived, built on first use; see `free`).
    #[serde(skip)]
    node_cache: free::NodeCache,
    /// What each tenant's placed jobs hold, summed (derived, built on
    /// first use; see `holdings`).
    #[serde(skip)]
    holdings: holdings::HoldingsCache,
    /// Per tenant: the archived final jobs, summed.
    archived: BTreeMap<String, Archived>,
    /// Submissions' request ids, so a retried submit creates nothing new
    /// (absent in snapshots taken before they existed, and left out while
    /// empty, so a pool that never used them serializes as before).
    #[serde(default, skip_serializing_if = "RequestIds::is_empty")]
    request_ids: RequestIds,
}

/// The serialized form of [`State`]: everything but the derived indexes.
#[derive(Deserialize)]
struct StoredState {
    tenants: BTreeMap<String, Tenant>,
    tokens: BTreeMap<String, String>,
    #[serde(with = "packed")]
    nodes: free::Nodes,
    #[serde(with = "packed")]
    jobs: BTreeMap<JobId, Arc<Job>>,
    pending: BTreeSet<JobId>,
    last_job: u64,
    policy: PoolPolicy,
    #[serde(default)]
    archived: BTreeMap<String, Archived>,
    #[serde(default)]
    accounts: Accounts,
    #[serde(default)]
    security: security::Security,
    #[serde(default)]
    request_ids: RequestIds,
}

impl From<StoredState> for State {
    fn from(s: StoredState) -> State {
        let (done, live): (BTreeSet<JobId>, BTreeSet<JobId>) = s
            .jobs
            .values()
            .map(|j| j.id)
            .partition(|id| s.jobs[id].state.is_final());
        let placed = s
            .jobs
            .values()
            .filter(|j| j.state.is_placed())
            .map(|j| j.id)
            .collect();
        let queues = Queues::of(s.pending.iter().map(|id| &*s.jobs[id]));
        let mut accounts = s.accounts;
        accounts.loaded();
        State {
            tenants: s.tenants,
            tokens: s.tokens,
            nodes: s.nodes,
            jobs: s.jobs,
            pending: s.pending,
            placed,
            last_job: s.last_job,
            policy: s.policy,
            accounts,
            security: s.security,
            live,
            done,
            queues,
            node_cache: free::NodeCache::default(),
            holdings: holdings::HoldingsCache::default(),
            archived: s.archived,
            request_ids: s.request_ids,
        }
    }
}

/// What a command may change besides tenants, tokens and prices: the
/// derived indexes are kept by it.
enum Reach {
    /// No placed job and no node: nothing the indexes hold (a submission
    /// adds its job to `live` and its queue itself).
    Nothing,
    /// At most the job it names, and the free capacity of its nodes.
    Job(JobId),
    /// Nodes or GPUs themselves, and through them any job on them.
    Nodes,
}

fn reach(cmd: &Command) -> Reach {
    match cmd {
        Command::CancelJob { job, .. }
        | Command::PlaceJob { job, .. }
        | Command::JobStarted { job, .. }
        | Command::JobExited { job, .. }
        | Command::JobVanished { job, .. }
        | Command::PreemptJob { job, .. } => Reach::Job(*job),
        Command::CreateTenant { .. }
        | Command::SubmitJob { .. }
        | Command::SubmitArray { .. }
        | Command::SetTenantQuota { .. }
        | Command::SetTenantShare { .. }
        | Command::SetClassCap { .. }
        | Command::SetPrices(_)
        | Command::SetBudget { .. }
        | Command::CreateToken { .. }
        | Command::RevokeToken { .. }
        | Command::ResumeTenant { .. }
        | Command::RecordAudit { .. }
        | Command::SubmitOnce { .. }
        // The command it wraps goes through `apply` itself, which keeps
        // the indexes for it; the audit record reaches none of them.
        | Command::Audited { .. } => Reach::Nothing,
        _ => Reach::Nodes,
    }
}

impl State {
    pub fn apply(&mut self, cmd: Command, at: Millis) -> Applied {
        let reach = reach(&cmd);
        let held_before = self.holding_of(&reach);
        let applied = self.apply_command(cmd, at);
        if applied.is_ok() {
            self.index_holdings(&reach, held_before);
            self.index_free(&reach);
            self.index_live(&reach);
            self.archive();
        }
        applied
    }

    /// What the job a command names holds now, when the sums are kept.
    fn holding_of(&self, reach: &Reach) -> Option<holdings::Holding> {
        match reach {
            Reach::Job(id) if self.holdings.is_kept() => {
                self.jobs.get(id).and_then(|j| holdings::holding(j))
            }
            _ => None,
        }
    }

    /// Keeps the sums of what placed jobs hold exact after a command.
    fn index_holdings(&mut self, reach: &Reach, before: Option<holdings::Holding>) {
        match reach {
            Reach::Nothing => {}
            Reach::Job(id) => {
                let after = self.jobs.get(id).and_then(|j| holdings::holding(j));
                self.holdings.replace(before.as_ref(), after.as_ref());
            }
            Reach::Nodes => self.holdings.drop_all(),
        }
    }

    /// What each tenant's placed jobs hold, summed.
    pub fn holdings(&self) -> &Holdings {
        self.holdings.get(&self.placed, &self.jobs)
    }

    /// Keeps the free-capacity index exact after a command.
    fn index_free(&mut self, reach: &Reach) {
        match reach {
            Reach::Nothing => {}
            Reach::Job(id) => {
                let names = self
                    .jobs
                    .get(id)
                    .into_iter()
                    .flat_map(|j| j.tasks.iter().map(|t| t.node.as_str()));
                self.node_cache.refresh(&self.nodes, names);
            }
            Reach::Nodes => self.node_cache.drop_all(),
        }
    }

    /// Free GPU capacity by bucket, as the planner reads it.
    pub fn free_capacity(&self) -> &FreeCapacity {
        self.node_cache.free(&self.nodes)
    }

    /// Usable GPUs of ready nodes per owner label and GPU class.
    pub fn contributed(&self) -> &Contributed {
        self.node_cache.contributed(&self.nodes)
    }

    /// Whether the kept node indexes and job sums equal ones built afresh.
    #[cfg(test)]
    pub fn kept_indexes_are_exact(&self) -> bool {
        self.node_cache.is_exact(&self.nodes) && self.holdings.is_exact(self.placed_jobs())
    }

    /// Keeps `live` and `done` exact after a command: a job only leaves
    /// `live` (a final job never runs again), and joins it only when
    /// submitted. A command that names its job checks that one; one that
    /// acts on a node may have ended its jobs, so it checks every live job
    /// (their number is bounded by the pool's work, not by history).
    fn index_live(&mut self, reach: &Reach) {
        let jobs = &self.jobs;
        let is_final = |id: &JobId| jobs.get(id).is_none_or(|j| j.state.is_final());
        let ended: Vec<JobId> = match *reach {
            Reach::Job(id) if self.live.contains(&id) && is_final(&id) => vec![id],
            Reach::Job(_) | Reach::Nothing => vec![],
            Reach::Nodes => self.live.iter().copied().filter(is_final).collect(),
        };
        for id in ended {
            self.live.remove(&id);
            self.done.insert(id);
        }
    }

    /// Archives the oldest final jobs (lowest ids) beyond the policy's
    /// `final_jobs_kept`: each leaves the job table and is added to its
    /// tenant's [`Archived`] totals. Their runs were already charged to
    /// the tenant's fair-share usage when they exited, so nothing the
    /// planner reads changes; what is lost is the per-job detail (an
    /// archived job's id is no longer found). This is the one place jobs
    /// are dropped from the state.
    fn archive(&mut self) {
        while self.done.len() > self.policy.final_jobs_kept {
            let Some(id) = self.done.pop_first() else {
                break;
            };
            let Some(job) = self.jobs.remove(&id) else {
                continue;
            };
            self.forget_owner(id);
            let a = self.archived.entry(job.tenant.clone()).or_default();
            a.jobs += 1;
            match job.state {
                JobState::Succeeded => a.succeeded += 1,
                JobState::Failed => a.failed += 1,
                JobState::Cancelled => a.cancelled += 1,
                _ => a.lost += 1,
            }
            a.usage = a.usage.plus(job.usage);
        }
    }

    /// A tenant's archived final jobs, summed.
    pub fn archived(&self, tenant: &str) -> Archived {
        self.archived.get(tenant).copied().unwrap_or_default()
    }

    fn apply_command(&mut self, cmd: Command, at: Millis) -> Applied {
        match cmd {
            Command::CreateTenant { name, token_hash } => self.create_tenant(name, token_hash, at),
            Command::SubmitJob { tenant, spec } => self.submit_job(tenant, spec, at),
            Command::SubmitArray {
                tenant,
                spec,
                count,
            } => self.submit_array(tenant, spec, count, at),
            Command::CancelJob {
                tenant,
                job,
                reason,
            } => self.cancel_job(tenant.as_deref(), job, reason, at),
            Command::NodeConnected {
                node,
                gpus,
                agent_version,
            } => self.node_connected(node, gpus, agent_version, at),
            Command::NodeDisconnected { node } => self.node_disconnected(&node, at),
            Command::NodeLost { node } => self.node_lost(&node, at),
            Command::SetNodeSchedulable {
                node,
                cordoned,
                draining,
            } => self.set_schedulable(&node, cordoned, draining),
            Command::PlaceJob {
                job,
                tasks,
                capacity,
            } => self.place_job(job, tasks, capacity, at),
            Command::JobStarted {
                node,
                job,
                started_at,
            } => self.job_started(&node, job, started_at),
            Command::JobExited {
                node,
                job,
                exit_code,
                reason,
                finished_at,
                usage,
            } => self.job_exited(&node, job, exit_code, reason, finished_at, usage),
            Command::JobVanished { node, job, reason } => {
                let job = self.job_on(&node, job)?;
                let effects = self.task_ended(job, &node, TaskEnd::Lost(reason), at);
                Ok((Outcome::Job(job), effects))
            }
            Command::PreemptJob {
                job,
                reason,
                for_job,
            } => self.preempt_job(job, reason, for_job, at),
            Command::SetTenantQuota {
                tenant,
                gpu_class,
                quota,
            } => self.with_tenant(&tenant, |t| {
                if quota == Quota::default() {
                    t.policy.quotas.remove(&gpu_class);
                } else {
                    t.policy.quotas.insert(gpu_class, quota);
                }
            }),
            Command::SetTenantShare {
                tenant,
                weight_milli,
                equity_milli,
            } => self.with_tenant(&tenant, |t| {
                t.policy.weight_milli = weight_milli;
                t.policy.equity_milli = equity_milli;
            }),
            Command::SetClassCap {
                tenant,
                job_class,
                max_gpus,
            } => self.with_tenant(&tenant, |t| match max_gpus {
                Some(n) => {
                    t.policy.class_caps.insert(job_class, n);
                }
                None => {
                    t.policy.class_caps.remove(&job_class);
                }
            }),
            Command::LabelNode { node, labels } => {
                let n = self
                    .nodes
                    .get_mut(&node)
                    .map(Arc::make_mut)
                    .ok_or_else(|| Rejection::UnknownNode(node.clone()))?;
                if let Some(owner) = &labels.owner {
                    if !self.tenants.contains_key(owner) {
                        return Err(Rejection::UnknownTenant(owner.clone()));
                    }
                }
                n.labels = labels;
                Ok((Outcome::Node(node), vec![]))
            }
            Command::GpuHealthChanged {
                node,
                gpu,
                healthy,
                reason,
                cleared_by,
            } => self.gpu_health_changed(&node, &gpu, healthy, reason, cleared_by, at),
            Command::SetPrices(change) => self.set_prices(change, at),
            Command::SetBudget { tenant, budget } => self.set_budget(tenant, budget),
            Command::CreateToken { token } => self.create_token(token, at),
            Command::RevokeToken { id } => self.revoke_token(&id, at),
            Command::SuspendTenant {
                tenant,
                reason,
                stop_running,
                by,
            } => self.suspend_tenant(&tenant, reason, stop_running, by, at),
            Command::ResumeTenant { tenant } => self.resume_tenant(&tenant),
            Command::Audited {
                actor,
                action,
                target,
                cmd,
            } => self.audited(actor, action, target, *cmd, at),
            Command::SubmitOnce { request_id, cmd } => self.submit_once(request_id, *cmd, at),
            Command::RecordAudit {
                actor,
                action,
                target,
                result,
            } => {
                self.record_audit(actor, action, target, result, at);
                Ok((Outcome::None, vec![]))
            }
        }
    }

    fn with_tenant(&mut self, name: &str, f: impl FnOnce(&mut Tenant)) -> Applied {
        let t = self
            .tenants
            .get_mut(name)
            .ok_or_else(|| Rejection::UnknownTenant(name.to_string()))?;
        f(t);
        Ok((Outcome::Tenant(name.to_string()), vec![]))
    }

    pub fn policy(&self) -> &PoolPolicy {
        &self.policy
    }

    // ------------------------------------------------------------ reads

    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.get(name)
    }

    pub fn tenants(&self) -> impl Iterator<Item = &Tenant> {
        self.tenants.values()
    }

    /// The tenant of a live tenant-admin or member token.
    pub fn tenant_by_token_hash(&self, hash: &str) -> Option<String> {
        self.token_by_hash(hash).and_then(|t| t.tenant)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name).map(|n| &**n)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().map(|n| &**n)
    }

    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id).map(|j| &**j)
    }

    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values().map(|j| &**j)
    }

    /// Jobs newest first (by id, descending), from the one before
    /// `before` when given: the order job lists page in.
    pub fn jobs_newest_first(&self, before: Option<JobId>) -> impl Iterator<Item = &Job> {
        let end = before.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        self.jobs
            .range((std::ops::Bound::Unbounded, end))
            .rev()
            .map(|(_, j)| &**j)
    }

    /// Pending jobs in submission order.
    pub fn pending_jobs(&self) -> impl Iterator<Item = &Job> {
        self.pending.iter().map(|id| &*self.jobs[id])
    }

    /// Pending jobs per tenant, in the planner's orders.
    pub fn queues(&self) -> &Queues {
        &self.queues
    }

    /// Jobs holding GPUs (assigned, running, or stopping), by id.
    pub fn placed_jobs(&self) -> impl Iterator<Item = &Job> {
        self.placed.iter().map(|id| &*self.jobs[id])
    }

    /// Jobs not yet final (pending, placed or stopping), by id.
    pub fn live_jobs(&self) -> impl Iterator<Item = &Job> {
        self.live.iter().map(|id| &*self.jobs[id])
    }

    /// Jobs with a task still running (or starting) on `node`.
    pub fn jobs_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Job> + 'a {
        self.live_jobs().filter(move |j| {
            j.state.is_placed() && j.tasks.iter().any(|t| t.node == node && !t.finished)
        })
    }

    // ------------------------------------------------------------ tenants

    fn create_tenant(&mut self, name: String, token_hash: String, at: Millis) -> Applied {
        if self.tenants.contains_key(&name) {
            return Err(Rejection::TenantExists(name));
        }
        self.tokens.insert(token_hash, name.clone());
        self.tenants.insert(
            name.clone(),
            Tenant {
                name: name.clone(),
                created_at: at,
                policy: TenantPolicy::default(),
                usage: Usage::default(),
            },
        );
        Ok((Outcome::Tenant(name), vec![]))
    }

    // ------------------------------------------------------------ jobs: see lifecycle.rs

    /// Checks that some registered node could ever run the job, and says
    /// precisely why not.
    fn check_feasible(&self, spec: &JobSpec) -> Result<(), Rejection> {
        if self.nodes.is_empty() {
            return Err(Rejection::PoolEmpty);
        }
        let c = &spec.constraints;
        // The common case, a job some node can hold, costs one short scan.
        let holds = |n: &&Node| {
            fits_node(c, n)
                && n.gpus.iter().filter(|g| fits_gpu(c, n, g)).count() as u32 >= spec.gpus
        };
        if spec.nodes <= 1 && self.nodes().any(|n| holds(&n)) {
            return Ok(());
        }
        // A gang: enough such nodes in one site, found without building
        // the lists the error messages below need.
        if spec.nodes > 1 {
            let mut per_site: BTreeMap<&str, u32> = BTreeMap::new();
            for n in self.nodes().filter(holds) {
                let count = per_site.entry(n.site()).or_default();
                *count += 1;
                if *count >= spec.nodes {
                    return Ok(());
                }
            }
        }
        let certified: Vec<&Node> = self
            .nodes()
            .filter(|n| n.labels.data_level >= c.data_level)
            .collect();
        if certified.is_empty() {
            let top = self
                .nodes
                .values()
                .map(|n| n.labels.data_level)
                .max()
                .unwrap_or(0);
            return Err(Rejection::Infeasible(format!(
                "no node is certified for data level {} (the highest is {top})",
                c.data_level
            )));
        }
        let in_site: Vec<&Node> = certified
            .into_iter()
            .filter(|n| c.site.as_deref().is_none_or(|s| n.site() == s))
            .collect();
        if in_site.is_empty() {
            return Err(Rejection::Infeasible(format!(
                "no node at data level {} or above is in site '{}'",
                c.data_level,
                c.site.as_deref().unwrap_or_default()
            )));
        }
        let any_kind = |g: &Gpu, n: &Node| {
            c.gpu_model.as_deref().is_none_or(|m| g.info.model == m)
                && c.gpu_class.as_deref().is_none_or(|k| n.gpu_class(g) == k)
        };
        if !in_site
            .iter()
            .any(|n| n.gpus.iter().any(|g| any_kind(g, n)))
        {
            let what = match (&c.gpu_model, &c.gpu_class) {
                (Some(m), _) => format!("model {m}"),
                (None, Some(k)) => format!("class {k}"),
                (None, None) => "any kind".into(),
            };
            return Err(Rejection::Infeasible(format!(
                "no node{} has GPUs of {what}",
                if c.site.is_some() || c.data_level > 0 {
                    " that meets its site and data level"
                } else {
                    ""
                }
            )));
        }
        if c.min_gpu_memory_bytes > 0 {
            let largest = in_site
                .iter()
                .flat_map(|n| n.gpus.iter().filter(|g| any_kind(g, n)))
                .map(|g| g.info.memory_bytes)
                .max()
                .unwrap_or(0);
            if largest < c.min_gpu_memory_bytes {
                let kind = describe(&Constraints {
                    min_gpu_memory_bytes: 0,
                    ..c.clone()
                });
                return Err(Rejection::Infeasible(format!(
                    "it asks for GPUs with at least {} of memory, but no node has a GPU{kind} with more than {}",
                    memory(c.min_gpu_memory_bytes),
                    memory(largest)
                )));
            }
        }
        let most = in_site
            .iter()
            .map(|n| n.gpus.iter().filter(|g| fits_gpu(c, n, g)).count() as u32)
            .max()
            .unwrap_or(0);
        if spec.gpus <= most && spec.nodes <= 1 {
            return Ok(());
        }
        if spec.gpus <= most {
            return self.check_gang_feasible(spec, &in_site);
        }
        let unconstrained = c.gpu_model.is_none()
            && c.gpu_class.is_none()
            && c.min_gpu_memory_bytes == 0
            && c.site.is_none()
            && c.data_level == 0;
        if unconstrained {
            return Err(Rejection::NoNodeCanHold {
                requested: spec.gpus,
                largest: most,
            });
        }
        Err(Rejection::Infeasible(format!(
            "it asks for {} GPUs{} on one node, but the most any node has is {most}",
            spec.gpus,
            describe(c)
        )))
    }

    /// A gang needs `nodes` distinct nodes of one site, each able to hold
    /// one task.
    fn check_gang_feasible(&self, spec: &JobSpec, candidates: &[&Node]) -> Result<(), Rejection> {
        let c = &spec.constraints;
        let mut per_site: BTreeMap<&str, u32> = BTreeMap::new();
        for n in candidates {
            if n.gpus.iter().filter(|g| fits_gpu(c, n, g)).count() as u32 >= spec.gpus {
                *per_site.entry(n.site()).or_default() += 1;
            }
        }
        let most = per_site.values().copied().max().unwrap_or(0);
        if most >= spec.nodes {
            return Ok(());
        }
        Err(Rejection::Infeasible(format!(
            "it asks for {} nodes of {} GPUs{} in one site, but no site has more than {most} such nodes",
            spec.nodes,
            spec.gpus,
            describe(c)
        )))
    }

    // ------------------------------------------------------------ nodes

    fn node_connected(
        &mut self,
        name: String,
        gpus: Vec<GpuInfo>,
        agent_version: String,
        at: Millis,
    ) -> Applied {
        let mut effects = vec![];
        let previous = self.nodes.remove(&name);
        let (cordoned, draining) = previous
            .as_ref()
            .map_or((false, false), |n| (n.cordoned, n.draining));
        let labels = previous
            .as_ref()
            .map(|n| n.labels.clone())
            .unwrap_or_default();
        // A fault outlives reconnects: only an admin clears it.
        let faults: BTreeMap<String, GpuFault> = previous
            .iter()
            .flat_map(|n| &n.gpus)
            .filter_map(|g| g.fault.clone().map(|f| (g.info.uuid.clone(), f)))
            .collect();
        let mut held: BTreeMap<String, BTreeMap<JobId, u32>> = previous
            .into_iter()
            .flat_map(|n| Arc::unwrap_or_clone(n).gpus)
            .map(|g| (g.info.uuid, g.holders))
            .collect();
        let gpus: Vec<Gpu> = gpus
            .into_iter()
            .map(|info| Gpu {
                holders: held.remove(&info.uuid).unwrap_or_default(),
                fault: faults.get(&info.uuid).cloned().map(|mut f| {
                    f.reset_seen |= info.healthy;
                    f
                }),
                info,
            })
            .collect();
        let unhealthy: Vec<(String, String)> = gpus
            .iter()
            .filter(|g| !g.info.healthy)
            .map(|g| (g.info.uuid.clone(), g.info.health_reason.clone()))
            .collect();
        self.nodes.insert(
            name.clone(),
            Arc::new(Node {
                name: name.clone(),
                gpus,
                status: NodeStatus::Ready,
                cordoned,
                draining,
                agent_version,
                status_since: at,
                labels,
            }),
        );
        for (uuid, reason) in unhealthy {
            effects.extend(self.fail_gpu(&name, &uuid, reason, at));
        }
        // A job whose GPUs are no longer on the node cannot keep running.
        let vanished: BTreeSet<JobId> = self
            .jobs_on(&name)
            .filter(|j| {
                j.tasks
                    .iter()
                    .filter(|t| t.node == name)
                    .flat_map(|t| &t.gpus)
                    .any(|u| !self.nodes[&name].gpus.iter().any(|g| &g.info.uuid == u))
            })
            .map(|j| j.id)
            .collect();
        for id in vanished {
            let why = TaskEnd::Lost("its GPUs left the node".into());
            effects.extend(self.task_ended(id, &name, why, at));
        }
        Ok((Outcome::Node(name), effects))
    }

    fn node_disconnected(&mut self, name: &str, at: Millis) -> Applied {
        let node = self
            .nodes
            .get_mut(name)
            .map(Arc::make_mut)
            .ok_or_else(|| Rejection::UnknownNode(name.to_string()))?;
        if node.status == NodeStatus::Ready {
            node.status = NodeStatus::Down;
            node.status_since = at;
        }
        Ok((Outcome::Node(name.to_string()), vec![]))
    }

    fn node_lost(&mut self, name: &str, at: Millis) -> Applied {
        let node = self
            .nodes
            .get_mut(name)
            .map(Arc::make_mut)
            .ok_or_else(|| Rejection::UnknownNode(name.to_string()))?;
        if node.status == NodeStatus::Ready {
            // The agent came back before the loss was committed.
            return Ok((Outcome::Node(name.to_string()), vec![]));
        }
        node.status = NodeStatus::Lost;
        node.status_since = at;
        let ids: Vec<JobId> = self.jobs_on(name).map(|j| j.id).collect();
        let why = format!("node {name} was lost");
        let effects = ids
            .into_iter()
            .flat_map(|id| self.task_ended(id, name, TaskEnd::Lost(why.clone()), at))
            .collect();
        Ok((Outcome::Node(name.to_string()), effects))
    }

    fn gpu_health_changed(
        &mut self,
        node: &str,
        uuid: &str,
        healthy: bool,
        reason: String,
        cleared_by: Option<String>,
        at: Millis,
    ) -> Applied {
        let gpu = self.gpu_mut(node, uuid)?;
        let outcome = Outcome::Node(node.to_string());
        if !healthy {
            gpu.info.healthy = false;
            gpu.info.health_reason = reason.clone();
            let effects = self.fail_gpu(node, uuid, reason, at);
            return Ok((outcome, effects));
        }
        match cleared_by {
            None => {
                gpu.info.healthy = true;
                gpu.info.health_reason.clear();
                if let Some(fault) = &mut gpu.fault {
                    fault.reset_seen = true;
                }
            }
            Some(_) => {
                let Some(fault) = &gpu.fault else {
                    return Err(Rejection::GpuNotFaulty {
                        node: node.to_string(),
                        gpu: uuid.to_string(),
                    });
                };
                if !(fault.reset_seen && gpu.info.healthy) {
                    return Err(Rejection::GpuNotReset {
                        node: node.to_string(),
                        gpu: uuid.to_string(),
                        reason: fault.reason.clone(),
                    });
                }
                gpu.fault = None;
            }
        }
        Ok((outcome, vec![]))
    }

    fn gpu_mut(&mut self, node: &str, uuid: &str) -> Result<&mut Gpu, Rejection> {
        self.nodes
            .get_mut(node)
            .map(Arc::make_mut)
            .ok_or_else(|| Rejection::UnknownNode(node.to_string()))?
            .gpus
            .iter_mut()
            .find(|g| g.info.uuid == uuid)
            .ok_or_else(|| Rejection::UnknownGpu {
                node: node.to_string(),
                gpu: uuid.to_string(),
            })
    }

    /// Marks a GPU failed (keeping the time of a fault already recorded)
    /// and orders every job holding it stopped (all of its tasks); their
    /// exits requeue them per their spec.
    fn fail_gpu(&mut self, node: &str, uuid: &str, reason: String, at: Millis) -> Vec<Effect> {
        let Ok(gpu) = self.gpu_mut(node, uuid) else {
            return vec![];
        };
        let reason = if reason.is_empty() {
            "reported unhealthy by its agent".to_string()
        } else {
            reason
        };
        let since = gpu.fault.as_ref().map_or(at, |f| f.since);
        gpu.fault = Some(GpuFault {
            reason: reason.clone(),
            since,
            reset_seen: false,
        });
        let holders: Vec<JobId> = gpu.holders.keys().copied().collect();
        let mut effects = vec![];
        for id in holders {
            let job = self
                .jobs
                .get_mut(&id)
                .map(Arc::make_mut)
                .expect("a GPU's holder exists");
            // A job already on its way out (cancelled, preempted, or
            // stopping after another task ended) ends as it was going to.
            if !matches!(job.state, JobState::Assigned | JobState::Running)
                || job.gpu_fault.is_some()
                || job.ending.is_some()
            {
                continue;
            }
            let why = format!("GPU {uuid} on {node} failed: {reason}");
            job.gpu_fault = Some(why.clone());
            job.reason = format!("{why}; stopping it to requeue");
            // Every task stops, with its grace period: a gang cannot run
            // with one task short.
            effects.extend(lifecycle::stop_tasks(job, &why));
            effects.push(Effect::JobChanged(id));
        }
        effects
    }

    fn set_schedulable(&mut self, name: &str, cordoned: bool, draining: bool) -> Applied {
        let node = self
            .nodes
            .get_mut(name)
            .map(Arc::make_mut)
            .ok_or_else(|| Rejection::UnknownNode(name.to_string()))?;
        node.cordoned = cordoned;
        node.draining = draining;
        Ok((Outcome::Node(name.to_string()), vec![]))
    }
}

/// Whether the GPU is usable (healthy, no fault waiting to be cleared) and
/// meets the job's GPU constraints (model, class, memory).
pub fn fits_gpu(c: &Constraints, node: &Node, g: &Gpu) -> bool {
    g.usable()
        && c.gpu_model.as_deref().is_none_or(|m| g.info.model == m)
        && c.gpu_class
            .as_deref()
            .is_none_or(|k| node.gpu_class(g) == k)
        && g.info.memory_bytes >= c.min_gpu_memory_bytes
}

/// Whether the node meets the job's node constraints (site, data level).
pub fn fits_node(c: &Constraints, node: &Node) -> bool {
    node.labels.data_level >= c.data_level && c.site.as_deref().is_none_or(|s| node.site() == s)
}

/// Bytes of GPU memory for people: whole GiB when exact, else bytes.
fn memory(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{bytes} bytes")
    }
}

fn describe(c: &Constraints) -> String {
    let mut parts = vec![];
    if let Some(m) = &c.gpu_model {
        parts.push(format!("model {m}"));
    }
    if let Some(k) = &c.gpu_class {
        parts.push(format!("class {k}"));
    }
    if c.min_gpu_memory_bytes > 0 {
        parts.push(format!("at least {} GiB", c.min_gpu_memory_bytes >> 30));
    }
    if let Some(s) = &c.site {
        parts.push(format!("in site {s}"));
    }
    if c.data_level > 0 {
        parts.push(format!("certified for data level {}", c.data_level));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}
