//! The planner: a pure function from the state, the time and the planner
//! settings to decisions (place a job's tasks, or preempt a job).
//!
//! Only the leader runs it; its decisions are proposed as commands, so a
//! decision is durable before any agent hears of it, and `State::apply`
//! re-checks each one (a stale decision is rejected, never applied twice).
//! The trace simulator replays through the same `plan` with a virtual clock.
//!
//! - `accounting`: per-tenant books (guarantee, held, borrowed, share) and
//!   the capacity report metrics and `tenant show` read;
//! - `queue`: the order jobs are considered in (guarantees, fair share,
//!   then class, priority and submit time within a tenant);
//! - `placement`: the free-capacity index and fragmentation-aware packing;
//! - `fragments`: the change in expected fragmentation a placement causes,
//!   over the pool's recent job mix (`State::mix`);
//! - `preemption`: reclaiming borrowed GPUs for a tenant below its guarantee;
//! - `backfill`: the reservation for the top blocked job;
//! - `explain`: why a pending job is pending, in words.

pub mod accounting;
mod backfill;
pub mod explain;
mod fragments;
mod placement;
mod preemption;
mod queue;

#[cfg(test)]
mod fragments_tests;
#[cfg(test)]
mod host_tests;
#[cfg(test)]
mod images_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use crate::state::{
    Capacity, Command, Constraints, Host, Indexed, Job, JobClass, JobId, JobSpec, Millis, State,
    TaskPlacement,
};

use accounting::Books;
pub use explain::{explain, Hold};
pub use placement::Shortage;
use placement::{BucketKey, FreeIndex};
use queue::{Queue, Tier};

/// Planner settings: budgets that bound one round's cost.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// At most this many decisions per round.
    pub max_decisions: usize,
    /// At most this many pending jobs considered per round.
    pub max_examined: usize,
    /// At most this many victim searches per round.
    pub max_reclaims: usize,
    /// The order pending jobs are considered in.
    pub order: QueueOrder,
}

/// The order pending jobs are considered in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueOrder {
    /// The alliance policy: tenants within their guarantee first, then by
    /// weighted fair share; within a tenant by class, priority and time
    /// queued.
    #[default]
    FairShare,
    /// One queue in the order jobs entered it, whatever their tenant,
    /// class or priority: the first-come-first-served baseline the trace
    /// simulator compares the policy with.
    Fifo,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_decisions: 1024,
            max_examined: 20_000,
            max_reclaims: 64,
            order: QueueOrder::FairShare,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run the job's tasks on these GPUs, on these terms.
    Place {
        job: JobId,
        tasks: Vec<TaskPlacement>,
        capacity: Capacity,
    },
    /// Stop the job so `for_job` gets its guaranteed GPUs.
    Preempt {
        job: JobId,
        reason: String,
        for_job: JobId,
    },
}

impl Decision {
    pub fn job(&self) -> JobId {
        match self {
            Decision::Place { job, .. } | Decision::Preempt { job, .. } => *job,
        }
    }

    /// The command that carries the decision through the log.
    pub fn into_command(self) -> Command {
        match self {
            Decision::Place {
                job,
                tasks,
                capacity,
            } => Command::PlaceJob {
                job,
                tasks,
                capacity,
            },
            Decision::Preempt {
                job,
                reason,
                for_job,
            } => Command::PreemptJob {
                job,
                reason,
                for_job: Some(for_job),
            },
        }
    }
}

/// One planning round's decisions.
pub fn plan(state: &Indexed, now: Millis, policy: &Policy) -> Vec<Decision> {
    Round::new(state, now, policy, None).run().0
}

