//! The raft driver: one task owns the `RawNode`.
//!
//! It `select!`s over proposals, ticks and shutdown, and handles each
//! `Ready` in the order raft-rs documents: send messages, apply a
//! snapshot, apply committed entries, persist entries and hard state,
//! send persisted messages, advance. A proposal is matched to its reply by
//! a proposal id carried in the entry's context, never by queue order.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use raft::prelude::{Entry, EntryType};
use raft::{Config, RawNode, StateRole, Storage};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::storage::{RaftStore, StorageError};
use crate::state::{Command, Effect, Millis, Outcome, Rejection, State};

/// The encoding of one log entry's data. `v` versions the format.
#[derive(Debug, Serialize, Deserialize)]
pub struct LogEntry {
    pub v: u32,
    /// When the proposer stamped it: the only clock the state machine sees.
    pub at: Millis,
    pub cmd: Command,
}

const LOG_FORMAT: u32 = 1;
const MAX_BATCH: usize = 512;

#[derive(Debug, Error)]
pub enum ProposeError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("this scheduler replica is not the leader")]
    NotLeader { leader: Option<u64> },
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

#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    pub id: u64,
    pub data_dir: PathBuf,
    pub tick: Duration,
}

struct Proposal {
    cmd: Command,
    reply: oneshot::Sender<Result<Outcome, ProposeError>>,
}

/// Effects of one applied command, published to the edges.
pub type AppliedEffects = Arc<Vec<Effect>>;

/// A handle on the local replica: propose commands, read the state.
#[derive(Clone)]
pub struct Replica {
    proposals: mpsc::Sender<Proposal>,
    state: Arc<RwLock<State>>,
    applied: broadcast::Sender<AppliedEffects>,
    leadership: watch::Receiver<Leadership>,
}

impl Replica {
    /// Opens the store under `data_dir`, replays the committed log into a
    /// fresh state machine and starts the driver task on `tracker`.
    pub fn start(
        config: ReplicaConfig,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Replica, StorageError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| StorageError::Io(format!("{}: {e}", config.data_dir.display())))?;
        let store = RaftStore::open(&config.data_dir.join("raft.redb"), &[config.id])?;
        // Replay the committed log before anything can read the state, so a
        // restarted replica never serves a state older than it acknowledged.
        let mut state = State::default();
        let applied = replay(&store, &mut state)?;
        let raft_config = Config {
            id: config.id,
            applied,
            election_tick: 10,
            heartbeat_tick: 3,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_config
            .validate()
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        let mut node = RawNode::new(&raft_config, store, &super::logger::logger())
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        let voters = node
            .raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .collect::<Vec<_>>();
        if voters == [config.id] {
            // A one-voter cluster elects itself at once.
            let _ = node.campaign();
        }
        let (proposals, rx) = mpsc::channel(4096);
        let (applied, _) = broadcast::channel(16_384);
        let (lead_tx, leadership) = watch::channel(Leadership::default());
        let state = Arc::new(RwLock::new(state));
        let driver = Driver {
            node,
            state: state.clone(),
            applied: applied.clone(),
            leadership: lead_tx,
            pending: HashMap::new(),
            next_proposal: rand::random::<u64>() >> 1,
        };
        tracker.spawn(driver.run(rx, config.tick, shutdown));
        Ok(Replica {
            proposals,
            state,
            applied,
            leadership,
        })
    }

    /// Appends `cmd` to the log and waits until it is committed and
    /// applied; returns what applying it produced.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.proposals
            .send(Proposal { cmd, reply })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    /// Reads the applied state.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.read().expect("state lock poisoned"))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<AppliedEffects> {
        self.applied.subscribe()
    }

    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }
}

struct Driver {
    node: RawNode<RaftStore>,
    state: Arc<RwLock<State>>,
    applied: broadcast::Sender<AppliedEffects>,
    leadership: watch::Sender<Leadership>,
    pending: HashMap<u64, oneshot::Sender<Result<Outcome, ProposeError>>>,
    next_proposal: u64,
}

