//! Who holds what against which guarantee: the numbers the policy rules
//! are decided by, computed from the state at the planning instant.
//!
//! All GPU amounts are in thousandths of a GPU, so fractional jobs count
//! exactly.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::state::usage::weighted_gpu_ms;
use crate::state::{Host, Indexed, JobClass, JobId, JobState, Millis, Quota, State, WHOLE_GPU};

/// GPU time (milliseconds per GPU) a placement adds to its tenant's share
/// within one round, so one tenant does not take everything at once.
pub const ROUND_SHARE_HORIZON_MS: u64 = 3_600_000;

/// A tenant's decayed usage per unit of weight, kept as the two integers
/// and compared by cross-multiplying, so that every replica orders
/// tenants the same way.
#[derive(Clone, Copy, Debug)]
pub struct Share {
    /// Class-weighted GPU-milliseconds (see `state::usage`).
    pub usage: u64,
    /// Weight × equity in millionths, at least 1.
    pub weight: u64,
}

impl Share {
    /// No usage.
    pub const ZERO: Share = Share {
        usage: 0,
        weight: 1,
    };

    pub fn new(usage: u64, weight: u64) -> Share {
        Share {
            usage,
            weight: weight.max(1),
        }
    }
}

impl Default for Share {
    fn default() -> Share {
        Share::ZERO
    }
}

impl Ord for Share {
    fn cmp(&self, other: &Share) -> Ordering {
        // Both products fit in u128: each factor is below 2^64.
        let mine = u128::from(self.usage) * u128::from(other.weight.max(1));
        let theirs = u128::from(other.usage) * u128::from(self.weight.max(1));
        mine.cmp(&theirs)
    }
}

impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Share) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Share {
    fn eq(&self, other: &Share) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Share {}

#[derive(Clone, Debug, Default)]
pub struct TenantBook {
    /// Guaranteed thousandths per GPU class.
    pub guaranteed: BTreeMap<String, u64>,
    /// Thousandths held per GPU class by non-scavenger jobs (not counting
    /// jobs being preempted).
    pub held: BTreeMap<String, u64>,
    /// Thousandths held per job class (all GPU classes), for class caps.
    pub held_by_job_class: BTreeMap<JobClass, u64>,
    /// Decayed, class-weighted GPU time per unit of effective weight.
    pub share: Share,
}

impl TenantBook {
    pub fn guaranteed(&self, class: &str) -> u64 {
        self.guaranteed.get(class).copied().unwrap_or(0)
    }

    pub fn held(&self, class: &str) -> u64 {
        self.held.get(class).copied().unwrap_or(0)
    }

    /// Room left inside the guarantee of `class`.
    pub fn guarantee_room(&self, class: &str) -> u64 {
        self.guaranteed(class).saturating_sub(self.held(class))
    }

    /// Borrowed beyond the guarantee in `class`.
    pub fn borrowed(&self, class: &str) -> u64 {
        self.held(class).saturating_sub(self.guaranteed(class))
    }
}

#[derive(Clone, Debug, Default)]
pub struct Books {
    pub tenants: BTreeMap<String, TenantBook>,
}

impl Books {
    pub fn new(state: &Indexed, now: Millis) -> Books {
        let mut tenants: BTreeMap<String, TenantBook> = state
            .tenants()
            .map(|t| (t.name.clone(), TenantBook::default()))
            .collect();
        // Guarantees by default follow contribution: the usable GPUs
        // (healthy, no fault waiting to be cleared) of the ready nodes a
        // tenant owns.
        for (owner, classes) in state.contributed() {
            if let Some(book) = tenants.get_mut(owner) {
                book.guaranteed.clone_from(classes);
            }
        }
        for t in state.tenants() {
            let book = tenants.get_mut(&t.name).expect("inserted above");
            for (class, quota) in &t.policy.quotas {
                if let Some(g) = quota.guaranteed {
                    book.guaranteed
                        .insert(class.clone(), u64::from(g) * u64::from(WHOLE_GPU));
                }
            }
        }
        // What placed jobs hold, and the GPU time running ones have
        // accrued, come from sums kept beside the state.
        let half_life = state.policy().half_life_ms;
        let holdings = state.holdings();
        for t in state.tenants() {
            let book = tenants.get_mut(&t.name).expect("inserted above");
            let mut usage = t.usage.at(now, half_life);
            if let Some(h) = holdings.get(&t.name) {
                book.held.clone_from(&h.held);
                book.held_by_job_class.clone_from(&h.by_job_class);
                usage = usage.saturating_add(h.running_weighted_gpu_ms(now));
            }
            book.share = Share::new(usage, t.policy.effective_weight());
        }
        Books { tenants }
    }

    /// Records a placement made during this round.
    pub fn place(&mut self, tenant: &str, class: &str, job_class: JobClass, milli: u64) {
        let Some(book) = self.tenants.get_mut(tenant) else {
            return;
        };
        if job_class != JobClass::Scavenger {
            add(&mut book.held, class, milli);
        }
        *book.held_by_job_class.entry(job_class).or_default() += milli;
        let charge = weighted_gpu_ms(ROUND_SHARE_HORIZON_MS, milli, job_class);
        book.share.usage = book.share.usage.saturating_add(charge);
    }

    /// Records GPUs that preemption will free.
    pub fn release(&mut self, tenant: &str, class: &str, job_class: JobClass, milli: u64) {
        let Some(book) = self.tenants.get_mut(tenant) else {
            return;
        };
        if job_class != JobClass::Scavenger {
            let h = book.held.entry(class.to_string()).or_default();
            *h = h.saturating_sub(milli);
        }
        let h = book.held_by_job_class.entry(job_class).or_default();
        *h = h.saturating_sub(milli);
    }
}

/// Adds to a per-class amount, allocating the key only when it is new.
fn add(amounts: &mut BTreeMap<String, u64>, class: &str, milli: u64) {
    match amounts.get_mut(class) {
        Some(m) => *m += milli,
        None => {
            amounts.insert(class.to_string(), milli);
        }
    }
}

/// One GPU class of a tenant's capacity report, in thousandths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassReport {
    pub gpu_class: String,
    pub guaranteed: u64,
    /// Held by its jobs (scavenger work included).
    pub in_use: u64,
    /// Held above its guarantee by its charged jobs.
    pub borrowed: u64,
    /// Its own nodes' GPUs held by other tenants' jobs.
    pub lent: u64,
    /// The admin's quota setting for the class.
    pub quota: Quota,
}