/// A round in progress.
struct Round<'a> {
    state: &'a State,
    now: Millis,
    policy: &'a Policy,
    books: Books,
    index: FreeIndex<'a>,
    decisions: Vec<Decision>,
    /// The job being explained: its hold is recorded.
    watch: Option<JobId>,
    watched: Option<Hold>,
    /// The top blocked job has its reservation.
    reserved: bool,
    /// Which job holds the round's reservation, on which nodes, from when.
    reservation: Option<backfill::Reservation>,
    reclaims: usize,
    victims: Option<preemption::Victims<'a>>,
    /// Smallest task demand (thousandths) found not to fit, per shape:
    /// capacity only shrinks within a round, so a larger job of the same
    /// shape cannot fit either.
    /// The task's CPU and memory are part of the shape: a job that asks
    /// for more GPUs but less CPU may fit where another did not.
    blocked: HashMap<(Constraints, Option<String>, u32, bool, Host), u32>,
    /// Schedulable nodes that run a job of each image (`None`: without
    /// one), counted when a job of it first fails to fit this round.
    runners: HashMap<Option<String>, usize>,
}

/// How a job fared this round.
enum Outcome {
    Placed,
    Held(Hold),
}

impl<'a> Round<'a> {
    fn new(state: &'a Indexed, now: Millis, policy: &'a Policy, watch: Option<JobId>) -> Self {
        Round {
            state: state.state(),
            now,
            policy,
            books: Books::new(state, now),
            index: FreeIndex::new(state),
            decisions: vec![],
            watch,
            watched: None,
            reserved: false,
            reservation: None,
            reclaims: 0,
            victims: None,
            blocked: HashMap::new(),
            runners: HashMap::new(),
        }
    }

    fn run(mut self) -> (Vec<Decision>, Option<Hold>) {
        let mut examined = 0;
        // Jobs that others were already preempted for come first: the GPUs
        // freed for them are theirs. In queue order, work borrowing ahead
        // of them (behind a tenant's head job that is not within its
        // guarantee) would take those GPUs again, and every round would
        // preempt anew without ever placing the claimant.
        let claimants: Vec<&'a Job> = self
            .state
            .queues()
            .claimants()
            .filter_map(|id| self.state.job(id))
            .filter(|j| self.state.suspension(&j.tenant).is_none())
            .collect();
        for &job in &claimants {
            if !self.within_budget(examined) {
                break;
            }
            examined += 1;
            self.examine(job);
        }
        let mut queue = Queue::new(self.state, self.policy.order);
        queue.start(&self.books, &self.index);
        while let Some((tenant, job)) = queue.pop() {
            if !self.within_budget(examined) {
                break;
            }
            if !job.reclaimed || !claimants.iter().any(|c| c.id == job.id) {
                examined += 1;
                self.examine(job);
            }
            queue.advance(tenant, &self.books, &self.index);
        }
        if self.watch.is_some() && self.watched.is_none() {
            self.watched = Some(Hold::NotReached);
        }
        (self.decisions, self.watched)
    }

    /// Whether the round may consider another job, `examined` so far.
    fn within_budget(&self, examined: usize) -> bool {
        examined < self.policy.max_examined && self.decisions.len() < self.policy.max_decisions
    }

    /// Considers one job, and records its hold when it is the one watched.
    fn examine(&mut self, job: &'a Job) {
        let outcome = self.consider(job);
        if Some(job.id) == self.watch {
            self.watched = Some(match outcome {
                Outcome::Placed => Hold::PlacedNow,
                Outcome::Held(h) => h,
            });
        }
    }

