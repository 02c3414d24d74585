//! One planning round on a busy pool, at growing sizes: N nodes of 8 GPUs
//! (half of them full of running jobs), 10 × N pending jobs from 200
//! tenants with mixed shapes (whole GPUs, fractions, gangs, constraints).
//!
//! `round` is a whole round (at most 1,024 placements); `setup` is the part
//! every round pays before its first decision (books, free-capacity index,
//! queue), so `round - setup` over the placements made is the cost of one
//! placement. Results are recorded in docs/benchmarks.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, BenchmarkId, Criterion};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use edupool_core::planner::{plan, Policy};
use edupool_core::state::{
    Capacity, Command, Constraints, GpuInfo, Indexed, JobClass, JobSpec, Millis, NodeLabels,
    OnNodeLost, Outcome, TaskPlacement,
};

const T0: Millis = 1_700_000_000_000;
const TENANTS: usize = 200;
const SITES: usize = 10;
const GPUS_PER_NODE: u32 = 8;

fn ok(s: &mut Indexed, cmd: Command) -> Outcome {
    s.apply(cmd, T0).expect("bench setup command applies").0
}

fn spec(gpus: u32, class: JobClass) -> JobSpec {
    JobSpec {
        name: "bench".into(),
        command: vec!["true".into()],
        env: Default::default(),
        gpus,
        nodes: 1,
        class,
        walltime_secs: 3600,
        grace_period_secs: 30,
        on_node_lost: OnNodeLost::Requeue,
        max_retries: 1,
        priority: 0,
        gpu_fraction: 0,
        constraints: Constraints::default(),
        requeue_on_preempt: true,
        secret_env: Default::default(),
        image: None,
        cpu_millicores: 0,
        memory_bytes: 0,
    }
}

/// A pool of `nodes` nodes, half busy, and `pending` queued jobs.
fn pool(nodes: usize, pending: usize) -> Indexed {
    let mut rng = StdRng::seed_from_u64(42);
    let mut s = Indexed::default();
    for t in 0..TENANTS {
        ok(
            &mut s,
            Command::CreateTenant {
                name: format!("t{t:03}"),
                token_hash: format!("hash{t}"),
            },
        );
    }
    for n in 0..nodes {
        let name = format!("n{n:05}");
        let model = if n % 4 == 0 { "H100-80GB" } else { "A100-80GB" };
        let gpus = (0..GPUS_PER_NODE)
            .map(|i| GpuInfo {
                uuid: format!("GPU-{name}-{i}"),
                index: i,
                model: model.into(),
                memory_bytes: 80 << 30,
                healthy: true,
                peers: vec![i ^ 1],
                health_reason: String::new(),
                pci_bus_id: String::new(),
                nvlink_peers: vec![],
                compute_capability: String::new(),
            })
            .collect();
        ok(
            &mut s,
            Command::NodeConnected {
                node: name.clone(),
                gpus,
                agent_version: "bench".into(),
                images: vec![],
                allows_host_jobs: true,
                cpu_millicores: 0,
                memory_bytes: 0,
            },
        );
        // Three quarters of the nodes are contributed by a member.
        let owner = (n % 4 != 3).then(|| format!("t{:03}", n % TENANTS));
        ok(
            &mut s,
            Command::LabelNode {
                node: name,
                labels: NodeLabels {
                    owner,
                    site: Some(format!("site{}", n % SITES)),
                    data_level: (n % 7).min(3) as u8,
                    gpu_class: None,
                },
            },
        );
    }
    // Half the nodes run one 8-GPU job each, borrowed from their owners.
    for n in 0..nodes / 2 {
        let name = format!("n{n:05}");
        let tenant = format!("t{:03}", (n + 1) % TENANTS);
        let Outcome::Job(id) = ok(
            &mut s,
            Command::SubmitJob {
                tenant,
                spec: spec(GPUS_PER_NODE, JobClass::Training),
            },
        ) else {
            unreachable!()
        };
        ok(
            &mut s,
            Command::PlaceJob {
                job: id,
                tasks: vec![TaskPlacement {
                    node: name.clone(),
                    gpus: (0..GPUS_PER_NODE)
                        .map(|i| format!("GPU-{name}-{i}"))
                        .collect(),
                }],
                capacity: Capacity::Borrowed,
            },
        );
        ok(
            &mut s,
            Command::JobStarted {
                node: name,
                job: id,
                started_at: T0,
            },
        );
    }
    for _ in 0..pending {
        let tenant = format!("t{:03}", rng.gen_range(0..TENANTS));
        let class = [
            JobClass::Inference,
            JobClass::Training,
            JobClass::Batch,
            JobClass::Scavenger,
        ][rng.gen_range(0..4)];
        let mut job = spec([1, 1, 2, 4, 8][rng.gen_range(0..5)], class);
        job.priority = rng.gen_range(0..3);
        match rng.gen_range(0..10) {
            0 => {
                job.gpus = 1;
                job.gpu_fraction = [250, 500][rng.gen_range(0..2)];
            }
            1 => {
                job.gpus = GPUS_PER_NODE;
                job.nodes = 2;
            }
            2 => job.constraints.gpu_class = Some("H100".into()),
            3 => job.constraints.site = Some(format!("site{}", rng.gen_range(0..SITES))),
            4 => job.constraints.data_level = 2,
            5 => job.constraints.preferred_site = Some("site3".into()),
            _ => {}
        }
        ok(&mut s, Command::SubmitJob { tenant, spec: job });
    }
    s
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("planner");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let setup = Policy {
        max_decisions: 0,
        ..Policy::default()
    };
    for nodes in [1_000usize, 3_000, 10_000] {
        let state = pool(nodes, nodes * 10);
        let now = T0 + 60_000;
        let placed = plan(&state, now, &Policy::default()).len();
        eprintln!(
            "{nodes} nodes / {} GPUs / {} pending / {TENANTS} tenants: {placed} decisions per round",
            nodes * GPUS_PER_NODE as usize,
            nodes * 10
        );
        group.bench_with_input(BenchmarkId::new("round", nodes), &state, |b, s| {
            b.iter(|| black_box(plan(s, now, &Policy::default())))
        });
        group.bench_with_input(BenchmarkId::new("setup", nodes), &state, |b, s| {
            b.iter(|| black_box(plan(s, now, &setup)))
        });
    }
    group.finish();
}

