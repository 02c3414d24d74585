//! A deterministic in-memory cluster over the raft-rs core, with the same
//! raft settings the driver uses: three `RawNode`s over `MemStorage`, a
//! simulated network that drops, delays and partitions messages, all in
//! one thread with a seeded RNG. Fast coverage of the edge cases the
//! process tests can only hit by chance.

use std::collections::{BTreeSet, HashMap};

use raft::prelude::{Entry, EntryType, Message};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Sim {
    nodes: HashMap<u64, RawNode<MemStorage>>,
    /// (deliver at step, message)
    in_flight: Vec<(u64, Message)>,
    /// Committed normal entries each node applied, in order.
    applied: HashMap<u64, Vec<Vec<u8>>>,
    /// Directed links that lose everything.
    cut: BTreeSet<(u64, u64)>,
    drop_rate: f64,
    max_delay: u64,
    step: u64,
    rng: StdRng,
}

impl Sim {
    fn new(ids: &[u64], seed: u64) -> Sim {
        let logger = super::logger::logger();
        let nodes = ids
            .iter()
            .map(|&id| {
                let storage = MemStorage::new_with_conf_state((ids.to_vec(), vec![]));
                let config = Config {
                    id,
                    election_tick: 10,
                    heartbeat_tick: 2,
                    check_quorum: true,
                    pre_vote: true,
                    ..Default::default()
                };
                (id, RawNode::new(&config, storage, &logger).unwrap())
            })
            .collect();
        Sim {
            nodes,
            in_flight: Vec::new(),
            applied: ids.iter().map(|&id| (id, Vec::new())).collect(),
            cut: BTreeSet::new(),
            drop_rate: 0.0,
            max_delay: 0,
            step: 0,
            rng: StdRng::seed_from_u64(seed),
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
        let mut l: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.raft.state == StateRole::Leader)
            .map(|(id, _)| *id)
            .collect();
        l.sort();
        l
    }

    /// One round: tick every node, handle every Ready (in raft-rs's order),
    /// deliver the messages that are due.
    fn round(&mut self) {
        self.step += 1;
        let mut ids: Vec<u64> = self.nodes.keys().copied().collect();
        ids.sort();
        for id in &ids {
            self.nodes.get_mut(id).unwrap().tick();
            self.handle_ready(*id);
        }
        let due: Vec<Message>;
        (due, self.in_flight) = {
            let (d, w): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
                .into_iter()
                .partition(|(at, _)| *at <= self.step);
            (d.into_iter().map(|(_, m)| m).collect(), w)
        };
        for m in due {
            let to = m.to;
            if let Some(n) = self.nodes.get_mut(&to) {
                let _ = n.step(m);
            }
            self.handle_ready(to);
        }
    }

    fn run(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.round();
        }
    }

    fn handle_ready(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        if !node.has_ready() {
            return;
        }
        let mut ready = node.ready();
        let mut out = ready.take_messages();
        let mut applied = Vec::new();
        applied.extend(ready.take_committed_entries());
        let store = node.store().clone();
        store.wl().append(ready.entries()).unwrap();
        if let Some(hs) = ready.hs() {
            store.wl().set_hardstate(hs.clone());
        }
        out.extend(ready.take_persisted_messages());
        let mut light = node.advance(ready);
        if let Some(c) = light.commit_index() {
            store.wl().mut_hard_state().set_commit(c);
        }
        out.extend(light.take_messages());
        applied.extend(light.take_committed_entries());
        node.advance_apply();
        self.record(id, applied);
        for m in out {
            self.transmit(m);
        }
    }

    fn record(&mut self, id: u64, entries: Vec<Entry>) {
        let log = self.applied.get_mut(&id).unwrap();
        for e in entries {
            if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                log.push(e.data.to_vec());
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

    fn propose(&mut self, id: u64, data: &[u8]) -> bool {
        let ok = self
            .nodes
            .get_mut(&id)
            .unwrap()
            .propose(vec![], data.to_vec())
            .is_ok();
        self.handle_ready(id);
        ok
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

    /// Applied sequences must be prefixes of each other.
    fn assert_consistent(&self) {
        let logs: Vec<&Vec<Vec<u8>>> = self.applied.values().collect();
        for a in &logs {
            for b in &logs {
                let n = a.len().min(b.len());
                assert_eq!(a[..n], b[..n], "replicas applied different logs");
            }
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
        let mut accepted = Vec::new();
        for i in 0..50u32 {
            let data = i.to_le_bytes();
            if !sim.propose(leader, &data) {
                leader = sim.wait_for_leader(&[1, 2, 3]);
                continue;
            }
            accepted.push(data.to_vec());
            sim.run(3);
        }
        sim.drop_rate = 0.0;
        sim.run(200);
        sim.assert_consistent();
        let applied = &sim.applied[&1];
        assert!(
            applied.len() >= accepted.len() * 8 / 10,
            "seed {seed}: most proposals commit despite 20% loss"
        );
        assert!(sim.applied.values().all(|l| l == applied), "all caught up");
    }
}

#[test]
fn a_partitioned_leader_steps_down_and_loses_only_uncommitted_entries() {
    let mut sim = Sim::new(&[1, 2, 3], 7);
    let old = sim.wait_for_leader(&[1, 2, 3]);
    assert!(sim.propose(old, b"committed"));
    sim.run(20);
    assert!(sim.applied.values().all(|l| l.len() == 1));

    sim.isolate(old);
    // The isolated leader still takes a proposal, but cannot commit it.
    assert!(sim.propose(old, b"lost"));
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != old).collect();
    let new = sim.wait_for_leader(&rest);
    assert_ne!(new, old);
    // check_quorum: the old leader notices it lost its quorum and steps down.
    sim.run(50);
    assert_ne!(sim.nodes[&old].raft.state, StateRole::Leader);
    assert!(sim.propose(new, b"after"));
    sim.run(20);

    sim.heal();
    sim.run(100);
    sim.assert_consistent();
    for log in sim.applied.values() {
        assert_eq!(log, &vec![b"committed".to_vec(), b"after".to_vec()]);
    }
}

#[test]
fn a_minority_partition_keeps_serving_the_majority_and_a_majority_cut_stops_writes() {
    let mut sim = Sim::new(&[1, 2, 3, 4, 5], 11);
    let leader = sim.wait_for_leader(&[1, 2, 3, 4, 5]);
    // Cut two followers away: the majority keeps committing.
    let followers: Vec<u64> = (1..=5).filter(|i| *i != leader).collect();
    sim.isolate(followers[0]);
    sim.isolate(followers[1]);
    assert!(sim.propose(leader, b"a"));
    sim.run(30);
    assert_eq!(sim.applied[&leader].len(), 1);
    // Cut a third: no quorum, nothing commits and the leader steps down.
    sim.isolate(followers[2]);
    sim.propose(leader, b"b");
    sim.run(100);
    assert_eq!(sim.applied[&leader].len(), 1);
    assert_ne!(sim.nodes[&leader].raft.state, StateRole::Leader);
    sim.heal();
    let l = sim.wait_for_leader(&[1, 2, 3, 4, 5]);
    assert!(sim.propose(l, b"c"));
    sim.run(100);
    sim.assert_consistent();
    assert!(sim
        .applied
        .values()
        .all(|log| log.last() == Some(&b"c".to_vec())));
}
