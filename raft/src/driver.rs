//! The raft driver: the async shell around the I/O-free step (`step`).
//!
//! One task owns the step. It `select!`s over requests (proposals, reads,
//! membership), peer messages, delivery feedback, ticks, finished
//! snapshots and shutdown, feeds each to the step, then has the step
//! handle raft's `Ready` and performs the actions it returns, in order:
//! messages to the peers' links, snapshots and entries written to redb
//! (on blocking threads), effects published to the edges, applied
//! entries handed to copies of the state (`feed`), and the proposers,
//! readers and leadership watchers told. A proposal is matched
//! to its reply by the id the step gives it, never by queue order.

use std::collections::HashMap;
#[cfg(feature = "failpoints")]
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edupool_core::state::{Command, Millis, Outcome};
use raft::prelude::Message;
use raft::RawNode;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ReplicaConfig;
use crate::feed::Feed;
use crate::machine::Machine;
use crate::metrics::RaftMetrics;
use crate::snapshots::{Snapshots, Waiter};
use crate::snapshotter::{BeforeSave, Done};
use crate::status::{MemberStatus, RaftStatus, Role};
use crate::step::{raft_config, Action, Core, Leadership, MembershipChange, ProposeError};
use crate::storage::{RaftStore, StorageError};
use crate::transport::{Feedback, Transport};

const MAX_BATCH: usize = 512;
const INBOUND_QUEUE: usize = 8192;

/// Effects of one applied command, published to the edges.
pub type AppliedEffects = Arc<crate::step::Published>;

/// How the driver task ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverEnd {
    /// The shutdown token was cancelled: an orderly stop.
    Stopped,
    /// A fatal error (a failed write to the store, a panic): the replica
    /// cannot go on, and its process should exit with an error so that
    /// its supervisor restarts it.
    Failed(String),
}

/// What a `Replica` handle asks of its driver.
pub(crate) enum Request {
    Propose {
        // Boxed: a job spec makes commands far larger than the other requests.
        cmd: Box<Command>,
        reply: oneshot::Sender<Result<Outcome, ProposeError>>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<(), ProposeError>>,
    },
    Membership {
        change: MembershipChange,
        reply: oneshot::Sender<Result<Outcome, ProposeError>>,
    },
    TransferLeader {
        to: u64,
        reply: oneshot::Sender<Result<(), ProposeError>>,
    },
    Snapshot {
        reply: Waiter,
    },
}

/// The ends of a started driver that a `Replica` handle holds.
pub(crate) struct Started {
    pub requests: mpsc::Sender<Request>,
    pub inbound: mpsc::Sender<Message>,
    pub applied: broadcast::Sender<AppliedEffects>,
    pub leadership: watch::Receiver<Leadership>,
    pub status: watch::Receiver<RaftStatus>,
    pub transport: Arc<Transport>,
    pub end: watch::Receiver<Option<DriverEnd>>,
}

