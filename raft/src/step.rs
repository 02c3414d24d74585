//! The I/O-free step of a replica: raft-rs's `RawNode` and the
//! bookkeeping around it (which proposal waits at which index, which
//! read waits for which index), driven by calls that touch no disk, no
//! network and no clock and return the [`Action`]s the caller performs,
//! in order.
//!
//! A `Ready` is handled in three calls, in the order raft-rs documents:
//! [`Core::ready`] (who leads; the messages a leader sends before
//! persisting), [`Core::apply`] (the snapshot to install, the ReadIndex
//! results, the committed entries, applied to the state machine here,
//! then what to persist and the messages to send once it is) and, after
//! the caller has persisted, [`Core::advance`] (the commit index, what
//! that commits, applied too, and the reads it releases). The driver
//! performs the actions against redb and the peers' links; the in-memory
//! cluster test (`sim`) performs them against `MemStorage` and a
//! simulated network, so it tests this code, not a copy of it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::RwLock;
use std::time::Duration;

use edupool_core::state::{Applied, Command, Effect, Indexed, Millis, Outcome, Rejection};
use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, HardState, Message,
    Snapshot,
};
use raft::{RawNode, StateRole, Storage};
use thiserror::Error;

use crate::machine::{apply_entry, LogEntry, Machine};
use crate::snapshot::SnapshotEnvelope;
use crate::storage::{Peers, StorageError};

#[derive(Debug, Error)]
pub enum ProposeError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("this scheduler replica is not the leader")]
    NotLeader {
        leader: Option<u64>,
        /// Where the leader serves, when known.
        address: Option<String>,
    },
    /// The command's log position went to another leader's entry: it was
    /// never applied, so it is safe to retry.
    #[error("leadership changed before the command was committed; it was not applied")]
    Dropped {
        leader: Option<u64>,
        address: Option<String>,
    },
    /// A linearizable read on the leader was not confirmed by a quorum in
    /// time: the leader is overloaded or cut off from its peers.
    #[error("the read could not be confirmed by a quorum within {waited:?}")]
    ReadUnconfirmed { waited: Duration },
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("the scheduler is shutting down")]
    Stopped,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    pub is_leader: bool,
    pub leader_id: Option<u64>,
    pub term: u64,
}

/// A membership or leadership request from an operator.
#[derive(Debug, Clone)]
pub enum MembershipChange {
    AddLearner { id: u64, address: String },
    Promote { id: u64 },
    Remove { id: u64 },
}

/// The effects of one applied log entry, published to the edges with the
/// entry's index (its revision). `snapshot`: a snapshot up to `index` was
/// installed instead of entries; `effects` is then empty.
#[derive(Debug, PartialEq)]
pub struct Published {
    pub index: u64,
    pub effects: Vec<Effect>,
    pub snapshot: bool,
}

impl std::ops::Deref for Published {
    type Target = Vec<Effect>;

    fn deref(&self) -> &Vec<Effect> {
        &self.effects
    }
}

/// What the caller of a step does, in the order given.
#[derive(Debug)]
pub enum Action {
    /// Tell the edges who leads now.
    Leadership(Leadership),
    /// Hand messages to the peers' links; report each peer that could not
    /// take them with [`Core::unreachable`].
    Send(Vec<Message>),
    /// Make `snapshot` the store's latest, with the peers' addresses it
    /// carries, and route to those peers (the state machine already
    /// holds its state).
    InstallSnapshot { snapshot: Snapshot, peers: Peers },
    /// A membership change was applied: store the configuration and the
    /// peers' addresses.
    SaveConfState { conf: ConfState, peers: Peers },
    /// Route messages to these peers from now on.
    Route(Peers),
    /// What an applied command produced, for the edges.
    Publish(Published),
    /// The result of proposal `id`.
    Answer {
        id: u64,
        result: Result<Outcome, ProposeError>,
    },
    /// The result of ReadIndex request `id`: on success the state machine
    /// holds everything committed when it was asked.
    ReadDone {
        id: u64,
        result: Result<(), ProposeError>,
    },
    /// Write these entries and this hard state durably, before
    /// [`Core::advance`].
    Persist {
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
    },
    /// Record the commit index (the entries it covers are persisted).
    SetCommit(u64),
    /// A committed entry was refused as inconsistent (and logged with its
    /// index): count it.
    Inconsistent,
    /// These committed entries were applied, in this order: hand them to
    /// whoever keeps a copy of the state (`feed`).
    Applied(Vec<Entry>),
}

/// A `Ready` being handled, from [`Core::ready`] to [`Core::advance`].
pub struct Handling(raft::Ready);

