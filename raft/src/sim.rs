//! A deterministic in-memory cluster driven through edupool's own step
//! (`step::Core`, the code the driver runs in production): replicas over
//! `MemStorage`, a simulated network that drops, delays (and so reorders)
//! and partitions messages, all in one thread with a seeded RNG. Each
//! replica applies real commands to its own `State`. Checked throughout:
//! at most one leader per term; at the end: committed logs agree, no
//! acknowledged command is lost, and every replica holds the same state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::RwLock;

use edupool_core::state::{Command, Outcome};
use raft::prelude::Message;
use raft::storage::MemStorage;
use raft::{RawNode, StateRole, Storage as _};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::machine::Machine;
use crate::step::{raft_config, Action, Core, ProposeError};
use crate::storage::Peers;

struct Node {
    core: Core<MemStorage>,
    store: MemStorage,
    machine: RwLock<Machine>,
}

struct Sim {
    nodes: BTreeMap<u64, Node>,
    /// (deliver at step, message)
    in_flight: Vec<(u64, Message)>,
    /// Directed links that lose everything.
    cut: BTreeSet<(u64, u64)>,
    drop_rate: f64,
    max_delay: u64,
    step: u64,
    rng: StdRng,
    /// Term -> the replica that led it.
    leaders: HashMap<u64, u64>,
    /// (replica, proposal id) -> the tenant it creates.
    proposed: HashMap<(u64, u64), String>,
    /// Tenant -> the answer its proposal got.
    answers: HashMap<String, Result<(), String>>,
    /// (replica, read id) -> its answer, once given.
    reads: HashMap<(u64, u64), Option<Result<(), String>>>,
}

impl Sim {
    fn new(ids: &[u64], seed: u64) -> Sim {
        let logger = crate::logger::logger();
        let nodes = ids
            .iter()
            .map(|&id| {
                let store = MemStorage::new_with_conf_state((ids.to_vec(), vec![]));
                let node =
                    RawNode::new(&raft_config(id, 0, 10, 2), store.clone(), &logger).unwrap();
                let node = Node {
                    core: Core::new(node, Peers::new(), id << 32),
                    store,
                    machine: RwLock::new(Machine::default()),
                };
                (id, node)
            })
            .collect();
        Sim {
            nodes,
            in_flight: Vec::new(),
            cut: BTreeSet::new(),
            drop_rate: 0.0,
            max_delay: 0,
            step: 0,
            rng: StdRng::seed_from_u64(seed),
            leaders: HashMap::new(),
            proposed: HashMap::new(),
            answers: HashMap::new(),
            reads: HashMap::new(),
        }
    }

    fn isolate(&mut self, id: u64) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for other in ids.into_iter().filter(|o| *o != id) {
            self.cut.insert((id, other));
            self.cut.insert((other, id));
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    fn leaders(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.core.is_leader())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Election safety: no two replicas ever lead the same term.
    fn check_leaders(&mut self) {
        for (id, n) in &self.nodes {
            if n.core.is_leader() {
                let term = n.core.raft().term;
                let first = *self.leaders.entry(term).or_insert(*id);
                assert_eq!(first, *id, "two leaders in term {term}");
            }
        }
    }

    /// One round: tick every node, handle every Ready, deliver the
    /// messages that are due.
    fn round(&mut self) {
        self.step += 1;
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in &ids {
            self.nodes.get_mut(id).unwrap().core.tick();
            self.handle_ready(*id);
        }
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|(at, _)| *at <= self.step);
        self.in_flight = waiting;
        for (_, m) in due {
            let to = m.to;
            if let Some(n) = self.nodes.get_mut(&to) {
                n.core.step(m);
            }
            self.handle_ready(to);
        }
        self.check_leaders();
    }

