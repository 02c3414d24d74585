//! Where a job's tasks go: an index of free capacity by (GPU class, site,
//! data level), and fragmentation-aware packing over it.
//!
//! The index keeps, per bucket, the nodes ordered by how many whole GPUs
//! they have free and the shared GPUs ordered by the thousandths they have
//! free, so the tightest fits for a job are a range lookup rather than a
//! scan of every node. A bounded number of them per bucket (for a shared
//! GPU task: the tightest partly held GPUs, at most two per free amount,
//! and the nodes with the fewest whole GPUs free; for whole GPUs: the
//! nodes with the fewest whole GPUs that still fit) are scored by how much
//! each raises the node's expected fragmentation over the pool's recent
//! job mix (`fragments`), and the least wins.

use std::cell::OnceCell;

use super::fragments::Fragments;
pub use crate::state::BucketKey;
use crate::state::{
    fits_gpu, fits_node, Constraints, Free, Host, Indexed, JobSpec, Layout, Millis, Node, State,
    TaskPlacement, WHOLE_GPU,
};

/// How many feasible nodes per bucket are scored for one whole-GPU task;
/// the index order puts the tightest fits first.
const CANDIDATES_PER_BUCKET: usize = 8;
/// For a shared-GPU task, per bucket: how many partly held GPUs are
/// scored (at most [`PER_FREE_AMOUNT`] with one free amount), and how
/// many nodes where it would open a free GPU.
const SHARED_CANDIDATES: usize = 8;
const PER_FREE_AMOUNT: usize = 2;
const OPENING_CANDIDATES: usize = 4;
/// For a CPU-only task: how many nodes with free GPU capacity are scored
/// by the fragmentation it would cause (nodes without are free of it).
const HOST_CANDIDATES: usize = 16;
/// How many index entries one lookup may skip (nodes that fail a GPU
/// model or memory constraint, or are reserved) before giving up.
const SCAN_LIMIT: usize = 256;

/// A candidate placement's score: lower is better. The fields are the
/// packing rules in priority order; the node index (name order) comes last
/// so ties break the same way on every replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Score {
    /// Outside the job's preferred site.
    pub off_preferred_site: bool,
    /// Certified above what the job needs: keep such nodes for sensitive work.
    pub excess_data_level: u8,
    /// How much the placement raises the node's expected fragmentation
    /// over the pool's recent job mix (fixed point): the work expected
    /// next should stay placeable.
    pub fragmentation: i64,
    /// A CPU-only task on a node with GPUs: keep their CPU for GPU work
    /// (always false for a GPU task).
    pub cpu_task_on_gpu_node: bool,
    /// A fraction that opens a fresh GPU instead of filling a shared one.
    pub opens_gpu: bool,
    /// Thousandths left free on the shared GPU a fraction lands on.
    pub stranded_milli: u32,
    /// Whole GPUs left free on the node: fewer keeps large blocks intact
    /// elsewhere.
    pub leftover_gpus: u32,
    /// A multi-GPU task whose GPUs are not all linked to each other.
    pub unlinked: bool,
    /// CPU millicores left free on the node: the tightest fit keeps room
    /// for larger tasks elsewhere.
    pub leftover_cpu: u64,
    pub node: usize,
}

/// A chosen task: the node index, the GPU positions, and its score.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFit {
    pub score: Score,
    pub node: usize,
    pub gpus: Vec<usize>,
}

/// The free-capacity index as one round sees it: the state's layout, a
/// copy of the free amounts the round takes from as it places, and the
/// round's reservations.
pub struct FreeIndex<'a> {
    state: &'a State,
    layout: &'a Layout,
    free: Free,
    /// The schedulable nodes by position, each looked up by name when the
    /// round first needs it: a round looks at a few dozen of them, and
    /// listing all of them up front (a walk over every node) was most of
    /// a round's setup at 10,000 nodes.
    nodes: Vec<OnceCell<&'a Node>>,
    /// Held until this time for a blocked job (backfill reservation), or
    /// wholly for a job waiting on preemption (`Millis::MIN`).
    reserved: Vec<Option<Millis>>,
    fragments: Fragments,
}

