//! Scenario 2: packing on the Alibaba GPU-sharing trace, by the protocol
//! of the FGD experiments (USENIX ATC'23): tasks sorted by name, shuffled
//! with a seed, topped up with copies drawn uniformly from all tasks while
//! their GPU request stays within `inflation` × the cluster's GPU
//! capacity, then placed
//! one by one with nothing ever leaving; a task that fits nowhere fails.
//! The GPU allocation ratio is recorded each time the arrived GPU request
//! crosses another 1 % of capacity.

use std::collections::{BTreeMap, HashMap};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::fgd;
use super::traces::{OpenbNode, OpenbTask};
use edupool_core::fragmentation::{self, Demand, Kind, NodeFree, WHOLE};

/// How a task is given a node and GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Packer {
    /// A random feasible node, a random fitting GPU (baseline).
    Random,
    /// FGD's best-fit baseline: the feasible node with the least leftover
    /// of 0.5 × CPU / max CPU + 0.5 × GPUs / 8, scored 0–100, ties at random.
    BestFit,
    /// FGD as published (`super::fgd`): the placement whose score from
    /// the change in fragmentation is highest, ties to the first node.
    Fgd,
    /// edupool: the placement that raises the node's expected
    /// fragmentation least (kinds weighted by popularity shared among
    /// the nodes that can still host them, refreshed at every percent of
    /// capacity arrived), then the least leftover, then node order.
    Edupool,
}

impl Packer {
    pub fn name(self) -> &'static str {
        match self {
            Packer::Random => "random",
            Packer::BestFit => "best-fit",
            Packer::Fgd => "fgd",
            Packer::Edupool => "edupool",
        }
    }
}

#[derive(Clone, Debug)]
struct Node {
    cpu_free: u64,
    mem_free: u64,
    model: String,
    gpus: Vec<u32>,
}

/// The cluster as it fills up.
#[derive(Clone, Debug)]
pub struct Cluster {
    nodes: Vec<Node>,
    capacity_milli: u64,
    allocated_milli: u64,
    max_cpu: u64,
}

impl Cluster {
    pub fn new(nodes: &[OpenbNode]) -> Cluster {
        let nodes: Vec<Node> = nodes
            .iter()
            .map(|n| Node {
                cpu_free: n.cpu_milli,
                mem_free: n.memory_mib,
                model: n.model.clone(),
                gpus: vec![WHOLE; n.gpus as usize],
            })
            .collect();
        Cluster {
            capacity_milli: nodes
                .iter()
                .map(|n| n.gpus.len() as u64 * u64::from(WHOLE))
                .sum(),
            allocated_milli: 0,
            max_cpu: nodes.iter().map(|n| n.cpu_free).max().unwrap_or(1).max(1),
            nodes,
        }
    }

    pub fn capacity_milli(&self) -> u64 {
        self.capacity_milli
    }

    /// Allocated GPU thousandths over capacity, in percent.
    pub fn allocation_percent(&self) -> f64 {
        100.0 * self.allocated_milli as f64 / self.capacity_milli.max(1) as f64
    }