impl Driver {
    async fn run(
        mut self,
        mut proposals: mpsc::Receiver<Proposal>,
        tick: Duration,
        shutdown: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => { self.node.tick(); }
                p = proposals.recv() => {
                    let Some(p) = p else { break };
                    self.propose(p);
                    // Batch what is already queued into one fsync.
                    for _ in 0..MAX_BATCH {
                        match proposals.try_recv() {
                            Ok(p) => self.propose(p),
                            Err(_) => break,
                        }
                    }
                }
            }
            if let Err(e) = self.on_ready().await {
                tracing::error!("raft storage failed, stopping this replica: {e}");
                shutdown.cancel();
                break;
            }
        }
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(ProposeError::Stopped));
        }
    }

    fn propose(&mut self, p: Proposal) {
        if self.node.raft.state != StateRole::Leader {
            let leader = Some(self.node.raft.leader_id).filter(|id| *id != 0);
            let _ = p.reply.send(Err(ProposeError::NotLeader { leader }));
            return;
        }
        let entry = LogEntry {
            v: LOG_FORMAT,
            at: now_millis(),
            cmd: p.cmd,
        };
        let data = serde_json::to_vec(&entry).expect("commands always serialize");
        self.next_proposal = self.next_proposal.wrapping_add(1);
        let id = self.next_proposal;
        match self.node.propose(id.to_le_bytes().to_vec(), data) {
            Ok(()) => {
                self.pending.insert(id, p.reply);
            }
            Err(_) => {
                let _ = p.reply.send(Err(ProposeError::NotLeader { leader: None }));
            }
        }
    }

    async fn on_ready(&mut self) -> Result<(), StorageError> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut ready = self.node.ready();
        if let Some(ss) = ready.ss() {
            self.on_role_change(ss.raft_state, ss.leader_id);
        }
        // Peer messages go out here once there are peers (one voter: none).
        let _ = ready.take_messages();
        self.apply_entries(ready.take_committed_entries());
        let store = self.node.store().clone();
        let entries = ready.entries().clone();
        let hard = ready.hs().cloned();
        tokio::task::spawn_blocking(move || store.persist(&entries, hard.as_ref()))
            .await
            .map_err(|e| StorageError::Io(e.to_string()))??;
        let _ = ready.take_persisted_messages();
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            let store = self.node.store().clone();
            tokio::task::spawn_blocking(move || store.set_commit(commit))
                .await
                .map_err(|e| StorageError::Io(e.to_string()))??;
        }
        let _ = light.take_messages();
        self.apply_entries(light.take_committed_entries());
        self.node.advance_apply();
        Ok(())
    }

    fn on_role_change(&mut self, role: StateRole, leader_id: u64) {
        let is_leader = role == StateRole::Leader;
        let lead = Leadership {
            is_leader,
            leader_id: Some(leader_id).filter(|id| *id != 0),
            term: self.node.raft.term,
        };
        if !is_leader {
            for (_, reply) in self.pending.drain() {
                let _ = reply.send(Err(ProposeError::NotLeader {
                    leader: lead.leader_id,
                }));
            }
        }
        tracing::info!(
            role = ?role,
            leader = ?lead.leader_id,
            term = lead.term,
            "raft role changed"
        );
        self.leadership.send_replace(lead);
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            let result = apply_entry(
                &mut self.state.write().expect("state lock poisoned"),
                &entry,
            );
            let reply = <[u8; 8]>::try_from(&entry.context[..])
                .ok()
                .and_then(|ctx| self.pending.remove(&u64::from_le_bytes(ctx)));
            let outcome = match result {
                Ok((outcome, effects)) => {
                    if !effects.is_empty() {
                        let _ = self.applied.send(Arc::new(effects));
                    }
                    Ok(outcome)
                }
                Err(rejection) => Err(ProposeError::Rejected(rejection)),
            };
            if let Some(reply) = reply {
                let _ = reply.send(outcome);
            }
        }
    }
}

