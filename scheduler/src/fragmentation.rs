//! GPU fragmentation: how much of a node's free GPU capacity the jobs the
//! pool expects could not use.
//!
//! The measure follows Weng et al., "Beware of Fragmentation: Scheduling
//! GPU-Sharing Workloads with Fragmentation Gradient Descent" (USENIX
//! ATC'23): for one kind of job, the fragment of a node is the free GPU
//! capacity that kind cannot use there; the node's fragmentation is the
//! average over the expected mix of job kinds. Placing a job where it
//! raises that average the least keeps large free blocks intact.
//!
//! Pure and integer-valued where it matters (thousandths of a GPU), so it
//! gives the same answer on every replica.

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

/// Free GPU thousandths of the node that a job of `demand` cannot use.
pub fn fragment(node: NodeFree<'_>, demand: Demand, models: &[String]) -> u64 {
    let free: u64 = node.gpus.iter().map(|&g| u64::from(g)).sum();
    if demand.gpus == 0 {
        // A job without GPUs leaves every GPU to others: nothing is lost.
        return 0;
    }
    let allowed = models.is_empty() || models.iter().any(|m| m == node.model);
    if !allowed || node.cpu_milli < demand.cpu_milli || node.memory_mib < demand.memory_mib {
        return free;
    }
    if demand.milli < WHOLE {
        // A shared-GPU job can use any GPU with enough left; the rest of
        // the GPUs' free capacity is stranded for it.
        return node
            .gpus
            .iter()
            .filter(|&&g| g < demand.milli)
            .map(|&g| u64::from(g))
            .sum();
    }
    let whole = node.gpus.iter().filter(|&&g| g == WHOLE).count() as u32;
    if whole < demand.gpus {
        free
    } else {
        // Whole-GPU jobs cannot use partly taken GPUs.
        node.gpus
            .iter()
            .filter(|&&g| g < WHOLE)
            .map(|&g| u64::from(g))
            .sum()
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
        // 500-jobs strand 300; 2-GPU jobs strand all 1300.
        assert_eq!(expected(n, &mix), (3.0 * 300.0 + 1300.0) / 4.0);
    }
}
