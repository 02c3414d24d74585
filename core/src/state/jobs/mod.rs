//! A job's life in the state machine: submitted, placed (one task per
//! node), started, stopped, ended, and requeued.
//!
//! A job of several tasks (a gang) runs when all its tasks have started
//! and succeeds when all exit 0. When one task fails or is lost the others
//! are stopped, and the job ends (or is requeued) once every task is gone.

//!
//! The sub-machine of jobs: submission and placement here, a run's end
//! in `ending`, whether any node could ever run a job in `feasible`. It
//! draws on the ledger (a run's record), tenants and security (the kill
//! switch), never on nodes.

mod ending;
mod feasible;

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use feasible::{cpu as show_cpu, fits_gpu, fits_node, memory as show_memory};

use super::outcome::{stop_tasks, Applied, Effect, Outcome, Rejection};
use super::types::*;
use super::usage;
use super::State;

/// Where one task of a job goes: a node and GPUs on it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskPlacement {
    pub node: String,
    pub gpus: Vec<String>,
}

/// The most jobs one array may hold in the state (the API's limit is at
/// most this): one log entry creates them all in one apply.
pub const MAX_ARRAY: u32 = 100_000;
/// Environment of each job of an array: its index (0 to size - 1), the
/// array's size, and the first job's id, which names the array.
pub const ARRAY_INDEX_ENV: &str = "EDUPOOL_ARRAY_INDEX";
pub const ARRAY_SIZE_ENV: &str = "EDUPOOL_ARRAY_SIZE";
pub const ARRAY_JOB_ID_ENV: &str = "EDUPOOL_ARRAY_JOB_ID";

/// Sets every node's `host_held` from the placed jobs' live tasks: what
/// `apply` keeps exact, computed afresh when a state is loaded.
pub(in crate::state) fn rebuild_host_held<'j>(
    nodes: &mut super::free::Nodes,
    placed: impl Iterator<Item = &'j Job>,
) {
    let mut held: std::collections::BTreeMap<&str, Host> = Default::default();
    for job in placed.filter(|j| j.state.is_placed()) {
        for t in job.tasks.iter().filter(|t| !t.finished) {
            let h = held.entry(t.node.as_str()).or_default();
            *h = h.plus(job.spec.host());
        }
    }
    for (name, node) in nodes.iter_mut() {
        let want = held.get(name.as_str()).copied().unwrap_or_default();
        if node.host_held != want {
            Arc::make_mut(node).host_held = want;
        }
    }
}

impl State {
    pub(super) fn submit_job(&mut self, tenant: String, spec: JobSpec, at: Millis) -> Applied {
        self.check_submit(&tenant, &spec, at)?;
        self.mix.record(&spec, u64::from(spec.nodes.max(1)));
        let id = self.queue_new_job(tenant, spec, at);
        Ok((Outcome::Job(id), vec![Effect::JobChanged(id)]))
    }

    /// Submits `count` jobs of one spec, or none: what could refuse one
    /// (the tenant, the pool, the budget) is the same for all, so it is
    /// checked once before any is created.
    pub(super) fn submit_array(
        &mut self,
        tenant: String,
        spec: JobSpec,
        count: u32,
        at: Millis,
    ) -> Applied {
        if count == 0 || count > MAX_ARRAY {
            return Err(Rejection::BadArraySize {
                count,
                max: MAX_ARRAY,
            });
        }
        self.check_submit(&tenant, &spec, at)?;
        self.mix
            .record(&spec, u64::from(count) * u64::from(spec.nodes.max(1)));
        let first = JobId(self.last_job + 1);
        let mut effects = Vec::with_capacity(count as usize);
        for index in 0..count {
            let mut spec = spec.clone();
            spec.env.insert(ARRAY_INDEX_ENV.into(), index.to_string());
            spec.env.insert(ARRAY_SIZE_ENV.into(), count.to_string());
            spec.env.insert(ARRAY_JOB_ID_ENV.into(), first.to_string());
            let id = self.queue_new_job(tenant.clone(), spec, at);
            effects.push(Effect::JobChanged(id));
        }
        Ok((Outcome::Jobs { first, count }, effects))
    }