    /// Every node's free capacity, as fragmentation sees it.
    fn free_views(&self) -> Vec<NodeFree<'_>> {
        self.nodes
            .iter()
            .map(|n| NodeFree {
                gpus: &n.gpus,
                cpu_milli: n.cpu_free,
                memory_mib: n.mem_free,
                model: &n.model,
            })
            .collect()
    }

    fn fits(&self, n: usize, t: &OpenbTask) -> bool {
        let node = &self.nodes[n];
        if node.cpu_free < t.cpu_milli || node.mem_free < t.memory_mib {
            return false;
        }
        if t.gpus == 0 {
            return true;
        }
        if !t.models.is_empty() && !t.models.contains(&node.model) {
            return false;
        }
        if t.gpu_milli < WHOLE {
            node.gpus.iter().any(|&g| g >= t.gpu_milli)
        } else {
            node.gpus.iter().filter(|&&g| g == WHOLE).count() >= t.gpus as usize
        }
    }

    /// The distinct GPU choices worth comparing on a node: for a shared-GPU
    /// task, the lowest-indexed GPU of each distinct free amount that fits;
    /// for whole GPUs, the lowest-indexed free ones.
    fn choices(&self, n: usize, t: &OpenbTask) -> Vec<Vec<usize>> {
        let gpus = &self.nodes[n].gpus;
        if t.gpus == 0 {
            return vec![vec![]];
        }
        if t.gpu_milli < WHOLE {
            let mut seen = BTreeMap::new();
            for (i, &g) in gpus.iter().enumerate() {
                if g >= t.gpu_milli {
                    seen.entry(g).or_insert(i);
                }
            }
            return seen.into_values().map(|i| vec![i]).collect();
        }
        let free: Vec<usize> = (0..gpus.len()).filter(|&i| gpus[i] == WHOLE).collect();
        vec![free[..t.gpus as usize].to_vec()]
    }

    fn take(&mut self, n: usize, gpus: &[usize], t: &OpenbTask) {
        let node = &mut self.nodes[n];
        node.cpu_free -= t.cpu_milli;
        node.mem_free -= t.memory_mib;
        for &g in gpus {
            node.gpus[g] -= t.gpu_milli;
        }
        self.allocated_milli += t.gpu_request_milli();
    }

    /// Expected fragmentation with the kinds of `popularity` weighted for
    /// the cluster as it is now: each kind's popularity shared among the
    /// nodes that could host one of its tasks now. Nothing ever leaves, so
    /// a kind's hosts only dwindle as the cluster fills, and the last hosts
    /// of a kind count its fragment more than the first ones did (on the
    /// empty cluster every able node shares it).
    fn fragmentation(&self, popularity: &[Kind]) -> FragMemo {
        let mut mix = popularity.to_vec();
        fragmentation::weigh_by_hosts(&mut mix, &self.free_views());
        FragMemo::new(mix)
    }

    /// Leftover after placing `t` on node `n` with `gpus`: 0.5 × CPU / max
    /// CPU + 0.5 × free GPUs / 8 (FGD's best-fit measure).
    fn leftover(&self, n: usize, t: &OpenbTask) -> f64 {
        let node = &self.nodes[n];
        let cpu = (node.cpu_free - t.cpu_milli) as f64 / self.max_cpu as f64;
        let free: u64 = node.gpus.iter().map(|&g| u64::from(g)).sum();
        let gpu = (free - t.gpu_request_milli()) as f64 / f64::from(8 * WHOLE);
        0.5 * cpu + 0.5 * gpu
    }
}

/// Expected fragmentation of node states, remembered: many nodes share a
/// state, and the mix never changes within a run.
struct FragMemo {
    mix: Vec<Kind>,
    tail: fragmentation::Tail,
    memo: HashMap<(String, u64, u64, Vec<u32>), f64>,
}

impl FragMemo {
    fn new(mix: Vec<Kind>) -> FragMemo {
        FragMemo {
            tail: fragmentation::Tail::of(&mix),
            mix,
            memo: HashMap::new(),
        }
    }

    fn of(&mut self, model: &str, cpu: u64, mem: u64, gpus: &[u32]) -> f64 {
        let mut key_gpus = gpus.to_vec();
        key_gpus.sort_unstable();
        let (mix, tail) = (&self.mix, &self.tail);
        *self
            .memo
            .entry((model.to_string(), cpu, mem, key_gpus))
            .or_insert_with_key(|(model, cpu, mem, gpus)| {
                fragmentation::expected(
                    NodeFree {
                        gpus,
                        cpu_milli: *cpu,
                        memory_mib: *mem,
                        model,
                    },
                    mix,
                    tail,
                )
            })
    }
}

/// The expected mix of task kinds: every task of the trace, grouped by
/// its demand and model set (FGD takes the target workload from the
/// trace), each kind weighted by how many tasks it has (FGD's
/// popularity; `run` then shares each weight among the nodes that can
/// still host the kind, again at every percent of capacity arrived).
/// CPU-only kinds are part of the mix: they are what keeps GPU nodes'
/// cores from being taken by work that needs no GPU.
pub fn mix_of(tasks: &[OpenbTask]) -> Vec<Kind> {
    let mut counts: BTreeMap<(Demand, Vec<String>), f64> = BTreeMap::new();
    for t in tasks {
        let demand = Demand {
            gpus: t.gpus,
            milli: t.gpu_milli,
            cpu_milli: t.cpu_milli,
            memory_mib: t.memory_mib,
        };
        *counts.entry((demand, t.models.clone())).or_default() += 1.0;
    }
    counts
        .into_iter()
        .map(|((demand, models), weight)| Kind {
            demand,
            weight,
            models,
        })
        .collect()
}

