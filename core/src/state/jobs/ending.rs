//! A run's end: a task started, exited or was lost; the job ends, or is
//! requeued, once every task is gone.

use std::sync::Arc;

use crate::state::ledger;
use crate::state::outcome::{stop_tasks, Applied, Effect, Outcome, Rejection, TaskEnd};
use crate::state::types::*;
use crate::state::State;

impl State {
    /// The job if the log placed an unfinished task of it on `node`.
    pub(in crate::state) fn job_on(&self, node: &str, id: JobId) -> Result<JobId, Rejection> {
        match self.jobs.get(&id) {
            Some(j)
                if j.state.is_placed() && j.tasks.iter().any(|t| t.node == node && !t.finished) =>
            {
                Ok(id)
            }
            Some(_) => Err(Rejection::NotOnNode {
                job: id,
                node: node.to_string(),
            }),
            None => Err(Rejection::UnknownJob(id)),
        }
    }

    /// The node's agent no longer has a job the log placed there.
    pub(in crate::state) fn job_vanished(
        &mut self,
        node: &str,
        id: JobId,
        reason: String,
        at: Millis,
    ) -> Applied {
        let job = self.job_on(node, id)?;
        let effects = self.task_ended(job, node, TaskEnd::Lost(reason), at);
        Ok((Outcome::Job(job), effects))
    }

    pub(in crate::state) fn job_started(
        &mut self,
        node: &str,
        id: JobId,
        started_at: Millis,
    ) -> Applied {
        self.job_on(node, id)?;
        let job = self
            .jobs
            .get_mut(&id)
            .map(Arc::make_mut)
            .ok_or_else(|| lost_task(id, node))?;
        let task = job
            .tasks
            .iter_mut()
            .find(|t| t.node == node)
            .ok_or_else(|| lost_task(id, node))?;
        if task.started {
            return Ok((Outcome::Job(id), vec![]));
        }
        task.started = true;
        // GPU time is charged from the first task's start.
        job.started_at.get_or_insert(started_at);
        if job.state != JobState::Assigned || !job.tasks.iter().all(|t| t.started) {
            return Ok((Outcome::Job(id), vec![]));
        }
        job.state = JobState::Running;
        let nodes: Vec<&str> = job.nodes().collect();
        job.reason = format!("running on {}", nodes.join(", "));
        Ok((Outcome::Job(id), vec![Effect::JobChanged(id)]))
    }

    pub(in crate::state) fn job_exited(
        &mut self,
        node: &str,
        id: JobId,
        exit_code: Option<i32>,
        reason: String,
        finished_at: Millis,
        usage: JobUsage,
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
        // Usage adds up over tasks and attempts.
        let job = self
            .jobs
            .get_mut(&id)
            .map(Arc::make_mut)
            .ok_or_else(|| lost_task(id, node))?;
        job.usage = job.usage.plus(usage);
        let end = TaskEnd::Exited {
            exit_code,
            reason,
            energy_mj: Some(usage.energy_mj).filter(|e| *e > 0),
        };
        let effects = self.task_ended(id, node, end, finished_at);
        Ok((Outcome::Job(id), [vec![forget], effects].concat()))
    }

    /// One task is gone: its GPUs are freed; a failure stops the other
    /// tasks; the job ends once no task is left. Callers name a job they
    /// found; a job not in the table ends nothing (and nothing changes).
    pub(in crate::state) fn task_ended(
        &mut self,
        id: JobId,
        node: &str,
        end: TaskEnd,
        at: Millis,
    ) -> Vec<Effect> {
        let Some(job) = self.jobs.get(&id) else {
            return vec![];
        };
        let ended = ledger::run_end(job, &end);
        let energy = match &end {
            TaskEnd::Exited { energy_mj, .. } => *energy_mj,
            TaskEnd::Lost(_) => None,
        };
        self.record_run(id, node, ended, energy, at);
        self.charge_task(id, at);
        self.release_task(id, node);
        let Some(job) = self.jobs.get_mut(&id).map(Arc::make_mut) else {
            return vec![];
        };
        let index = job.tasks.iter().position(|t| t.node == node);
        let mut released = Host::default();
        if let Some(t) = index.and_then(|i| job.tasks.get_mut(i)) {
            if !t.finished && job.state.is_placed() {
                released = job.spec.host();
            }
            t.finished = true;
        }
        let failure = match end {
            TaskEnd::Exited {
                exit_code: Some(0), ..
            } => None,
            TaskEnd::Exited {
                exit_code, reason, ..
            } => Some(Ending::Failed {
                exit_code,
                reason: match (reason.is_empty(), exit_code) {
                    (false, _) => reason,
                    (true, Some(code)) => format!("exited with code {code}"),
                    (true, None) => "ended without an exit code".into(),
                },
            }),
            TaskEnd::Lost(reason) => Some(Ending::Lost { reason }),
        };
        let mut effects = vec![];
        if let Some(failure) = failure {
            if job.ending.is_none() {
                let gang = job.tasks.len() > 1;
                job.ending = Some(match failure {
                    // Name the task so a person knows which node failed.
                    Ending::Failed { exit_code, reason } if gang => Ending::Failed {
                        exit_code,
                        reason: format!("task {} on {node}: {reason}", index.unwrap_or(0)),
                    },
                    Ending::Lost { reason } if gang => Ending::Lost {
                        reason: format!("task {} on {node}: {reason}", index.unwrap_or(0)),
                    },
                    f => f,
                });
                // A GPU fault has already stopped every task.
                if matches!(job.state, JobState::Assigned | JobState::Running)
                    && job.gpu_fault.is_none()
                {
                    let why = "another task of the job ended";
                    effects.extend(stop_tasks(job, why));
                }
            }
        }
        let others_live = job.tasks.iter().any(|t| !t.finished);
        self.release_host(node, released);
        if others_live {
            return effects;
        }
        effects.extend(self.finish(id, at));
        effects
    }

