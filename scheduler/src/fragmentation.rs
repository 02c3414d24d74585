//! GPU fragmentation: how much of a node's free GPU capacity the jobs the
//! pool expects could not use.
//!
//! The measure follows Weng et al., "Beware of Fragmentation: Scheduling
//! GPU-Sharing Workloads with Fragmentation Gradient Descent" (USENIX
//! ATC'23): for one kind of job, the fragment of a node is the free GPU
//! capacity that kind cannot use there; the node's fragmentation is the
//! average over the expected mix of job kinds, each weighted by how often
//! it occurs. Placing a job where it raises that average the least keeps
//! large free blocks intact.
//!
//! What a kind "cannot use" depends on its shape:
//! - a shared-GPU kind is counted for jobs of the kind arriving one after
//!   another until the node is full for them: copies fit in each GPU
//!   `free / share` times, so the remainder a GPU keeps after its last
//!   copy is stranded, and the node's free CPU and memory cap the copies
//!   (thousandths beyond what the cores can feed are stranded);
//! - a whole-GPU kind cannot use partly taken GPUs, nor any GPU when
//!   fewer whole ones are free than one job needs (FGD's rule). Its free
//!   whole GPUs are not capped by the cores copies of that one kind
//!   would take: whole-GPU jobs ask for very different numbers of cores
//!   per GPU (1 to 24 on the openb trace), and such a cap made nodes
//!   look short of cores for the heaviest kinds even when empty, so that
//!   using any of a node's cores counted as stranding GPUs that the
//!   lighter, more common kinds fill in the end (on the openb trace that
//!   rule gave 0.1–0.3 points of allocation away and stranded no fewer
//!   GPUs by CPU; see docs/benchmarks.md);
//! - a kind that cannot place a single copy (wrong GPU model, too little
//!   CPU or memory) strands all the free GPU capacity; CPU-only kinds
//!   follow that rule as well (as in FGD), so taking the cores a GPU
//!   node's GPU jobs need counts against it, and CPU-only jobs go to
//!   CPU-only nodes, to nodes whose GPUs are all taken, or to GPU nodes
//!   with cores to spare.
//!
//! Kinds are weighted by popularity shared among hosts: a kind's number
//! of jobs divided by the number of nodes that could host one of them
//! ([`weigh_by_hosts`]), counted on the empty pool or, better, on the pool
//! as it is (the packing replay refreshes the weights at every percent of
//! capacity arrived: as the pool fills, the last hosts of a kind count
//! its fragment more). Popularity alone gives a rare,
//! large kind (a whole 8-GPU node with 120 cores, which only a few nodes
//! have) almost no weight, so small jobs and CPU-only jobs settle on
//! exactly the nodes that kind needs, and it fails although it is a
//! large share of the GPU demand; divided among its few hosts, each of
//! those nodes counts the kind's fragment in full, while kinds that fit
//! almost anywhere keep their relative weights.
//!
//! Pure and exactly reproducible (integer thousandths of a GPU per kind,
//! weighted and summed in a fixed order), so it gives the same answer on
//! every replica.

/// Thousandths of one GPU.
pub const WHOLE: u32 = 1000;

/// The GPU shape of one kind of job: `gpus` GPUs of `milli` thousandths
/// each (`milli` < 1000 only with one GPU), and what else it needs of a
/// node (CPU in thousandths of a core; 0 when the pool does not track it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Demand {
    pub gpus: u32,
    pub milli: u32,
    pub cpu_milli: u64,
    pub memory_mib: u64,
}

/// A kind of job and how often it is expected (any positive weight).
#[derive(Clone, Debug, PartialEq)]
pub struct Kind {
    pub demand: Demand,
    pub weight: f64,
    /// GPU models the kind may use; empty = any.
    pub models: Vec<String>,
}

/// The free capacity of one node, as fragmentation sees it.
#[derive(Clone, Copy, Debug)]
pub struct NodeFree<'a> {
    /// Free thousandths of each GPU.
    pub gpus: &'a [u32],
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub model: &'a str,
}

/// How many jobs of `demand` the node's free CPU and memory could host
/// (unbounded when the demand asks for neither).
fn host_limit(node: NodeFree<'_>, demand: Demand) -> u64 {
    let cpu = node
        .cpu_milli
        .checked_div(demand.cpu_milli)
        .unwrap_or(u64::MAX);
    let memory = node
        .memory_mib
        .checked_div(demand.memory_mib)
        .unwrap_or(u64::MAX);
    cpu.min(memory)
}