/// Places one task; returns whether it fitted.
fn place(
    cluster: &mut Cluster,
    t: &OpenbTask,
    packer: Packer,
    rng: &mut StdRng,
    memo: &mut FragMemo,
    fgd: &mut fgd::Memo,
) -> bool {
    let feasible: Vec<usize> = (0..cluster.nodes.len())
        .filter(|&n| cluster.fits(n, t))
        .collect();
    if feasible.is_empty() {
        return false;
    }
    let (node, gpus) = match packer {
        Packer::Random => {
            let n = *feasible.choose(rng).expect("not empty");
            let g = &cluster.nodes[n].gpus;
            let gpus = if t.gpus == 0 {
                vec![]
            } else if t.gpu_milli < WHOLE {
                let fit: Vec<usize> = (0..g.len()).filter(|&i| g[i] >= t.gpu_milli).collect();
                vec![*fit.choose(rng).expect("fits")]
            } else {
                let free: Vec<usize> = (0..g.len()).filter(|&i| g[i] == WHOLE).collect();
                free.choose_multiple(rng, t.gpus as usize)
                    .copied()
                    .collect()
            };
            (n, gpus)
        }
        Packer::BestFit => {
            let scored: Vec<(i64, usize)> = feasible
                .iter()
                .map(|&n| (((1.0 - cluster.leftover(n, t)) * 100.0) as i64, n))
                .collect();
            let best = scored.iter().map(|s| s.0).max().expect("not empty");
            let top: Vec<usize> = scored.iter().filter(|s| s.0 == best).map(|s| s.1).collect();
            let n = *top.choose(rng).expect("not empty");
            (n, tightest(&cluster.nodes[n].gpus, t))
        }
        Packer::Fgd => {
            // Ties go to the first node: the artifact's scheduler takes the
            // smallest node name among equal scores, and the trace's node
            // lists are sorted by name.
            let mut best: Option<(i64, usize, Vec<usize>)> = None;
            for &n in &feasible {
                let node = &cluster.nodes[n];
                let (score, gpus) = fgd.best(&node.model, node.cpu_free, &node.gpus, t);
                if best.as_ref().is_none_or(|b| score > b.0) {
                    best = Some((score, n, gpus));
                }
            }
            let (_, n, gpus) = best.expect("not empty");
            (n, gpus)
        }
        Packer::Edupool => {
            let mut best: Option<(i64, i64, usize, Vec<usize>)> = None;
            for &n in &feasible {
                let node = &cluster.nodes[n];
                let before = memo.of(&node.model, node.cpu_free, node.mem_free, &node.gpus);
                let left = (cluster.leftover(n, t) * 1e6) as i64;
                for gpus in cluster.choices(n, t) {
                    let mut after = node.gpus.clone();
                    for &g in &gpus {
                        after[g] -= t.gpu_milli;
                    }
                    let delta = memo.of(
                        &node.model,
                        node.cpu_free - t.cpu_milli,
                        node.mem_free - t.memory_mib,
                        &after,
                    ) - before;
                    // Whole thousandths of a GPU decide; finer differences are noise.
                    let key = ((delta * 1e6).round() as i64, left, n, gpus);
                    if best.as_ref().is_none_or(|b| key < *b) {
                        best = Some(key);
                    }
                }
            }
            let (_, _, n, gpus) = best.expect("not empty");
            (n, gpus)
        }
    };
    cluster.take(node, &gpus, t);
    true
}