impl<'a> FreeIndex<'a> {
    pub fn new(state: &'a Indexed) -> FreeIndex<'a> {
        let capacity = state.free_capacity();
        let n = capacity.layout.len();
        FreeIndex {
            state: state.state(),
            layout: &capacity.layout,
            free: capacity.free.clone(),
            reserved: vec![None; n],
            nodes: vec![OnceCell::new(); n],
            fragments: Fragments::new(state, &capacity.layout, &capacity.free),
        }
    }

    /// How many schedulable nodes there are.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The node at position `i`.
    pub fn node(&self, i: usize) -> &'a Node {
        let state = self.state;
        let name = &self.layout.names[i];
        self.nodes[i].get_or_init(|| {
            state
                .node(name)
                .expect("the free-capacity layout lists only nodes of the state")
        })
    }

    /// Free thousandths per GPU position of node `i` (0 for unusable GPUs).
    pub fn free_of(&self, i: usize) -> &[u32] {
        self.free.of(self.layout, i)
    }

    pub fn reserved_until(&self, i: usize) -> Option<Millis> {
        self.reserved[i]
    }

    /// Takes `milli` of each listed GPU of node `i`, and a task's CPU and
    /// memory.
    pub fn take(&mut self, i: usize, gpus: &[usize], milli: u32, host: Host) {
        if !gpus.is_empty() {
            self.free.take(self.layout, i, gpus, milli);
        }
        self.free.take_host(i, host);
    }

    /// The CPU and memory of node `i` no job holds (this round's takings
    /// included).
    pub fn host_of(&self, i: usize) -> Host {
        self.free.host(i)
    }

    /// Reserves node `i` for a job waiting on preemption: nothing else is
    /// placed there this round.
    pub fn hold(&mut self, i: usize) {
        self.reserved[i] = Some(Millis::MIN);
    }

    /// Reserves node `i` for a blocked job that can start at `until`: only
    /// work that ends by then may run there meanwhile.
    pub fn reserve(&mut self, i: usize, until: Millis) {
        let r = &mut self.reserved[i];
        *r = Some(r.map_or(until, |u| u.min(until)));
    }

