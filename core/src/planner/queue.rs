//! The order jobs are considered in.
//!
//! Across tenants: first those whose next job fits within their guarantee,
//! then those borrowing, then scavenger work; inside each tier the tenant
//! furthest below its weighted fair share (least decayed usage per unit of
//! weight × equity) goes first. Within a tenant: job class, then priority,
//! then the time it entered the queue.
//!
//! `QueueOrder::Fifo` replaces all of that with one queue in the order
//! jobs entered it (the baseline the trace simulator measures against).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::accounting::{Books, Share};
use super::charged;
use super::explain::Hold;
use super::placement::FreeIndex;
use super::QueueOrder;
use crate::state::{Capacity, Job, JobId, State, WHOLE_GPU};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// The job fits within its tenant's guarantee in some GPU class.
    Guaranteed,
    /// It would borrow above the guarantee.
    Borrowing,
    /// Scavenger work: idle capacity only.
    Idle,
}

/// On what terms a job may be placed, per GPU class.
pub struct Terms<'c> {
    pub tier: Tier,
    /// Classes where it fits within the guarantee.
    pub guaranteed: Vec<&'c str>,
    /// Classes where it may borrow (within the borrow limit).
    pub borrowable: Vec<&'c str>,
    pub capacity_within: Capacity,
    pub capacity_above: Capacity,
    /// Why a class was ruled out, when all were.
    pub why_not: Option<Hold>,
}

pub fn terms<'c>(books: &Books, state: &State, job: &Job, classes: &[&'c str]) -> Terms<'c> {
    let mut t = Terms {
        tier: Tier::Borrowing,
        guaranteed: vec![],
        borrowable: vec![],
        capacity_within: Capacity::Guaranteed,
        capacity_above: Capacity::Borrowed,
        why_not: None,
    };
    let Some(tenant) = state.tenant(&job.tenant) else {
        return t;
    };
    if tenant.policy.suspended {
        t.why_not = Some(Hold::Suspended);
        return t;
    }
    if !charged(job.spec.class) {
        t.tier = Tier::Idle;
        t.borrowable = classes.to_vec();
        t.capacity_above = Capacity::Idle;
        return t;
    }
    let Some(book) = books.tenants.get(&job.tenant) else {
        return t;
    };
    let demand = job.spec.demand_milli();
    let cap = tenant.policy.class_caps.get(&job.spec.class).map(|&c| {
        let held = book
            .held_by_job_class
            .get(&job.spec.class)
            .copied()
            .unwrap_or(0);
        (c, held + demand <= u64::from(c) * u64::from(WHOLE_GPU))
    });
    for &class in classes {
        let within = demand <= book.guarantee_room(class);
        if within && cap.is_none_or(|(_, ok)| ok) {
            t.guaranteed.push(class);
            continue;
        }
        if within {
            t.why_not = Some(Hold::ClassCap {
                job_class: job.spec.class,
                cap: cap.map_or(0, |(c, _)| c),
            });
        }
        let quota = tenant.policy.quota(class);
        let limit = quota
            .borrow_limit
            .map(|l| book.guaranteed(class) + u64::from(l) * u64::from(WHOLE_GPU));
        if limit.is_none_or(|l| book.held(class) + demand <= l) {
            t.borrowable.push(class);
        } else if t.why_not.is_none() {
            t.why_not = Some(Hold::BorrowLimit {
                gpu_class: class.to_string(),
                limit: quota.borrow_limit.unwrap_or(0),
            });
        }
    }
    if !t.guaranteed.is_empty() {
        t.tier = Tier::Guaranteed;
    }
    t
}

/// A tenant's pending jobs in the round's order, read lazily: a round
/// looks at the head of each queue only.
struct TenantQueue<'a> {
    jobs: Box<dyn Iterator<Item = &'a Job> + 'a>,
    head: Option<&'a Job>,
}

/// (tier, share, 0, 0, tenant slot); under FIFO (tier and share
/// constant, time queued, job id, tenant slot). Least first.
type Key = (Tier, Share, u64, u64, usize);

pub struct Queue<'a> {
    state: &'a State,
    order: QueueOrder,
    tenants: Vec<(&'a str, TenantQueue<'a>)>,
    heap: BinaryHeap<Reverse<Key>>,
}

impl<'a> Queue<'a> {
    pub fn new(state: &'a State, order: QueueOrder) -> Queue<'a> {
        let tenants = state
            .queues()
            .iter()
            // A suspended tenant's jobs wait, unplaced, until it is resumed.
            .filter(|(name, _)| state.suspension(name).is_none())
            .map(|(name, q)| {
                let ids: Box<dyn Iterator<Item = JobId> + 'a> = match order {
                    QueueOrder::FairShare => Box::new(q.by_policy()),
                    QueueOrder::Fifo => Box::new(q.by_arrival()),
                };
                let mut jobs: Box<dyn Iterator<Item = &'a Job> + 'a> =
                    Box::new(ids.filter_map(|id| state.job(id)));
                let head = jobs.next();
                (name, TenantQueue { jobs, head })
            })
            .collect();
        Queue {
            state,
            order,
            tenants,
            heap: BinaryHeap::new(),
        }
    }

    /// Fills the heap with every tenant's first job.
    pub fn start(&mut self, books: &Books, index: &FreeIndex) {
        for t in 0..self.tenants.len() {
            self.push(t, books, index);
        }
    }

    fn push(&mut self, t: usize, books: &Books, index: &FreeIndex) {
        let (name, q) = &self.tenants[t];
        let Some(job) = q.head else {
            return;
        };
        if self.order == QueueOrder::Fifo {
            // Flipping the sign bit orders any i64 like its u64 bits.
            let queued = (job.queued_at as u64) ^ (1 << 63);
            self.heap.push(Reverse((
                Tier::Guaranteed,
                Share::ZERO,
                queued,
                job.id.0,
                t,
            )));
            return;
        }
        let classes = index.classes_for(&job.spec.constraints);
        let tier = terms(books, self.state, job, &classes).tier;
        let share = books.tenants.get(*name).map_or(Share::ZERO, |b| b.share);
        self.heap.push(Reverse((tier, share, 0, 0, t)));
    }

    /// The next job to consider and its tenant's slot.
    pub fn pop(&mut self) -> Option<(usize, &'a Job)> {
        let Reverse((_, _, _, _, t)) = self.heap.pop()?;
        let job = self.tenants[t].1.head?;
        Some((t, job))
    }

    /// Moves the tenant to its next job, keyed by its share now.
    pub fn advance(&mut self, t: usize, books: &Books, index: &FreeIndex) {
        let q = &mut self.tenants[t].1;
        q.head = q.jobs.next();
        self.push(t, books, index);
    }
}
