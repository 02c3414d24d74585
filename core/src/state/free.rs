//! Free GPU capacity by (GPU class, site, data level), and each node's
//! free CPU and memory: an index derived from the nodes that the state
//! keeps between planning rounds.
//!
//! A round used to rebuild it from every GPU of every node (tens of
//! milliseconds at 10,000 nodes, before its first decision). Now it is
//! built on first use and kept exact beside the state (`indexed`): a
//! command that names a job refreshes the entries of that job's nodes;
//! one that changes nodes themselves (a node joins, leaves, is labelled,
//! a GPU fails) drops the index, to be rebuilt when the planner next
//! asks. It is not part of the state, so never serialised.
//!
//! It has two parts: the layout (which nodes are schedulable, in name
//! order, and which bucket each GPU is in), fixed between node changes, and
//! the free amounts with the sets ordered by them, which a round copies
//! and then takes from as it places.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::types::{Host, Node, NodeStatus, WHOLE_GPU};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BucketKey {
    pub class: String,
    pub site: String,
    pub data_level: u8,
}

/// Which nodes and GPUs the index covers, and the bucket of each GPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// Schedulable nodes in name order; a node's position is its number.
    pub names: Vec<String>,
    /// The GPUs of node `i` are `first[i]..first[i + 1]` of the flat
    /// per-GPU vectors.
    first: Vec<usize>,
    bucket_of: Vec<usize>,
    pub keys: Vec<BucketKey>,
    pub by_key: BTreeMap<BucketKey, usize>,
    /// Per bucket: the nodes with a GPU in it, by position.
    pub members: Vec<Vec<usize>>,
    /// (class, model) pairs present, so a model constraint maps to classes.
    pub models: BTreeSet<(String, String)>,
}

impl Layout {
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The bucket of each GPU of node `i`, by GPU position.
    pub fn buckets_of(&self, i: usize) -> &[usize] {
        &self.bucket_of[self.first[i]..self.first[i + 1]]
    }

    pub fn position(&self, name: &str) -> Option<usize> {
        self.names.binary_search_by(|n| n.as_str().cmp(name)).ok()
    }

    fn bucket_id(&mut self, key: BucketKey) -> usize {
        if let Some(&b) = self.by_key.get(&key) {
            return b;
        }
        let b = self.keys.len();
        self.keys.push(key.clone());
        self.by_key.insert(key, b);
        self.members.push(vec![]);
        b
    }
}

/// The free thousandths of every GPU, and per bucket the nodes ordered by
/// whole free GPUs and the shared GPUs by free thousandths, so the best
/// fit is a range lookup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Free {
    free: Vec<u32>,
    /// Per node: the CPU and memory no job holds.
    host: Vec<Host>,
    /// (free CPU millicores, node) for every node, so a CPU-only task's
    /// best fit is a range lookup too.
    pub by_cpu: BTreeSet<(u64, usize)>,
    /// Per bucket: (free whole GPUs, node) for nodes with at least one.
    pub by_free: Vec<BTreeSet<(u32, usize)>>,
    /// Per bucket: (free thousandths, node, GPU position) for GPUs partly
    /// held.
    pub shared: Vec<BTreeSet<(u32, usize, usize)>>,
}

impl Free {
    /// Free thousandths of each GPU of node `i` (0 for unusable GPUs).
    pub fn of<'f>(&'f self, layout: &Layout, i: usize) -> &'f [u32] {
        &self.free[layout.first[i]..layout.first[i + 1]]
    }

    /// The CPU and memory of node `i` no job holds.
    pub fn host(&self, i: usize) -> Host {
        self.host.get(i).copied().unwrap_or_default()
    }

    /// Takes one task's CPU and memory from node `i`.
    pub fn take_host(&mut self, i: usize, want: Host) {
        if want == Host::default() {
            return;
        }
        let Some(h) = self.host.get_mut(i) else {
            return;
        };
        self.by_cpu.remove(&(h.cpu_millicores, i));
        *h = h.minus(want);
        self.by_cpu.insert((h.cpu_millicores, i));
    }

    /// Whole free GPUs of node `i` in bucket `b`.
    pub fn whole_in(&self, layout: &Layout, i: usize, b: usize) -> u32 {
        self.of(layout, i)
            .iter()
            .zip(layout.buckets_of(i))
            .filter(|(&f, &gb)| f == WHOLE_GPU && gb == b)
            .count() as u32
    }

    /// Calls `each(bucket, whole free GPUs)` for each bucket node `i` has
    /// whole free GPUs in.
    fn whole_per_bucket(&self, layout: &Layout, i: usize, mut each: impl FnMut(usize, u32)) {
        let buckets = layout.buckets_of(i);
        let free = self.of(layout, i);
        // A node's GPUs are nearly always in one bucket.
        if buckets.windows(2).all(|w| w[0] == w[1]) {
            let n = free.iter().filter(|&&f| f == WHOLE_GPU).count() as u32;
            if n > 0 {
                each(buckets[0], n);
            }
            return;
        }
        let mut counts: BTreeMap<usize, u32> = BTreeMap::new();
        for (&f, &b) in free.iter().zip(buckets) {
            if f == WHOLE_GPU {
                *counts.entry(b).or_default() += 1;
            }
        }
        for (b, n) in counts {
            each(b, n);
        }
    }

    fn insert(&mut self, layout: &Layout, i: usize) {
        let mut by_free = std::mem::take(&mut self.by_free);
        self.whole_per_bucket(layout, i, |b, n| {
            by_free[b].insert((n, i));
        });
        self.by_free = by_free;
        let free = &self.free[layout.first[i]..layout.first[i + 1]];
        for (pos, (&f, &b)) in free.iter().zip(layout.buckets_of(i)).enumerate() {
            if f > 0 && f < WHOLE_GPU {
                self.shared[b].insert((f, i, pos));
            }
        }
    }

    fn remove(&mut self, layout: &Layout, i: usize) {
        let mut by_free = std::mem::take(&mut self.by_free);
        self.whole_per_bucket(layout, i, |b, n| {
            by_free[b].remove(&(n, i));
        });
        self.by_free = by_free;
        let free = &self.free[layout.first[i]..layout.first[i + 1]];
        for (pos, (&f, &b)) in free.iter().zip(layout.buckets_of(i)).enumerate() {
            if f > 0 && f < WHOLE_GPU {
                self.shared[b].remove(&(f, i, pos));
            }
        }
    }

    /// Takes `milli` of each listed GPU (by position) of node `i`.
    pub fn take(&mut self, layout: &Layout, i: usize, gpus: &[usize], milli: u32) {
        self.remove(layout, i);
        let first = layout.first[i];
        for &pos in gpus {
            let f = &mut self.free[first + pos];
            *f = f.saturating_sub(milli);
        }
        self.insert(layout, i);
    }

    /// Sets node `i`'s free amounts to what its GPUs, CPU and memory have
    /// free now.
    fn refresh(&mut self, layout: &Layout, i: usize, node: &Node) {
        self.remove(layout, i);
        let first = layout.first[i];
        for (pos, g) in node.gpus.iter().enumerate() {
            self.free[first + pos] = g.free_milli();
        }
        self.insert(layout, i);
        let now = node.host_free();
        if let Some(h) = self.host.get_mut(i) {
            self.by_cpu.remove(&(h.cpu_millicores, i));
            *h = now;
            self.by_cpu.insert((now.cpu_millicores, i));
        }
    }
}

