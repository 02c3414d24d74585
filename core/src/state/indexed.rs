//! The state together with the indexes the planner derives from it.
//!
//! The free-capacity index (`free`), the GPUs each owner contributes and
//! the sums of what placed jobs hold (`holdings`) are functions of the
//! replicated state. They live here, beside the [`State`] and not in it,
//! so that the state's equality, its copies and its serialized form are
//! about the replicated data alone. (Two states with equal data are
//! therefore equal whatever indexes anyone keeps for them; `Indexed`
//! itself has no equality, as it would only repeat the state's.)
//!
//! Each index is built when first asked for and then kept exact by
//! [`Indexed::apply`] from what the command reached
//! ([`Command::reach`]): a command that names a job updates what that job
//! changed; one that changes nodes drops them all, to be rebuilt when
//! next asked. Whoever holds the applied state (a replica's state machine,
//! the simulator) holds an `Indexed`; a snapshot copies only the state.

use std::ops::Deref;
use std::sync::OnceLock;

use super::apply::Reach;
use super::free::{self, Contributed, FreeCapacity};
use super::holdings::{self, Holding, Holdings};
use super::{Applied, Command, Millis, State};

/// A state and its derived indexes. Reads of the state go through
/// [`Indexed::state`] (or `Deref`); changes only through
/// [`Indexed::apply`], which keeps the indexes exact.
#[derive(Clone, Debug, Default)]
pub struct Indexed {
    state: State,
    indexes: Indexes,
}

/// The planner's indexes, each built on first use. A `OnceLock` so that
/// readers sharing the state (under a read lock) can build one.
#[derive(Clone, Debug, Default)]
struct Indexes {
    free: OnceLock<FreeCapacity>,
    contributed: OnceLock<Contributed>,
    holdings: OnceLock<Holdings>,
}

/// What `Indexed::apply` notes of a job before the command changes it.
#[derive(Default)]
struct Before {
    held: Option<Holding>,
    nodes: Vec<String>,
}

impl Indexed {
    /// `state` with no index built yet.
    pub fn new(state: State) -> Indexed {
        Indexed {
            state,
            indexes: Indexes::default(),
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn into_state(self) -> State {
        self.state
    }

    /// [`State::apply`], keeping the built indexes exact.
    pub fn apply(&mut self, cmd: Command, at: Millis) -> Applied {
        let reach = cmd.reach();
        let before = self.before(reach);
        let applied = self.state.apply(cmd, at);
        if applied.is_ok() {
            self.refresh(reach, before);
        }
        applied
    }

    /// What the job a command names holds now and the nodes of its tasks,
    /// for the indexes that are built: `apply` may archive the job once it
    /// is final, and then only this tells which nodes it gave GPUs back on.
    fn before(&self, reach: Reach) -> Before {
        let Reach::Job(id) = reach else {
            return Before::default();
        };
        let Some(job) = self.state.job(id) else {
            return Before::default();
        };
        Before {
            held: self
                .indexes
                .holdings
                .get()
                .and_then(|_| holdings::holding(job)),
            nodes: match self.indexes.free.get() {
                Some(_) => job.tasks.iter().map(|t| t.node.clone()).collect(),
                None => vec![],
            },
        }
    }

    fn refresh(&mut self, reach: Reach, before: Before) {
        let id = match reach {
            Reach::Nothing => return,
            Reach::Nodes => {
                self.indexes = Indexes::default();
                return;
            }
            Reach::Job(id) => id,
        };
        let job = self.state.job(id);
        if let Some(sums) = self.indexes.holdings.get_mut() {
            let after = job.and_then(holdings::holding);
            holdings::replace(sums, before.held.as_ref(), after.as_ref());
        }
        // A job's GPUs change no node's contribution, only free capacity:
        // on the nodes it held before and those it holds now.
        if let Some(index) = self.indexes.free.get_mut() {
            let now = job.into_iter().flat_map(|j| j.tasks.iter());
            let fresh = before
                .nodes
                .iter()
                .map(String::as_str)
                .chain(now.map(|t| t.node.as_str()))
                .all(|name| self.state.node(name).is_some_and(|n| index.refresh(n)));
            if !fresh {
                // A node joined, left or changed its GPUs: rebuilt when
                // next asked.
                self.indexes.free = OnceLock::new();
            }
        }
    }

    /// Free GPU capacity by bucket, as the planner reads it.
    pub fn free_capacity(&self) -> &FreeCapacity {
        self.indexes
            .free
            .get_or_init(|| FreeCapacity::build(self.state.nodes()))
    }

    /// Usable GPUs of ready nodes per owner label and GPU class.
    pub fn contributed(&self) -> &Contributed {
        self.indexes
            .contributed
            .get_or_init(|| free::contributed(self.state.nodes()))
    }

    /// What each tenant's placed jobs hold, summed.
    pub fn holdings(&self) -> &Holdings {
        self.indexes
            .holdings
            .get_or_init(|| holdings::sum(self.state.placed_jobs()))
    }

    /// Whether the indexes built so far equal ones built afresh.
    #[cfg(test)]
    pub fn kept_indexes_are_exact(&self) -> bool {
        let s = &self.state;
        let i = &self.indexes;
        i.free
            .get()
            .is_none_or(|f| *f == FreeCapacity::build(s.nodes()))
            && i.contributed
                .get()
                .is_none_or(|c| *c == free::contributed(s.nodes()))
            && i.holdings
                .get()
                .is_none_or(|h| *h == holdings::sum(s.placed_jobs()))
            && s.host_held_is_exact()
    }
}

impl Deref for Indexed {
    type Target = State;

    fn deref(&self) -> &State {
        &self.state
    }
}

impl From<State> for Indexed {
    fn from(state: State) -> Indexed {
        Indexed::new(state)
    }
}