    fn check_submit(&self, tenant: &str, spec: &JobSpec, at: Millis) -> Result<(), Rejection> {
        if !self.tenants.contains_key(tenant) {
            return Err(Rejection::UnknownTenant(tenant.to_string()));
        }
        if let Some(s) = self.suspension(tenant) {
            return Err(Rejection::TenantSuspended {
                reason: s.reason.clone(),
                tenant: tenant.to_string(),
            });
        }
        self.check_feasible(spec)?;
        self.check_budget(tenant, spec, at)
    }

    /// Adds a new pending job with the next id.
    fn queue_new_job(&mut self, tenant: String, spec: JobSpec, at: Millis) -> JobId {
        self.last_job += 1;
        let id = JobId(self.last_job);
        let job = Arc::new(Job {
            id,
            tenant,
            spec,
            state: JobState::Pending,
            tasks: vec![],
            exit_code: None,
            reason: "waiting for GPUs".into(),
            submitted_at: at,
            started_at: None,
            finished_at: None,
            attempt: 1,
            gpu_class: None,
            preemptions: 0,
            queued_at: at,
            placed_at: None,
            capacity: Capacity::default(),
            reclaimed: false,
            claimed_at: None,
            ending: None,
            usage: JobUsage::default(),
            gpu_fault: None,
        });
        self.queues.add(&job);
        self.jobs.insert(id, job);
        self.pending.insert(id);
        self.live.insert(id);
        id
    }

    pub(super) fn cancel_job(
        &mut self,
        tenant: Option<&str>,
        id: JobId,
        reason: String,
        at: Millis,
    ) -> Applied {
        let job = self
            .jobs
            .get_mut(&id)
            // Another tenant's job is reported as absent, never as forbidden.
            .filter(|j| tenant.is_none_or(|t| j.tenant == t))
            .map(Arc::make_mut)
            .ok_or(Rejection::UnknownJob(id))?;
        let reason = if reason.is_empty() {
            "cancelled".to_string()
        } else {
            format!("cancelled: {reason}")
        };
        match job.state {
            s if s.is_final() => Err(Rejection::JobFinished {
                job: id,
                state: s.name(),
            }),
            JobState::Pending => {
                job.state = JobState::Cancelled;
                job.reason = reason;
                job.finished_at = Some(at);
                self.pending.remove(&id);
                self.queues.remove(job);
                Ok((Outcome::Job(id), vec![Effect::JobChanged(id)]))
            }
            JobState::Cancelling => Ok((Outcome::Job(id), vec![])),
            _ => {
                job.state = JobState::Cancelling;
                job.reason = reason.clone();
                let mut effects = stop_tasks(job, &reason);
                effects.push(Effect::JobChanged(id));
                Ok((Outcome::Job(id), effects))
            }
        }
    }

