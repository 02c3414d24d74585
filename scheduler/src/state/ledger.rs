//! The usage ledger, the price book and budgets: the replicated record of
//! who used which GPUs for how long, and the terms it is billed on.
//!
//! One entry is appended each time a task of a run ends, however it ends
//! (exit, preemption, cancel, node loss, GPU failure). Entries are never
//! changed afterwards; a bill is computed from them by `billing`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::billing::{self, Period};
use super::command::{Outcome, Rejection};
use super::lifecycle::TaskEnd;
use super::types::*;
use super::{Applied, State};

/// Money in thousandths of the currency unit (1 CNY = 1000).
pub type Money = u64;

/// Milliseconds in an hour: GPU-hours are thousandths-of-a-GPU x ms
/// divided by `1000 * MS_PER_HOUR`.
pub const MS_PER_HOUR: u64 = 3_600_000;

/// How a run (one task of it) ended, as the ledger records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunEnd {
    Completed,
    Failed,
    Preempted,
    Cancelled,
    Lost,
    GpuFailed,
}

impl RunEnd {
    pub fn name(self) -> &'static str {
        match self {
            RunEnd::Completed => "completed",
            RunEnd::Failed => "failed",
            RunEnd::Preempted => "preempted",
            RunEnd::Cancelled => "cancelled",
            RunEnd::Lost => "lost",
            RunEnd::GpuFailed => "gpu_failed",
        }
    }
}

/// One task of one run of a job, from its start to its end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// 1, 2, ... in log order; never reused.
    pub seq: u64,
    pub tenant: String,
    pub job: JobId,
    /// The job's attempt this run was (1 for the first run).
    pub run: u32,
    /// The task's index within the job (0 for a single-node job).
    pub task: u32,
    pub node: String,
    /// The member whose node ran it, when that is not the tenant.
    pub lender: Option<String>,
    pub class: JobClass,
    pub gpu_model: String,
    pub gpu_class: String,
    /// GPUs of the task.
    pub gpus: u32,
    /// Thousandths of each GPU it held (1000 for whole GPUs).
    pub milli_per_gpu: u32,
    /// The run's start as its first task reported it, and this task's end.
    pub start: Millis,
    pub end: Millis,
    /// (end - start) in ms x gpus x milli_per_gpu: thousandths of a
    /// GPU-millisecond, exact.
    pub gpu_milli_ms: u64,
    /// Energy of the task's GPUs when its agent measured it.
    pub energy_mj: Option<u64>,
    pub capacity: Capacity,
    pub ended: RunEnd,
}

impl LedgerEntry {
    pub fn duration_ms(&self) -> u64 {
        (self.end - self.start).max(0) as u64
    }
}

/// The price of a GPU-hour of one model, for one job class or (`class:
/// None`) for every class without its own price.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GpuPrice {
    pub model: String,
    pub class: Option<JobClass>,
    pub per_gpu_hour: Money,
}

/// The prices in force from `effective_from` until the next version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceVersion {
    /// 1, 2, ...
    pub version: u32,
    pub effective_from: Millis,
    /// When an admin set it.
    pub set_at: Millis,
    /// ISO 4217 code, e.g. `CNY`; fixed by the first version.
    pub currency: String,
    /// Sorted by model, then class (`None` first).
    pub gpu_hour: Vec<GpuPrice>,
    pub energy_per_kwh: Money,
    /// GPU-hours (in thousandths) free to each tenant per calendar month.
    pub free_milli_gpu_hours: u64,
    /// Percent off a tenant's bill, for under-resourced members.
    pub equity_discount_pct: BTreeMap<String, u32>,
    /// Percent of the GPU charge of a run credited to the member whose
    /// node ran it.
    pub lending_credit_pct: u32,
}

impl PriceVersion {
    /// The GPU-hour price of a model for a class: the class's own price,
    /// else the model's price for all classes.
    pub fn gpu_price(&self, model: &str, class: JobClass) -> Option<Money> {
        let of = |c: Option<JobClass>| {
            self.gpu_hour
                .iter()
                .find(|p| p.model == model && p.class == c)
                .map(|p| p.per_gpu_hour)
        };
        of(Some(class)).or_else(|| of(None))
    }
}

/// Every price version ever set, in order of `effective_from`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceBook {
    pub versions: Vec<PriceVersion>,
}

impl PriceBook {
    /// The version in force at `at`, if any was in force yet.
    pub fn at(&self, at: Millis) -> Option<&PriceVersion> {
        self.versions.iter().rev().find(|v| v.effective_from <= at)
    }

    pub fn latest(&self) -> Option<&PriceVersion> {
        self.versions.last()
    }
}

/// A change to the price book: what is given replaces the latest
/// version's value; everything else carries over.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceChange {
    /// `None`: from the moment the change is applied.
    pub effective_from: Option<Millis>,
    pub currency: Option<String>,
    pub gpu_hour: Vec<GpuPrice>,
    pub energy_per_kwh: Option<Money>,
    pub free_milli_gpu_hours: Option<u64>,
    /// Tenant -> percent; 0 removes the discount.
    pub equity_discount_pct: BTreeMap<String, u32>,
    pub lending_credit_pct: Option<u32>,
}

/// A tenant's spending limits per period, in the price book's currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub period: Period,
    /// Over it: a warning in reports and an alert.
    pub soft: Option<Money>,
    /// Over it: no new jobs but scavenger ones.
    pub hard: Option<Money>,
}

/// The ledger's part of the replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounts {
    pub entries: Vec<LedgerEntry>,
    pub prices: PriceBook,
    pub budgets: BTreeMap<String, Budget>,
}

/// The state a job was in when one of its tasks ended, for the ledger.
pub(super) fn run_end(job: &Job, end: &TaskEnd) -> RunEnd {
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
    pub(super) fn record_run(
        &mut self,
        id: JobId,
        node: &str,
        ended: RunEnd,
        energy_mj: Option<u64>,
        at: Millis,
    ) {
        let job = &self.jobs[&id];
        let Some(index) = job.tasks.iter().position(|t| t.node == node) else {
            return;
        };
        let task = &job.tasks[index];
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
        let ms = (at - start).max(0) as u64;
        let seq = self.accounts.entries.len() as u64 + 1;
        let entry = LedgerEntry {
            seq,
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
            gpu_milli_ms: ms * u64::from(gpus) * u64::from(milli),
            energy_mj,
            capacity: job.capacity,
            ended,
        };
        self.accounts.entries.push(entry);
    }

    pub(super) fn set_prices(&mut self, change: PriceChange, at: Millis) -> Applied {
        let latest = self.accounts.prices.latest().cloned();
        let effective_from = change.effective_from.unwrap_or(at);
        if effective_from < at {
            return Err(Rejection::BadPrice(format!(
                "prices cannot change retroactively: the effective time {} is before now ({})",
                billing::format_time(effective_from),
                billing::format_time(at)
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

    pub(super) fn set_budget(&mut self, tenant: String, budget: Option<Budget>) -> Applied {
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
    pub(super) fn check_budget(
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