/// Free GPU thousandths of the node that jobs of `demand`, placed there
/// one after another until none fits, would leave unused.
pub fn fragment(node: NodeFree<'_>, demand: Demand, models: &[String]) -> u64 {
    let free: u64 = node.gpus.iter().map(|&g| u64::from(g)).sum();
    let limit = host_limit(node, demand);
    if demand.gpus == 0 {
        // A CPU-only job uses no GPU; once it fits no more, the node is
        // full for it and its GPUs are stranded (as in FGD).
        return if limit == 0 { free } else { 0 };
    }
    let allowed = models.is_empty() || models.iter().any(|m| m == node.model);
    if !allowed || limit == 0 {
        return free;
    }
    if demand.milli >= WHOLE {
        // Whole-GPU jobs cannot use partly taken GPUs, and need enough
        // whole ones for one job.
        let whole = node.gpus.iter().filter(|&&g| g == WHOLE).count() as u64;
        if whole < u64::from(demand.gpus) {
            return free;
        }
        return free - whole * u64::from(WHOLE);
    }
    // A shared-GPU job fits `free / share` times on each GPU, as often as
    // the node's CPU and memory can feed it.
    let copies: u64 = node
        .gpus
        .iter()
        .map(|&g| u64::from(g / demand.milli.max(1)))
        .sum();
    free - copies.min(limit) * u64::from(demand.milli)
}

/// Whether the node could host at least one job of `demand` now.
pub fn hosts(node: NodeFree<'_>, demand: Demand, models: &[String]) -> bool {
    if host_limit(node, demand) == 0 {
        return false;
    }
    if demand.gpus == 0 {
        return true;
    }
    let free: u64 = node.gpus.iter().map(|&g| u64::from(g)).sum();
    fragment(node, demand, models) < free
}