/// Applies every committed entry in the store to `state`; returns the
/// index of the last one.
fn replay(store: &RaftStore, state: &mut State) -> Result<u64, StorageError> {
    let commit = store.hard_state().commit;
    let first = store
        .first_index()
        .map_err(|e| StorageError::Corrupt(e.to_string()))?;
    if commit < first {
        return Ok(commit);
    }
    let entries = store
        .entries(
            first,
            commit + 1,
            None,
            raft::GetEntriesContext::empty(false),
        )
        .map_err(|e| StorageError::Corrupt(e.to_string()))?;
    for entry in &entries {
        let _ = apply_entry(state, entry);
    }
    Ok(commit)
}

/// Applies one log entry; entries that carry no command produce nothing.
fn apply_entry(state: &mut State, entry: &Entry) -> crate::state::Applied {
    if entry.data.is_empty() || entry.get_entry_type() != EntryType::EntryNormal {
        return Ok((Outcome::None, vec![]));
    }
    match serde_json::from_slice::<LogEntry>(&entry.data) {
        Ok(e) if e.v == LOG_FORMAT => state.apply(e.cmd, e.at),
        // Every replica skips the same undecodable entry, so they stay
        // identical; it can only come from a newer version.
        Ok(e) => {
            tracing::error!(index = entry.index, v = e.v, "log entry of unknown format");
            Ok((Outcome::None, vec![]))
        }
        Err(err) => {
            tracing::error!(index = entry.index, "undecodable log entry: {err}");
            Ok((Outcome::None, vec![]))
        }
    }
}

fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{JobClass, JobId, JobSpec, OnNodeLost};

    fn config(dir: &std::path::Path) -> ReplicaConfig {
        ReplicaConfig {
            id: 1,
            data_dir: dir.to_path_buf(),
            tick: Duration::from_millis(20),
        }
    }

    async fn start(dir: &std::path::Path) -> (Replica, CancellationToken, TaskTracker) {
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let r = Replica::start(config(dir), stop.clone(), &tracker).unwrap();
        (r, stop, tracker)
    }

    #[tokio::test]
    async fn committed_commands_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (r, stop, tracker) = start(dir.path()).await;
        let out = r
            .propose(Command::CreateTenant {
                name: "zju".into(),
                token_hash: "h".into(),
            })
            .await
            .unwrap();
        assert_eq!(out, Outcome::Tenant("zju".into()));
        let err = r
            .propose(Command::CreateTenant {
                name: "zju".into(),
                token_hash: "h2".into(),
            })
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            ProposeError::Rejected(Rejection::TenantExists(_))
        ));
        r.propose(Command::NodeConnected {
            node: "n1".into(),
            gpus: vec![],
            agent_version: "t".into(),
        })
        .await
        .unwrap();
        let before = r.read(|s| s.clone());
        stop.cancel();
        tracker.close();
        tracker.wait().await;

        let (r, stop, tracker) = start(dir.path()).await;
        // The log is replayed before the replica can be read.
        assert_eq!(r.read(|s| s.clone()), before);
        // And the replica keeps accepting writes after the replay.
        let spec = JobSpec {
            name: String::new(),
            command: vec!["true".into()],
            env: Default::default(),
            gpus: 0,
            nodes: 1,
            class: JobClass::Batch,
            walltime_secs: 1,
            grace_period_secs: 1,
            on_node_lost: OnNodeLost::Requeue,
            max_retries: 0,
            priority: 0,
            gpu_fraction: 0,
            constraints: Default::default(),
            requeue_on_preempt: true,
        };
        let out = r
            .propose(Command::SubmitJob {
                tenant: "zju".into(),
                spec,
            })
            .await
            .unwrap();
        assert_eq!(out, Outcome::Job(JobId(1)));
        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