/// Starts the driver over an opened `store` whose snapshot `machine`
/// holds: applies the committed log first, so a restarted replica never
/// serves a state older than it acknowledged, then runs on `tracker`.
pub(crate) fn start(
    config: &ReplicaConfig,
    store: RaftStore,
    machine: Arc<RwLock<Machine>>,
    feed: Feed,
    before_save: Option<BeforeSave>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<Started, StorageError> {
    let applied = machine.read().expect("state lock poisoned").applied;
    let raft_config = raft_config(
        config.id,
        applied,
        config.election_ticks,
        config.heartbeat_ticks,
    );
    raft_config
        .validate()
        .map_err(|e| StorageError::Corrupt(e.to_string()))?;
    let node = RawNode::new(&raft_config, store.clone(), &crate::logger::logger())
        .map_err(|e| StorageError::Corrupt(e.to_string()))?;
    let (requests, requests_rx) = mpsc::channel(4096);
    let (inbound, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let (feedback, feedback_rx) = mpsc::channel(1024);
    let (snapshot_done, snapshot_done_rx) = mpsc::unbounded_channel();
    let (applied, _) = broadcast::channel(16_384);
    let (lead_tx, leadership) = watch::channel(Leadership::default());
    let (status_tx, status) = watch::channel(RaftStatus::default());
    let transport = Transport::new(
        config.id,
        config.peer_tls.clone(),
        feedback,
        tracker.clone(),
        shutdown.clone(),
    );
    transport.set_peers(&store.peers());
    let snapshots = Snapshots::new(
        config,
        store.clone(),
        machine.clone(),
        snapshot_done,
        before_save,
        tracker,
        &shutdown,
    );
    let mut driver = Driver {
        id: config.id,
        #[cfg(feature = "failpoints")]
        data_dir: config.data_dir.clone(),
        core: Core::new(node, store.peers(), rand::random::<u64>() >> 1),
        store,
        machine,
        feed,
        applied: applied.clone(),
        leadership: lead_tx,
        status: status_tx,
        transport: transport.clone(),
        proposals: HashMap::new(),
        reads: HashMap::new(),
        snapshots,
        metrics: config.metrics.clone(),
        stop: shutdown.clone(),
    };
    driver.catch_up()?;
    let voters = driver.core.raft().prs().conf().voters().ids();
    if voters.len() == 1 && voters.contains(config.id) {
        // A one-voter cluster elects itself at once.
        driver.core.campaign();
    }
    driver.publish_status();
    let task = tracker.spawn(driver.run(
        requests_rx,
        inbound_rx,
        feedback_rx,
        snapshot_done_rx,
        config.tick,
    ));
    let (end_tx, end) = watch::channel(None);
    tracker.spawn(supervise(task, end_tx, shutdown));
    Ok(Started {
        requests,
        inbound,
        applied,
        leadership,
        status,
        transport,
        end,
    })
}

/// Waits for the driver task and publishes how it ended. A driver that
/// failed or panicked stops the whole replica (`shutdown`), so nothing
/// goes on answering for a log that no longer moves.
async fn supervise(
    task: tokio::task::JoinHandle<Result<(), StorageError>>,
    end: watch::Sender<Option<DriverEnd>>,
    shutdown: CancellationToken,
) {
    let ended = match task.await {
        Ok(Ok(())) => DriverEnd::Stopped,
        Ok(Err(e)) => DriverEnd::Failed(format!("raft storage failed: {e}")),
        Err(e) if e.is_panic() => {
            let panic = e.into_panic();
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            DriverEnd::Failed(format!("the raft driver panicked: {what}"))
        }
        Err(e) => DriverEnd::Failed(format!("the raft driver was cancelled: {e}")),
    };
    if let DriverEnd::Failed(why) = &ended {
        tracing::error!("{why}; stopping this replica");
        shutdown.cancel();
    }
    end.send_replace(Some(ended));
}

struct Driver {
    id: u64,
    /// Where test-only failpoints are armed (see `failpoints`).
    #[cfg(feature = "failpoints")]
    data_dir: PathBuf,
    core: Core<RaftStore>,
    store: RaftStore,
    machine: Arc<RwLock<Machine>>,
    /// Where applied entries go on to copies of the state.
    feed: Feed,
    applied: broadcast::Sender<AppliedEffects>,
    leadership: watch::Sender<Leadership>,
    status: watch::Sender<RaftStatus>,
    transport: Arc<Transport>,
    /// Proposal id (from the step) -> who waits for its result.
    proposals: HashMap<u64, oneshot::Sender<Result<Outcome, ProposeError>>>,
    /// ReadIndex id (from the step) -> who waits.
    reads: HashMap<u64, oneshot::Sender<Result<(), ProposeError>>>,
    snapshots: Snapshots,
    metrics: RaftMetrics,
    stop: CancellationToken,
}

impl Driver {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut inbound: mpsc::Receiver<Message>,
        mut feedback: mpsc::Receiver<Feedback>,
        mut snapshot_done: mpsc::UnboundedReceiver<Done>,
        tick: Duration,
    ) -> Result<(), StorageError> {
        let shutdown = self.stop.clone();
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = ticker.tick() => {
                    #[cfg(feature = "failpoints")]
                    crate::failpoints::driver_tick(&self.data_dir);
                    self.core.tick();
                }
                r = requests.recv() => {
                    let Some(r) = r else { break Ok(()) };
                    self.handle(r);
                    // Batch what is already queued into one fsync.
                    for _ in 0..MAX_BATCH {
                        match requests.try_recv() {
                            Ok(r) => self.handle(r),
                            Err(_) => break,
                        }
                    }
                }
                m = inbound.recv() => {
                    let Some(m) = m else { break Ok(()) };
                    self.core.step(m);
                    for _ in 0..MAX_BATCH {
                        match inbound.try_recv() {
                            Ok(m) => self.core.step(m),
                            Err(_) => break,
                        }
                    }
                }
                Some(f) = feedback.recv() => match f {
                    Feedback::Unreachable(id) => self.core.unreachable(id),
                    Feedback::SnapshotSent { to, ok } => self.core.snapshot_sent(to, ok),
                },
                Some(done) = snapshot_done.recv() => {
                    if let Err(e) = self.snapshots.finish(done, self.core.is_leader()) {
                        break Err(e);
                    }
                }
            }
            if let Err(e) = self.on_ready().await {
                break Err(e);
            }
            if self.store.take_snapshot_wanted() {
                self.snapshots.want();
            }
            self.snapshots.maybe_start();
            self.publish_status();
        };
        for (_, reply) in self.proposals.drain() {
            let _ = reply.send(Err(ProposeError::Stopped));
        }
        // A snapshot still being written sees the stop and ends without
        // writing, or finishes its one transaction; the tracker waits for
        // its thread. Who waited for it is told the replica stopped.
        result
    }

    fn handle(&mut self, r: Request) {
        match r {
            Request::Propose { cmd, reply } => match self.core.propose(*cmd, now_millis()) {
                Ok(id) => {
                    self.proposals.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Request::ReadIndex { reply } => {
                let id = self.core.read_index();
                self.reads.insert(id, reply);
            }
            Request::Membership { change, reply } => {
                let learner = matches!(change, MembershipChange::AddLearner { .. });
                match self.core.propose_membership(change) {
                    Ok(id) => {
                        // A log that still starts at index 1 (from before
                        // bootstrap snapshots) is compacted first, so the
                        // learner starts from a snapshot that carries the
                        // configuration.
                        if learner && self.store.snapshot_info().0 == 0 {
                            self.snapshots.want();
                        }
                        self.proposals.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Request::TransferLeader { to, reply } => {
                let _ = reply.send(self.core.transfer_leader(to));
            }
            Request::Snapshot { reply } => self.snapshots.ask(reply),
        }
    }

    /// Handles raft's `Ready`, if any: the step decides, this performs.
    async fn on_ready(&mut self) -> Result<(), StorageError> {
        let Some((mut handling, actions)) = self.core.ready() else {
            return Ok(());
        };
        self.perform(actions).await?;
        let actions = self.core.apply(&mut handling, &self.machine)?;
        self.perform(actions).await?;
        let actions = self.core.advance(handling, &self.machine)?;
        self.perform(actions).await
    }

    /// Applies the committed log at start, before serving: nothing is
    /// sent and nobody waits yet.
    fn catch_up(&mut self) -> Result<(), StorageError> {
        while let Some((mut handling, _)) = self.core.ready() {
            let actions = self.core.apply(&mut handling, &self.machine)?;
            self.perform_offline(actions)?;
            let actions = self.core.advance(handling, &self.machine)?;
            self.perform_offline(actions)?;
        }
        Ok(())
    }

    fn perform_offline(&mut self, actions: Vec<Action>) -> Result<(), StorageError> {
        for action in actions {
            match action {
                Action::Persist {
                    entries,
                    hard_state,
                } => self.store.persist(&entries, hard_state.as_ref())?,
                Action::SetCommit(commit) => self.store.set_commit(commit)?,
                Action::SaveConfState { conf, peers } => {
                    self.store.set_conf_state(&conf, &peers)?
                }
                Action::Route(peers) => self.transport.set_peers(&peers),
                Action::Inconsistent => crate::refused::count(&self.metrics),
                _ => {}
            }
        }
        Ok(())
    }

    async fn perform(&mut self, actions: Vec<Action>) -> Result<(), StorageError> {
        for action in actions {
            match action {
                Action::Leadership(lead) => {
                    self.leadership.send_replace(lead);
                }
                Action::Send(messages) => {
                    for id in self.transport.send(messages) {
                        self.core.unreachable(id);
                    }
                }
                Action::InstallSnapshot { snapshot, peers } => {
                    let index = snapshot.get_metadata().index;
                    let store = self.store.clone();
                    let routes = peers.clone();
                    blocking(move || store.apply_snapshot(&snapshot, &peers)).await?;
                    self.transport.set_peers(&routes);
                    // Copies of the state miss what the snapshot holds.
                    self.feed.cut();
                    tracing::info!(index, "installed a snapshot from the leader");
                }
                Action::SaveConfState { conf, peers } => {
                    self.store.set_conf_state(&conf, &peers)?
                }
                Action::Route(peers) => self.transport.set_peers(&peers),
                Action::Publish(effects) => {
                    let _ = self.applied.send(Arc::new(effects));
                }
                Action::Answer { id, result } => {
                    if let Some(reply) = self.proposals.remove(&id) {
                        let _ = reply.send(result);
                    }
                }
                Action::ReadDone { id, result } => {
                    if let Some(reply) = self.reads.remove(&id) {
                        let _ = reply.send(result);
                    }
                }
                Action::Persist {
                    entries,
                    hard_state,
                } => {
                    let store = self.store.clone();
                    blocking(move || store.persist(&entries, hard_state.as_ref())).await?;
                }
                Action::SetCommit(commit) => {
                    let store = self.store.clone();
                    blocking(move || store.set_commit(commit)).await?;
                }
                Action::Inconsistent => crate::refused::count(&self.metrics),
                Action::Applied(entries) => self.feed.publish(entries),
            }
        }
        Ok(())
    }

    fn publish_status(&mut self) {
        let raft = self.core.raft();
        let peers = self.core.peers();
        let leader_id = Some(raft.leader_id).filter(|id| *id != 0);
        let conf = raft.prs().conf();
        let is_leader = self.core.is_leader();
        let mut members: Vec<MemberStatus> = conf
            .voters()
            .ids()
            .iter()
            .map(|id| (id, true))
            .chain(conf.learners().iter().map(|id| (*id, false)))
            .map(|(id, voter)| MemberStatus {
                id,
                address: peers.get(&id).cloned().unwrap_or_default(),
                voter,
                match_index: if is_leader {
                    raft.prs().get(id).map_or(0, |p| p.matched)
                } else {
                    0
                },
            })
            .collect();
        members.sort_by_key(|m| m.id);
        let (snapshot_index, _, snapshot_bytes) = self.store.snapshot_info();
        let status = RaftStatus {
            id: self.id,
            role: Role::from(raft.state),
            leader_id,
            leader_address: leader_id.and_then(|id| peers.get(&id).cloned()),
            term: raft.term,
            commit: raft.raft_log.committed,
            applied: self.machine.read().expect("state lock").applied,
            last_index: raft.raft_log.last_index(),
            snapshot_index,
            snapshot_bytes,
            snapshot_in_flight: self.snapshots.in_flight(),
            log_entries: self.store.log_len() as u64,
            members,
        };
        self.status.send_if_modified(|s| {
            if *s == status {
                false
            } else {
                *s = status;
                true
            }
        });
    }
}

/// Runs a store write on a blocking thread.
async fn blocking(
    write: impl FnOnce() -> Result<(), StorageError> + Send + 'static,
) -> Result<(), StorageError> {
    tokio::task::spawn_blocking(write)
        .await
        .map_err(|e| StorageError::Io(e.to_string()))?
}

fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}
