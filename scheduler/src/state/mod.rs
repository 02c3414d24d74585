//! The replicated state machine: pure and synchronous.
//!
//! `State::apply(cmd, at)` is the only way the pool changes. It performs no
//! I/O and reads no clock: `at` is the time stamped on the log entry, so
//! every replica that applies the same log ends in the same state.

mod command;
mod types;

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod tests_support;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use command::{Command, Effect, Outcome, Rejection};
pub use types::*;

/// The result of applying one command: an outcome and effects, or a
/// rejection that changed nothing.
pub type Applied = Result<(Outcome, Vec<Effect>), Rejection>;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    tenants: BTreeMap<String, Tenant>,
    /// SHA-256 of a tenant token (hex) -> tenant name.
    tokens: BTreeMap<String, String>,
    nodes: BTreeMap<String, Node>,
    jobs: BTreeMap<JobId, Job>,
    /// Jobs waiting for GPUs, in submission order.
    pending: BTreeSet<JobId>,
    last_job: u64,
}

impl State {
    pub fn apply(&mut self, cmd: Command, at: Millis) -> Applied {
        match cmd {
            Command::CreateTenant { name, token_hash } => self.create_tenant(name, token_hash, at),
            Command::SubmitJob { tenant, spec } => self.submit_job(tenant, spec, at),
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
            Command::PlaceJob { job, node, gpus } => self.place_job(job, &node, gpus),
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
                let effects = self.lose_job(job, &node, &reason, at);
                Ok((Outcome::Job(job), effects))
            }
            Command::GpuHealthChanged {
                node,
                gpu,
                healthy,
                reason,
                cleared_by,
            } => self.gpu_health_changed(&node, &gpu, healthy, reason, cleared_by, at),
        }
    }

    // ------------------------------------------------------------ reads

    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.get(name)
    }

    pub fn tenants(&self) -> impl Iterator<Item = &Tenant> {
        self.tenants.values()
    }

    pub fn tenant_by_token_hash(&self, hash: &str) -> Option<&str> {
        self.tokens.get(hash).map(String::as_str)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    /// Pending jobs in submission order.
    pub fn pending_jobs(&self) -> impl Iterator<Item = &Job> {
        self.pending.iter().map(|id| &self.jobs[id])
    }

    /// Jobs that hold GPUs on `node`.
    pub fn jobs_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Job> + 'a {
        self.jobs
            .values()
            .filter(move |j| j.state.is_placed() && j.node.as_deref() == Some(node))
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
            },
        );
        Ok((Outcome::Tenant(name), vec![]))
    }

    // ------------------------------------------------------------ jobs

    fn submit_job(&mut self, tenant: String, spec: JobSpec, at: Millis) -> Applied {
        if !self.tenants.contains_key(&tenant) {
            return Err(Rejection::UnknownTenant(tenant));
        }
        let largest = self
            .nodes
            .values()
            .map(|n| n.gpus.len() as u32)
            .max()
            .ok_or(Rejection::PoolEmpty)?;
        if spec.gpus > largest {
            return Err(Rejection::NoNodeCanHold {
                requested: spec.gpus,
                largest,
            });
        }
        self.last_job += 1;
        let id = JobId(self.last_job);
        self.jobs.insert(
            id,
            Job {
                id,
                tenant,
                spec,
                state: JobState::Pending,
                node: None,
                gpus: vec![],
                exit_code: None,
                reason: "waiting for GPUs".into(),
                submitted_at: at,
                started_at: None,
                finished_at: None,
                attempt: 1,
                usage: Usage::default(),
                gpu_fault: None,
            },
        );
        self.pending.insert(id);
        Ok((Outcome::Job(id), vec![Effect::JobChanged(id)]))
    }

    fn cancel_job(
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
                Ok((Outcome::Job(id), vec![Effect::JobChanged(id)]))
            }
            JobState::Cancelling => Ok((Outcome::Job(id), vec![])),
            _ => {
                job.state = JobState::Cancelling;
                job.reason = reason.clone();
                let node = job.node.clone().expect("a placed job has a node");
                let grace_secs = job.spec.grace_period_secs;
                Ok((
                    Outcome::Job(id),
                    vec![
                        Effect::StopJob {
                            node,
                            job: id,
                            grace_secs,
                            reason,
                        },
                        Effect::JobChanged(id),
                    ],
                ))
            }
        }
    }

    fn place_job(&mut self, id: JobId, node_name: &str, gpus: Vec<String>) -> Applied {
        let job = self.jobs.get(&id).ok_or(Rejection::UnknownJob(id))?;
        if job.state != JobState::Pending {
            return Err(Rejection::NotPending {
                job: id,
                state: job.state.name(),
            });
        }
        let bad = |why: String| Rejection::BadPlacement {
            job: id,
            node: node_name.to_string(),
            why,
        };
        let node = self
            .nodes
            .get_mut(node_name)
            .ok_or_else(|| Rejection::UnknownNode(node_name.to_string()))?;
        if !node.schedulable() {
            return Err(bad("the node is not schedulable".into()));
        }
        if gpus.len() != job.spec.gpus as usize {
            return Err(bad(format!(
                "{} GPUs given for a job of {}",
                gpus.len(),
                job.spec.gpus
            )));
        }
        let unique: BTreeSet<&String> = gpus.iter().collect();
        if unique.len() != gpus.len() {
            return Err(bad("the same GPU is listed twice".into()));
        }
        for uuid in &gpus {
            match node.gpus.iter().find(|g| &g.info.uuid == uuid) {
                None => return Err(bad(format!("no GPU {uuid} on the node"))),
                Some(g) if !g.usable() => return Err(bad(format!("GPU {uuid} is unhealthy"))),
                Some(Gpu {
                    assigned: Some(other),
                    ..
                }) => return Err(bad(format!("GPU {uuid} is held by {other}"))),
                Some(_) => {}
            }
        }
        for g in node.gpus.iter_mut().filter(|g| gpus.contains(&g.info.uuid)) {
            g.assigned = Some(id);
        }
        let job = self.jobs.get_mut(&id).expect("checked above");
        job.state = JobState::Assigned;
        job.node = Some(node_name.to_string());
        job.gpus = gpus;
        job.reason = format!("assigned to {node_name}");
        self.pending.remove(&id);
        Ok((
            Outcome::Job(id),
            vec![
                Effect::StartJob {
                    node: node_name.to_string(),
                    job: id,
                },
                Effect::JobChanged(id),
            ],
        ))
    }

    /// The job if the log placed it on `node`.
    fn job_on(&self, node: &str, id: JobId) -> Result<JobId, Rejection> {
        match self.jobs.get(&id) {
            Some(j) if j.state.is_placed() && j.node.as_deref() == Some(node) => Ok(id),
            Some(_) => Err(Rejection::NotOnNode {
                job: id,
                node: node.to_string(),
            }),
            None => Err(Rejection::UnknownJob(id)),
        }
    }

    fn job_started(&mut self, node: &str, id: JobId, started_at: Millis) -> Applied {
        self.job_on(node, id)?;
        let job = self.jobs.get_mut(&id).expect("checked by job_on");
        if job.state != JobState::Assigned {
            return Ok((Outcome::Job(id), vec![]));
        }
        job.state = JobState::Running;
        job.started_at = Some(started_at);
        job.reason = format!("running on {node}");
        Ok((Outcome::Job(id), vec![Effect::JobChanged(id)]))
    }

    fn job_exited(
        &mut self,
        node: &str,
        id: JobId,
        exit_code: Option<i32>,
        reason: String,
        finished_at: Millis,
        usage: Usage,
    ) -> Applied {
        let forget = Effect::ForgetJob {
            node: node.to_string(),
            job: id,
        };
        // A report for a job the log no longer places here (a repeated
        // report after a reconnect) changes nothing, but the agent may
        // still drop its record.
        if self.job_on(node, id).is_err() {
            return Ok((Outcome::None, vec![forget]));
        }
        let job = self.jobs.get_mut(&id).expect("checked by job_on");
        job.usage = job.usage.plus(usage);
        if let Some(why) = job.gpu_fault.clone() {
            // Stopped because a GPU failed: unless it finished on its own
            // first, the run does not count as the job's end.
            if job.state != JobState::Cancelling && exit_code != Some(0) {
                let mut effects = vec![forget];
                effects.extend(self.retry_or_end(id, node, &why, finished_at, JobState::Failed));
                if let Some(job) = self.jobs.get_mut(&id).filter(|j| j.state.is_final()) {
                    job.exit_code = exit_code;
                }
                return Ok((Outcome::Job(id), effects));
            }
        }
        let job = self.jobs.get_mut(&id).expect("checked by job_on");
        job.gpu_fault = None;
        job.state = match (job.state, exit_code) {
            (JobState::Cancelling, _) => JobState::Cancelled,
            (_, Some(0)) => JobState::Succeeded,
            _ => JobState::Failed,
        };
        if job.state != JobState::Cancelled {
            job.reason = match (reason.is_empty(), exit_code) {
                (false, _) => reason,
                (true, Some(0)) => "completed".into(),
                (true, Some(code)) => format!("exited with code {code}"),
                (true, None) => "ended without an exit code".into(),
            };
        }
        job.exit_code = exit_code;
        job.finished_at = Some(finished_at);
        job.started_at.get_or_insert(finished_at);
        self.release_gpus(node, id);
        Ok((Outcome::Job(id), vec![forget, Effect::JobChanged(id)]))
    }

    /// A placed job whose process is gone without an exit status: requeue
    /// it if its spec allows, otherwise it ends as lost.
    fn lose_job(&mut self, id: JobId, node: &str, why: &str, at: Millis) -> Vec<Effect> {
        self.retry_or_end(id, node, why, at, JobState::Lost)
    }

    /// Frees the job's GPUs, then requeues it if its spec allows (the same
    /// rule as a node loss), or ends it in `end` (a job being cancelled
    /// ends cancelled).
    fn retry_or_end(
        &mut self,
        id: JobId,
        node: &str,
        why: &str,
        at: Millis,
        end: JobState,
    ) -> Vec<Effect> {
        self.release_gpus(node, id);
        let job = self.jobs.get_mut(&id).expect("caller checked");
        job.gpu_fault = None;
        let requeue = job.spec.on_node_lost == OnNodeLost::Requeue
            && job.attempt <= job.spec.max_retries
            && job.state != JobState::Cancelling;
        job.node = None;
        job.gpus.clear();
        if requeue {
            job.attempt += 1;
            job.state = JobState::Pending;
            job.started_at = None;
            job.reason = format!("{why}; requeued (attempt {})", job.attempt);
            self.pending.insert(id);
        } else {
            job.state = if job.state == JobState::Cancelling {
                JobState::Cancelled
            } else {
                end
            };
            job.reason = why.to_string();
            job.finished_at = Some(at);
        }
        vec![Effect::JobChanged(id)]
    }

    fn release_gpus(&mut self, node: &str, id: JobId) {
        if let Some(n) = self.nodes.get_mut(node) {
            for g in n.gpus.iter_mut().filter(|g| g.assigned == Some(id)) {
                g.assigned = None;
            }
        }
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
        let held: BTreeMap<String, JobId> = previous
            .iter()
            .flat_map(|n| &n.gpus)
            .filter_map(|g| g.assigned.map(|j| (g.info.uuid.clone(), j)))
            .collect();
        // A fault outlives reconnects: only an admin clears it.
        let faults: BTreeMap<String, GpuFault> = previous
            .iter()
            .flat_map(|n| &n.gpus)
            .filter_map(|g| g.fault.clone().map(|f| (g.info.uuid.clone(), f)))
            .collect();
        let gpus: Vec<Gpu> = gpus
            .into_iter()
            .map(|info| Gpu {
                assigned: held.get(&info.uuid).copied(),
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
            Node {
                name: name.clone(),
                gpus,
                status: NodeStatus::Ready,
                cordoned,
                draining,
                agent_version,
                status_since: at,
            },
        );
        for (uuid, reason) in unhealthy {
            effects.extend(self.fail_gpu(&name, &uuid, reason, at));
        }
        // A job whose GPUs are no longer on the node cannot keep running.
        let vanished: BTreeSet<JobId> = self
            .jobs_on(&name)
            .filter(|j| {
                j.gpus
                    .iter()
                    .any(|u| !self.nodes[&name].gpus.iter().any(|g| &g.info.uuid == u))
            })
            .map(|j| j.id)
            .collect();
        for id in vanished {
            effects.extend(self.lose_job(id, &name, "its GPUs left the node", at));
        }
        Ok((Outcome::Node(name), effects))
    }

    fn node_disconnected(&mut self, name: &str, at: Millis) -> Applied {
        let node = self
            .nodes
            .get_mut(name)
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
            .flat_map(|id| self.lose_job(id, name, &why, at))
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
    /// and orders the job on it stopped; its exit requeues it.
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
        let Some(id) = gpu.assigned else {
            return vec![];
        };
        let job = self
            .jobs
            .get_mut(&id)
            .expect("an assigned GPU's job exists");
        if !matches!(job.state, JobState::Assigned | JobState::Running) || job.gpu_fault.is_some() {
            return vec![];
        }
        let why = format!("GPU {uuid} on {node} failed: {reason}");
        job.gpu_fault = Some(why.clone());
        job.reason = format!("{why}; stopping it to requeue");
        vec![
            Effect::StopJob {
                node: node.to_string(),
                job: id,
                grace_secs: job.spec.grace_period_secs,
                reason: why,
            },
            Effect::JobChanged(id),
        ]
    }

    fn set_schedulable(&mut self, name: &str, cordoned: bool, draining: bool) -> Applied {
        let node = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| Rejection::UnknownNode(name.to_string()))?;
        node.cordoned = cordoned;
        node.draining = draining;
        Ok((Outcome::Node(name.to_string()), vec![]))
    }
}
