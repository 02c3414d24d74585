//! `State::apply`: hands each command to the sub-machine that owns what
//! it changes, keeps the derived indexes exact afterwards, and applies
//! the commands that wrap others (`Audited`, `SubmitOnce`).

use std::sync::Arc;

use super::command::Command;
use super::holdings;
use super::outcome::{Applied, Outcome};
use super::security::{Actor, AuditResult};
use super::types::*;
use super::State;

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
            a.jobs = a.jobs.saturating_add(1);
            let count = match job.state {
                JobState::Succeeded => &mut a.succeeded,
                JobState::Failed => &mut a.failed,
                JobState::Cancelled => &mut a.cancelled,
                _ => &mut a.lost,
            };
            *count = count.saturating_add(1);
            a.usage = a.usage.plus(job.usage);
        }
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
            Command::JobVanished { node, job, reason } => self.job_vanished(&node, job, reason, at),
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
            Command::LabelNode { node, labels } => self.label_node(node, labels),
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

    /// Applies an audited action and records it with its result. A
    /// rejected action changes nothing but its refused-call count.
    fn audited(
        &mut self,
        actor: Actor,
        action: String,
        target: String,
        cmd: Command,
        at: Millis,
    ) -> Applied {
        let applied = self.apply(cmd, at);
        let (target, result) = match &applied {
            Ok((outcome, _)) => {
                let target = match outcome {
                    Outcome::Job(id) if target.is_empty() => {
                        if action == "job.submit" {
                            self.security
                                .owners
                                .insert(*id, Arc::from(actor.token.as_str()));
                        }
                        id.to_string()
                    }
                    Outcome::Jobs { first, count } if target.is_empty() => {
                        let end = first.0.saturating_add(u64::from(*count));
                        let ids = (first.0..end).map(JobId);
                        if action == "job.submit" {
                            for id in ids {
                                self.security
                                    .owners
                                    .insert(id, Arc::from(actor.token.as_str()));
                            }
                        }
                        let last = JobId(end.saturating_sub(1));
                        format!("{first}..{last}")
                    }
                    Outcome::Token(id) if target.is_empty() => id.clone(),
                    _ => target,
                };
                (target, AuditResult::Ok)
            }
            Err(r) => (target, AuditResult::Rejected(r.to_string())),
        };
        self.record_audit(actor, action, target, result, at);
        applied
    }
}
