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
//! - a shared-GPU kind is counted for one job of the kind on each GPU it
//!   fits, followed by jobs drawn from the mix's shared-GPU kinds until
//!   one does not fit ([`Tail`]): what that leaves is stranded, so a
//!   remainder that only rare kinds fit counts almost in full and one
//!   that common kinds fill counts little (FGD counts copies of the kind
//!   itself, `free / share` per GPU, and strands the remainder after the
//!   last; that rule stays for a free whole GPU with the odds that it goes
//!   to whole-GPU work). The node's free CPU and memory cap the jobs
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
//! ([`weigh_by_hosts`]), counted on the pool as it is (the planner
//! counts them afresh every round: as the pool fills, the last hosts of
//! a kind count its fragment more). Popularity alone gives a rare,
//! large kind (a whole 8-GPU node with 120 cores, which only a few nodes
//! have) almost no weight, so small jobs and CPU-only jobs settle on
//! exactly the nodes that kind needs, and it fails although it is a
//! large share of the GPU demand; divided among its few hosts, each of
//! those nodes counts the kind's fragment in full, while kinds that fit
//! almost anywhere keep their relative weights.
//!
//! Integers only, so every replica gets the same answer bit for bit:
//! fragments are whole thousandths of a GPU, and what is expected (the
//! tail, the weighted mean) is fixed point, in 1/[`SCALE`] of a
//! thousandth, summed in a fixed order.

use std::collections::BTreeMap;

/// Thousandths of one GPU.
pub const WHOLE: u32 = 1000;

/// Fixed-point scale of expected amounts and of weights: an expected
/// fragment of `x` thousandths is `x * SCALE`.
pub const SCALE: u64 = 1 << 16;

/// The GPU shape of one kind of job: `gpus` GPUs of `milli` thousandths
/// each (`milli` < 1000 only with one GPU), and what else it needs of a
/// node (0 when the pool does not track it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Demand {
    pub gpus: u32,
    pub milli: u32,
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
}

/// A kind of job and how often it is expected (any weight; 0 ignores it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kind {
    pub demand: Demand,
    pub weight: u64,
    /// GPU models the kind may use; empty = any.
    pub models: Vec<String>,
}

/// The free capacity of one node, as fragmentation sees it.
#[derive(Clone, Copy, Debug)]
pub struct NodeFree<'a> {
    /// Free thousandths of each GPU.
    pub gpus: &'a [u32],
    /// Free CPU and memory (`u64::MAX` where the pool does not track it).
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
    pub model: &'a str,
}

/// How many jobs of `demand` the node's free CPU and memory could host
/// (unbounded when the demand asks for neither).
fn host_limit(node: NodeFree<'_>, demand: Demand) -> u64 {
    let cpu = node
        .cpu_millicores
        .checked_div(demand.cpu_millicores)
        .unwrap_or(u64::MAX);
    let memory = node
        .memory_bytes
        .checked_div(demand.memory_bytes)
        .unwrap_or(u64::MAX);
    cpu.min(memory)
}