    /// Re-checks a planner decision against the state it is applied to,
    /// so a stale one is rejected whole and nothing is half-placed.
    pub(super) fn place_job(
        &mut self,
        id: JobId,
        tasks: Vec<TaskPlacement>,
        capacity: Capacity,
        at: Millis,
    ) -> Applied {
        let job = self.jobs.get(&id).ok_or(Rejection::UnknownJob(id))?;
        if job.state != JobState::Pending {
            return Err(Rejection::NotPending {
                job: id,
                state: job.state.name(),
            });
        }
        if let Some(s) = self.suspension(&job.tenant) {
            return Err(Rejection::TenantSuspended {
                tenant: job.tenant.clone(),
                reason: s.reason.clone(),
            });
        }
        let spec = &job.spec;
        let first = tasks.first().map(|t| t.node.clone()).unwrap_or_default();
        let bad = |node: &str, why: String| Rejection::BadPlacement {
            job: id,
            node: node.to_string(),
            why,
        };
        if tasks.len() != spec.nodes.max(1) as usize {
            return Err(bad(
                &first,
                format!(
                    "{} tasks given for a job of {} nodes",
                    tasks.len(),
                    spec.nodes.max(1)
                ),
            ));
        }
        let distinct: BTreeSet<&str> = tasks.iter().map(|t| t.node.as_str()).collect();
        if distinct.len() != tasks.len() {
            return Err(bad(&first, "two tasks on one node".into()));
        }
        let mut class: Option<String> = None;
        let mut site: Option<&str> = None;
        let mut owners = Vec::with_capacity(tasks.len());
        for t in &tasks {
            let (c, node) = self.check_task(job, t)?;
            if class.get_or_insert_with(|| c.clone()) != &c {
                return Err(bad(
                    &t.node,
                    "the tasks' GPUs are of different classes".into(),
                ));
            }
            let s = node.site();
            if *site.get_or_insert(s) != s {
                return Err(bad(&t.node, "the tasks span more than one site".into()));
            }
            owners.push(node.labels.owner.clone());
        }
        // Everything is checked: from here on nothing refuses, so nothing
        // is half-placed.
        let milli = spec.milli_per_gpu();
        let host = spec.host();
        let tenant = job.tenant.clone();
        let own = owners.iter().all(|o| o.as_deref() == Some(tenant.as_str()));
        let placed: Vec<Task> = tasks
            .into_iter()
            .zip(owners)
            .map(|(t, owner)| Task {
                node: t.node,
                gpus: t.gpus,
                lender: owner.filter(|o| *o != tenant),
                started: false,
                finished: false,
            })
            .collect();
        let Some(job) = self.jobs.get_mut(&id).map(Arc::make_mut) else {
            return Err(Rejection::inconsistent(format!("job {id} vanished")));
        };
        for t in &placed {
            // Each node was found by `check_task` above.
            let Some(node) = self.nodes.get_mut(&t.node).map(Arc::make_mut) else {
                continue;
            };
            for g in node
                .gpus
                .iter_mut()
                .filter(|g| t.gpus.contains(&g.info.uuid))
            {
                g.holders.insert(id, milli);
            }
            node.host_held = node.host_held.plus(host);
        }
        job.capacity = match capacity {
            Capacity::Guaranteed if own => Capacity::Own,
            Capacity::Own if !own => Capacity::Guaranteed,
            c => c,
        };
        let nodes: Vec<&str> = placed.iter().map(|t| t.node.as_str()).collect();
        job.reason = format!("assigned to {}", nodes.join(", "));
        let effects = placed
            .iter()
            .map(|t| Effect::StartJob {
                node: t.node.clone(),
                job: id,
            })
            .chain([Effect::JobChanged(id)])
            .collect();
        job.state = JobState::Assigned;
        job.tasks = placed;
        // A CPU-only job holds no GPU, so no class.
        job.gpu_class = class.filter(|c| !c.is_empty());
        job.placed_at = Some(at);
        job.ending = None;
        self.pending.remove(&id);
        self.queues.remove(job);
        self.placed.insert(id);
        Ok((Outcome::Job(id), effects))
    }