    fn consider(&mut self, job: &'a Job) -> Outcome {
        let spec = &job.spec;
        let ends_at = self.now + (spec.walltime_secs as Millis).saturating_mul(1000);
        if spec.cpu_only() {
            // No GPUs: no guarantee or quota is involved, nothing to
            // reclaim, and no reservation is made for it.
            if let Some(fits) = self.index.place(spec, &[], ends_at) {
                self.commit(job, &fits, Capacity::Guaranteed);
                return Outcome::Placed;
            }
            return Outcome::Held(self.no_capacity(job, false));
        }
        let classes = self.index.classes_for(&spec.constraints);
        if classes.is_empty() {
            return Outcome::Held(Hold::NoMatchingGpu);
        }
        let terms = queue::terms(&self.books, self.state, job, &classes);
        if terms.guaranteed.is_empty() && terms.borrowable.is_empty() {
            return Outcome::Held(terms.why_not.unwrap_or(Hold::NoMatchingGpu));
        }
        let shape = (
            spec.constraints.clone(),
            spec.image.clone(),
            spec.nodes,
            spec.milli_per_gpu() < crate::state::WHOLE_GPU,
            spec.host(),
        );
        let all_classes = terms.guaranteed.len() + terms.borrowable.len() == classes.len();
        let task = spec.task_milli() as u32;
        let known_blocked = self.blocked.get(&shape).is_some_and(|&m| task >= m);
        if !known_blocked {
            for (list, capacity) in [
                (&terms.guaranteed, terms.capacity_within),
                (&terms.borrowable, terms.capacity_above),
            ] {
                if list.is_empty() {
                    continue;
                }
                let buckets: Vec<(usize, &BucketKey)> =
                    self.index.buckets_for(&spec.constraints, list).collect();
                if let Some(fits) = self.index.place(spec, &buckets, ends_at) {
                    self.commit(job, &fits, capacity);
                    return Outcome::Placed;
                }
            }
            // Once nodes are reserved, "did not fit" depends on the job's
            // walltime, so it is only remembered before.
            if all_classes && !self.reserved {
                self.blocked
                    .entry(shape)
                    .and_modify(|m| *m = (*m).min(task))
                    .or_insert(task);
            }
        }
        // A job whose software no node has waits for a node that has it,
        // without preempting or reserving anything for it.
        if self.runners(spec) == 0 {
            return Outcome::Held(Hold::NoSoftware {
                image: spec.image.clone(),
            });
        }
        // Within its guarantee: reclaim borrowed GPUs for it (a gang on
        // as many nodes of one site as it has tasks).
        if terms.tier == Tier::Guaranteed {
            if let Some(hold) = self.reclaim(job, &terms.guaranteed) {
                return Outcome::Held(hold);
            }
        }
        if !self.reserved {
            self.reserved = true;
            let all: Vec<&str> = terms
                .guaranteed
                .iter()
                .chain(&terms.borrowable)
                .copied()
                .collect();
            let within = terms.tier == Tier::Guaranteed;
            if let Some(hold) = backfill::reserve(self, job, &all, within) {
                return Outcome::Held(hold);
            }
        }
        if Some(job.id) == self.watch {
            if let Some(hold) = backfill::behind_reservation(self, job, &terms) {
                return Outcome::Held(hold);
            }
        }
        Outcome::Held(self.no_capacity(job, terms.tier == Tier::Guaranteed))
    }

    /// No node has room for the job now; for the job being explained,
    /// which dimensions are short and on how many nodes.
    fn no_capacity(&self, job: &Job, within_guarantee: bool) -> Hold {
        let shortage = (Some(job.id) == self.watch).then(|| self.index.shortage(&job.spec));
        Hold::NoCapacity {
            within_guarantee,
            gang: job.spec.nodes > 1,
            shortage: shortage.map(|s| (job.spec.host(), s)),
        }
    }

    /// How many schedulable nodes run the job's image (or, without one,
    /// host processes): one walk over the nodes per image and round.
    fn runners(&mut self, spec: &JobSpec) -> usize {
        let state = self.state;
        *self.runners.entry(spec.image.clone()).or_insert_with(|| {
            state
                .nodes()
                .filter(|n| n.schedulable() && n.runs(spec))
                .count()
        })
    }

    fn commit(&mut self, job: &Job, fits: &[placement::TaskFit], capacity: Capacity) {
        let milli = job.spec.milli_per_gpu();
        let class = self.index.class_of(&fits[0]).to_string();
        let tasks = self.index.placements(fits);
        for f in fits {
            self.index.take(f.node, &f.gpus, milli, job.spec.host());
        }
        if !job.spec.cpu_only() {
            self.books
                .place(&job.tenant, &class, job.spec.class, job.spec.demand_milli());
        }
        self.decisions.push(Decision::Place {
            job: job.id,
            tasks,
            capacity,
        });
    }
}

/// Whether a job class is charged against guarantees.
fn charged(class: JobClass) -> bool {
    class != JobClass::Scavenger
}