/// The whole index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FreeCapacity {
    pub layout: Layout,
    pub free: Free,
}

impl FreeCapacity {
    /// Builds the index of the schedulable ones among `nodes` (in name
    /// order).
    pub fn build<'n>(nodes: impl Iterator<Item = &'n Node>) -> FreeCapacity {
        let mut layout = Layout::default();
        let mut free = vec![];
        let mut host = vec![];
        // Neighbouring nodes are nearly always alike: remember the last
        // bucket seen, across nodes.
        let mut last: Option<(&str, &str, u8, usize)> = None;
        for node in nodes.filter(|n| n.schedulable()) {
            let i = layout.names.len();
            let (site, level) = (node.site(), node.labels.data_level);
            layout.first.push(free.len());
            for g in &node.gpus {
                let class = node.gpu_class(g);
                let b = match last {
                    Some((c, s, l, b)) if c == class && s == site && l == level => b,
                    _ => {
                        let b = layout.bucket_id(BucketKey {
                            class: class.to_string(),
                            site: site.to_string(),
                            data_level: level,
                        });
                        last = Some((class, site, level, b));
                        b
                    }
                };
                if layout.members[b].last() != Some(&i) {
                    layout.members[b].push(i);
                }
                layout.bucket_of.push(b);
                free.push(g.free_milli());
                if !layout
                    .models
                    .iter()
                    .any(|(c, m)| c == class && *m == g.info.model)
                {
                    layout
                        .models
                        .insert((class.to_string(), g.info.model.clone()));
                }
            }
            layout.names.push(node.name.clone());
            host.push(node.host_free());
        }
        layout.first.push(free.len());
        let buckets = layout.keys.len();
        let by_cpu = host
            .iter()
            .enumerate()
            .map(|(i, h)| (h.cpu_millicores, i))
            .collect();
        let mut f = Free {
            free,
            host,
            by_cpu,
            by_free: vec![BTreeSet::new(); buckets],
            shared: vec![BTreeSet::new(); buckets],
        };
        for i in 0..layout.len() {
            f.insert(&layout, i);
        }
        FreeCapacity { layout, free: f }
    }

    /// Brings node `node`'s entries up to date with its GPUs. False when
    /// that is not possible in place (the node joined, left, or changed
    /// its GPUs): the index must then be rebuilt.
    pub fn refresh(&mut self, node: &Node) -> bool {
        let Some(i) = self.layout.position(&node.name) else {
            return !node.schedulable();
        };
        if !node.schedulable() || self.layout.buckets_of(i).len() != node.gpus.len() {
            return false;
        }
        self.free.refresh(&self.layout, i, node);
        true
    }
}

/// Usable GPUs (thousandths) of the ready nodes each owner contributes,
/// per GPU class: the guarantees that follow contribution. Keyed by the
/// owner label, whether or not such a tenant exists.
pub type Contributed = BTreeMap<String, BTreeMap<String, u64>>;

pub fn contributed<'n>(nodes: impl Iterator<Item = &'n Node>) -> Contributed {
    let mut by_owner: Contributed = BTreeMap::new();
    for node in nodes.filter(|n| n.status == NodeStatus::Ready) {
        let Some(owner) = node.labels.owner.as_ref() else {
            continue;
        };
        let classes = by_owner.entry(owner.clone()).or_default();
        for g in node.gpus.iter().filter(|g| g.usable()) {
            let class = node.gpu_class(g);
            match classes.get_mut(class) {
                Some(m) => *m += u64::from(WHOLE_GPU),
                None => {
                    classes.insert(class.to_string(), u64::from(WHOLE_GPU));
                }
            }
        }
    }
    by_owner
}

/// The state's nodes by name, each shared so a copy of the state shares it.
pub type Nodes = BTreeMap<String, Arc<Node>>;