/// The growth grid: planner cost at 1k/10k/50k nodes × 10k/100k/1M
/// pending jobs, timed directly (the median of a few rounds each; a
/// criterion run at the largest sizes would take hours).
fn grid() {
    println!("| Nodes | GPUs | Pending | Decisions | Round | Setup | Per placement |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let setup = Policy {
        max_decisions: 0,
        ..Policy::default()
    };
    let median = |state: &Indexed, policy: &Policy| {
        let now = T0 + 60_000;
        let mut t: Vec<Duration> = (0..3)
            .map(|_| {
                let began = std::time::Instant::now();
                black_box(plan(state, now, policy));
                began.elapsed()
            })
            .collect();
        t.sort();
        t[1]
    };
    for (nodes, pending) in grid_cells() {
        {
            let state = pool(nodes, pending);
            let decisions = plan(&state, T0 + 60_000, &Policy::default()).len();
            let round = median(&state, &Policy::default());
            let before = median(&state, &setup);
            let per = round.saturating_sub(before) / decisions.max(1) as u32;
            println!(
                "| {nodes} | {} | {pending} | {decisions} | {:.1} ms | {:.1} ms | {:.1} µs |",
                nodes * GPUS_PER_NODE as usize,
                round.as_secs_f64() * 1e3,
                before.as_secs_f64() * 1e3,
                per.as_secs_f64() * 1e6
            );
        }
    }
}

/// The grid's cells: every (nodes, pending) pair of 1k/10k/50k ×
/// 10k/100k/1M, or those listed in `EDUPOOL_PLANNER_GRID` as
/// `NODESxPENDING` separated by commas (e.g. `10000x1000000`).
fn grid_cells() -> Vec<(usize, usize)> {
    let listed: Vec<(usize, usize)> = std::env::var("EDUPOOL_PLANNER_GRID")
        .unwrap_or_default()
        .split(',')
        .filter_map(|cell| {
            let (n, p) = cell.trim().split_once('x')?;
            Some((n.parse().ok()?, p.parse().ok()?))
        })
        .collect();
    if !listed.is_empty() {
        return listed;
    }
    [1_000usize, 10_000, 50_000]
        .into_iter()
        .flat_map(|n| [10_000usize, 100_000, 1_000_000].map(|p| (n, p)))
        .collect()
}

criterion_group!(benches, bench);

fn main() {
    if std::env::var_os("EDUPOOL_PLANNER_GRID").is_some() {
        grid();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