    fn run(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.round();
        }
    }

    /// The driver's `on_ready`, with memory for the disk and the network.
    fn handle_ready(&mut self, id: u64) {
        let Some((mut handling, actions)) = self.nodes.get_mut(&id).unwrap().core.ready() else {
            return;
        };
        self.perform(id, actions);
        let n = self.nodes.get_mut(&id).unwrap();
        let actions = n.core.apply(&mut handling, &n.machine).unwrap();
        self.perform(id, actions);
        let n = self.nodes.get_mut(&id).unwrap();
        let actions = n.core.advance(handling, &n.machine).unwrap();
        self.perform(id, actions);
    }

    fn perform(&mut self, id: u64, actions: Vec<Action>) {
        for action in actions {
            let store = self.nodes[&id].store.clone();
            match action {
                Action::Send(messages) => messages.into_iter().for_each(|m| self.transmit(m)),
                Action::Persist {
                    entries,
                    hard_state,
                } => {
                    store.wl().append(&entries).unwrap();
                    if let Some(hs) = hard_state {
                        store.wl().set_hardstate(hs);
                    }
                }
                Action::SetCommit(commit) => store.wl().mut_hard_state().set_commit(commit),
                Action::InstallSnapshot { snapshot, .. } => {
                    store.wl().apply_snapshot(snapshot).unwrap()
                }
                Action::SaveConfState { conf, .. } => store.wl().set_conf_state(conf),
                Action::Answer { id: p, result } => {
                    if let Some(name) = self.proposed.remove(&(id, p)) {
                        let result = result.map(|_| ()).map_err(|e| format!("{e:?}"));
                        self.answers.insert(name, result);
                    }
                }
                Action::ReadDone { id: r, result } => {
                    let result = result.map_err(|e| format!("{e:?}"));
                    self.reads.insert((id, r), Some(result));
                }
                Action::Leadership(_)
                | Action::Route(_)
                | Action::Publish(_)
                | Action::Inconsistent
                | Action::Applied(_) => {}
            }
        }
    }

    fn transmit(&mut self, m: Message) {
        if self.cut.contains(&(m.from, m.to)) || self.rng.gen_bool(self.drop_rate) {
            return;
        }
        let delay = if self.max_delay == 0 {
            1
        } else {
            self.rng.gen_range(1..=self.max_delay)
        };
        self.in_flight.push((self.step + delay, m));
    }

    /// Proposes creating tenant `name` on replica `id`, as the driver does.
    fn propose(&mut self, id: u64, name: &str) -> Result<(), ProposeError> {
        let cmd = Command::CreateTenant {
            name: name.into(),
            token_hash: format!("h-{name}"),
        };
        let at = self.step as i64;
        let p = self.nodes.get_mut(&id).unwrap().core.propose(cmd, at)?;
        self.proposed.insert((id, p), name.to_string());
        self.handle_ready(id);
        Ok(())
    }

    fn read_index(&mut self, id: u64) -> (u64, u64) {
        let r = self.nodes.get_mut(&id).unwrap().core.read_index();
        self.reads.insert((id, r), None);
        self.handle_ready(id);
        (id, r)
    }

    fn wait_for_leader(&mut self, among: &[u64]) -> u64 {
        for _ in 0..2_000 {
            self.round();
            let l: Vec<u64> = self
                .leaders()
                .into_iter()
                .filter(|id| among.contains(id))
                .collect();
            if l.len() == 1 {
                return l[0];
            }
        }
        panic!("no single leader among {among:?}");
    }

    fn tenants(&self, id: u64) -> BTreeSet<String> {
        let m = self.nodes[&id].machine.read().unwrap();
        m.state.tenants().map(|t| t.name.clone()).collect()
    }

    /// Committed logs agree on their common prefix, and every command
    /// acknowledged to its proposer is in every replica's state.
    fn assert_safe(&self) {
        let logs: Vec<_> = self
            .nodes
            .values()
            .map(|n| {
                let commit = n.store.rl().hard_state().commit;
                let first = n.store.first_index().unwrap();
                let log = n.store.entries(
                    first,
                    commit + 1,
                    None,
                    raft::GetEntriesContext::empty(false),
                );
                log.unwrap()
            })
            .collect();
        for a in &logs {
            for b in &logs {
                let n = a.len().min(b.len());
                assert_eq!(a[..n], b[..n], "replicas committed different logs");
            }
        }
        for (name, answer) in &self.answers {
            if answer.is_ok() {
                for id in self.nodes.keys() {
                    assert!(self.tenants(*id).contains(name), "replica {id} lost {name}");
                }
            }
        }
    }

    /// Once caught up, every replica applied the same log to the same state.
    fn assert_equal_states(&self) {
        let mut machines = self.nodes.values().map(|n| n.machine.read().unwrap());
        let first = machines.next().unwrap();
        for m in machines {
            assert_eq!(
                m.applied, first.applied,
                "replicas applied up to different indexes"
            );
            assert!(
                m.state.state() == first.state.state(),
                "replicas hold different states"
            );
        }
    }
}

#[test]
fn replicates_through_drops_and_delays() {
    for seed in 0..5 {
        let mut sim = Sim::new(&[1, 2, 3], seed);
        sim.drop_rate = 0.2;
        sim.max_delay = 3;
        let mut leader = sim.wait_for_leader(&[1, 2, 3]);
        let mut accepted = 0;
        for i in 0..50u32 {
            if sim.propose(leader, &format!("t{i}")).is_err() {
                leader = sim.wait_for_leader(&[1, 2, 3]);
                continue;
            }
            accepted += 1;
            sim.run(3);
        }
        sim.drop_rate = 0.0;
        sim.run(200);
        sim.assert_safe();
        sim.assert_equal_states();
        assert!(
            sim.tenants(1).len() >= accepted * 8 / 10,
            "seed {seed}: most proposals commit despite 20% loss"
        );
    }
}