/// What `tenant show` prints and metrics export, per tenant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TenantReport {
    pub name: String,
    pub classes: Vec<ClassReport>,
    pub weight_milli: u32,
    pub equity_milli: u32,
    /// Decayed, class-weighted GPU-seconds, running jobs included (for
    /// display; the planner orders by the integer `Share`).
    pub usage_gpu_seconds: f64,
    /// Its part of the pool's decayed usage, 0-1 (for display).
    pub usage_share: f64,
    pub pending_jobs: u32,
    pub running_jobs: u32,
    pub class_caps: BTreeMap<JobClass, u32>,
    /// Its pending jobs in the order the planner considers them.
    pub queue: Vec<JobId>,
    /// Its identity on nodes (see `Tenant::uid_offset`).
    pub uid_offset: u32,
    /// CPU and host memory its placed jobs' live tasks hold.
    pub host_in_use: Host,
}

/// A placement within a guarantee that needed others preempted: how long
/// the guaranteed demand waited for its GPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReclaimSample {
    pub tenant: String,
    pub job: JobId,
    pub gpu_class: String,
    pub latency_ms: Millis,
}

/// Every tenant's guarantee, use, borrowing, lending and fair-share usage
/// at `now`.
pub fn tenant_reports(state: &Indexed, now: Millis) -> Vec<TenantReport> {
    let books = Books::new(state, now);
    let mut reports: BTreeMap<&str, TenantReport> = BTreeMap::new();
    let mut classes: BTreeMap<&str, BTreeMap<String, ClassReport>> = BTreeMap::new();
    for t in state.tenants() {
        let book = &books.tenants[&t.name];
        let entry = classes.entry(t.name.as_str()).or_default();
        let names = book
            .guaranteed
            .keys()
            .chain(book.held.keys())
            .chain(t.policy.quotas.keys());
        for c in names {
            entry.entry(c.clone()).or_insert_with(|| ClassReport {
                gpu_class: c.clone(),
                guaranteed: book.guaranteed(c),
                borrowed: book.borrowed(c),
                quota: t.policy.quota(c),
                ..Default::default()
            });
        }
        reports.insert(
            t.name.as_str(),
            TenantReport {
                name: t.name.clone(),
                weight_milli: t.policy.weight_milli,
                equity_milli: t.policy.equity_milli,
                usage_gpu_seconds: book.share.usage as f64 / 1e3,
                class_caps: t.policy.class_caps.clone(),
                uid_offset: t.uid_offset,
                ..Default::default()
            },
        );
    }
    for job in state.live_jobs() {
        let Some(r) = reports.get_mut(job.tenant.as_str()) else {
            continue;
        };
        if job.state == JobState::Pending {
            r.pending_jobs += 1;
            continue;
        }
        if !job.state.is_placed() {
            continue;
        }
        r.running_jobs += 1;
        r.host_in_use = r.host_in_use.plus(job.held_host());
        if job.spec.cpu_only() {
            continue;
        }
        let class = job.gpu_class.clone().unwrap_or_default();
        let task = job.spec.task_milli();
        class_entry(&mut classes, &job.tenant, &class).in_use += job.held_gpu_milli();
        for t in job.tasks.iter().filter(|t| !t.finished) {
            if let Some(lender) = &t.lender {
                if reports.contains_key(lender.as_str()) {
                    class_entry(&mut classes, lender, &class).lent += task;
                }
            }
        }
    }
    let total: f64 = reports.values().map(|r| r.usage_gpu_seconds).sum();
    let mut queues: BTreeMap<&str, Vec<&crate::state::Job>> = BTreeMap::new();
    for j in state.pending_jobs() {
        queues.entry(j.tenant.as_str()).or_default().push(j);
    }
    reports
        .into_iter()
        .map(|(name, mut r)| {
            r.usage_share = if total > 0.0 {
                r.usage_gpu_seconds / total
            } else {
                0.0
            };
            r.classes = classes
                .remove(name)
                .unwrap_or_default()
                .into_values()
                .collect();
            let mut q = queues.remove(name).unwrap_or_default();
            q.sort_by_key(|j| {
                (
                    j.spec.class,
                    std::cmp::Reverse(j.spec.priority),
                    j.queued_at,
                    j.id,
                )
            });
            r.queue = q.iter().map(|j| j.id).collect();
            r
        })
        .collect()
}

