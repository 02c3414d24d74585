//! Reclaiming borrowed GPUs for a tenant below its guarantee.
//!
//! Victims come from borrowed capacity only: scavenger work first, then
//! the class order (batch before training), then the least work lost (GPU
//! time since the job started), job id last. A victim's tenant is never
//! pushed below its own guarantee, inference is never preempted, and the
//! claimant never gets more than its guarantee (it is only a claimant if
//! the job fits within it). Victims keep their GPUs through their grace
//! period; meanwhile the node is held for the claimant. A gang reclaims
//! on as many nodes of one site as it has tasks, counting nodes that are
//! free already, and holds them all.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use super::explain::Hold;
use super::placement::BucketKey;
use super::{charged, Decision, Round};
use crate::state::{Host, Job, JobClass, JobId, JobState, Millis, WHOLE_GPU};

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
        for job in round.state.placed_jobs() {
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
        let node = round.index.node(i);
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
        if spec.nodes > 1 {
            let (hold, victims) = self.reclaim_gang(job, &buckets, victims);
            self.victims = Some(victims);
            return hold;
        }
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
                node: self.index.node(i).name.clone(),
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
            let victims = self.preempt_for(job, &chosen, &mut victims);
            self.index.hold(i);
            Hold::Reclaiming {
                node: self.index.node(i).name.clone(),
                victims,
            }
        });
        self.victims = Some(victims);
        hold
    }

    /// `reclaim` for a gang: wait if GPUs being freed already make room on
    /// enough nodes of one site, or else choose victims, in victim order,
    /// until they do.
    fn reclaim_gang(
        &mut self,
        job: &'a Job,
        buckets: &[(usize, BucketKey)],
        mut victims: Victims<'a>,
    ) -> (Option<Hold>, Victims<'a>) {
        let mut fitting = self.gang_candidates(job, buckets, &victims.freeing);
        if let Some(nodes) = enough(job, &fitting) {
            let node = self.hold_all(&nodes);
            return (Some(Hold::WaitingForPreemption { node }), victims);
        }
        if self.reclaims == self.policy.max_reclaims {
            return (None, victims);
        }
        self.reclaims += 1;
        let mut extra = victims.freeing.clone();
        let mut extra_host: BTreeMap<usize, Host> = BTreeMap::new();
        let mut taken: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        let mut spare: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for (k, v) in victims.order.iter().enumerate() {
            if victims.chosen[k] || !self.may_preempt(job, v, &mut spare) {
                continue;
            }
            let mut touched = vec![];
            for (i, pos) in gpu_positions(self, v) {
                *extra.entry(i).or_default().entry(pos).or_default() += v.spec.milli_per_gpu();
                taken.entry(i).or_default().push(k);
                touched.push(i);
            }
            touched.dedup();
            for &i in &touched {
                let h = extra_host.entry(i).or_default();
                *h = h.plus(v.spec.host());
            }
            for i in touched {
                let host = self.index.host_of(i).plus(extra_host[&i]);
                if host.holds(job.spec.host()) && self.fits_with(job, buckets, i, &extra[&i]) {
                    let site = self.index.node(i).site();
                    let nodes = fitting.entry(site).or_default();
                    if !nodes.contains(&i) {
                        nodes.push(i);
                    }
                }
            }
            let Some(nodes) = enough(job, &fitting) else {
                continue;
            };
            let mut chosen: Vec<usize> = nodes
                .iter()
                .flat_map(|i| taken.remove(i).unwrap_or_default())
                .collect();
            chosen.sort_unstable();
            chosen.dedup();
            let names = self.preempt_for(job, &chosen, &mut victims);
            let node = self.hold_all(&nodes);
            return (
                Some(Hold::Reclaiming {
                    node,
                    victims: names,
                }),
                victims,
            );
        }
        (None, victims)
    }

    /// Nodes where one task of the job fits with `extra` free as well, by
    /// site.
    fn gang_candidates(
        &self,
        job: &Job,
        buckets: &[(usize, BucketKey)],
        extra: &BTreeMap<usize, BTreeMap<usize, u32>>,
    ) -> BTreeMap<&'a str, Vec<usize>> {
        let none = BTreeMap::new();
        let mut by_site: BTreeMap<&'a str, Vec<usize>> = BTreeMap::new();
        for i in 0..self.index.len() {
            if self.fits_with(job, buckets, i, extra.get(&i).unwrap_or(&none)) {
                by_site
                    .entry(self.index.node(i).site())
                    .or_default()
                    .push(i);
            }
        }
        by_site
    }

    /// Holds the nodes for the claimant; their names, for people.
    fn hold_all(&mut self, nodes: &[usize]) -> String {
        let names: Vec<String> = nodes
            .iter()
            .map(|&i| {
                self.index.hold(i);
                self.index.node(i).name.clone()
            })
            .collect();
        names.join(", ")
    }

    /// Whether `victim` may be preempted for `job`: another tenant's (or
    /// uncharged) work, and its tenant keeps its own guarantee. `spare`
    /// tracks what each tenant may still give up, per GPU class.
    fn may_preempt(
        &self,
        job: &Job,
        victim: &'a Job,
        spare: &mut BTreeMap<(&'a str, &'a str), u64>,
    ) -> bool {
        if victim.tenant == job.tenant && charged(victim.spec.class) {
            return false;
        }
        if !charged(victim.spec.class) {
            return true;
        }
        let class = victim.gpu_class.as_deref().unwrap_or_default();
        let left = spare
            .entry((victim.tenant.as_str(), class))
            .or_insert_with(|| {
                self.books
                    .tenants
                    .get(&victim.tenant)
                    .map_or(0, |b| b.borrowed(class))
            });
        if *left < victim.spec.demand_milli() {
            return false;
        }
        *left -= victim.spec.demand_milli();
        true
    }

    /// Orders the chosen victims stopped for `job`; their ids.
    fn preempt_for(
        &mut self,
        job: &Job,
        chosen: &[usize],
        victims: &mut Victims<'a>,
    ) -> Vec<JobId> {
        let mut names = vec![];
        for &k in chosen {
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
        names
    }

    /// The first node (in victim order) where the job fits once the
    /// victims taken so far on it stop, and those victims.
    fn choose_victims(
        &self,
        job: &Job,
        buckets: &[(usize, BucketKey)],
        victims: &Victims<'a>,
    ) -> Option<(usize, Vec<usize>)> {
        let mut extra: BTreeMap<usize, BTreeMap<usize, u32>> = BTreeMap::new();
        // The CPU and memory the victims taken so far give back, per node.
        let mut extra_host: BTreeMap<usize, Host> = BTreeMap::new();
        let mut taken: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        // What each victim's tenant may still give up without dropping
        // below its guarantee, per GPU class.
        let mut spare = BTreeMap::new();
        for (k, v) in victims.order.iter().enumerate() {
            if victims.chosen[k] || !self.may_preempt(job, v, &mut spare) {
                continue;
            }
            let mut touched = vec![];
            for (i, pos) in gpu_positions(self, v) {
                *extra.entry(i).or_default().entry(pos).or_default() += v.spec.milli_per_gpu();
                taken.entry(i).or_default().push(k);
                touched.push(i);
            }
            touched.dedup();
            for &i in &touched {
                let h = extra_host.entry(i).or_default();
                *h = h.plus(v.spec.host());
            }
            for i in touched {
                let mut with = extra[&i].clone();
                for (pos, m) in victims.freeing.get(&i).into_iter().flatten() {
                    *with.entry(*pos).or_default() += m;
                }
                let host = self.index.host_of(i).plus(extra_host[&i]);
                if host.holds(job.spec.host()) && self.fits_with(job, buckets, i, &with) {
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
        let spec = &job.spec;
        if self.index.reserved_until(i).is_some() || !self.index.node(i).runs(spec) {
            return false;
        }
        let node_free = self.index.free_of(i);
        let milli = spec.milli_per_gpu();
        let usable = (0..node_free.len())
            .filter(|&pos| {
                let free = node_free[pos] + extra.get(&pos).copied().unwrap_or(0);
                free.min(WHOLE_GPU) >= milli
                    && buckets
                        .iter()
                        .any(|(b, _)| self.index.gpu_in(&spec.constraints, i, pos, *b))
            })
            .count();
        usable >= spec.gpus as usize
    }
}

/// `nodes` nodes of one site from `fitting`, the first site that has them.
fn enough(job: &Job, fitting: &BTreeMap<&str, Vec<usize>>) -> Option<Vec<usize>> {
    let want = job.spec.nodes as usize;
    fitting
        .values()
        .find(|nodes| nodes.len() >= want)
        .map(|nodes| nodes[..want].to_vec())
}