#[test]
fn a_partitioned_leader_steps_down_and_loses_only_uncommitted_entries() {
    let mut sim = Sim::new(&[1, 2, 3], 7);
    let old = sim.wait_for_leader(&[1, 2, 3]);
    sim.propose(old, "committed").unwrap();
    sim.run(20);
    assert_eq!(sim.answers["committed"], Ok(()));
    assert!(sim.nodes.keys().all(|id| sim.tenants(*id).len() == 1));

    sim.isolate(old);
    // The isolated leader still takes a proposal and a read, but can
    // neither commit nor confirm them.
    sim.propose(old, "lost").unwrap();
    let read = sim.read_index(old);
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != old).collect();
    let new = sim.wait_for_leader(&rest);
    assert_ne!(new, old);
    // check_quorum: the old leader notices it lost its quorum and steps
    // down, which refuses the read it could not confirm.
    sim.run(50);
    assert_ne!(sim.nodes[&old].core.raft().state, StateRole::Leader);
    let refused = sim.reads[&read].clone().expect("the read is answered");
    assert!(refused.unwrap_err().starts_with("NotLeader"));
    sim.propose(new, "after").unwrap();
    sim.run(20);

    sim.heal();
    sim.run(100);
    sim.assert_safe();
    sim.assert_equal_states();
    // The lost entry's slot went to the new leader's: its proposer hears
    // it was dropped (never applied, safe to retry), and no replica has it.
    assert!(sim.answers["lost"]
        .clone()
        .unwrap_err()
        .starts_with("Dropped"));
    for id in [1, 2, 3] {
        let want: BTreeSet<String> = ["committed", "after"].map(String::from).into();
        assert_eq!(sim.tenants(id), want);
    }
}

#[test]
fn a_minority_partition_keeps_serving_the_majority_and_a_majority_cut_stops_writes() {
    let mut sim = Sim::new(&[1, 2, 3, 4, 5], 11);
    let leader = sim.wait_for_leader(&[1, 2, 3, 4, 5]);
    // Cut two followers away: the majority keeps committing and reading.
    let followers: Vec<u64> = (1..=5).filter(|i| *i != leader).collect();
    sim.isolate(followers[0]);
    sim.isolate(followers[1]);
    sim.propose(leader, "a").unwrap();
    sim.run(30);
    assert_eq!(sim.answers["a"], Ok(()));
    // A leader answers reads once it has committed in its term.
    let read = sim.read_index(leader);
    sim.run(10);
    assert_eq!(sim.reads[&read], Some(Ok(())));
    // Cut a third: no quorum, nothing commits and the leader steps down.
    sim.isolate(followers[2]);
    sim.propose(leader, "b").unwrap();
    sim.run(100);
    assert!(!sim.answers.contains_key("b") || sim.answers["b"].is_err());
    assert_eq!(sim.tenants(leader).len(), 1);
    assert_ne!(sim.nodes[&leader].core.raft().state, StateRole::Leader);
    sim.heal();
    let l = sim.wait_for_leader(&[1, 2, 3, 4, 5]);
    sim.propose(l, "c").unwrap();
    sim.run(100);
    sim.assert_safe();
    sim.assert_equal_states();
    assert_eq!(sim.answers["c"], Ok(()));
    assert!(sim.nodes.keys().all(|id| sim.tenants(*id).contains("c")));
}

/// One replica alone: a command is answered only in `advance`, after the
/// `Persist` that holds its entry, and its answer follows its effects.
#[test]
fn a_proposal_is_answered_only_after_its_entry_is_persisted() {
    let store = MemStorage::new_with_conf_state((vec![1], vec![]));
    let node = RawNode::new(
        &raft_config(1, 0, 10, 2),
        store.clone(),
        &crate::logger::logger(),
    );
    let mut core = Core::new(node.unwrap(), Peers::new(), 0);
    let machine = RwLock::new(Machine::default());
    let persist = |actions: &[Action]| {
        for a in actions {
            if let Action::Persist {
                entries,
                hard_state,
            } = a
            {
                store.wl().append(entries).unwrap();
                if let Some(hs) = hard_state {
                    store.wl().set_hardstate(hs.clone());
                }
            }
        }
    };
    core.campaign();
    while let Some((mut h, _)) = core.ready() {
        persist(&core.apply(&mut h, &machine).unwrap());
        core.advance(h, &machine).unwrap();
    }
    assert!(core.is_leader());

    let cmd = Command::CreateTenant {
        name: "zju".into(),
        token_hash: "h".into(),
    };
    let id = core.propose(cmd, 1).unwrap();
    let (mut h, first) = core.ready().unwrap();
    assert!(first.is_empty(), "{first:?}");
    let applied = core.apply(&mut h, &machine).unwrap();
    let [Action::Persist { entries, .. }] = &applied[..] else {
        panic!("only the persist comes before it: {applied:?}");
    };
    assert_eq!(entries.len(), 1);
    persist(&applied);
    let advanced = core.advance(h, &machine).unwrap();
    assert!(matches!(advanced[0], Action::SetCommit(c) if c == entries[0].index));
    let answer = advanced.iter().position(|a| {
        matches!(a, Action::Answer { id: i, result: Ok(Outcome::Tenant(t)) } if *i == id && t == "zju")
    });
    let publish = advanced
        .iter()
        .position(|a| matches!(a, Action::Publish(_)));
    assert!(answer.is_some(), "{advanced:?}");
    assert!(publish.is_none() || publish < answer, "{advanced:?}");
    assert_eq!(machine.read().unwrap().applied, entries[0].index);
    assert!(machine
        .read()
        .unwrap()
        .state
        .tenants()
        .any(|t| t.name == "zju"));
}
