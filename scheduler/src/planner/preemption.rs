//! Reclaiming borrowed GPUs for a tenant below its guarantee.
//!
//! Victims come from borrowed capacity only: scavenger work first, then
//! the class order (batch before training), then the least work lost (GPU
//! time since the job started), job id last. A victim's tenant is never
//! pushed below its own guarantee, inference is never preempted, and the
//! claimant never gets more than its guarantee (it is only a claimant if
//! the job fits within it). Victims keep their GPUs through their grace
//! period; meanwhile the node is held for the claimant.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use super::explain::Hold;
use super::placement::BucketKey;
use super::{charged, Decision, Round};
use crate::state::{Job, JobClass, JobState, Millis, WHOLE_GPU};

/// Running jobs that could be preempted, best victim first, and the GPUs
/// already being freed by jobs in their grace period.
pub struct Victims<'a> {
    order: Vec<&'a Job>,
    /// Per node index: thousandths per GPU position being freed.
    freeing: BTreeMap<usize, BTreeMap<usize, u32>>,
    chosen: Vec<bool>,
}

impl<'a> Victims<'a> {
    fn new(round: &Round<'a>) -> Victims<'a> {
        let now = round.now;
        let mut order: Vec<&'a Job> = vec![];
        let mut freeing: BTreeMap<usize, BTreeMap<usize, u32>> = BTreeMap::new();
        for job in round.state.jobs().filter(|j| j.state.is_placed()) {
            if job.state == JobState::Preempting {
                for (i, pos) in gpu_positions(round, job) {
                    *freeing.entry(i).or_default().entry(pos).or_default() +=
                        job.spec.milli_per_gpu();
                }
                continue;
            }
            let preemptible = matches!(job.state, JobState::Assigned | JobState::Running)
                && job.spec.class != JobClass::Inference
                && job.ending.is_none();
            if preemptible {
                order.push(job);
            }
        }
        order.sort_by_key(|j| (Reverse(j.spec.class), work_lost(j, now), j.id));
        let chosen = vec![false; order.len()];
        Victims {
            order,
            freeing,
            chosen,
        }
    }
}

/// GPU time a preemption would throw away, in GPU-milliseconds.
fn work_lost(job: &Job, now: Millis) -> u128 {
    let ran = job.started_at.map_or(0, |s| (now - s).max(0)) as u128;
    ran * u128::from(job.spec.demand_milli())
}

/// (node index, GPU position) of every GPU the job holds on schedulable nodes.
fn gpu_positions(round: &Round, job: &Job) -> Vec<(usize, usize)> {
    let mut out = vec![];
    for t in job.tasks.iter().filter(|t| !t.finished) {
        let Some(i) = round.index.node_index(&t.node) else {
            continue;
        };
        let node = round.index.nodes[i].node;
        for (pos, g) in node.gpus.iter().enumerate() {
            if t.gpus.contains(&g.info.uuid) {
                out.push((i, pos));
            }
        }
    }
    out
}

impl<'a> Round<'a> {
    /// For a blocked job within its guarantee: wait for GPUs already being
    /// freed, or choose victims. `None` when nothing can be reclaimed.
    pub(super) fn reclaim(&mut self, job: &'a Job, classes: &[&str]) -> Option<Hold> {
        if self.victims.is_none() {
            self.victims = Some(Victims::new(self));
        }
        let spec = &job.spec;
        let buckets: Vec<(usize, BucketKey)> = self
            .index
            .buckets_for(&spec.constraints, classes)
            .map(|(b, k)| (b, k.clone()))
            .collect();
        let victims = self.victims.take().expect("built above");
        // GPUs already on their way back are enough: hold the node.
        let mut waiting = None;
        for (&i, extra) in &victims.freeing {
            if self.fits_with(job, &buckets, i, extra) {
                waiting = Some(i);
                break;
            }
        }
        if let Some(i) = waiting {
            self.victims = Some(victims);
            self.index.hold(i);
            return Some(Hold::WaitingForPreemption {
                node: self.index.nodes[i].node.name.clone(),
            });
        }
        if self.reclaims == self.policy.max_reclaims {
            self.victims = Some(victims);
            return None;
        }
        self.reclaims += 1;
        let found = self.choose_victims(job, &buckets, &victims);
        let mut victims = victims;
        let hold = found.map(|(i, chosen)| {
            let node = self.index.nodes[i].node.name.clone();
            let mut names = vec![];
            for k in chosen {
                victims.chosen[k] = true;
                let v = victims.order[k];
                let class = v.gpu_class.clone().unwrap_or_default();
                self.books
                    .release(&v.tenant, &class, v.spec.class, v.spec.demand_milli());
                names.push(v.id);
                self.decisions.push(Decision::Preempt {
                    job: v.id,
                    reason: format!(
                        "preempted: tenant '{}' reclaims its guaranteed {class} GPUs for {}",
                        job.tenant, job.id
                    ),
                    for_job: job.id,
                });
            }
            self.index.hold(i);
            Hold::Reclaiming {
                node,
                victims: names,
            }
        });
        self.victims = Some(victims);
        hold
    }

