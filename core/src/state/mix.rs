//! The pool's recent job mix: how many tasks of each kind (GPUs per
//! task, share of a GPU, the GPU models allowed, CPU and memory) were
//! submitted lately.
//!
//! The planner reads it as the workload to expect when it scores a
//! placement by the fragmentation it causes (`crate::fragmentation`).
//! It is replicated state, updated by `apply` on every submission, so
//! every replica plans from the same mix; it holds integers only.
//!
//! Bounded two ways, both deterministic:
//! - at most [`MIX_KINDS`] kinds: a new kind, when the tally is full,
//!   replaces the rarest other kind (the greatest kind among equally
//!   rare ones);
//! - counts are halved (rounding down, kinds at zero dropped) each time
//!   their sum passes 2 × [`MIX_WINDOW`]: the mix follows roughly the
//!   last [`MIX_WINDOW`] to 2 × [`MIX_WINDOW`] tasks, older ones weighing
//!   half as much per halving.

use serde::{Deserialize, Serialize};

use super::types::{JobSpec, WHOLE_GPU};

/// The most kinds the tally holds.
pub const MIX_KINDS: usize = 256;
/// Roughly how many recent tasks the tally follows.
pub const MIX_WINDOW: u64 = 4096;

/// The shape of one task, as the mix counts it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobKind {
    /// GPUs per task (0: a CPU-only task).
    pub gpus: u32,
    /// Thousandths of each GPU (1000: whole GPUs).
    pub milli: u32,
    /// GPU models the task may use, sorted; empty: any.
    pub models: Vec<String>,
    /// CPU (thousandths of a core) and memory (bytes) per task.
    #[serde(default)]
    pub cpu_millicores: u64,
    #[serde(default)]
    pub memory_bytes: u64,
}

impl JobKind {
    pub fn of(spec: &JobSpec) -> JobKind {
        JobKind {
            gpus: spec.gpus,
            milli: if spec.gpus == 0 {
                0
            } else {
                spec.milli_per_gpu().min(WHOLE_GPU)
            },
            models: {
                let c = &spec.constraints;
                let mut m: Vec<String> = c.gpu_model.iter().chain(&c.gpu_models).cloned().collect();
                m.sort();
                m.dedup();
                m
            },
            cpu_millicores: spec.cpu_millicores,
            memory_bytes: spec.memory_bytes,
        }
    }
}

/// The tally: kinds in order, each with its count.
///
/// It counts only from the entry `Command::StartMixTally` on, which the
/// leader proposes when it finds the tally not counting. A state read
/// from a snapshot taken before the tally existed has none, while a
/// replica that replayed the same log from further back would have
/// counted those submissions: starting at one entry of the log makes
/// every replica's tally the same, however it came by its state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mix {
    kinds: Vec<(JobKind, u64)>,
    #[serde(default)]
    counting: bool,
}

impl Mix {
    /// A tally that counts from the start (for the simulator and tests,
    /// whose states begin with the log).
    pub fn counting() -> Mix {
        Mix {
            kinds: vec![],
            counting: true,
        }
    }

    /// Not counting and nothing counted: a state serializes without it, as
    /// before the tally existed.
    pub fn is_unused(&self) -> bool {
        !self.counting && self.kinds.is_empty()
    }

    /// Whether submissions are counted yet (see `Command::StartMixTally`).
    pub fn is_counting(&self) -> bool {
        self.counting
    }

    /// Starts counting; the kinds so far (none) stay.
    pub fn start(&mut self) {
        self.counting = true;
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    /// The kinds in order, with their counts.
    pub fn kinds(&self) -> &[(JobKind, u64)] {
        &self.kinds
    }

    /// Counts `tasks` more tasks of `spec`'s kind.
    pub fn record(&mut self, spec: &JobSpec, tasks: u64) {
        self.add(JobKind::of(spec), tasks);
    }

    pub fn add(&mut self, kind: JobKind, tasks: u64) {
        if tasks == 0 || !self.counting {
            return;
        }
        match self.kinds.binary_search_by(|(k, _)| k.cmp(&kind)) {
            Ok(i) => self.kinds[i].1 = self.kinds[i].1.saturating_add(tasks),
            Err(mut i) => {
                if self.kinds.len() >= MIX_KINDS {
                    if let Some(gone) = self.drop_rarest() {
                        i -= usize::from(gone < i);
                    }
                }
                self.kinds.insert(i, (kind, tasks));
            }
        }
        let total = self
            .kinds
            .iter()
            .fold(0u64, |s, (_, c)| s.saturating_add(*c));
        if total > 2 * MIX_WINDOW {
            for (_, c) in &mut self.kinds {
                *c /= 2;
            }
            self.kinds.retain(|(_, c)| *c > 0);
        }
    }

    /// Drops the kind with the smallest count (the greatest such kind);
    /// returns its position.
    fn drop_rarest(&mut self) -> Option<usize> {
        let rarest = self
            .kinds
            .iter()
            .enumerate()
            .min_by_key(|(i, (_, c))| (*c, std::cmp::Reverse(*i)))
            .map(|(i, _)| i);
        if let Some(i) = rarest {
            self.kinds.remove(i);
        }
        rarest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(gpus: u32, milli: u32) -> JobKind {
        JobKind {
            gpus,
            milli,
            ..JobKind::default()
        }
    }

    #[test]
    fn counts_by_kind_in_order() {
        let mut mix = Mix::counting();
        mix.add(kind(1, 500), 2);
        mix.add(kind(0, 0), 1);
        mix.add(kind(1, 500), 3);
        assert_eq!(mix.kinds(), &[(kind(0, 0), 1), (kind(1, 500), 5)]);
    }

    #[test]
    fn the_tally_is_bounded_in_kinds_and_in_counts() {
        let mut mix = Mix::counting();
        for i in 0..(MIX_KINDS as u32 + 10) {
            mix.add(kind(1, i + 1), 2);
        }
        // Full: each new kind replaced the rarest, greatest older one.
        assert_eq!(mix.kinds().len(), MIX_KINDS);
        assert!(mix.kinds().contains(&(kind(1, MIX_KINDS as u32 + 10), 2)));
        assert!(mix.kinds().contains(&(kind(1, 1), 2)));
        // Past twice the window, every count halves.
        let mut mix = Mix::counting();
        mix.add(kind(1, 1000), 2 * MIX_WINDOW);
        mix.add(kind(0, 0), 1);
        assert_eq!(mix.kinds(), &[(kind(1, 1000), MIX_WINDOW)]);
    }

    #[test]
    fn the_same_submissions_give_the_same_tally() {
        let run = || {
            let mut mix = Mix::counting();
            for i in 0..20_000u32 {
                mix.add(kind(1 + i % 3, 100 * (i % 11)), u64::from(1 + i % 5));
            }
            mix
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b);
        let total: u64 = a.kinds().iter().map(|(_, c)| c).sum();
        assert!(total <= 2 * MIX_WINDOW, "{total}");
    }
}