fn class_entry<'m>(
    classes: &'m mut BTreeMap<&str, BTreeMap<String, ClassReport>>,
    tenant: &str,
    class: &str,
) -> &'m mut ClassReport {
    let per = classes
        .iter_mut()
        .find(|(t, _)| **t == tenant)
        .map(|(_, m)| m)
        .expect("every tenant has an entry");
    per.entry(class.to_string()).or_insert_with(|| ClassReport {
        gpu_class: class.to_string(),
        ..Default::default()
    })
}

/// The reclaim latency of every job whose current or last placement was
/// within its guarantee and needed borrowed GPUs preempted first.
pub fn reclaim_latencies(state: &State) -> Vec<ReclaimSample> {
    state
        .jobs()
        .filter_map(|j| {
            Some(ReclaimSample {
                tenant: j.tenant.clone(),
                job: j.id,
                gpu_class: j.gpu_class.clone().unwrap_or_default(),
                latency_ms: j.reclaim_ms()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Share;

    #[test]
    fn shares_compare_as_exact_ratios() {
        // 3 per 3 and 1 per 1: a tie, left to the tenant order.
        assert_eq!(Share::new(3_000, 3_000_000), Share::new(1_000, 1_000_000));
        // A float quotient cannot tell these apart; the integers can.
        let big = 1u64 << 60;
        assert!(Share::new(big, 7_000_000) < Share::new(big + 1, 7_000_000));
        assert!(Share::new(u64::MAX - 1, u64::MAX) < Share::new(u64::MAX, u64::MAX));
        // Twice the weight halves the share.
        assert!(Share::new(1_999, 2_000_000) < Share::new(1_000, 1_000_000));
        assert!(Share::new(2_001, 2_000_000) > Share::new(1_000, 1_000_000));
        // No weight counts as the least weight, not as a division by zero.
        assert_eq!(Share::new(5, 0), Share::new(5, 1));
        assert!(Share::ZERO < Share::new(1, u64::MAX));
    }
}