    /// The first node (in victim order) where the job fits once the
    /// victims taken so far on it stop, and those victims.
    fn choose_victims(
        &self,
        job: &Job,
        buckets: &[(usize, BucketKey)],
        victims: &Victims,
    ) -> Option<(usize, Vec<usize>)> {
        let mut extra: BTreeMap<usize, BTreeMap<usize, u32>> = BTreeMap::new();
        let mut taken: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        // What each victim's tenant may still give up without dropping
        // below its guarantee, per GPU class.
        let mut spare: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for (k, v) in victims.order.iter().enumerate() {
            if victims.chosen[k] || v.tenant == job.tenant && charged(v.spec.class) {
                continue;
            }
            let class = v.gpu_class.as_deref().unwrap_or_default();
            if charged(v.spec.class) {
                let left = spare.entry((v.tenant.as_str(), class)).or_insert_with(|| {
                    self.books
                        .tenants
                        .get(&v.tenant)
                        .map_or(0, |b| b.borrowed(class))
                });
                if *left < v.spec.demand_milli() {
                    continue;
                }
                *left -= v.spec.demand_milli();
            }
            let mut touched = vec![];
            for (i, pos) in gpu_positions(self, v) {
                *extra.entry(i).or_default().entry(pos).or_default() += v.spec.milli_per_gpu();
                taken.entry(i).or_default().push(k);
                touched.push(i);
            }
            touched.dedup();
            for i in touched {
                let mut with = extra[&i].clone();
                for (pos, m) in victims.freeing.get(&i).into_iter().flatten() {
                    *with.entry(*pos).or_default() += m;
                }
                if self.fits_with(job, buckets, i, &with) {
                    let mut chosen = taken.remove(&i).unwrap_or_default();
                    chosen.dedup();
                    return Some((i, chosen));
                }
            }
        }
        None
    }

    /// Whether the job fits on node `i` if `extra` thousandths per GPU
    /// position were free too.
    fn fits_with(
        &self,
        job: &Job,
        buckets: &[(usize, BucketKey)],
        i: usize,
        extra: &BTreeMap<usize, u32>,
    ) -> bool {
        let view = &self.index.nodes[i];
        if view.reserved_until.is_some() {
            return false;
        }
        let spec = &job.spec;
        let milli = spec.milli_per_gpu();
        let usable = (0..view.free.len())
            .filter(|&pos| {
                let free = view.free[pos] + extra.get(&pos).copied().unwrap_or(0);
                free.min(WHOLE_GPU) >= milli
                    && buckets
                        .iter()
                        .any(|(b, _)| self.index.gpu_in(&spec.constraints, i, pos, *b))
            })
            .count();
        usable >= spec.gpus as usize
    }
}
