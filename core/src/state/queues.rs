//! Pending jobs per tenant, kept in the orders the planner reads them in.
//!
//! The planner looks at the head of each tenant's queue, not at the whole
//! queue: keeping the queues sorted as jobs enter and leave them makes a
//! round's setup independent of how many jobs are waiting (a million
//! pending jobs used to cost seconds of sorting per round). The queues are
//! derived from the job table, so snapshots leave them out and loading one
//! rebuilds them.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use super::types::{Job, JobClass, JobId, Millis};

/// The policy order within a tenant: job class, then priority (highest
/// first), then the time the job entered the queue, then its id.
pub type PolicyKey = (JobClass, Reverse<i32>, Millis, JobId);

/// One tenant's pending jobs in both orders.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantQueue {
    by_policy: BTreeSet<PolicyKey>,
    /// Arrival order: (time queued, id).
    by_arrival: BTreeSet<(Millis, JobId)>,
}

impl TenantQueue {
    /// Pending jobs in the policy order.
    pub fn by_policy(&self) -> impl Iterator<Item = JobId> + '_ {
        self.by_policy.iter().map(|k| k.3)
    }

    /// Pending jobs in the order they entered the queue.
    pub fn by_arrival(&self) -> impl Iterator<Item = JobId> + '_ {
        self.by_arrival.iter().map(|k| k.1)
    }

    fn is_empty(&self) -> bool {
        self.by_arrival.is_empty()
    }
}

/// Every tenant's queue; a tenant with nothing pending has none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Queues {
    tenants: BTreeMap<String, TenantQueue>,
    /// Pending jobs that others were preempted for (`Job::reclaimed`),
    /// by id: the planner considers them before any queue.
    claimants: BTreeSet<JobId>,
}

fn policy_key(job: &Job) -> PolicyKey {
    (
        job.spec.class,
        Reverse(job.spec.priority),
        job.queued_at,
        job.id,
    )
}

impl Queues {
    /// Builds the queues of the jobs listed as pending.
    pub fn of<'a>(pending: impl Iterator<Item = &'a Job>) -> Queues {
        let mut q = Queues::default();
        for job in pending {
            q.add(job);
        }
        q
    }

    /// A job entered the queue (submitted or requeued). Its class,
    /// priority and `queued_at` must not change until it leaves.
    pub fn add(&mut self, job: &Job) {
        let q = match self.tenants.get_mut(&job.tenant) {
            Some(q) => q,
            None => self.tenants.entry(job.tenant.clone()).or_default(),
        };
        q.by_policy.insert(policy_key(job));
        q.by_arrival.insert((job.queued_at, job.id));
        if job.reclaimed {
            self.claimants.insert(job.id);
        }
    }

    /// Others were preempted for a pending job: it is a claimant until it
    /// leaves the queue.
    pub fn claim(&mut self, job: &Job) {
        if job.reclaimed && self.contains(job) {
            self.claimants.insert(job.id);
        }
    }

    fn contains(&self, job: &Job) -> bool {
        self.tenants
            .get(&job.tenant)
            .is_some_and(|q| q.by_arrival.contains(&(job.queued_at, job.id)))
    }

    /// A job left the queue (placed, cancelled).
    pub fn remove(&mut self, job: &Job) {
        self.claimants.remove(&job.id);
        let Some(q) = self.tenants.get_mut(&job.tenant) else {
            return;
        };
        q.by_policy.remove(&policy_key(job));
        q.by_arrival.remove(&(job.queued_at, job.id));
        if q.is_empty() {
            self.tenants.remove(&job.tenant);
        }
    }

    /// How many jobs the tenant has pending.
    pub fn pending_of(&self, tenant: &str) -> usize {
        self.tenants.get(tenant).map_or(0, |q| q.by_arrival.len())
    }

    /// Pending jobs that others were preempted for, by id.
    pub fn claimants(&self) -> impl Iterator<Item = JobId> + '_ {
        self.claimants.iter().copied()
    }

    /// Tenants with pending jobs, by name, and their queues.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &TenantQueue)> {
        self.tenants.iter().map(|(t, q)| (t.as_str(), q))
    }
}