/// The raft node of one replica and what waits on it.
pub struct Core<S: Storage> {
    node: RawNode<S>,
    /// The peers' addresses, as the log last set them.
    peers: Peers,
    /// Proposal id -> the log index it went to.
    pending: HashMap<u64, u64>,
    /// Log index -> proposal id, to find proposals whose slot was lost.
    pending_at: BTreeMap<u64, u64>,
    /// ReadIndex requests not yet confirmed by a quorum.
    reads: HashSet<u64>,
    /// Confirmed reads waiting for their index to be applied: (index, id).
    ready_reads: Vec<(u64, u64)>,
    next_id: u64,
}

/// The raft settings every replica runs with.
pub fn raft_config(
    id: u64,
    applied: u64,
    election_ticks: usize,
    heartbeat_ticks: usize,
) -> raft::Config {
    raft::Config {
        id,
        applied,
        election_tick: election_ticks,
        heartbeat_tick: heartbeat_ticks,
        max_inflight_msgs: 256,
        max_size_per_msg: 1024 * 1024,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    }
}

impl<S: Storage> Core<S> {
    /// `first_id` seeds the ids of proposals and reads; ids only need to
    /// differ from those of this replica's earlier runs still in the log.
    pub fn new(node: RawNode<S>, peers: Peers, first_id: u64) -> Core<S> {
        Core {
            node,
            peers,
            pending: HashMap::new(),
            pending_at: BTreeMap::new(),
            reads: HashSet::new(),
            ready_reads: Vec::new(),
            next_id: first_id,
        }
    }

    /// The raft state machine, for status and snapshot metadata.
    pub fn raft(&self) -> &raft::Raft<S> {
        &self.node.raft
    }

    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    pub fn tick(&mut self) {
        self.node.tick();
    }

    /// Starts an election at once (a one-voter cluster elects itself).
    pub fn campaign(&mut self) {
        let _ = self.node.campaign();
    }

    /// A message from a peer.
    pub fn step(&mut self, m: Message) {
        // Messages from replicas not in the configuration are still stepped:
        // raft-rs ignores what it must, and a joining replica needs them.
        if let Err(e) = self.node.step(m) {
            tracing::debug!("raft refused a peer message: {e}");
        }
    }

    /// Messages for `id` could not be sent.
    pub fn unreachable(&mut self, id: u64) {
        self.node.report_unreachable(id);
    }

    /// A snapshot stream to `to` ended.
    pub fn snapshot_sent(&mut self, to: u64, ok: bool) {
        let status = if ok {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.node.report_snapshot(to, status);
    }

    pub fn not_leader(&self) -> ProposeError {
        let leader = Some(self.node.raft.leader_id).filter(|id| *id != 0);
        ProposeError::NotLeader {
            leader,
            address: leader.and_then(|id| self.peers.get(&id).cloned()),
        }
    }

    fn dropped(&self) -> ProposeError {
        match self.not_leader() {
            ProposeError::NotLeader { leader, address } => {
                ProposeError::Dropped { leader, address }
            }
            other => other,
        }
    }

    fn next_id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// Appends `cmd`, stamped `at`, to the log; its result comes as an
    /// [`Action::Answer`] with the id returned.
    pub fn propose(&mut self, cmd: Command, at: Millis) -> Result<u64, ProposeError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let id = self.next_id();
        match self
            .node
            .propose(id.to_le_bytes().to_vec(), LogEntry::encode(cmd, at))
        {
            Ok(()) => Ok(self.track(id)),
            Err(_) => Err(self.not_leader()),
        }
    }

    /// Remembers a proposal just appended at the log's last index.
    fn track(&mut self, id: u64) -> u64 {
        let index = self.node.raft.raft_log.last_index();
        self.pending.insert(id, index);
        self.pending_at.insert(index, id);
        id
    }

    /// Asks a quorum to confirm the commit index; an
    /// [`Action::ReadDone`] with the id returned follows once it is
    /// confirmed and applied, or refused.
    pub fn read_index(&mut self) -> u64 {
        let ctx = self.next_id();
        self.reads.insert(ctx);
        self.node.read_index(ctx.to_le_bytes().to_vec());
        ctx
    }

    pub fn transfer_leader(&mut self, to: u64) -> Result<(), ProposeError> {
        if !self.is_leader() {
            Err(self.not_leader())
        } else if !self.node.raft.prs().conf().voters().contains(to) {
            Err(ProposeError::Membership(format!(
                "replica {to} is not a voter of this cluster"
            )))
        } else {
            self.node.transfer_leader(to);
            Ok(())
        }
    }