/// For a shared-GPU task, the fitting GPU with the least left (lowest index
/// on ties); for whole GPUs, the lowest-indexed free ones.
fn tightest(gpus: &[u32], t: &OpenbTask) -> Vec<usize> {
    if t.gpus == 0 {
        return vec![];
    }
    if t.gpu_milli < WHOLE {
        let i = (0..gpus.len())
            .filter(|&i| gpus[i] >= t.gpu_milli)
            .min_by_key(|&i| (gpus[i], i))
            .expect("fits");
        return vec![i];
    }
    (0..gpus.len())
        .filter(|&i| gpus[i] == WHOLE)
        .take(t.gpus as usize)
        .collect()
}

/// The arrival order of one run: sorted by name, shuffled with `seed`,
/// then topped up with uniformly drawn copies while the GPU request stays
/// within `inflation` × `capacity_milli`.
pub fn arrivals(
    tasks: &[OpenbTask],
    seed: u64,
    inflation: f64,
    capacity_milli: u64,
) -> Vec<OpenbTask> {
    let mut order: Vec<OpenbTask> = tasks.to_vec();
    order.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rng = StdRng::seed_from_u64(seed);
    order.shuffle(&mut rng);
    let target = (inflation * capacity_milli as f64) as u64;
    let mut total: u64 = order.iter().map(OpenbTask::gpu_request_milli).sum();
    // As in FGD's simulator: copies are drawn from all tasks (CPU-only
    // ones too), and the first copy that would overshoot the target ends
    // the top-up.
    if tasks.iter().all(|t| t.gpu_request_milli() == 0) {
        return order;
    }
    loop {
        let t = &tasks[rng.gen_range(0..tasks.len())];
        if total + t.gpu_request_milli() > target {
            break;
        }
        total += t.gpu_request_milli();
        order.push(t.clone());
    }
    order
}

/// One run's allocation curve: `curve[k]` is the allocation ratio (%) when
/// the arrived GPU request first reached k % of capacity.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub packer: Packer,
    pub seed: u64,
    pub curve: Vec<f64>,
    pub tasks: usize,
    pub failed: usize,
}

pub fn run(
    nodes: &[OpenbNode],
    tasks: &[OpenbTask],
    packer: Packer,
    seed: u64,
    inflation: f64,
) -> Run {
    let mut cluster = Cluster::new(nodes);
    let order = arrivals(tasks, seed, inflation, cluster.capacity_milli());
    let popularity = mix_of(tasks);
    let mut memo = cluster.fragmentation(&popularity);
    let mut fgd = fgd::Memo::new(fgd::Target::of(tasks));
    // The random choices of the baselines get their own stream, so the
    // arrival order is the same for every packer at one seed.
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let steps = (inflation * 100.0).round() as usize;
    let mut curve = Vec::with_capacity(steps + 1);
    curve.push(0.0);
    let (mut arrived, mut failed) = (0u64, 0usize);
    for t in &order {
        if !place(&mut cluster, t, packer, &mut rng, &mut memo, &mut fgd) {
            failed += 1;
        }
        arrived += t.gpu_request_milli();
        let reached = (arrived as f64 * 100.0 / cluster.capacity_milli() as f64).floor() as usize;
        if packer == Packer::Edupool && reached.min(steps) >= curve.len() {
            // Another percent of capacity arrived: share the weights among
            // the nodes that can still host each kind.
            memo = cluster.fragmentation(&popularity);
        }
        while curve.len() <= reached.min(steps) {
            curve.push(cluster.allocation_percent());
        }
    }
    while curve.len() <= steps {
        curve.push(cluster.allocation_percent());
    }
    Run {
        packer,
        seed,
        curve,
        tasks: order.len(),
        failed,
    }
}