    /// Every task is gone: the job ends, or goes back to the queue.
    fn finish(&mut self, id: JobId, at: Millis) -> Vec<Effect> {
        let Some(job) = self.jobs.get_mut(&id).map(Arc::make_mut) else {
            return vec![];
        };
        let preempted = job.state == JobState::Preempting;
        if preempted {
            job.preemptions = job.preemptions.saturating_add(1);
        }
        // Stopped because a GPU failed: unless every task finished on its
        // own first (exit 0), the run ends like a lost one, under the GPU's
        // reason; without retries the job fails.
        let gpu_fault = job.gpu_fault.take().filter(|_| job.ending.is_some());
        let requeue = match (&job.ending, job.state) {
            (_, JobState::Cancelling) => false,
            (_, JobState::Preempting) => job.spec.requeue_on_preempt,
            (Some(Ending::Lost { .. }), _) => {
                job.spec.on_node_lost == OnNodeLost::Requeue && job.attempt <= job.spec.max_retries
            }
            (Some(Ending::Failed { .. }), _) if gpu_fault.is_some() => {
                job.spec.on_node_lost == OnNodeLost::Requeue && job.attempt <= job.spec.max_retries
            }
            _ => false,
        };
        let why = match (&gpu_fault, &job.ending) {
            (Some(why), _) => why.clone(),
            (None, Some(Ending::Lost { reason })) => reason.clone(),
            (None, Some(Ending::Failed { reason, .. })) => reason.clone(),
            (None, None) => job.reason.clone(),
        };
        if requeue {
            job.attempt = job.attempt.saturating_add(1);
            job.state = JobState::Pending;
            job.started_at = None;
            job.gpu_class = None;
            // The finished tasks stay until the next placement, so the
            // last run's logs can still be found on its nodes.
            job.queued_at = at;
            job.ending = None;
            job.reclaimed = false;
            job.claimed_at = None;
            job.placed_at = None;
            job.reason = format!("{why}; requeued (attempt {})", job.attempt);
            self.pending.insert(id);
            self.queues.add(job);
            self.placed.remove(&id);
            return vec![Effect::JobChanged(id)];
        }
        let (state, exit_code, reason) = match (job.state, job.ending.take()) {
            (JobState::Cancelling, _) => (JobState::Cancelled, None, job.reason.clone()),
            (JobState::Preempting, _) => (JobState::Failed, None, job.reason.clone()),
            (_, Some(Ending::Lost { .. })) if gpu_fault.is_some() => (JobState::Failed, None, why),
            (_, Some(Ending::Failed { exit_code, .. })) if gpu_fault.is_some() => {
                (JobState::Failed, exit_code, why)
            }
            (_, Some(Ending::Lost { reason })) => (JobState::Lost, None, reason),
            (_, Some(Ending::Failed { exit_code, reason })) => {
                (JobState::Failed, exit_code, reason)
            }
            (_, None) => (JobState::Succeeded, Some(0), "completed".into()),
        };
        job.state = state;
        job.exit_code = exit_code;
        job.reason = reason;
        job.finished_at = Some(at);
        job.started_at.get_or_insert(at);
        self.placed.remove(&id);
        vec![Effect::JobChanged(id)]
    }

    fn release_task(&mut self, id: JobId, node: &str) {
        if let Some(n) = self.nodes.get_mut(node).map(Arc::make_mut) {
            for g in n.gpus.iter_mut() {
                g.holders.remove(&id);
            }
        }
    }

    /// Gives a finished task's CPU and memory back to its node.
    fn release_host(&mut self, node: &str, host: Host) {
        if host == Host::default() {
            return;
        }
        if let Some(n) = self.nodes.get_mut(node).map(Arc::make_mut) {
            n.host_held = n.host_held.minus(host);
        }
    }
}

/// What `job_on` found and the job table then lacked: a broken invariant.
fn lost_task(id: JobId, node: &str) -> Rejection {
    Rejection::inconsistent(format!(
        "job {id} is placed on node '{node}' but its task there is missing"
    ))
}
