//! What a placement costs the work the pool expects: the change in a
//! node's expected fragmentation (`crate::fragmentation`) over the pool's
//! recent job mix (`State::mix`), as one round scores it.
//!
//! A round takes the [`SCORED_KINDS`] most frequent kinds of the mix and
//! shares each kind's count among the nodes that could host one task of
//! it now (`fragmentation::share_among_hosts`), counted from the
//! free-capacity index: a kind only a few nodes can take (all of one GPU
//! model, eight whole GPUs) weighs on each of them in full. The counts are
//! taken once per round, so the weights are those of the pool as the
//! round found it; what each node state costs is remembered for the
//! round (many nodes share a state).
//!
//! Costs are bounded: a round counts hosts in one pass over the index
//! (O(GPUs), like copying the free amounts), and a placement scores at
//! most the candidates `placement` gathers, each at O(kinds × GPUs of the
//! node) the first time its state is seen.
//!
//! Hosts are counted by GPUs for GPU kinds (a node's free CPU and memory
//! are not looked at there, to keep the count one pass) and by free CPU
//! and memory for CPU-only kinds.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::fragmentation::{self, Demand, Kind, NodeFree, Tail};
use crate::state::{Free, Host, JobKind, Layout, State, WHOLE_GPU};

/// How many kinds of the mix (the most frequent) a round scores by.
pub const SCORED_KINDS: usize = 64;

/// The round's expected fragmentation: the weighted mix and what each
/// node state seen so far costs.
pub struct Fragments {
    mix: Vec<Kind>,
    tail: Tail,
    memo: RefCell<HashMap<(String, Vec<u32>, Host), u64>>,
}

impl Fragments {
    pub fn new(state: &State, layout: &Layout, free: &Free) -> Fragments {
        let mut kinds: Vec<&(JobKind, u64)> = state.mix().kinds().iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        kinds.truncate(SCORED_KINDS);
        let mut mix: Vec<Kind> = kinds
            .into_iter()
            .map(|(k, count)| Kind {
                demand: Demand {
                    gpus: k.gpus,
                    milli: k.milli,
                    cpu_millicores: k.cpu_millicores,
                    memory_bytes: k.memory_bytes,
                },
                weight: *count,
                models: k.models.clone(),
            })
            .collect();
        let hosts = Hosts::count(layout, free);
        fragmentation::share_among_hosts(&mut mix, |k| hosts.of(k, layout));
        Fragments {
            tail: Tail::of(&mix),
            mix,
            memo: RefCell::new(HashMap::new()),
        }
    }

    /// Expected fragmentation of a node of `model` whose GPUs have `free`
    /// thousandths free and `host` CPU and memory (fixed point,
    /// `fragmentation::SCALE`).
    pub fn of(&self, model: &str, free: &[u32], host: Host) -> u64 {
        if self.mix.is_empty() || free.iter().all(|&f| f == 0) {
            return 0;
        }
        let mut gpus = free.to_vec();
        gpus.sort_unstable();
        let key = (model.to_string(), gpus, host);
        if let Some(&v) = self.memo.borrow().get(&key) {
            return v;
        }
        let v = fragmentation::expected(
            NodeFree {
                gpus: &key.1,
                cpu_millicores: host.cpu_millicores,
                memory_bytes: host.memory_bytes,
                model,
            },
            &self.mix,
            &self.tail,
        );
        self.memo.borrow_mut().insert(key, v);
        v
    }

    /// How much taking `milli` of each of `gpus` (positions) from a node
    /// of `model` with `free` and `host`, leaving it `host_after`, raises
    /// its expected fragmentation.
    pub fn change(
        &self,
        model: &str,
        free: &[u32],
        host: Host,
        (gpus, milli): (&[usize], u32),
        host_after: Host,
    ) -> i64 {
        let mut after = free.to_vec();
        for &p in gpus {
            after[p] = after[p].saturating_sub(milli);
        }
        let (a, b) = (
            self.of(model, &after, host_after),
            self.of(model, free, host),
        );
        i64::try_from(a).unwrap_or(i64::MAX) - i64::try_from(b).unwrap_or(i64::MAX)
    }
}

/// How many nodes could host one task of a kind, per bucket of the
/// index: by whole GPUs free, and, for shared-GPU kinds, by the most any
/// partly held GPU has free.
struct Hosts {
    /// Per bucket: `whole[b][g]` nodes with at least `g` whole GPUs free.
    whole: Vec<Vec<u64>>,
    /// Per bucket: `shared[b][m]` nodes with no whole GPU free there but
    /// a partly held GPU with at least `m` free.
    shared: Vec<Vec<u64>>,
    /// Every node's free CPU and memory, by CPU.
    hosts: Vec<Host>,
}

impl Hosts {
    fn count(layout: &Layout, free: &Free) -> Hosts {
        let buckets = layout.keys.len();
        let mut whole = vec![vec![]; buckets];
        let mut shared = vec![vec![]; buckets];
        for b in 0..buckets {
            let mut by_count: Vec<u64> = vec![];
            for &(n, _) in &free.by_free[b] {
                let n = n as usize;
                if by_count.len() <= n {
                    by_count.resize(n + 1, 0);
                }
                by_count[n] += 1;
            }
            whole[b] = suffix_sums(by_count);
            // The most free on a partly held GPU, per node without a whole
            // one free in the bucket.
            let mut best: HashMap<usize, u32> = HashMap::new();
            for &(f, i, _) in &free.shared[b] {
                if free.whole_in(layout, i, b) == 0 {
                    let m = best.entry(i).or_default();
                    *m = (*m).max(f);
                }
            }
            let mut by_most = vec![0u64; WHOLE_GPU as usize + 1];
            for f in best.into_values() {
                by_most[f.min(WHOLE_GPU) as usize] += 1;
            }
            shared[b] = suffix_sums(by_most);
        }
        let hosts = free.by_cpu.iter().map(|&(_, i)| free.host(i)).collect();
        Hosts {
            whole,
            shared,
            hosts,
        }
    }

    fn of(&self, kind: &Kind, layout: &Layout) -> u64 {
        let d = kind.demand;
        if d.gpus == 0 {
            let want = Host {
                cpu_millicores: d.cpu_millicores,
                memory_bytes: d.memory_bytes,
            };
            let first = self
                .hosts
                .partition_point(|h| h.cpu_millicores < want.cpu_millicores);
            return self.hosts[first..].iter().filter(|h| h.holds(want)).count() as u64;
        }
        let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
        (0..layout.keys.len())
            .filter(|&b| allows(kind, layout, b))
            .map(|b| {
                if d.milli >= WHOLE_GPU {
                    at(&self.whole[b], d.gpus as usize)
                } else {
                    at(&self.whole[b], 1) + at(&self.shared[b], d.milli as usize)
                }
            })
            .sum()
    }
}

/// Whether bucket `b` has GPUs of a model the kind may use.
fn allows(kind: &Kind, layout: &Layout, b: usize) -> bool {
    let class = &layout.keys[b].class;
    kind.models.is_empty()
        || layout
            .models
            .iter()
            .any(|(c, m)| c == class && kind.models.contains(m))
}

/// `out[i]` = the sum of `counts[i..]`.
fn suffix_sums(mut counts: Vec<u64>) -> Vec<u64> {
    for i in (0..counts.len().saturating_sub(1)).rev() {
        counts[i] += counts[i + 1];
    }
    counts
}