/// The median of the runs' values at `percent` arrived.
pub fn median_at(runs: &[&Run], percent: usize) -> f64 {
    let mut v: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.curve.get(percent).copied())
        .collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Places `t` by edupool's packing, which draws nothing at random.
    fn edupool_places(cluster: &mut Cluster, t: &OpenbTask, memo: &mut FragMemo) -> bool {
        place(
            cluster,
            t,
            Packer::Edupool,
            &mut StdRng::seed_from_u64(0),
            memo,
            &mut no_fgd(),
        )
    }

    /// FGD's memory for packers that do not use it.
    fn no_fgd() -> fgd::Memo {
        fgd::Memo::new(fgd::Target::of(&[]))
    }

    fn node(name: &str, gpus: u32) -> OpenbNode {
        OpenbNode {
            name: name.into(),
            cpu_milli: 64_000,
            memory_mib: 262_144,
            gpus,
            model: "T4".into(),
        }
    }

    fn task(name: &str, gpus: u32, milli: u32) -> OpenbTask {
        OpenbTask {
            name: name.into(),
            cpu_milli: 1000,
            memory_mib: 1024,
            gpus,
            gpu_milli: milli,
            models: vec![],
        }
    }

    fn with_cpu(name: &str, gpus: u32, milli: u32, cpu_milli: u64) -> OpenbTask {
        OpenbTask {
            cpu_milli,
            ..task(name, gpus, milli)
        }
    }

    /// A node of `gpus` GPUs and `cpu_milli` thousandths of cores.
    fn node_with_cpu(name: &str, gpus: u32, cpu_milli: u64) -> OpenbNode {
        OpenbNode {
            cpu_milli,
            ..node(name, gpus)
        }
    }

    #[test]
    fn fgd_fills_a_shared_gpu_before_breaking_a_whole_one() {
        // Half the tasks take 0.5 GPU, half two whole GPUs; two nodes of 2
        // GPUs. The first 0.5 goes to node a (a tie, the first node). The
        // second raises FGD's score most on a's half-free GPU (node a keeps
        // one whole GPU, node b both), so a 2-GPU task still fits on b.
        let nodes = [node("a", 2), node("b", 2)];
        let mut tasks = vec![task("s", 1, 500); 5];
        tasks.extend(vec![task("w", 2, 1000); 5]);
        let mut cluster = Cluster::new(&nodes);
        let mut memo = FragMemo::new(mix_of(&tasks));
        let mut fgd = fgd::Memo::new(fgd::Target::of(&tasks));
        let mut rng = StdRng::seed_from_u64(1);
        for t in [&tasks[0], &tasks[1], &tasks[5]] {
            assert!(place(
                &mut cluster,
                t,
                Packer::Fgd,
                &mut rng,
                &mut memo,
                &mut fgd
            ));
        }
        assert_eq!(cluster.nodes[0].gpus, vec![0, 1000]);
        assert_eq!(cluster.nodes[1].gpus, vec![0, 0]);
    }

    #[test]
    fn allocation_is_worked_out_by_hand() {
        // Two nodes of 2 GPUs = 4000 thousandths. Tasks: 1 whole GPU, then
        // 2 whole GPUs, then 2 whole GPUs again (fits nowhere: 1 left).
        let nodes = [node("a", 2), node("b", 2)];
        let mut cluster = Cluster::new(&nodes);
        let mut memo = FragMemo::new(mix_of(&[]));
        let mut rng = StdRng::seed_from_u64(1);
        assert!(place(
            &mut cluster,
            &task("t1", 1, 1000),
            Packer::BestFit,
            &mut rng,
            &mut memo,
            &mut no_fgd()
        ));
        assert!(place(
            &mut cluster,
            &task("t2", 2, 1000),
            Packer::BestFit,
            &mut rng,
            &mut memo,
            &mut no_fgd()
        ));
        assert!(!place(
            &mut cluster,
            &task("t3", 2, 1000),
            Packer::BestFit,
            &mut rng,
            &mut memo,
            &mut no_fgd()
        ));
        assert_eq!(cluster.allocation_percent(), 75.0);
    }

    #[test]
    fn edupool_keeps_whole_gpus_for_whole_gpu_work() {
        // One shared-GPU task on nodes [1000,1000] and [1000,400]: it goes
        // to node b, which a 2-GPU job cannot use anyway, and keeps node a
        // whole for such a job.
        let nodes = [node("a", 2), node("b", 2)];
        let mut cluster = Cluster::new(&nodes);
        cluster.nodes[1].gpus[1] = 400;
        let tasks = [task("s", 1, 300), task("w", 2, 1000)];
        let mut memo = FragMemo::new(mix_of(&tasks));
        assert!(edupool_places(&mut cluster, &tasks[0], &mut memo));
        assert_eq!(cluster.nodes[0].gpus, vec![1000, 1000]);
        assert!(edupool_places(&mut cluster, &tasks[1], &mut memo));
        assert_eq!(cluster.nodes[0].gpus, vec![0, 0]);
    }

    #[test]
    fn edupool_leaves_remainders_that_common_sizes_fill() {
        // Two 1-GPU nodes with 500 and 600 thousandths free; the mix has
        // three 0.3-GPU tasks for each 0.2-GPU one. A 0.3-GPU task on the
        // 500 would leave 200, which only the rare 0.2-GPU tasks fit (150
        // expected to stay: a quarter of the shared tasks fit it); on the
        // 600 it leaves 300, which both sizes fit (25 expected to stay).
        // Counted by copies of each kind alone (FGD), the 500 would win:
        // its 200 is one copy of the 0.2-GPU kind, where 300 strands 100
        // of it.
        let nodes = [node("a", 1), node("b", 1)];
        let mut cluster = Cluster::new(&nodes);
        cluster.nodes[0].gpus[0] = 500;
        cluster.nodes[1].gpus[0] = 600;
        let mut tasks: Vec<OpenbTask> = (0..3).map(|i| task(&format!("s{i}"), 1, 300)).collect();
        tasks.push(task("r", 1, 200));
        let mut memo = FragMemo::new(mix_of(&tasks));
        assert!(edupool_places(&mut cluster, &tasks[0], &mut memo));
        assert_eq!(cluster.nodes[0].gpus, vec![500]);
        assert_eq!(cluster.nodes[1].gpus, vec![300]);
    }

    #[test]
    fn edupool_leaves_gpu_nodes_the_cores_their_gpus_need() {
        // Two 2-GPU nodes, a with 8 cores, b with 16; whole-GPU tasks need
        // 3 cores each, CPU-only tasks 6. A CPU-only task on a would leave
        // a 2 cores: no whole-GPU task fits there any more, and both GPUs
        // are stranded (2000 for that kind, and for the CPU-only kind,
        // which no longer fits either); on b it leaves 10 cores and
        // strands nothing. Best-fit takes a (the least left over) and a's
        // GPUs are lost; edupool takes b, and the GPU tasks that follow
        // still have both nodes' GPUs to choose from.
        let nodes = [node_with_cpu("a", 2, 8000), node_with_cpu("b", 2, 16_000)];
        let tasks = [
            with_cpu("c", 0, 0, 6000),
            with_cpu("w1", 1, 1000, 3000),
            with_cpu("w2", 1, 1000, 3000),
        ];
        let mut memo = FragMemo::new(mix_of(&tasks));
        let mut rng = StdRng::seed_from_u64(1);
        let mut best_fit = Cluster::new(&nodes);
        assert!(place(
            &mut best_fit,
            &tasks[0],
            Packer::BestFit,
            &mut rng,
            &mut memo,
            &mut no_fgd()
        ));
        assert_eq!(best_fit.nodes[0].cpu_free, 2000);
        assert!(!best_fit.fits(0, &tasks[1]));
        let mut cluster = Cluster::new(&nodes);
        assert!(edupool_places(&mut cluster, &tasks[0], &mut memo));
        assert_eq!(cluster.nodes[1].cpu_free, 10_000);
        assert!(cluster.fits(0, &tasks[1]) && cluster.fits(1, &tasks[1]));
        for t in &tasks[1..] {
            assert!(edupool_places(&mut cluster, t, &mut memo));
        }
    }

    #[test]
    fn edupool_keeps_the_only_host_of_a_large_kind_free() {
        // Node 0 has 8 GPUs and 128 cores, the only node for a whole-node
        // job of 120 cores; nodes 1-9 have 2 GPUs and 16 cores. The mix:
        // 20 CPU-only tasks of 12 cores, 20 1-GPU tasks of 4 cores, one
        // whole-node task.
        let mut nodes = vec![node_with_cpu("big", 8, 128_000)];
        nodes.extend((1..10).map(|i| node_with_cpu(&format!("n{i}"), 2, 16_000)));
        let mut tasks: Vec<OpenbTask> = (0..20)
            .flat_map(|i| {
                [
                    with_cpu(&format!("c{i}"), 0, 0, 12_000),
                    with_cpu(&format!("g{i}"), 1, 1000, 4000),
                ]
            })
            .collect();
        tasks.push(with_cpu("whole", 8, 1000, 120_000));
        let (cpu_only, whole) = (&tasks[0], &tasks[40]);

        // By popularity alone (weights 20, 20, 1), a CPU-only task on a
        // small node would strand its GPUs for the other two kinds
        // (20 x 1000 + 20 x 2000 = 60000) where on the big node it only
        // shuts out the whole-node kind (1 x 8000): it takes the big node
        // and the whole-node task fails.
        let mut cluster = Cluster::new(&nodes);
        let mut memo = FragMemo::new(mix_of(&tasks));
        assert!(edupool_places(&mut cluster, cpu_only, &mut memo));
        assert_eq!(cluster.nodes[0].cpu_free, 116_000);
        assert!(!edupool_places(&mut cluster, whole, &mut memo));

        // Shared among their hosts (10, 10 and 1 nodes) the weights are
        // 2, 2 and 1: 2 x 1000 + 2 x 2000 = 6000 on a small node against
        // 8000 on the big one, so the big node stays whole.
        let mut cluster = Cluster::new(&nodes);
        let mut mix = mix_of(&tasks);
        fragmentation::weigh_by_hosts(&mut mix, &cluster.free_views());
        let mut memo = FragMemo::new(mix);
        assert!(edupool_places(&mut cluster, cpu_only, &mut memo));
        assert_eq!(cluster.nodes[1].cpu_free, 4000);
        assert!(edupool_places(&mut cluster, whole, &mut memo));
        assert_eq!(cluster.nodes[0].gpus, vec![0; 8]);
    }

    #[test]
    fn weights_follow_the_hosts_left() {
        // Two 8-GPU nodes, one 2-GPU node, one CPU-only node (64 cores
        // each); popularity 30 (1 GPU), 2 (8 GPUs), 8 (CPU-only). Empty,
        // the kinds have 3, 2 and 4 hosts: weights 10, 1, 2. With the
        // first 8-GPU node full they have 2, 1 and 4: 15, 2, 2.
        let nodes = [node("a", 8), node("b", 8), node("c", 2), node("d", 0)];
        let mut tasks: Vec<OpenbTask> = (0..30).map(|i| task(&format!("g{i}"), 1, 1000)).collect();
        tasks.extend((0..2).map(|i| task(&format!("w{i}"), 8, 1000)));
        tasks.extend((0..8).map(|i| task(&format!("c{i}"), 0, 0)));
        let popularity = mix_of(&tasks);
        let weights = |memo: &FragMemo| {
            let mut w: Vec<(u32, f64)> =
                memo.mix.iter().map(|k| (k.demand.gpus, k.weight)).collect();
            w.sort_by_key(|&(gpus, _)| gpus);
            w
        };
        let mut cluster = Cluster::new(&nodes);
        assert_eq!(
            weights(&cluster.fragmentation(&popularity)),
            vec![(0, 2.0), (1, 10.0), (8, 1.0)]
        );
        cluster.take(0, &[0, 1, 2, 3, 4, 5, 6, 7], &tasks[30]);
        assert_eq!(
            weights(&cluster.fragmentation(&popularity)),
            vec![(0, 2.0), (1, 15.0), (8, 2.0)]
        );
    }

    #[test]
    fn edupool_guards_the_last_host_of_a_large_kind() {
        // Two nodes of 8 GPUs and 128 cores, the hosts of a whole-node
        // kind (120 cores, popularity 2); four of 2 GPUs and 16 cores.
        // CPU-only tasks of 12 cores (popularity 30), 1-GPU tasks of 4
        // cores (popularity 10). The first whole-node task takes node 0.
        let mut nodes = vec![
            node_with_cpu("big0", 8, 128_000),
            node_with_cpu("big1", 8, 128_000),
        ];
        nodes.extend((0..4).map(|i| node_with_cpu(&format!("n{i}"), 2, 16_000)));
        let mut tasks: Vec<OpenbTask> = (0..30)
            .map(|i| with_cpu(&format!("c{i}"), 0, 0, 12_000))
            .collect();
        tasks.extend((0..10).map(|i| with_cpu(&format!("g{i}"), 1, 1000, 4000)));
        tasks.extend((0..2).map(|i| with_cpu(&format!("w{i}"), 8, 1000, 120_000)));
        let (cpu_only, whole) = (&tasks[0], &tasks[40]);
        let popularity = mix_of(&tasks);
        let mut cluster = Cluster::new(&nodes);
        let mut memo = cluster.fragmentation(&popularity);
        assert!(edupool_places(&mut cluster, whole, &mut memo));
        assert_eq!(cluster.nodes[0].cpu_free, 8000);

        // Weighted for the empty cluster (2, 6 and 6 hosts: weights 1, 5
        // and 10/6), a CPU-only task costs node 1 its whole-node job
        // (8000 x 1) and a small node its room for CPU-only tasks
        // (2000 x 5 = 10000; a 1-GPU task still fits in the 4 cores
        // left): it takes node 1, and the second whole-node task fails.
        let mut stale = cluster.clone();
        assert!(edupool_places(&mut stale, cpu_only, &mut memo));
        assert_eq!(stale.nodes[1].cpu_free, 116_000);
        assert!(!stale.fits(1, whole));

        // Weighted for the cluster as it is (1, 5 and 5 hosts: weights 2,
        // 6 and 2), node 1 costs 8000 x 2 = 16000 and a small node 2000 x
        // 6 = 12000: the CPU-only task takes a small node and node 1 stays
        // whole for the second whole-node task.
        let mut memo = cluster.fragmentation(&popularity);
        assert!(edupool_places(&mut cluster, cpu_only, &mut memo));
        assert_eq!(cluster.nodes[2].cpu_free, 4000);
        assert!(edupool_places(&mut cluster, whole, &mut memo));
        assert_eq!(cluster.nodes[1].gpus, vec![0; 8]);
    }

    #[test]
    fn arrivals_top_up_to_the_inflation_and_are_seeded() {
        let tasks: Vec<OpenbTask> = (0..10).map(|i| task(&format!("t{i}"), 1, 500)).collect();
        let a = arrivals(&tasks, 42, 1.3, 10_000);
        let total: u64 = a.iter().map(OpenbTask::gpu_request_milli).sum();
        assert_eq!(total, 13_000);
        assert_eq!(a.len(), 26);
        let names = |v: &[OpenbTask]| v.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&a), names(&arrivals(&tasks, 42, 1.3, 10_000)));
        assert_ne!(names(&a), names(&arrivals(&tasks, 43, 1.3, 10_000)));
    }

    #[test]
    fn the_replay_is_deterministic_for_a_seed() {
        let nodes = [node("a", 8), node("b", 2), node("c", 0)];
        let shares = [0, 1000, 810, 470, 320, 160];
        let tasks: Vec<OpenbTask> = (0..24)
            .map(|i| {
                let milli = shares[i % shares.len()];
                let gpus = match (milli, i % 4) {
                    (0, _) => 0,
                    (1000, 3) => 2,
                    _ => 1,
                };
                task(&format!("t{i:02}"), gpus, milli)
            })
            .collect();
        for packer in [Packer::Random, Packer::BestFit, Packer::Edupool] {
            let a = run(&nodes, &tasks, packer, 7, 1.3);
            let b = run(&nodes, &tasks, packer, 7, 1.3);
            assert_eq!((a.curve, a.failed), (b.curve, b.failed), "{packer:?}");
        }
    }

    #[test]
    fn the_curve_has_a_point_per_percent() {
        let nodes = [node("a", 4)];
        let tasks: Vec<OpenbTask> = (0..4).map(|i| task(&format!("t{i}"), 1, 1000)).collect();
        let r = run(&nodes, &tasks, Packer::Edupool, 42, 1.3);
        assert_eq!(r.curve.len(), 131);
        // Whole-GPU tasks of 1/4 of capacity each: 25 % allocated at 25 %.
        assert_eq!(r.curve[25], 25.0);
        assert_eq!(r.curve[100], 100.0);
        assert_eq!(r.curve[130], 100.0);
        // Topped up to 5 tasks (a sixth would pass 1.3 x 4000); the copy
        // finds no room.
        assert_eq!((r.tasks, r.failed), (5, 1));
    }
}