/// Divides each kind's weight by the number of `nodes` that could host
/// one of its jobs (at least one), so that a kind's weight is the demand
/// each of its possible hosts has to absorb. A node that is one of few
/// able to take a large or demanding kind (all of one GPU model, a node
/// with the cores and memory for a whole-node job) then counts that
/// kind's fragment in full, instead of in proportion to the kind's
/// small share of all jobs; kinds that fit almost anywhere keep their
/// relative weights.
pub fn weigh_by_hosts(mix: &mut [Kind], nodes: &[NodeFree<'_>]) {
    for kind in mix.iter_mut() {
        let hosts = nodes
            .iter()
            .filter(|&&n| hosts(n, kind.demand, &kind.models))
            .count();
        kind.weight /= hosts.max(1) as f64;
    }
}

/// The node's expected fragmentation over the mix of kinds, in GPU
/// thousandths weighted by each kind's share of the mix.
pub fn expected(node: NodeFree<'_>, mix: &[Kind]) -> f64 {
    let total: f64 = mix.iter().map(|k| k.weight).sum();
    if total <= 0.0 {
        return 0.0;
    }
    mix.iter()
        .map(|k| k.weight * fragment(node, k.demand, &k.models) as f64)
        .sum::<f64>()
        / total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(gpus: &[u32]) -> NodeFree<'_> {
        NodeFree {
            gpus,
            cpu_milli: 64_000,
            memory_mib: 262_144,
            model: "T4",
        }
    }

    fn d(gpus: u32, milli: u32) -> Demand {
        Demand {
            gpus,
            milli,
            cpu_milli: 1000,
            memory_mib: 1024,
        }
    }

    #[test]
    fn fragments_per_kind() {
        let n = node(&[1000, 1000, 500, 200]);
        // Half-GPU jobs can use the 1000s and the 500, not the 200.
        assert_eq!(fragment(n, d(1, 500), &[]), 200);
        // A 2-GPU job uses the two whole GPUs; 700 partly used is stranded.
        assert_eq!(fragment(n, d(2, 1000), &[]), 700);
        // A 4-GPU job fits nowhere here: all 2700 is a fragment for it.
        assert_eq!(fragment(n, d(4, 1000), &[]), 2700);
        // Wrong model or too little CPU: all of it.
        assert_eq!(fragment(n, d(1, 500), &["V100M32".into()]), 2700);
        let busy = NodeFree {
            cpu_milli: 500,
            ..n
        };
        assert_eq!(fragment(busy, d(1, 500), &[]), 2700);
        assert_eq!(fragment(n, d(0, 0), &[]), 0);
    }

    #[test]
    fn remainders_after_the_last_copy_are_stranded() {
        // 300-jobs fit 3 times in a free GPU (100 left) and once in 400
        // (100 left): 200 of 1400 is stranded.
        assert_eq!(fragment(node(&[1000, 400]), d(1, 300), &[]), 200);
        // Whole-GPU kinds strand partly taken GPUs only (FGD's rule): the
        // odd third whole GPU is left to the 1-GPU jobs of the mix, and
        // only the 400 counts for a 2-GPU job.
        assert_eq!(
            fragment(node(&[1000, 1000, 1000, 400]), d(2, 1000), &[]),
            400
        );
        // One whole GPU is too few for a 2-GPU job: all of it is stranded.
        assert_eq!(fragment(node(&[1000, 400]), d(2, 1000), &[]), 1400);
    }

    #[test]
    fn cpu_and_memory_cap_shared_copies_not_whole_gpus() {
        let gpus = [1000, 1000, 1000, 1000];
        // Half-GPU jobs of 1 core: 4 GPUs hold 8 copies, 2.5 cores only
        // 2, so 3000 is stranded.
        let cpu_bound = NodeFree {
            cpu_milli: 2500,
            ..node(&gpus)
        };
        assert_eq!(fragment(cpu_bound, d(1, 500), &[]), 3000);
        // 1.5 GiB of memory feeds one: 3500 is stranded.
        let memory_bound = NodeFree {
            memory_mib: 1536,
            ..node(&gpus)
        };
        assert_eq!(fragment(memory_bound, d(1, 500), &[]), 3500);
        // A whole-GPU kind that fits once counts all four whole GPUs as
        // usable: the cores are left to the mix, not to this one kind.
        assert_eq!(fragment(cpu_bound, d(1, 1000), &[]), 0);
        // Not one copy fits: everything is stranded for it.
        let starved = NodeFree {
            cpu_milli: 999,
            ..node(&gpus)
        };
        assert_eq!(fragment(starved, d(1, 1000), &[]), 4000);
    }

    #[test]
    fn a_cpu_only_kind_strands_the_gpus_once_it_no_longer_fits() {
        let n = node(&[1000, 600]);
        assert_eq!(fragment(n, d(0, 0), &[]), 0);
        let full = NodeFree {
            cpu_milli: 999,
            ..n
        };
        assert_eq!(fragment(full, d(0, 0), &[]), 1600);
        // A CPU-only node has nothing to strand.
        assert_eq!(fragment(node(&[]), d(0, 0), &[]), 0);
    }

    #[test]
    fn hosting_needs_one_copy_to_fit() {
        let n = node(&[1000, 1000, 500, 200]);
        assert!(hosts(n, d(1, 500), &[]));
        assert!(hosts(n, d(2, 1000), &[]));
        assert!(!hosts(n, d(4, 1000), &[]));
        assert!(!hosts(n, d(1, 500), &["V100M32".into()]));
        let busy = NodeFree {
            cpu_milli: 999,
            ..n
        };
        assert!(!hosts(busy, d(0, 0), &[]));
        assert!(!hosts(busy, d(1, 100), &[]));
        // A CPU-only node hosts CPU-only jobs, not GPU jobs.
        assert!(hosts(node(&[]), d(0, 0), &[]));
        assert!(!hosts(node(&[]), d(1, 100), &[]));
    }

    #[test]
    fn weights_are_shared_among_the_hosts() {
        // Four nodes: two 8-GPU, one 2-GPU, one CPU-only. 1-GPU jobs fit
        // on three, 8-GPU jobs on two, CPU-only jobs on all four.
        let eight = [1000; 8];
        let two = [1000; 2];
        let nodes = [node(&eight), node(&eight), node(&two), node(&[])];
        let kind = |gpus, milli, weight| Kind {
            demand: d(gpus, milli),
            weight,
            models: vec![],
        };
        let mut mix = vec![kind(1, 1000, 30.0), kind(8, 1000, 2.0), kind(0, 0, 8.0)];
        weigh_by_hosts(&mut mix, &nodes);
        let weights: Vec<f64> = mix.iter().map(|k| k.weight).collect();
        assert_eq!(weights, vec![10.0, 1.0, 2.0]);
        // A kind no node can host keeps its weight.
        let mut none = vec![kind(16, 1000, 3.0)];
        weigh_by_hosts(&mut none, &nodes);
        assert_eq!(none[0].weight, 3.0);
    }

    #[test]
    fn expectation_weights_the_mix() {
        let n = node(&[1000, 300]);
        let mix = vec![
            Kind {
                demand: d(1, 500),
                weight: 3.0,
                models: vec![],
            },
            Kind {
                demand: d(2, 1000),
                weight: 1.0,
                models: vec![],
            },
        ];
        // 500-jobs fit twice in the free GPU and strand the 300; 2-GPU
        // jobs strand all 1300.
        assert_eq!(expected(n, &mix), (3.0 * 300.0 + 1300.0) / 4.0);
    }
}
