//! What each tenant's placed jobs hold, summed: the part of the planner's
//! books that comes from jobs, kept between rounds.
//!
//! A round used to sum every placed job (tens of thousands on a full
//! pool) before its first decision. The sums are kept instead, beside
//! the state (`indexed`): a command that names a job takes that job's old
//! contribution out and puts its new one in (a contribution is a function
//! of the job alone); any other command that may change jobs drops the
//! sums, to be rebuilt when next asked. All amounts are integers, so kept and rebuilt sums are equal.

use std::collections::BTreeMap;

use super::types::{Job, JobClass, JobState, Millis};

/// One job's contribution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    tenant: String,
    gpu_class: String,
    job_class: JobClass,
    milli: u64,
    /// In its preemption grace period: already given back.
    leaving: bool,
    running_since: Option<Millis>,
}

/// What a job holds, if it holds GPUs.
pub fn holding(job: &Job) -> Option<Holding> {
    if !job.state.is_placed() {
        return None;
    }
    Some(Holding {
        tenant: job.tenant.clone(),
        gpu_class: job.gpu_class.clone().unwrap_or_default(),
        job_class: job.spec.class,
        milli: job.spec.demand_milli(),
        leaving: job.state == JobState::Preempting,
        running_since: job.started_at.filter(|_| job.state == JobState::Running),
    })
}

/// One tenant's sums.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantHoldings {
    /// Thousandths held per GPU class by jobs charged against guarantees
    /// (not scavenger work, not jobs being preempted).
    pub held: BTreeMap<String, u64>,
    /// Thousandths held per job class, over all GPU classes.
    pub by_job_class: BTreeMap<JobClass, u64>,
    /// Per job class, over running jobs: Σ thousandths and
    /// Σ start time × thousandths, so the GPU time they have run by `now`
    /// is `now × Σ thousandths − Σ start × thousandths`.
    pub running: BTreeMap<JobClass, (i128, i128)>,
}

impl TenantHoldings {
    /// Class-weighted GPU-milliseconds the running jobs have run by `now`
    /// (see `usage`), rounded to the nearest.
    pub fn running_weighted_gpu_ms(&self, now: Millis) -> u64 {
        let exact = self
            .running
            .iter()
            .fold(0u128, |sum, (class, &(milli, start_milli))| {
                let milli_gpu_ms = i128::from(now)
                    .saturating_mul(milli)
                    .saturating_sub(start_milli)
                    .max(0) as u128;
                sum.saturating_add(milli_gpu_ms.saturating_mul(class.usage_weight_milli().into()))
            });
        u64::try_from(exact.saturating_add(500_000) / 1_000_000).unwrap_or(u64::MAX)
    }
}

/// Every tenant's sums; a tenant holding nothing has none.
pub type Holdings = BTreeMap<String, TenantHoldings>;

fn change(sums: &mut Holdings, h: &Holding, add: bool) {
    let t = match sums.get_mut(&h.tenant) {
        Some(t) => t,
        None => sums.entry(h.tenant.clone()).or_default(),
    };
    if h.job_class != JobClass::Scavenger && !h.leaving {
        adjust(&mut t.held, &h.gpu_class, add, h.milli);
    }
    adjust(&mut t.by_job_class, &h.job_class, add, h.milli);
    if let Some(since) = h.running_since {
        let sign = if add { 1 } else { -1 };
        let milli = i128::from(h.milli);
        let r = t.running.entry(h.job_class).or_default();
        r.0 = r.0.saturating_add(sign * milli);
        r.1 = r.1.saturating_add(sign * i128::from(since) * milli);
        if *r == (0, 0) {
            t.running.remove(&h.job_class);
        }
    }
    // Running jobs are placed ones: nothing held means nothing running.
    if t.by_job_class.is_empty() {
        sums.remove(&h.tenant);
    }
}

/// Adds or takes `milli` at `key`, dropping an amount that reaches zero
/// (sums built afresh never hold one).
fn adjust<K: Ord + Clone>(amounts: &mut BTreeMap<K, u64>, key: &K, add: bool, milli: u64) {
    let now = amounts.get(key).copied().unwrap_or(0);
    let next = if add {
        now.saturating_add(milli)
    } else {
        now.saturating_sub(milli)
    };
    match amounts.get_mut(key) {
        _ if next == 0 => {
            amounts.remove(key);
        }
        Some(v) => *v = next,
        None => {
            amounts.insert(key.clone(), next);
        }
    }
}

pub fn sum<'j>(jobs: impl Iterator<Item = &'j Job>) -> Holdings {
    let mut sums = Holdings::new();
    for h in jobs.filter_map(holding) {
        change(&mut sums, &h, true);
    }
    sums
}

/// `sums` after a job changed from `before` to `after`.
pub fn replace(sums: &mut Holdings, before: Option<&Holding>, after: Option<&Holding>) {
    if before == after {
        return;
    }
    if let Some(b) = before {
        change(sums, b, false);
    }
    if let Some(a) = after {
        change(sums, a, true);
    }
}