    pub fn key(&self, b: usize) -> &'a BucketKey {
        &self.layout.keys[b]
    }

    /// The nodes with GPUs in bucket `b`.
    pub fn members(&self, b: usize) -> &'a [usize] {
        &self.layout.members[b]
    }

    /// Whether GPU `pos` of node `i` is in bucket `b` and meets `c`.
    pub fn gpu_in(&self, c: &Constraints, i: usize, pos: usize, b: usize) -> bool {
        self.gpu_fits(c, i, pos, b)
    }

    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.layout.position(name)
    }

    /// The buckets a job's constraints allow, restricted to `classes`.
    pub fn buckets_for<'k>(
        &'k self,
        c: &'k Constraints,
        classes: &'k [&str],
    ) -> impl Iterator<Item = (usize, &'k BucketKey)> + 'k {
        self.layout.by_key.iter().filter_map(move |(k, &b)| {
            let ok = classes.contains(&k.class.as_str())
                && k.data_level >= c.data_level
                && c.site.as_deref().is_none_or(|s| k.site == s);
            ok.then_some((b, k))
        })
    }

    /// The GPU classes a job's constraints allow, in name order.
    pub fn classes_for(&self, c: &Constraints) -> Vec<&'a str> {
        let mut classes: Vec<&'a str> = self
            .layout
            .models
            .iter()
            .filter(|(k, m)| c.allows_model(m) && c.allows_class(k))
            .map(|(k, _)| k.as_str())
            .collect();
        classes.dedup();
        classes
    }

    /// The best place for one task of `spec` among the allowed buckets,
    /// skipping nodes in `exclude`. `ends_at` is when the job would end if
    /// started now (for reservations).
    pub fn best_task(
        &self,
        spec: &JobSpec,
        buckets: &[(usize, &BucketKey)],
        exclude: &[usize],
        ends_at: Millis,
    ) -> Option<TaskFit> {
        // The score's leading fields are the same for every node of a
        // bucket: visit buckets best first and stop once a found fit beats
        // what any later bucket could offer.
        let c = &spec.constraints;
        let rank = |k: &BucketKey| {
            (
                c.preferred_site.as_deref().is_some_and(|s| s != k.site),
                k.data_level - c.data_level.min(k.data_level),
            )
        };
        let mut order: Vec<((bool, u8), usize, &BucketKey)> =
            buckets.iter().map(|&(b, k)| (rank(k), b, k)).collect();
        order.sort_unstable_by_key(|(r, b, _)| (*r, *b));
        let mut best: Option<TaskFit> = None;
        for (r, b, key) in order {
            if let Some(x) = &best {
                if r > (x.score.off_preferred_site, x.score.excess_data_level) {
                    break;
                }
            }
            for fit in self.bucket_candidates(spec, b, key, exclude, ends_at) {
                if best.as_ref().is_none_or(|x| fit.score < x.score) {
                    best = Some(fit);
                }
            }
        }
        best
    }

    fn usable(&self, i: usize, exclude: &[usize], ends_at: Millis) -> bool {
        !exclude.contains(&i) && self.reserved[i].is_none_or(|u| ends_at <= u)
    }

    fn bucket_candidates(
        &self,
        spec: &JobSpec,
        b: usize,
        key: &BucketKey,
        exclude: &[usize],
        ends_at: Millis,
    ) -> Vec<TaskFit> {
        let c = &spec.constraints;
        let base = Score {
            off_preferred_site: c.preferred_site.as_deref().is_some_and(|s| s != key.site),
            excess_data_level: key.data_level - c.data_level.min(key.data_level),
            fragmentation: 0,
            cpu_task_on_gpu_node: false,
            opens_gpu: false,
            stranded_milli: 0,
            leftover_gpus: 0,
            unlinked: false,
            leftover_cpu: 0,
            node: 0,
        };
        let milli = spec.milli_per_gpu();
        let host = spec.host();
        let roomy = |i: usize| self.free.host(i).holds(host);
        let leftover_cpu = |i: usize| {
            self.free
                .host(i)
                .cpu_millicores
                .saturating_sub(host.cpu_millicores)
        };
        let mut fits = vec![];
        if milli < WHOLE_GPU {
            // A shared GPU's remainder: the tightest ones that still fit,
            // a few per free amount, so that remainders the mix fills
            // well compete with the tightest.
            let (mut amount, mut same) = (0, 0);
            for &(free, i, pos) in self.free.shared[b]
                .range((milli, 0, 0)..)
                .take(SCAN_LIMIT)
                .filter(|(_, i, pos)| {
                    self.usable(*i, exclude, ends_at)
                        && roomy(*i)
                        && self.gpu_fits(c, *i, *pos, b)
                        && self.node(*i).runs(spec)
                })
            {
                if free != amount {
                    (amount, same) = (free, 0);
                }
                same += 1;
                if same > PER_FREE_AMOUNT {
                    continue;
                }
                let score = Score {
                    stranded_milli: free - milli,
                    leftover_gpus: self.free.whole_in(self.layout, i, b),
                    leftover_cpu: leftover_cpu(i),
                    node: i,
                    ..base
                };
                fits.push(self.scored(score, i, vec![pos], spec));
                if fits.len() == SHARED_CANDIDATES {
                    break;
                }
            }
        }
        let want = spec.gpus;
        let (limit, least) = if milli < WHOLE_GPU {
            (fits.len() + OPENING_CANDIDATES, 1)
        } else {
            (CANDIDATES_PER_BUCKET, want)
        };
        for &(whole, i) in self.free.by_free[b].range((least, 0)..).take(SCAN_LIMIT) {
            if fits.len() == limit {
                break;
            }
            // A node without the task's CPU or memory is skipped like a
            // reserved one: it counts towards the scan's bound.
            if !self.usable(i, exclude, ends_at) || !roomy(i) || !self.node(i).runs(spec) {
                continue;
            }
            let node_free = self.free_of(i);
            let free: Vec<usize> = (0..node_free.len())
                .filter(|&pos| node_free[pos] == WHOLE_GPU && self.gpu_fits(c, i, pos, b))
                .collect();
            if free.len() < want as usize {
                continue;
            }
            let (gpus, unlinked) = pick_linked(self.node(i), &free, want as usize);
            let opens = milli < WHOLE_GPU;
            let score = Score {
                opens_gpu: opens,
                stranded_milli: if opens { WHOLE_GPU - milli } else { 0 },
                leftover_gpus: whole - want.min(whole),
                unlinked,
                leftover_cpu: leftover_cpu(i),
                node: i,
                ..base
            };
            fits.push(self.scored(score, i, gpus, spec));
        }
        fits
    }

    /// A candidate with the change in its node's expected fragmentation.
    fn scored(&self, score: Score, i: usize, gpus: Vec<usize>, spec: &JobSpec) -> TaskFit {
        let fragmentation = self.fragmentation(i, &gpus, spec);
        TaskFit {
            score: Score {
                fragmentation,
                ..score
            },
            node: i,
            gpus,
        }
    }

    /// How much placing a task of `spec` on node `i`, on `gpus`, raises
    /// the node's expected fragmentation.
    fn fragmentation(&self, i: usize, gpus: &[usize], spec: &JobSpec) -> i64 {
        let node = self.node(i);
        let model = node.gpus.first().map_or("", |g| g.info.model.as_str());
        let before = self.free.host(i);
        self.fragments.change(
            model,
            self.free_of(i),
            before,
            (gpus, spec.milli_per_gpu()),
            before.minus(spec.host()),
        )
    }

    fn gpu_fits(&self, c: &Constraints, i: usize, pos: usize, b: usize) -> bool {
        let node = self.node(i);
        self.layout.buckets_of(i)[pos] == b && fits_gpu(c, node, &node.gpus[pos])
    }

    /// The best node for one task of a CPU-only job: nodes by free CPU,
    /// tightest first, up to the scan's bound; nodes without GPUs first
    /// (keep GPU nodes' CPU for GPU work), then those with the fewest free
    /// GPUs, then the tightest CPU fit. A gang's later tasks stay in the
    /// site of its first (`site`).
    pub fn best_host_task(
        &self,
        spec: &JobSpec,
        exclude: &[usize],
        site: Option<&str>,
        ends_at: Millis,
    ) -> Option<TaskFit> {
        let c = &spec.constraints;
        let want = spec.host();
        let mut best: Option<TaskFit> = None;
        let (mut gpuless, mut with_gpus) = (0, 0);
        for &(cpu, i) in self
            .free
            .by_cpu
            .range((want.cpu_millicores, 0)..)
            .take(SCAN_LIMIT)
        {
            if !self.usable(i, exclude, ends_at) || !self.free.host(i).holds(want) {
                continue;
            }
            let node = self.node(i);
            if !fits_node(c, node) || !node.runs(spec) || site.is_some_and(|s| node.site() != s) {
                continue;
            }
            let whole = self.free_of(i).iter().filter(|&&f| f == WHOLE_GPU).count() as u32;
            // Taking CPU or memory never lowers a node's fragmentation, and
            // a node with no free GPU capacity has none to raise.
            let fragmentation = if self.free_of(i).iter().any(|&f| f > 0) {
                if with_gpus == HOST_CANDIDATES && best.is_some() {
                    continue;
                }
                with_gpus += 1;
                self.fragmentation(i, &[], spec)
            } else {
                0
            };
            let score = Score {
                off_preferred_site: c
                    .preferred_site
                    .as_deref()
                    .is_some_and(|s| s != node.site()),
                excess_data_level: node.labels.data_level
                    - c.data_level.min(node.labels.data_level),
                fragmentation,
                cpu_task_on_gpu_node: !node.gpus.is_empty(),
                opens_gpu: false,
                stranded_milli: 0,
                leftover_gpus: whole,
                unlinked: false,
                leftover_cpu: cpu - want.cpu_millicores,
                node: i,
            };
            if best.as_ref().is_none_or(|b| score < b.score) {
                best = Some(TaskFit {
                    score,
                    node: i,
                    gpus: vec![],
                });
            }
            // Nodes come tightest first: past a few without GPUs, none
            // further on can win.
            if node.gpus.is_empty() {
                gpuless += 1;
                if gpuless == CANDIDATES_PER_BUCKET {
                    break;
                }
            }
        }
        best
    }

    /// All tasks of a CPU-only job, or none.
    fn place_host_only(&self, spec: &JobSpec, ends_at: Millis) -> Option<Vec<TaskFit>> {
        let n = spec.nodes.max(1) as usize;
        let first = self.best_host_task(spec, &[], None, ends_at)?;
        let site = self.node(first.node).site();
        let mut used = vec![first.node];
        let mut tasks = vec![first];
        while tasks.len() < n {
            let fit = self.best_host_task(spec, &used, Some(site), ends_at)?;
            used.push(fit.node);
            tasks.push(fit);
        }
        Some(tasks)
    }

    /// All tasks of a job, or none: a single task, or a gang of distinct
    /// nodes inside one site, all on GPUs of one class.
    pub fn place(
        &self,
        spec: &JobSpec,
        buckets: &[(usize, &BucketKey)],
        ends_at: Millis,
    ) -> Option<Vec<TaskFit>> {
        if spec.cpu_only() {
            return self.place_host_only(spec, ends_at);
        }
        let n = spec.nodes.max(1) as usize;
        if n == 1 {
            return self.best_task(spec, buckets, &[], ends_at).map(|f| vec![f]);
        }
        let mut groups: Vec<(&str, &str)> = buckets
            .iter()
            .map(|(_, k)| (k.site.as_str(), k.class.as_str()))
            .collect();
        groups.sort_unstable();
        groups.dedup();
        let mut best: Option<(Score, Vec<TaskFit>)> = None;
        for (site, class) in groups {
            let in_site: Vec<(usize, &BucketKey)> = buckets
                .iter()
                .filter(|(_, k)| k.site == site && k.class == class)
                .copied()
                .collect();
            let mut tasks: Vec<TaskFit> = vec![];
            let mut used: Vec<usize> = vec![];
            while tasks.len() < n {
                let Some(fit) = self.best_task(spec, &in_site, &used, ends_at) else {
                    break;
                };
                used.push(fit.node);
                tasks.push(fit);
            }
            if tasks.len() < n {
                continue;
            }
            // A gang's score is its worst task's.
            let worst = tasks.iter().map(|t| t.score).max().expect("n > 1");
            if best.as_ref().is_none_or(|(s, _)| worst < *s) {
                best = Some((worst, tasks));
            }
        }
        best.map(|(_, t)| t)
    }

    pub fn placements(&self, fits: &[TaskFit]) -> Vec<TaskPlacement> {
        fits.iter()
            .map(|f| {
                let node = self.node(f.node);
                TaskPlacement {
                    node: node.name.clone(),
                    gpus: f
                        .gpus
                        .iter()
                        .map(|&p| node.gpus[p].info.uuid.clone())
                        .collect(),
                }
            })
            .collect()
    }

    /// The GPU class of a placed task; "" for a CPU-only one.
    pub fn class_of(&self, fit: &TaskFit) -> &str {
        match fit.gpus.first() {
            Some(&pos) => &self.layout.keys[self.layout.buckets_of(fit.node)[pos]].class,
            None => "",
        }
    }

    /// Why no node has room for a job now, by dimension: of the
    /// schedulable nodes that meet its constraints (and have GPUs of its
    /// kind), how many lack free GPUs, CPU or memory for one task. A walk
    /// over every node: for `explain` only.
    pub fn shortage(&self, spec: &JobSpec) -> Shortage {
        let c = &spec.constraints;
        let want = spec.host();
        let mut s = Shortage::default();
        for i in 0..self.len() {
            let node = self.node(i);
            if !fits_node(c, node) {
                continue;
            }
            let free = self.free_of(i);
            let kind: Vec<usize> = (0..node.gpus.len())
                .filter(|&p| fits_gpu(c, node, &node.gpus[p]))
                .collect();
            if !spec.cpu_only() && kind.len() < spec.gpus as usize {
                continue;
            }
            s.nodes += 1;
            let milli = spec.milli_per_gpu();
            let gpus_free = kind.iter().filter(|&&p| free[p] >= milli).count();
            if !spec.cpu_only() && gpus_free < spec.gpus as usize {
                s.gpus += 1;
            }
            let host = self.free.host(i);
            if host.cpu_millicores < want.cpu_millicores {
                s.cpu += 1;
            }
            if host.memory_bytes < want.memory_bytes {
                s.memory += 1;
            }
        }
        s
    }
}