fn allowed(node: NodeFree<'_>, models: &[String]) -> bool {
    models.is_empty() || models.iter().any(|m| m == node.model)
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
    if !allowed(node, models) || limit == 0 {
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

/// What a shared GPU is expected to keep free in the end, by the free
/// thousandths it has now: jobs drawn from the mix's shared-GPU kinds (by
/// weight) arrive one after another, each takes its share if it fits, and
/// the first that does not fit ends it. A remainder that only rare kinds
/// fit (190 after a 0.81-GPU job on the openb trace, which only the few
/// jobs of 0.16 GPU or less fit) keeps almost all of it; one that common
/// kinds fit (360 after two 0.32-GPU jobs) is likely to be filled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tail {
    /// Expected thousandths left (times [`SCALE`]), for 0..=WHOLE free now.
    left: Vec<u64>,
    /// How likely a free whole GPU goes to shared work (times
    /// [`SCALE`]): the shared-GPU kinds' share of the weight of all GPU
    /// kinds.
    shared_odds: u64,
}

impl Tail {
    pub fn of(mix: &[Kind]) -> Tail {
        let mut shares: BTreeMap<u32, u128> = BTreeMap::new();
        let mut whole: u128 = 0;
        for k in mix.iter().filter(|k| k.weight > 0 && k.demand.gpus > 0) {
            if is_shared(k.demand) {
                *shares.entry(k.demand.milli).or_default() += u128::from(k.weight);
            } else if k.demand.milli >= WHOLE {
                whole += u128::from(k.weight);
            }
        }
        let total: u128 = shares.values().sum();
        let mut left: Vec<u64> = Vec::with_capacity(WHOLE as usize + 1);
        for free in 0..=WHOLE {
            let stays = u128::from(free) * u128::from(SCALE);
            if total == 0 {
                left.push(stays as u64);
                continue;
            }
            // The weight of the jobs that fit next, and what they leave.
            let (mut fits, mut after) = (0u128, 0u128);
            for (&share, &weight) in shares.range(..=free) {
                fits += weight;
                after += weight * u128::from(left[(free - share) as usize]);
            }
            left.push((((total - fits) * stays + after) / total) as u64);
        }
        let shared_odds = if total > 0 {
            (total * u128::from(SCALE) / (total + whole)) as u64
        } else {
            0
        };
        Tail { left, shared_odds }
    }

    /// Expected thousandths (times [`SCALE`]) left in the end on a shared
    /// GPU with `free`.
    pub fn left(&self, free: u32) -> u64 {
        self.left[free.min(WHOLE) as usize]
    }
}

/// A job on a share of one GPU.
fn is_shared(demand: Demand) -> bool {
    demand.gpus == 1 && demand.milli > 0 && demand.milli < WHOLE
}

/// Free GPU thousandths (times [`SCALE`]) of the node that a shared-GPU
/// kind, and the jobs of the mix after it, are expected to leave unused.
/// On each GPU where a job of the kind fits (as many GPUs as the node's
/// CPU and memory can feed one job each, those that gain most first),
/// what the tail of the mix leaves after that job; a free whole GPU may
/// yet go to whole-GPU work, so it counts the tail only with the odds
/// that it goes to shared work, and FGD's copies of the kind otherwise.
/// Every other GPU is stranded for the kind. At least the thousandths
/// the node's CPU and memory could not feed with jobs like this one stay
/// stranded too (as in [`fragment`]): one job per GPU alone would hide
/// how fast pairs of CPU-heavy jobs use up a node's cores.
pub fn shared_fragment(node: NodeFree<'_>, demand: Demand, models: &[String], tail: &Tail) -> u64 {
    let free: u64 = node.gpus.iter().map(|&g| u64::from(g)).sum();
    let limit = host_limit(node, demand);
    if !allowed(node, models) || limit == 0 {
        return free * SCALE;
    }
    let share = demand.milli.max(1);
    let mut gains: Vec<(u64, u32)> = node
        .gpus
        .iter()
        .filter(|&&g| g >= share)
        .map(|&g| {
            let left = if g == WHOLE {
                let odds = tail.shared_odds;
                (odds * tail.left(g - share) + (SCALE - odds) * u64::from(g % share) * SCALE)
                    / SCALE
            } else {
                tail.left(g - share)
            };
            ((u64::from(g) * SCALE).saturating_sub(left), g)
        })
        .collect();
    gains.sort_unstable_by(|a, b| b.cmp(a));
    let fed = gains
        .len()
        .min(usize::try_from(limit).unwrap_or(usize::MAX));
    let tailed = (free * SCALE).saturating_sub(gains[..fed].iter().map(|g| g.0).sum::<u64>());
    let unfed = free.saturating_sub(limit.saturating_mul(u64::from(share)));
    tailed.max(unfed * SCALE)
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

/// Divides each kind's weight by its number of hosts (at least one), in
/// fixed point: `weight * SCALE / hosts`. A kind's weight is then the
/// demand each of its possible hosts has to absorb. A node that is one of
/// few able to take a large or demanding kind (all of one GPU model, a
/// node with the cores and memory for a whole-node job) then counts that
/// kind's fragment in full, instead of in proportion to the kind's small
/// share of all jobs; kinds that fit almost anywhere keep their relative
/// weights.
pub fn share_among_hosts(mix: &mut [Kind], hosts: impl Fn(&Kind) -> u64) {
    for kind in mix.iter_mut() {
        let n = hosts(kind).max(1);
        kind.weight = kind.weight.saturating_mul(SCALE) / n;
    }
}

/// [`share_among_hosts`] with the hosts counted among `nodes`.
pub fn weigh_by_hosts(mix: &mut [Kind], nodes: &[NodeFree<'_>]) {
    share_among_hosts(mix, |kind| {
        nodes
            .iter()
            .filter(|&&n| hosts(n, kind.demand, &kind.models))
            .count() as u64
    });
}

/// The node's expected fragmentation over the mix of kinds: GPU
/// thousandths (times [`SCALE`]) averaged over the kinds by weight.
/// Shared-GPU kinds are counted with the tail of the mix after them
/// ([`shared_fragment`]), the others by [`fragment`].
pub fn expected(node: NodeFree<'_>, mix: &[Kind], tail: &Tail) -> u64 {
    let total: u128 = mix.iter().map(|k| u128::from(k.weight)).sum();
    if total == 0 {
        return 0;
    }
    let sum: u128 = mix
        .iter()
        .filter(|k| k.weight > 0)
        .map(|k| {
            let left = if is_shared(k.demand) {
                shared_fragment(node, k.demand, &k.models, tail)
            } else {
                fragment(node, k.demand, &k.models) * SCALE
            };
            u128::from(k.weight) * u128::from(left)
        })
        .sum();
    (sum / total) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(gpus: &[u32]) -> NodeFree<'_> {
        NodeFree {
            gpus,
            cpu_millicores: 64_000,
            memory_bytes: 262_144 << 20,
            model: "T4",
        }
    }

    fn d(gpus: u32, milli: u32) -> Demand {
        Demand {
            gpus,
            milli,
            cpu_millicores: 1000,
            memory_bytes: 1024 << 20,
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
            cpu_millicores: 500,
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
            cpu_millicores: 2500,
            ..node(&gpus)
        };
        assert_eq!(fragment(cpu_bound, d(1, 500), &[]), 3000);
        // 1.5 GiB of memory feeds one: 3500 is stranded.
        let memory_bound = NodeFree {
            memory_bytes: 1536 << 20,
            ..node(&gpus)
        };
        assert_eq!(fragment(memory_bound, d(1, 500), &[]), 3500);
        // A whole-GPU kind that fits once counts all four whole GPUs as
        // usable: the cores are left to the mix, not to this one kind.
        assert_eq!(fragment(cpu_bound, d(1, 1000), &[]), 0);
        // Not one copy fits: everything is stranded for it.
        let starved = NodeFree {
            cpu_millicores: 999,
            ..node(&gpus)
        };
        assert_eq!(fragment(starved, d(1, 1000), &[]), 4000);
    }

    #[test]
    fn a_cpu_only_kind_strands_the_gpus_once_it_no_longer_fits() {
        let n = node(&[1000, 600]);
        assert_eq!(fragment(n, d(0, 0), &[]), 0);
        let full = NodeFree {
            cpu_millicores: 999,
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
            cpu_millicores: 999,
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
        let mut mix = vec![kind(1, 1000, 30), kind(8, 1000, 2), kind(0, 0, 8)];
        weigh_by_hosts(&mut mix, &nodes);
        let weights: Vec<u64> = mix.iter().map(|k| k.weight).collect();
        assert_eq!(weights, vec![10 * SCALE, SCALE, 2 * SCALE]);
        // A kind no node can host keeps its weight.
        let mut none = vec![kind(16, 1000, 3)];
        weigh_by_hosts(&mut none, &nodes);
        assert_eq!(none[0].weight, 3 * SCALE);
    }

    fn kind(gpus: u32, milli: u32, weight: u64) -> Kind {
        Kind {
            demand: d(gpus, milli),
            weight,
            models: vec![],
        }
    }

    #[test]
    fn the_tail_fills_a_remainder_with_the_shared_sizes_of_the_mix() {
        // Shared sizes 300 and 500, one job each in two; whole-GPU jobs
        // weigh as much as both (odds of shared work 1/2).
        let mix = [kind(1, 300, 1), kind(1, 500, 1), kind(1, 1000, 2)];
        let tail = Tail::of(&mix);
        // Nothing fits 200: all of it stays.
        assert_eq!(tail.left(200), 200 * SCALE);
        // 400: a 300 comes first (1/2) and leaves 100, or a 500 ends it.
        assert_eq!(tail.left(400), (100 + 400) * SCALE / 2);
        // 600: either fits; 300 then leaves 300 (left 150), 500 leaves 100.
        assert_eq!(tail.left(600), (150 + 100) * SCALE / 2);
        // 700: 300 leaves 400 (250), 500 leaves 200 (200).
        assert_eq!(tail.left(700), 225 * SCALE);
        assert_eq!(tail.shared_odds, SCALE / 2);
    }

    #[test]
    fn a_shared_kind_counts_the_tail_after_its_job() {
        let mix = [kind(1, 300, 1), kind(1, 500, 1), kind(1, 1000, 2)];
        let tail = Tail::of(&mix);
        let gpus = [1000, 700, 200];
        // The 700 keeps 250 after a 300 (left(400)); the free 1000 keeps
        // left(700) = 225 if it goes to shared work (odds 1/2), else FGD's
        // 100 after three copies; the 200 is stranded.
        let tailed = 250 * SCALE + (225 + 100) * SCALE / 2 + 200 * SCALE;
        assert_eq!(shared_fragment(node(&gpus), d(1, 300), &[], &tail), tailed);
        // Cores for two jobs only: the 1900 - 600 they cannot feed stay.
        let two = NodeFree {
            cpu_millicores: 2000,
            ..node(&gpus)
        };
        assert_eq!(shared_fragment(two, d(1, 300), &[], &tail), 1300 * SCALE);
        // No job fits, or the model is wrong: all of it.
        assert_eq!(
            shared_fragment(node(&[200]), d(1, 300), &[], &tail),
            200 * SCALE
        );
        let other = vec!["V100M32".to_string()];
        assert_eq!(
            shared_fragment(node(&gpus), d(1, 300), &other, &tail),
            1900 * SCALE
        );
        // A remainder only a rare size fits counts as nearly stranded: with
        // 810s nine times as common as 160s, 190 keeps 90 % of itself plus
        // a tenth of the 30 a 160 leaves.
        let rare = Tail::of(&[kind(1, 810, 9), kind(1, 160, 1)]);
        assert_eq!(rare.left(190), (9 * 190 + 30) * SCALE / 10);
    }

    #[test]
    fn expectation_weights_the_mix() {
        let n = node(&[1000, 300]);
        let mix = vec![
            Kind {
                demand: d(1, 500),
                weight: 3,
                models: vec![],
            },
            Kind {
                demand: d(2, 1000),
                weight: 1,
                models: vec![],
            },
        ];
        // 500-jobs fit twice in the free GPU and strand the 300; 2-GPU
        // jobs strand all 1300.
        assert_eq!(
            expected(n, &mix, &Tail::of(&mix)),
            (3 * 300 + 1300) * SCALE / 4
        );
    }
}
