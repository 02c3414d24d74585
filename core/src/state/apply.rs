//! `State::apply`: hands each command to the sub-machine that owns what
//! it changes, keeps the state's own derived sets exact afterwards, says
//! what a command reaches (so the planner's indexes beside the state can
//! be kept), and applies the commands that wrap others (`Audited`,
//! `SubmitOnce`).

use std::sync::Arc;

use super::command::Command;
use super::nodes::NodeSoftware;
use super::outcome::{Applied, Outcome};
use super::security::{Actor, AuditResult};
use super::types::*;
use super::State;

/// What a command may change besides tenants, tokens and prices: what
/// the owner of derived indexes must refresh after it (`indexed`), and
/// what `State::apply` checks to keep `live` and `done` exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// No placed job and no node: nothing the indexes hold (a submission
    /// adds its job to `live` and its queue itself).
    Nothing,
    /// At most the job it names, and the free capacity of its nodes.
    Job(JobId),
    /// Nodes or GPUs themselves, and through them any job on them.
    Nodes,
}

impl Command {
    /// What applying this command may touch. A command that wraps another
    /// (`Audited`, `SubmitOnce`) reaches what the wrapped one reaches: its
    /// own record (an audit entry, a request id) is in no index.
    pub fn reach(&self) -> Reach {
        match self {
            Command::CancelJob { job, .. }
            | Command::PlaceJob { job, .. }
            | Command::JobStarted { job, .. }
            | Command::JobExited { job, .. }
            | Command::JobVanished { job, .. }
            | Command::PreemptJob { job, .. } => Reach::Job(*job),
            Command::Audited { cmd, .. } | Command::SubmitOnce { cmd, .. } => cmd.reach(),
            Command::CreateTenant { .. }
            | Command::AssignUidOffsets
            | Command::StartMixTally
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
            | Command::RecordAudit { .. } => Reach::Nothing,
            _ => Reach::Nodes,
        }
    }
}

impl State {
    /// Applies `cmd`, stamped `at`. It keeps the state's own derived sets
    /// (`live`, `done`, `placed`, the queues) exact; the planner's indexes
    /// live beside the state and are kept by their owner from
    /// [`Command::reach`] (see `Indexed`).
    pub fn apply(&mut self, cmd: Command, at: Millis) -> Applied {
        let reach = cmd.reach();
        let applied = self.apply_command(cmd, at);
        if applied.is_ok() {
            self.index_live(&reach);
            self.archive();
        }
        applied
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
            Command::AssignUidOffsets => self.assign_uid_offsets(),
            Command::StartMixTally => {
                self.mix.start();
                Ok((Outcome::None, vec![]))
            }
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
                images,
                allows_host_jobs,
                cpu_millicores,
                memory_bytes,
            } => {
                let software = NodeSoftware {
                    images,
                    allows_host_jobs,
                };
                let host = Host {
                    cpu_millicores,
                    memory_bytes,
                };
                self.node_connected(node, gpus, host, agent_version, software, at)
            }
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
