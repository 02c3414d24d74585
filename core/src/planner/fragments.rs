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
//! Costs are bounded: a round counts hosts once (below), and a placement
//! scores at most the candidates `placement` gathers, each at O(kinds ×
//! GPUs of the node) the first time its state is seen.
//!
//! Hosts are counted in every dimension (GPUs, model, CPU, memory) over
//! the nodes' distinct states: O(nodes × GPUs) to group them, then
//! O(kinds × states) per round.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::fragmentation::{self, Demand, Kind, NodeFree, Tail};
use crate::state::{Free, Host, JobKind, Layout, State};

/// How many kinds of the mix (the most frequent) a round scores by.
pub const SCORED_KINDS: usize = 64;

/// A node's state as fragmentation sees it: its GPU model, the free
/// thousandths of its GPUs (sorted), its free CPU and memory.
type NodeState = (String, Vec<u32>, Host);

/// The round's expected fragmentation: the weighted mix and what each
/// node state seen so far costs.
pub struct Fragments {
    mix: Vec<Kind>,
    tail: Tail,
    memo: RefCell<HashMap<NodeState, u64>>,
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
        fragmentation::share_among_hosts(&mut mix, |k| hosts.of(k));
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

/// How many nodes could host one task of a kind: the nodes' distinct
/// states (model, free GPU amounts, free CPU and memory), counted, so a
/// kind is checked once per state rather than once per node.
struct Hosts {
    states: HashMap<NodeState, u64>,
}

impl Hosts {
    fn count(layout: &Layout, free: &Free) -> Hosts {
        let mut states: HashMap<NodeState, u64> = HashMap::new();
        for i in 0..layout.len() {
            let model = layout
                .buckets_of(i)
                .first()
                .and_then(|&b| {
                    let class = &layout.keys[b].class;
                    layout.models.iter().find(|(c, _)| c == class)
                })
                .map_or(String::new(), |(_, m)| m.clone());
            let mut gpus = free.of(layout, i).to_vec();
            gpus.sort_unstable();
            *states.entry((model, gpus, free.host(i))).or_default() += 1;
        }
        Hosts { states }
    }

    fn of(&self, kind: &Kind) -> u64 {
        self.states
            .iter()
            .filter(|((model, gpus, host), _)| {
                let node = NodeFree {
                    gpus,
                    cpu_millicores: host.cpu_millicores,
                    memory_bytes: host.memory_bytes,
                    model,
                };
                fragmentation::hosts(node, kind.demand, &kind.models)
            })
            .map(|(_, n)| n)
            .sum()
    }
}
