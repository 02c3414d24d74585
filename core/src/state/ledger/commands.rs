//! The ledger's commands (prices, budgets) and what the rest of the state
//! machine asks of it: recording a run when a task ends, and the
//! hard-budget check on submit.

use super::billing::{self, Charge};
use super::{Accounts, Budget, LedgerEntry, PriceChange, RunEnd};
use crate::state::outcome::{Applied, Outcome, Rejection, TaskEnd};
use crate::state::types::*;
use crate::state::State;

/// The state a job was in when one of its tasks ended, for the ledger.
pub(in crate::state) fn run_end(job: &Job, end: &TaskEnd) -> RunEnd {
    match (job.state, end) {
        (JobState::Preempting, _) => RunEnd::Preempted,
        (JobState::Cancelling, _) => RunEnd::Cancelled,
        _ if job.gpu_fault.is_some() => RunEnd::GpuFailed,
        (_, TaskEnd::Lost(_)) => RunEnd::Lost,
        (
            _,
            TaskEnd::Exited {
                exit_code: Some(0), ..
            },
        ) => RunEnd::Completed,
        (_, TaskEnd::Exited { .. }) => RunEnd::Failed,
    }
}

impl State {
    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// Appends the entry for the task of `id` on `node`, which ended at
    /// `at`. Called before the task's GPUs are released, so its GPU model
    /// is still known.
    pub(in crate::state) fn record_run(
        &mut self,
        id: JobId,
        node: &str,
        ended: RunEnd,
        energy_mj: Option<u64>,
        at: Millis,
    ) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let Some((index, task)) = job.tasks.iter().enumerate().find(|(_, t)| t.node == node) else {
            return;
        };
        if task.finished {
            return;
        }
        let model = self
            .nodes
            .get(node)
            .and_then(|n| {
                let g = n.gpus.iter().find(|g| task.gpus.contains(&g.info.uuid))?;
                Some((g.info.model.clone(), n.gpu_class(g).to_string()))
            })
            .unwrap_or_else(|| {
                let class = job.gpu_class.clone().unwrap_or_default();
                (class.clone(), class)
            });
        // A run that never started used no GPU time.
        let start = job.started_at.unwrap_or(at).min(at);
        let gpus = task.gpus.len() as u32;
        let milli = job.spec.milli_per_gpu();
        let ms = billing::ms_between(start, at);
        let entry = LedgerEntry {
            seq: 0,
            tenant: job.tenant.clone(),
            job: id,
            run: job.attempt,
            task: index as u32,
            node: node.to_string(),
            lender: task.lender.clone(),
            class: job.spec.class,
            gpu_model: model.0,
            gpu_class: model.1,
            gpus,
            milli_per_gpu: milli,
            start,
            end: at,
            gpu_milli_ms: ms
                .saturating_mul(u64::from(gpus))
                .saturating_mul(u64::from(milli)),
            energy_mj,
            capacity: job.capacity,
            ended,
            charge: Charge::default(),
        };
        let kept = self.policy.ledger_runs_kept;
        self.accounts.record(entry, kept);
    }

    pub(in crate::state) fn set_prices(&mut self, change: PriceChange, at: Millis) -> Applied {
        let latest = self.accounts.prices.latest().cloned();
        let effective_from = change.effective_from.unwrap_or(at);
        if effective_from < at {
            return Err(Rejection::BadPrice(format!(
                "prices cannot change retroactively: the effective time {} is before now ({})",
                billing::format_time(effective_from),
                billing::format_time(at)
            )));
        }
        if effective_from < self.accounts.last_end {
            return Err(Rejection::BadPrice(format!(
                "a run already recorded ended at {}, after the effective time {}; \
                 recorded runs keep the prices they were charged",
                billing::format_time(self.accounts.last_end),
                billing::format_time(effective_from)
            )));
        }
        if let Some(l) = &latest {
            if effective_from <= l.effective_from {
                return Err(Rejection::BadPrice(format!(
                    "version {} already takes effect at {}; a new version must take effect later",
                    l.version,
                    billing::format_time(l.effective_from)
                )));
            }
        }
        let mut next = latest.clone().unwrap_or_default();
        next.version += 1;
        next.effective_from = effective_from;
        next.set_at = at;
        match (&change.currency, &latest) {
            (Some(c), Some(l)) if *c != l.currency => {
                return Err(Rejection::BadPrice(format!(
                    "the currency is {}; it cannot change to {c} once prices exist",
                    l.currency
                )))
            }
            (Some(c), _) => {
                if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(Rejection::BadPrice(format!(
                        "'{c}' is not a currency code; use three capital letters, e.g. CNY"
                    )));
                }
                next.currency = c.clone();
            }
            (None, None) => {
                return Err(Rejection::BadPrice(
                    "the first price version must name its currency".into(),
                ))
            }
            (None, Some(_)) => {}
        }
        for p in &change.gpu_hour {
            if !self.knows_model(&p.model) {
                return Err(Rejection::UnknownGpuModel(p.model.clone()));
            }
            next.gpu_hour
                .retain(|q| !(q.model == p.model && q.class == p.class));
            next.gpu_hour.push(p.clone());
        }
        next.gpu_hour.sort();
        for (tenant, pct) in &change.equity_discount_pct {
            if !self.tenants.contains_key(tenant) {
                return Err(Rejection::UnknownTenant(tenant.clone()));
            }
            check_percent("equity discount", *pct)?;
            if *pct == 0 {
                next.equity_discount_pct.remove(tenant);
            } else {
                next.equity_discount_pct.insert(tenant.clone(), *pct);
            }
        }
        if let Some(pct) = change.lending_credit_pct {
            check_percent("lending credit", pct)?;
            next.lending_credit_pct = pct;
        }
        if let Some(e) = change.energy_per_kwh {
            next.energy_per_kwh = e;
        }
        if let Some(f) = change.free_milli_gpu_hours {
            next.free_milli_gpu_hours = f;
        }
        self.accounts.prices.versions.push(next);
        Ok((Outcome::None, vec![]))
    }

    /// A model some node has (or had) in the pool.
    fn knows_model(&self, model: &str) -> bool {
        self.nodes
            .values()
            .flat_map(|n| &n.gpus)
            .any(|g| g.info.model == model)
    }

    pub(in crate::state) fn set_budget(
        &mut self,
        tenant: String,
        budget: Option<Budget>,
    ) -> Applied {
        if !self.tenants.contains_key(&tenant) {
            return Err(Rejection::UnknownTenant(tenant));
        }
        match budget {
            Some(b) => {
                if let (Some(s), Some(h)) = (b.soft, b.hard) {
                    if s > h {
                        return Err(Rejection::BadBudget(format!(
                            "the soft limit ({}) is above the hard limit ({})",
                            billing::format_money(s),
                            billing::format_money(h)
                        )));
                    }
                }
                if b.soft.is_none() && b.hard.is_none() {
                    return Err(Rejection::BadBudget(
                        "give a soft limit, a hard limit or both".into(),
                    ));
                }
                self.accounts.budgets.insert(tenant.clone(), b);
            }
            None => {
                self.accounts.budgets.remove(&tenant);
            }
        }
        Ok((Outcome::Tenant(tenant), vec![]))
    }

    /// Refuses a non-scavenger job of a tenant over its hard budget.
    pub(in crate::state) fn check_budget(
        &self,
        tenant: &str,
        spec: &JobSpec,
        at: Millis,
    ) -> Result<(), Rejection> {
        let Some(budget) = self.accounts.budgets.get(tenant) else {
            return Ok(());
        };
        let Some(limit) = budget.hard else {
            return Ok(());
        };
        if spec.class == JobClass::Scavenger {
            return Ok(());
        }
        let status = billing::budget_status(&self.accounts, tenant, budget, at);
        if status.used >= limit {
            return Err(Rejection::OverBudget {
                tenant: tenant.to_string(),
                period: status.label,
                used: billing::format_money(status.used),
                limit: billing::format_money(limit),
                currency: status.currency,
            });
        }
        Ok(())
    }
}

fn check_percent(what: &str, pct: u32) -> Result<(), Rejection> {
    if pct > 100 {
        return Err(Rejection::BadPrice(format!(
            "a {what} of {pct}% is not a percentage (0-100)"
        )));
    }
    Ok(())
}