/// How many nodes lack each dimension for one task of a job (see
/// [`FreeIndex::shortage`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shortage {
    /// Schedulable nodes that meet its constraints.
    pub nodes: usize,
    pub gpus: usize,
    pub cpu: usize,
    pub memory: usize,
}

/// Picks `want` of the free GPU positions, preferring a set in which every
/// GPU is linked to every other (NVLink peers); lowest positions first.
/// Returns the set and whether it is not fully linked.
fn pick_linked(node: &Node, free: &[usize], want: usize) -> (Vec<usize>, bool) {
    let fallback = || (free[..want].to_vec(), want > 1);
    if want <= 1 {
        return (free[..want].to_vec(), false);
    }
    let linked = |a: usize, b: usize| {
        let (ga, gb) = (&node.gpus[a].info, &node.gpus[b].info);
        ga.peers.contains(&gb.index) || gb.peers.contains(&ga.index)
    };
    if free.iter().all(|&p| node.gpus[p].info.peers.is_empty()) {
        return fallback();
    }
    // Greedy clique from each seed, in position order: enough for the
    // islands nodes report (pairs, quads, all-to-all).
    for (k, &seed) in free.iter().enumerate() {
        let mut set = vec![seed];
        for &p in &free[k + 1..] {
            if set.iter().all(|&q| linked(p, q)) {
                set.push(p);
                if set.len() == want {
                    return (set, false);
                }
            }
        }
    }
    fallback()
}
