//! Scenario 2: packing on the Alibaba GPU-sharing trace, by the protocol
//! of the FGD experiments (USENIX ATC'23): tasks sorted by name, shuffled
//! with a seed, topped up with copies drawn uniformly from all tasks while
//! their GPU request stays within `inflation` × the cluster's GPU
//! capacity, then placed
//! one by one with nothing ever leaving; a task that fits nowhere fails.
//! The GPU allocation ratio is recorded each time the arrived GPU request
//! crosses another 1 % of capacity.
//!
//! edupool's placements are the scheduler's own: `planner_pool` submits
//! each task through `State::apply` and `planner::plan`. The packers here
//! (random, best-fit, FGD) are baselines only.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::fgd;
use super::planner_pool;
use super::traces::{OpenbNode, OpenbTask};
use edupool_core::fragmentation::WHOLE;

/// How a task is given a node and GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Packer {
    /// Baseline: a random feasible node, a random fitting GPU.
    Random,
    /// Baseline, FGD's best-fit: the feasible node with the least leftover
    /// of 0.5 × CPU / max CPU + 0.5 × GPUs / 8, scored 0–100, ties at random.
    BestFit,
    /// Baseline, FGD as published (`super::fgd`): the placement whose
    /// score from the change in fragmentation is highest, ties to the
    /// first node.
    Fgd,
    /// The scheduler's planner (`planner::plan` through `State::apply`).
    Planner,
}

impl Packer {
    /// The name in scenarios, tables and JSON: baselines say so.
    pub fn name(self) -> &'static str {
        match self {
            Packer::Random => "baseline-random",
            Packer::BestFit => "baseline-best-fit",
            Packer::Fgd => "baseline-fgd",
            Packer::Planner => "edupool-planner",
        }
    }

    pub const ALL: [Packer; 4] = [
        Packer::Random,
        Packer::BestFit,
        Packer::Fgd,
        Packer::Planner,
    ];
}

impl Serialize for Packer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
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

    fn take(&mut self, n: usize, gpus: &[usize], t: &OpenbTask) {
        let node = &mut self.nodes[n];
        node.cpu_free -= t.cpu_milli;
        node.mem_free -= t.memory_mib;
        for &g in gpus {
            node.gpus[g] -= t.gpu_milli;
        }
        self.allocated_milli += t.gpu_request_milli();
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

/// Places one task; returns whether it fitted.
fn place(
    cluster: &mut Cluster,
    t: &OpenbTask,
    packer: Packer,
    rng: &mut StdRng,
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
        Packer::Planner => unreachable!("the planner places through planner_pool"),
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
    let mut fgd = fgd::Memo::new(fgd::Target::of(tasks));
    // The random choices of the baselines get their own stream, so the
    // arrival order is the same for every packer at one seed.
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut pool = (packer == Packer::Planner).then(|| planner_pool::Pool::new(nodes));
    let capacity = cluster.capacity_milli().max(1);
    let steps = (inflation * 100.0).round() as usize;
    let mut curve = Vec::with_capacity(steps + 1);
    curve.push(0.0);
    let (mut arrived, mut failed) = (0u64, 0usize);
    let allocation = |cluster: &Cluster, pool: &Option<planner_pool::Pool>| {
        pool.as_ref()
            .map_or_else(|| cluster.allocation_percent(), |p| p.allocation_percent())
    };
    for t in &order {
        let placed = match &mut pool {
            Some(p) => p.place(t),
            None => place(&mut cluster, t, packer, &mut rng, &mut fgd),
        };
        if !placed {
            failed += 1;
        }
        arrived += t.gpu_request_milli();
        let reached = (arrived as f64 * 100.0 / capacity as f64).floor() as usize;
        while curve.len() <= reached.min(steps) {
            curve.push(allocation(&cluster, &pool));
        }
    }
    while curve.len() <= steps {
        curve.push(allocation(&cluster, &pool));
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
        let mut fgd = fgd::Memo::new(fgd::Target::of(&tasks));
        let mut rng = StdRng::seed_from_u64(1);
        for t in [&tasks[0], &tasks[1], &tasks[5]] {
            assert!(place(&mut cluster, t, Packer::Fgd, &mut rng, &mut fgd));
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
        let mut rng = StdRng::seed_from_u64(1);
        assert!(place(
            &mut cluster,
            &task("t1", 1, 1000),
            Packer::BestFit,
            &mut rng,
            &mut no_fgd()
        ));
        assert!(place(
            &mut cluster,
            &task("t2", 2, 1000),
            Packer::BestFit,
            &mut rng,
            &mut no_fgd()
        ));
        assert!(!place(
            &mut cluster,
            &task("t3", 2, 1000),
            Packer::BestFit,
            &mut rng,
            &mut no_fgd()
        ));
        assert_eq!(cluster.allocation_percent(), 75.0);
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
        for packer in [Packer::Random, Packer::BestFit, Packer::Planner] {
            let a = run(&nodes, &tasks, packer, 7, 1.3);
            let b = run(&nodes, &tasks, packer, 7, 1.3);
            assert_eq!((a.curve, a.failed), (b.curve, b.failed), "{packer:?}");
        }
    }

    #[test]
    fn the_curve_has_a_point_per_percent() {
        let nodes = [node("a", 4)];
        let tasks: Vec<OpenbTask> = (0..4).map(|i| task(&format!("t{i}"), 1, 1000)).collect();
        let r = run(&nodes, &tasks, Packer::Planner, 42, 1.3);
        assert_eq!(r.curve.len(), 131);
        // Whole-GPU tasks of 1/4 of capacity each: 25 % allocated at 25 %.
        assert_eq!(r.curve[25], 25.0);
        assert_eq!(r.curve[100], 100.0);
        assert_eq!(r.curve[130], 100.0);
        // Topped up to 5 tasks (a sixth would pass 1.3 x 4000); the copy
        // finds no room.
        assert_eq!((r.tasks, r.failed), (5, 1));
    }

    #[test]
    fn the_planner_places_a_small_trace_and_fails_what_fits_nowhere() {
        // Two T4 nodes of 2 GPUs and one of 4 V100s. A 4-GPU task (only
        // the V100 node holds it), a 2-GPU task, two half GPUs, then a
        // second 4-GPU task that fits nowhere and one bound to a model the
        // pool lacks.
        let mut nodes = vec![node("a", 2), node("b", 2), node("c", 4)];
        nodes[2].model = "V100M16".into();
        let mut pool = planner_pool::Pool::new(&nodes);
        assert_eq!(pool.capacity_milli(), 8000);
        let mut a100 = task("m", 1, 1000);
        a100.models = vec!["A100".into()];
        let outcomes: Vec<bool> = [
            task("w4", 4, 1000),
            task("w2", 2, 1000),
            task("h1", 1, 500),
            task("h2", 1, 500),
            task("w4b", 4, 1000),
            a100,
        ]
        .iter()
        .map(|t| pool.place(t))
        .collect();
        assert_eq!(outcomes, [true, true, true, true, false, false]);
        assert_eq!(pool.allocation_percent(), 87.5);
        assert_eq!(pool.rejected, 0);
        // The two halves share one GPU.
        let state = pool.state();
        let holders: usize = state
            .nodes()
            .flat_map(|n| &n.gpus)
            .filter(|g| !g.holders.is_empty())
            .count();
        assert_eq!(holders, 2 + 1 + 4);
        // The failed ones were cancelled: nothing waits.
        assert_eq!(state.pending_jobs().count(), 0);
    }
}