    /// Proposes a membership change; its result comes as an
    /// [`Action::Answer`] with the id returned.
    pub fn propose_membership(&mut self, change: MembershipChange) -> Result<u64, ProposeError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let conf = self.node.raft.prs().conf();
        let refuse = |why: String| Err(ProposeError::Membership(why));
        let (node_id, change_type, context) = match change {
            MembershipChange::AddLearner { id, .. } if conf.voters().contains(id) => {
                return refuse(format!("replica {id} is already a voter"));
            }
            MembershipChange::AddLearner { id, address } => {
                (id, ConfChangeType::AddLearnerNode, address)
            }
            MembershipChange::Promote { id } => (id, ConfChangeType::AddNode, String::new()),
            MembershipChange::Remove { id }
                if !conf.voters().contains(id) && !conf.learners().contains(&id) =>
            {
                return refuse(format!("replica {id} is not a member"));
            }
            MembershipChange::Remove { id }
                if conf.voters().ids().len() == 1 && conf.voters().contains(id) =>
            {
                return refuse("cannot remove the last voter".into());
            }
            MembershipChange::Remove { id } => (id, ConfChangeType::RemoveNode, String::new()),
        };
        let mut cc = ConfChange::default();
        cc.set_change_type(change_type);
        cc.node_id = node_id;
        cc.context = context.into_bytes().into();
        let id = self.next_id();
        match self.node.propose_conf_change(id.to_le_bytes().to_vec(), cc) {
            Ok(()) => Ok(self.track(id)),
            Err(e) => refuse(format!(
                "{e} (one membership change at a time; retry when the last one is applied)"
            )),
        }
    }

    /// Starts handling a `Ready`, if raft has one: a change of leader,
    /// and the messages a leader may send before persisting (raft thesis
    /// 10.2.1). Perform them, then call [`Core::apply`].
    pub fn ready(&mut self) -> Option<(Handling, Vec<Action>)> {
        if !self.node.has_ready() {
            return None;
        }
        let mut ready = self.node.ready();
        let mut actions = Vec::new();
        if let Some(ss) = ready.ss() {
            self.role_changed(ss.raft_state, ss.leader_id, &mut actions);
        }
        send(&mut actions, ready.take_messages());
        Some((Handling(ready), actions))
    }

    /// The rest of a `Ready` before its persist: installs a snapshot from
    /// the leader and applies the committed entries to `machine`; returns
    /// the actions that follow, ending with what to persist and the
    /// messages to send once it is. Perform them, then call
    /// [`Core::advance`].
    pub fn apply(
        &mut self,
        handling: &mut Handling,
        machine: &RwLock<Machine>,
    ) -> Result<Vec<Action>, StorageError> {
        let ready = &mut handling.0;
        let mut actions = Vec::new();
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            let index = snapshot.get_metadata().index;
            actions.push(self.install_snapshot(snapshot, machine)?);
            // Whatever the skipped entries changed is not published one by
            // one; watchers that keep a history must start it again here.
            actions.push(Action::Publish(Published {
                index,
                effects: vec![],
                snapshot: true,
            }));
        }
        for rs in ready.take_read_states() {
            if let Ok(ctx) = <[u8; 8]>::try_from(&rs.request_ctx[..]) {
                let id = u64::from_le_bytes(ctx);
                if self.reads.remove(&id) {
                    self.ready_reads.push((rs.index, id));
                }
            }
        }
        self.apply_entries(ready.take_committed_entries(), machine, &mut actions)?;
        actions.push(Action::Persist {
            entries: ready.take_entries(),
            hard_state: ready.hs().cloned(),
        });
        send(&mut actions, ready.take_persisted_messages());
        Ok(actions)
    }

    /// Finishes a `Ready` once its entries and hard state are persisted:
    /// the commit index to record, messages, the entries that commits
    /// (applied to `machine` here) and the reads now answered.
    pub fn advance(
        &mut self,
        handling: Handling,
        machine: &RwLock<Machine>,
    ) -> Result<Vec<Action>, StorageError> {
        let mut actions = Vec::new();
        let mut light = self.node.advance(handling.0);
        if let Some(commit) = light.commit_index() {
            actions.push(Action::SetCommit(commit));
        }
        send(&mut actions, light.take_messages());
        self.apply_entries(light.take_committed_entries(), machine, &mut actions)?;
        self.node.advance_apply();
        self.release_reads(machine, &mut actions);
        Ok(actions)
    }

    fn role_changed(&mut self, role: StateRole, leader_id: u64, out: &mut Vec<Action>) {
        let is_leader = role == StateRole::Leader;
        let lead = Leadership {
            is_leader,
            leader_id: Some(leader_id).filter(|id| *id != 0),
            term: self.node.raft.term,
        };
        if !is_leader {
            // Pending ReadIndex requests may never be answered now.
            for id in std::mem::take(&mut self.reads) {
                out.push(Action::ReadDone {
                    id,
                    result: Err(self.not_leader()),
                });
            }
        }
        tracing::info!(
            role = ?role,
            leader = ?lead.leader_id,
            term = lead.term,
            "raft role changed"
        );
        out.push(Action::Leadership(lead));
    }

    fn install_snapshot(
        &mut self,
        snapshot: Snapshot,
        machine: &RwLock<Machine>,
    ) -> Result<Action, StorageError> {
        let env = SnapshotEnvelope::decode(&snapshot.data)?;
        self.peers = env.peers.clone();
        let mut m = machine.write().expect("state lock poisoned");
        m.state = Indexed::new(env.state);
        m.applied = snapshot.get_metadata().index;
        Ok(Action::InstallSnapshot {
            snapshot,
            peers: env.peers,
        })
    }

    fn release_reads(&mut self, machine: &RwLock<Machine>, out: &mut Vec<Action>) {
        let applied = machine.read().expect("state lock poisoned").applied;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ready_reads)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.ready_reads = waiting;
        for (_, id) in done {
            out.push(Action::ReadDone { id, result: Ok(()) });
        }
    }

    fn apply_entries(
        &mut self,
        entries: Vec<Entry>,
        machine: &RwLock<Machine>,
        out: &mut Vec<Action>,
    ) -> Result<(), StorageError> {
        // The answers go last, after the entries are handed to copies of
        // the state: a proposer answered finds its entry in its copy's
        // feed.
        let mut answers = Vec::new();
        for entry in &entries {
            let index = entry.index;
            let result = match entry.get_entry_type() {
                EntryType::EntryNormal => {
                    let mut m = machine.write().expect("state lock poisoned");
                    m.applied = index;
                    apply_entry(&mut m.state, entry)
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let r = self.apply_conf_change(entry, out);
                    machine.write().expect("state lock poisoned").applied = index;
                    r?
                }
            };
            if crate::refused::is_inconsistent(&result) {
                out.push(Action::Inconsistent);
            }
            let result = match result {
                Ok((outcome, effects)) => {
                    if !effects.is_empty() {
                        out.push(Action::Publish(Published {
                            index,
                            effects,
                            snapshot: false,
                        }));
                    }
                    Ok(outcome)
                }
                Err(rejection) => Err(ProposeError::Rejected(rejection)),
            };
            let proposal = <[u8; 8]>::try_from(&entry.context[..])
                .ok()
                .map(u64::from_le_bytes)
                .and_then(|id| Some(id).zip(self.pending.remove(&id)));
            if let Some((id, at)) = proposal {
                self.pending_at.remove(&at);
                answers.push(Action::Answer { id, result });
            }
            self.drop_lost_proposals(index, &mut answers);
        }
        if !entries.is_empty() {
            out.push(Action::Applied(entries));
        }
        out.extend(answers);
        Ok(())
    }

    /// Proposals at or below an applied index that were not matched lost
    /// their slot to another leader's entry: they will never apply.
    fn drop_lost_proposals(&mut self, applied: u64, out: &mut Vec<Action>) {
        while let Some((&index, &id)) = self.pending_at.first_key_value() {
            if index > applied {
                break;
            }
            self.pending_at.remove(&index);
            if self.pending.remove(&id).is_some() {
                out.push(Action::Answer {
                    id,
                    result: Err(self.dropped()),
                });
            }
        }
    }

    fn apply_conf_change(
        &mut self,
        entry: &Entry,
        out: &mut Vec<Action>,
    ) -> Result<Applied, StorageError> {
        let corrupt = |e: protobuf::ProtobufError| StorageError::Corrupt(e.to_string());
        if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
            // Joint changes are not proposed by edupool; apply them as raft says.
            let cc = ConfChangeV2::parse_from_bytes(&entry.data).map_err(corrupt)?;
            if let Ok(conf) = self.node.apply_conf_change(&cc) {
                out.push(Action::SaveConfState {
                    conf,
                    peers: self.peers.clone(),
                });
            }
            return Ok(Ok((Outcome::None, vec![])));
        }
        let v1 = ConfChange::parse_from_bytes(&entry.data).map_err(corrupt)?;
        let mut peers = self.peers.clone();
        match v1.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode if !v1.context.is_empty() => {
                peers.insert(
                    v1.node_id,
                    String::from_utf8_lossy(&v1.context).into_owned(),
                );
            }
            ConfChangeType::RemoveNode => {
                peers.remove(&v1.node_id);
            }
            _ => {}
        }
        match self.node.apply_conf_change(&v1) {
            Ok(conf) => {
                tracing::info!(voters = ?conf.voters, learners = ?conf.learners, "membership changed");
                self.peers = peers.clone();
                out.push(Action::SaveConfState {
                    conf,
                    peers: peers.clone(),
                });
                out.push(Action::Route(peers));
            }
            Err(e) => tracing::warn!("membership change not applied: {e}"),
        }
        Ok(Ok((Outcome::None, vec![])))
    }
}

fn send(actions: &mut Vec<Action>, messages: Vec<Message>) {
    if !messages.is_empty() {
        actions.push(Action::Send(messages));
    }
}