    /// Checks one task of a placement; returns the GPU class it would use.
    fn check_task<'a>(
        &'a self,
        job: &Job,
        t: &TaskPlacement,
    ) -> Result<(String, &'a Node), Rejection> {
        let bad = |why: String| Rejection::BadPlacement {
            job: job.id,
            node: t.node.clone(),
            why,
        };
        let node = self
            .nodes
            .get(&t.node)
            .ok_or_else(|| Rejection::UnknownNode(t.node.clone()))?;
        if !node.schedulable() {
            return Err(bad("the node is not schedulable".into()));
        }
        if t.gpus.len() != job.spec.gpus as usize {
            return Err(bad(format!(
                "{} GPUs given for a task of {}",
                t.gpus.len(),
                job.spec.gpus
            )));
        }
        let unique: BTreeSet<&String> = t.gpus.iter().collect();
        if unique.len() != t.gpus.len() {
            return Err(bad("a GPU is listed twice".into()));
        }
        if !fits_node(&job.spec.constraints, node) {
            return Err(bad("the node does not meet the job's constraints".into()));
        }
        if !node.runs(&job.spec) {
            return Err(bad(match &job.spec.image {
                Some(image) => format!("it does not have image {image}"),
                None => "it does not run jobs without an image".into(),
            }));
        }
        let (free, want) = (node.host_free(), job.spec.host());
        if let Some(short) = free.short_of(want) {
            return Err(bad(match short {
                HostDimension::Cpu => format!(
                    "it has {} CPU millicores free, {} needed",
                    free.cpu_millicores, want.cpu_millicores
                ),
                HostDimension::Memory => format!(
                    "it has {} bytes of memory free, {} needed",
                    free.memory_bytes, want.memory_bytes
                ),
            }));
        }
        let milli = job.spec.milli_per_gpu();
        let mut class: Option<String> = None;
        for uuid in &t.gpus {
            let g = node
                .gpus
                .iter()
                .find(|g| &g.info.uuid == uuid)
                .ok_or_else(|| bad(format!("it has no GPU {uuid}")))?;
            if !g.usable() {
                return Err(bad(format!("GPU {uuid} is unhealthy")));
            }
            if g.free_milli() < milli {
                let holders: Vec<String> = g.holders.keys().map(|j| j.to_string()).collect();
                return Err(bad(if milli == WHOLE_GPU {
                    format!("GPU {uuid} is held by {}", holders.join(", "))
                } else {
                    format!(
                        "GPU {uuid} has {} thousandths free, {milli} needed (held by {})",
                        g.free_milli(),
                        holders.join(", ")
                    )
                }));
            }
            if !fits_gpu(&job.spec.constraints, node, g) {
                return Err(bad(format!(
                    "GPU {uuid} does not meet the job's constraints"
                )));
            }
            let c = node.gpu_class(g).to_string();
            if class.get_or_insert_with(|| c.clone()) != &c {
                return Err(bad("the GPUs are of different classes".into()));
            }
        }
        Ok((class.unwrap_or_default(), node))
    }

    pub(super) fn preempt_job(
        &mut self,
        id: JobId,
        reason: String,
        for_job: Option<JobId>,
        at: Millis,
    ) -> Applied {
        if let Some(claimant) = for_job {
            match self.jobs.get(&claimant) {
                Some(j) if j.state == JobState::Pending => {}
                Some(j) => {
                    return Err(Rejection::NotPending {
                        job: claimant,
                        state: j.state.name(),
                    })
                }
                None => return Err(Rejection::UnknownJob(claimant)),
            }
        }
        let job = self
            .jobs
            .get_mut(&id)
            .map(Arc::make_mut)
            .ok_or(Rejection::UnknownJob(id))?;
        let why = |why: &str| Rejection::NotPreemptible {
            job: id,
            why: why.to_string(),
        };
        if job.spec.class == JobClass::Inference {
            return Err(why("inference jobs are never preempted"));
        }
        if !matches!(job.state, JobState::Assigned | JobState::Running) || job.ending.is_some() {
            return Err(why(&format!("it is {}", job.state.name())));
        }
        job.state = JobState::Preempting;
        job.reason = reason.clone();
        let mut effects = stop_tasks(job, &reason);
        effects.push(Effect::JobChanged(id));
        // Its wait from now on counts as reclaim latency.
        if let Some(claimant) = for_job.and_then(|c| self.jobs.get_mut(&c).map(Arc::make_mut)) {
            claimant.reclaimed = true;
            claimant.claimed_at.get_or_insert(at);
            self.queues.claim(claimant);
        }
        Ok((Outcome::Job(id), effects))
    }

    /// Adds one task's GPU time, up to `until`, to its tenant's usage.
    fn charge_task(&mut self, id: JobId, until: Millis) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let Some(started) = job.started_at else {
            return;
        };
        let ms = u64::try_from(until.saturating_sub(started)).unwrap_or(0);
        let charge = usage::weighted_gpu_ms(ms, job.spec.task_milli(), job.spec.class);
        let half_life = self.policy.half_life_ms;
        if let Some(t) = self.tenants.get_mut(&job.tenant) {
            t.usage.add(until, half_life, charge);
        }
    }
}
