//! The raft driver: one task owns the `RawNode`.
//!
//! It `select!`s over requests (proposals, reads, membership), peer
//! messages, delivery feedback, ticks and shutdown, and handles each
//! `Ready` in the order raft-rs documents: send messages, install a
//! snapshot, apply committed entries, persist entries and hard state, send
//! persisted messages, advance. A proposal is matched to its reply by a
//! proposal id carried in the entry's context, never by queue order; one
//! whose log index was taken by another entry is answered as dropped.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, Snapshot,
};
use raft::{Config, RawNode, StateRole, Storage};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::metrics::RaftMetrics;
use super::snapshot::{SnapshotEnvelope, SNAPSHOT_FORMAT};
use super::snapshotter::{self, BeforeSave, InFlight, Waiter, Written};
use super::status::{MemberStatus, RaftStatus, Role};
use super::storage::{Peers, RaftStore, StorageError};
use super::transport::{Feedback, RaftServer, Transport};
use edupool_core::state::{Command, Effect, Millis, Outcome, Rejection, State};

/// The encoding of one log entry's data. `v` versions the format.
#[derive(Debug, Serialize, Deserialize)]
pub struct LogEntry {
    pub v: u32,
    /// When the proposer stamped it: the only clock the state machine sees.
    pub at: Millis,
    pub cmd: Command,
}

pub const LOG_FORMAT: u32 = 1;
const MAX_BATCH: usize = 512;
const INBOUND_QUEUE: usize = 8192;

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
    /// Every replica of the initial cluster (this one included) and its
    /// address. Empty or only this one: a single-replica cluster.
    pub peers: Peers,
    /// Start with no configuration and wait to be added by the leader
    /// (`cluster add-member`), instead of bootstrapping from `peers`.
    pub join: bool,
    /// Ticks without a leader before an election (randomized up to twice).
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Take a snapshot (and compact the log) after this many applied
    /// entries, once the log is large enough for `snapshot_log_ratio`.
    pub snapshot_entries: u64,
    /// The log must hold this many times the last snapshot's size in bytes
    /// (but never more than half of `snapshot_bytes`) before
    /// `snapshot_entries` makes a snapshot due; 0: entries alone decide.
    /// A large state is then encoded no more often than a log of its own
    /// size is written, so snapshot cost stays in proportion to the work
    /// (LogCabin's `snapshotRatio` rule).
    pub snapshot_log_ratio: f64,
    /// Entries kept behind a snapshot, so a briefly lagging follower catches
    /// up from the log instead of a whole snapshot.
    pub keep_entries: u64,
    /// Also snapshot (keeping no entries) once the log holds this many
    /// payload bytes, so a few huge entries cannot fill memory and disk.
    pub snapshot_bytes: u64,
    /// TLS to the peers (with this replica's `peer:<id>` certificate);
    /// when set, inbound raft traffic must show a peer certificate too.
    pub peer_tls: Option<tonic::transport::ClientTlsConfig>,
    /// Where proposal and snapshot timings go (registered by the caller).
    pub metrics: RaftMetrics,
}

impl ReplicaConfig {
    /// A single-replica cluster with the default timings.
    pub fn single(id: u64, data_dir: PathBuf, tick: Duration) -> ReplicaConfig {
        ReplicaConfig {
            id,
            data_dir,
            tick,
            peers: Peers::new(),
            join: false,
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_entries: 100_000,
            snapshot_log_ratio: 1.0,
            keep_entries: 10_000,
            snapshot_bytes: 256 * 1024 * 1024,
            peer_tls: None,
            metrics: RaftMetrics::new(),
        }
    }

    fn voters(&self) -> Vec<u64> {
        if self.join {
            vec![]
        } else if self.peers.is_empty() {
            vec![self.id]
        } else {
            self.peers.keys().copied().collect()
        }
    }
}

/// The applied state machine and the index it reflects, under one lock.
struct Machine {
    state: State,
    applied: u64,
}

/// A membership or leadership request from an operator.
#[derive(Debug, Clone)]
pub enum MembershipChange {
    AddLearner { id: u64, address: String },
    Promote { id: u64 },
    Remove { id: u64 },
}

enum Request {
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

/// Effects of one applied command, published to the edges.
pub type AppliedEffects = Arc<Vec<Effect>>;

/// A handle on the local replica: propose commands, read the state.
#[derive(Clone)]
pub struct Replica {
    id: u64,
    requests: mpsc::Sender<Request>,
    machine: Arc<RwLock<Machine>>,
    applied: broadcast::Sender<AppliedEffects>,
    leadership: watch::Receiver<Leadership>,
    status: watch::Receiver<RaftStatus>,
    inbound: mpsc::Sender<Message>,
    transport: Arc<Transport>,
    /// How the driver ended; `None` while it runs.
    end: watch::Receiver<Option<DriverEnd>>,
    /// Set by a server that serves no `RaftService`: no replica can join.
    standalone: Arc<AtomicBool>,
    metrics: RaftMetrics,
}

impl Replica {
    /// Opens the store under `data_dir`, brings the state machine up to the
    /// committed log (snapshot, then entries) and starts the driver task
    /// and peer links on `tracker`.
    pub fn start(
        config: ReplicaConfig,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Replica, StorageError> {
        Replica::start_with(config, None, shutdown, tracker)
    }

    /// `start`, with a hook called on the snapshot thread between encoding
    /// a snapshot and saving it.
    fn start_with(
        config: ReplicaConfig,
        before_save: Option<BeforeSave>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Replica, StorageError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| StorageError::Io(format!("{}: {e}", config.data_dir.display())))?;
        let store = RaftStore::open_with_peers(
            &config.data_dir.join("raft.redb"),
            &config.voters(),
            &config.peers,
        )?;
        if store.is_fresh() && !config.join {
            bootstrap(&store, &config)?;
        }
        let (state, snap_index) = match store.snapshot_info() {
            (0, _, _) => (State::default(), 0),
            _ => {
                let env = SnapshotEnvelope::decode(&store.snapshot_data().data)?;
                (env.state, env.index)
            }
        };
        let raft_config = Config {
            id: config.id,
            applied: snap_index,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            max_inflight_msgs: 256,
            max_size_per_msg: 1024 * 1024,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_config
            .validate()
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        let node = RawNode::new(&raft_config, store.clone(), &super::logger::logger())
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;

        let (requests, requests_rx) = mpsc::channel(4096);
        let (inbound, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let (feedback, feedback_rx) = mpsc::channel(1024);
        let (snapshot_done, snapshot_done_rx) = mpsc::unbounded_channel();
        let (applied, _) = broadcast::channel(16_384);
        let (lead_tx, leadership) = watch::channel(Leadership::default());
        let (status_tx, status) = watch::channel(RaftStatus::default());
        let machine = Arc::new(RwLock::new(Machine {
            state,
            applied: snap_index,
        }));
        let transport = Transport::new(
            config.id,
            config.peer_tls.clone(),
            feedback,
            tracker.clone(),
            shutdown.clone(),
        );
        transport.set_peers(&store.peers());
        let mut driver = Driver {
            id: config.id,
            #[cfg(feature = "failpoints")]
            data_dir: config.data_dir.clone(),
            node,
            store,
            machine: machine.clone(),
            applied: applied.clone(),
            leadership: lead_tx,
            status: status_tx,
            transport: transport.clone(),
            pending: HashMap::new(),
            pending_at: BTreeMap::new(),
            reads: HashMap::new(),
            ready_reads: Vec::new(),
            snapshot_waiters: Vec::new(),
            snapshot_due: false,
            snapshot: None,
            snapshot_done,
            before_save,
            tracker: tracker.clone(),
            stop: shutdown.clone(),
            next_id: rand::random::<u64>() >> 1,
            snapshot_entries: config.snapshot_entries.max(1),
            snapshot_log_ratio: config.snapshot_log_ratio.max(0.0),
            keep_entries: config.keep_entries,
            snapshot_bytes: config.snapshot_bytes.max(1),
            metrics: config.metrics.clone(),
        };
        // Apply the committed log before anything can read the state, so a
        // restarted replica never serves a state older than it acknowledged.
        driver.catch_up()?;
        let voters = driver.node.raft.prs().conf().voters().ids();
        if voters.len() == 1 && voters.contains(config.id) {
            // A one-voter cluster elects itself at once.
            let _ = driver.node.campaign();
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
        Ok(Replica {
            id: config.id,
            requests,
            machine,
            applied,
            leadership,
            status,
            inbound,
            transport,
            end,
            standalone: Arc::new(AtomicBool::new(false)),
            metrics: config.metrics,
        })
    }

    /// How the raft driver ended; `None` while it runs.
    pub fn ended(&self) -> Option<DriverEnd> {
        self.end.borrow().clone()
    }

    /// Marks this replica as serving no `RaftService` (a single-replica
    /// pool): adding a member is then refused, as the new replica could
    /// never answer it.
    pub fn set_standalone(&self) {
        self.standalone.store(true, Ordering::Relaxed);
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ProposeError>>) -> Request,
    ) -> Result<T, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(make(reply))
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    /// Appends `cmd` to the log and waits until it is committed and
    /// applied; returns what applying it produced.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        let _timer = self.metrics.proposal_duration.start_timer();
        self.request(|reply| Request::Propose {
            cmd: Box::new(cmd),
            reply,
        })
        .await
    }

    /// Queues `cmd` for the log and returns once it is queued, with the
    /// receiver of its result: commands queued one after another reach the
    /// log in that order, and the caller need not wait for each commit
    /// before reading what comes next (an agent session must keep reading
    /// its heartbeats while its reports commit).
    pub async fn enqueue(&self, cmd: Command) -> oneshot::Receiver<Result<Outcome, ProposeError>> {
        let (reply, rx) = oneshot::channel();
        let request = Request::Propose {
            cmd: Box::new(cmd),
            reply,
        };
        // A driver that stopped drops the request and with it `reply`, so
        // the receiver reports the stop.
        let _ = self.requests.send(request).await;
        rx
    }

    /// Proposes `cmds` in order without waiting between them, then waits
    /// for all: the driver takes what is queued into one `Ready`, so they
    /// share one fsync and one replication round trip instead of paying
    /// one each. Each command's result is returned in the order given.
    pub async fn propose_all(&self, cmds: Vec<Command>) -> Vec<Result<Outcome, ProposeError>> {
        let mut waiting = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            let (reply, rx) = oneshot::channel();
            let sent = self
                .requests
                .send(Request::Propose {
                    cmd: Box::new(cmd),
                    reply,
                })
                .await;
            waiting.push(sent.ok().map(|()| rx));
        }
        let mut results = Vec::with_capacity(waiting.len());
        for rx in waiting {
            results.push(match rx {
                Some(rx) => rx.await.unwrap_or(Err(ProposeError::Stopped)),
                None => Err(ProposeError::Stopped),
            });
        }
        results
    }

    /// Reads the applied state (this replica's view; may lag the leader).
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.machine.read().expect("state lock poisoned").state)
    }

    /// Waits until this replica has applied everything committed when the
    /// call was made, confirmed with a quorum (raft's ReadIndex), so a read
    /// after it is linearizable, on the leader or a follower alike.
    pub async fn read_barrier(&self) -> Result<(), ProposeError> {
        self.request(|reply| Request::ReadIndex { reply }).await
    }

    /// `read` after `read_barrier`.
    pub async fn read_linearizable<R>(
        &self,
        f: impl FnOnce(&State) -> R,
    ) -> Result<R, ProposeError> {
        self.read_barrier().await?;
        Ok(self.read(f))
    }

    /// The applied index and the SHA-256 (hex) of the serialized state at
    /// that index: replicas at the same index show the same hash.
    pub fn state_hash(&self) -> (u64, String) {
        use sha2::{Digest, Sha256};
        let m = self.machine.read().expect("state lock poisoned");
        let bytes = serde_json::to_vec(&m.state).expect("the state always serializes");
        (m.applied, hex::encode(Sha256::digest(bytes)))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<AppliedEffects> {
        self.applied.subscribe()
    }

    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    /// The latest published raft status of this replica.
    pub fn status(&self) -> RaftStatus {
        self.status.borrow().clone()
    }

    /// Follows status changes (for metrics and the cluster service).
    pub fn watch_status(&self) -> watch::Receiver<RaftStatus> {
        self.status.clone()
    }

    /// The error a follower answers writes with: who leads, and where.
    pub fn not_leader(&self) -> ProposeError {
        let s = self.status.borrow();
        ProposeError::NotLeader {
            leader: s.leader_id,
            address: s.leader_address.clone(),
        }
    }

    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), ProposeError> {
        if self.standalone.load(Ordering::Relaxed)
            && matches!(change, MembershipChange::AddLearner { .. })
        {
            return Err(ProposeError::Membership(
                "this replica runs as a single-replica pool (started without --peers, or without TLS) and serves no raft traffic; to grow it, back it up with `edupoolctl cluster snapshot` and restore it with `edupool-scheduler serve --peers ID=HOST:PORT --restore-from FILE` over TLS".into(),
            ));
        }
        self.request(|reply| Request::Membership { change, reply })
            .await
            .map(|_| ())
    }

    pub async fn transfer_leader(&self, to: u64) -> Result<(), ProposeError> {
        self.request(|reply| Request::TransferLeader { to, reply })
            .await
    }

    /// Takes a snapshot at the applied index now (compacting the log) and
    /// returns it once it is saved. The driver keeps serving meanwhile;
    /// a snapshot already being written is finished first.
    pub async fn snapshot_now(&self) -> Result<SnapshotEnvelope, ProposeError> {
        self.request(|reply| Request::Snapshot { reply }).await
    }

    /// The `RaftService` that feeds peer messages to this replica.
    pub fn raft_server(&self) -> RaftServer {
        RaftServer {
            me: self.id,
            inbound: self.inbound.clone(),
            transport: self.transport.clone(),
        }
    }
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

struct Pending {
    index: u64,
    reply: oneshot::Sender<Result<Outcome, ProposeError>>,
}

struct Driver {
    id: u64,
    /// Where test-only failpoints are armed (see `failpoints`).
    #[cfg(feature = "failpoints")]
    data_dir: PathBuf,
    node: RawNode<RaftStore>,
    store: RaftStore,
    machine: Arc<RwLock<Machine>>,
    applied: broadcast::Sender<AppliedEffects>,
    leadership: watch::Sender<Leadership>,
    status: watch::Sender<RaftStatus>,
    transport: Arc<Transport>,
    /// Proposal id -> where it went in the log and who waits for it.
    pending: HashMap<u64, Pending>,
    /// Log index -> proposal id, to find proposals whose slot was lost.
    pending_at: BTreeMap<u64, u64>,
    /// ReadIndex context -> who waits.
    reads: HashMap<u64, oneshot::Sender<Result<(), ProposeError>>>,
    /// Confirmed reads waiting for their index to be applied.
    ready_reads: Vec<(u64, oneshot::Sender<Result<(), ProposeError>>)>,
    /// Who waits for the next snapshot to be taken.
    snapshot_waiters: Vec<Waiter>,
    /// A snapshot was asked for (membership change, raft for a follower)
    /// and is taken as soon as none is being written.
    snapshot_due: bool,
    /// The snapshot being encoded and saved in the background, if any.
    snapshot: Option<InFlight>,
    snapshot_done: mpsc::UnboundedSender<snapshotter::Done>,
    before_save: Option<BeforeSave>,
    tracker: TaskTracker,
    stop: CancellationToken,
    next_id: u64,
    snapshot_entries: u64,
    snapshot_log_ratio: f64,
    keep_entries: u64,
    snapshot_bytes: u64,
    metrics: RaftMetrics,
}

impl Driver {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut inbound: mpsc::Receiver<Message>,
        mut feedback: mpsc::Receiver<Feedback>,
        mut snapshot_done: mpsc::UnboundedReceiver<snapshotter::Done>,
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
                    super::failpoints::driver_tick(&self.data_dir);
                    self.node.tick();
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
                    self.step(m);
                    for _ in 0..MAX_BATCH {
                        match inbound.try_recv() {
                            Ok(m) => self.step(m),
                            Err(_) => break,
                        }
                    }
                }
                Some(f) = feedback.recv() => self.on_feedback(f),
                Some(done) = snapshot_done.recv() => {
                    if let Err(e) = self.on_snapshot_done(done) {
                        break Err(e);
                    }
                }
            }
            if let Err(e) = self.on_ready().await {
                break Err(e);
            }
            if self.store.take_snapshot_wanted() {
                self.snapshot_due = true;
            }
            self.maybe_snapshot();
            self.publish_status();
        };
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(ProposeError::Stopped));
        }
        // A snapshot still being written sees the stop and ends without
        // writing, or finishes its one transaction; the tracker waits for
        // its thread. Who waited for it is told the replica stopped.
        result
    }

    fn step(&mut self, m: Message) {
        // Messages from replicas not in the configuration are still stepped:
        // raft-rs ignores what it must, and a joining replica needs them.
        if let Err(e) = self.node.step(m) {
            tracing::debug!("raft refused a peer message: {e}");
        }
    }

    fn on_feedback(&mut self, f: Feedback) {
        match f {
            Feedback::Unreachable(id) => self.node.report_unreachable(id),
            Feedback::SnapshotSent { to, ok } => {
                let status = if ok {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                };
                self.node.report_snapshot(to, status);
            }
        }
    }

    fn not_leader(&self) -> ProposeError {
        let leader = Some(self.node.raft.leader_id).filter(|id| *id != 0);
        ProposeError::NotLeader {
            leader,
            address: leader.and_then(|id| self.store.peers().get(&id).cloned()),
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

    fn handle(&mut self, r: Request) {
        match r {
            Request::Propose { cmd, reply } => self.propose(*cmd, reply),
            Request::ReadIndex { reply } => {
                let ctx = self.next_id();
                self.reads.insert(ctx, reply);
                self.node.read_index(ctx.to_le_bytes().to_vec());
            }
            Request::Membership { change, reply } => self.propose_membership(change, reply),
            Request::TransferLeader { to, reply } => {
                let result = if self.node.raft.state != StateRole::Leader {
                    Err(self.not_leader())
                } else if !self.node.raft.prs().conf().voters().contains(to) {
                    Err(ProposeError::Membership(format!(
                        "replica {to} is not a voter of this cluster"
                    )))
                } else {
                    self.node.transfer_leader(to);
                    Ok(())
                };
                let _ = reply.send(result);
            }
            // Started right after this batch's Ready, in `run`, so it
            // covers everything applied so far (or, while another is
            // being written, as soon as that one is done).
            Request::Snapshot { reply } => self.snapshot_waiters.push(reply),
        }
    }

    fn propose(&mut self, cmd: Command, reply: oneshot::Sender<Result<Outcome, ProposeError>>) {
        if self.node.raft.state != StateRole::Leader {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        let entry = LogEntry {
            v: LOG_FORMAT,
            at: now_millis(),
            cmd,
        };
        let data = serde_json::to_vec(&entry).expect("commands always serialize");
        let id = self.next_id();
        match self.node.propose(id.to_le_bytes().to_vec(), data) {
            Ok(()) => self.track(id, reply),
            Err(_) => {
                let _ = reply.send(Err(self.not_leader()));
            }
        }
    }

    /// Remembers a proposal just appended at the log's last index.
    fn track(&mut self, id: u64, reply: oneshot::Sender<Result<Outcome, ProposeError>>) {
        let index = self.node.raft.raft_log.last_index();
        self.pending.insert(id, Pending { index, reply });
        self.pending_at.insert(index, id);
    }

    fn propose_membership(
        &mut self,
        change: MembershipChange,
        reply: oneshot::Sender<Result<Outcome, ProposeError>>,
    ) {
        if self.node.raft.state != StateRole::Leader {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        let conf = self.node.raft.prs().conf();
        let (node_id, change_type, context) = match &change {
            MembershipChange::AddLearner { id, address } => {
                if conf.voters().contains(*id) {
                    let _ = reply.send(Err(ProposeError::Membership(format!(
                        "replica {id} is already a voter"
                    ))));
                    return;
                }
                // A log that still starts at index 1 (from before bootstrap
                // snapshots) is compacted first, so the learner starts from
                // a snapshot that carries the configuration.
                if self.store.snapshot_info().0 == 0 {
                    self.snapshot_due = true;
                }
                (*id, ConfChangeType::AddLearnerNode, address.clone())
            }
            MembershipChange::Promote { id } => (*id, ConfChangeType::AddNode, String::new()),
            MembershipChange::Remove { id } => {
                if !conf.voters().contains(*id) && !conf.learners().contains(id) {
                    let _ = reply.send(Err(ProposeError::Membership(format!(
                        "replica {id} is not a member"
                    ))));
                    return;
                }
                if conf.voters().ids().len() == 1 && conf.voters().contains(*id) {
                    let _ = reply.send(Err(ProposeError::Membership(
                        "cannot remove the last voter".into(),
                    )));
                    return;
                }
                (*id, ConfChangeType::RemoveNode, String::new())
            }
        };
        let mut cc = ConfChange::default();
        cc.set_change_type(change_type);
        cc.node_id = node_id;
        cc.context = context.into_bytes().into();
        let id = self.next_id();
        match self.node.propose_conf_change(id.to_le_bytes().to_vec(), cc) {
            Ok(()) => self.track(id, reply),
            Err(e) => {
                let _ = reply.send(Err(ProposeError::Membership(format!(
                    "{e} (one membership change at a time; retry when the last one is applied)"
                ))));
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
        // A leader may send before persisting (raft thesis 10.2.1).
        self.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.install_snapshot(snap).await?;
        }
        for rs in ready.take_read_states() {
            if let Ok(ctx) = <[u8; 8]>::try_from(&rs.request_ctx[..]) {
                if let Some(reply) = self.reads.remove(&u64::from_le_bytes(ctx)) {
                    self.ready_reads.push((rs.index, reply));
                }
            }
        }
        self.apply_entries(ready.take_committed_entries())?;
        let store = self.store.clone();
        let entries = ready.take_entries();
        let hard = ready.hs().cloned();
        tokio::task::spawn_blocking(move || store.persist(&entries, hard.as_ref()))
            .await
            .map_err(|e| StorageError::Io(e.to_string()))??;
        self.send(ready.take_persisted_messages());
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.set_commit(commit))
                .await
                .map_err(|e| StorageError::Io(e.to_string()))??;
        }
        self.send(light.take_messages());
        self.apply_entries(light.take_committed_entries())?;
        self.node.advance_apply();
        self.release_reads();
        Ok(())
    }

    fn send(&mut self, messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        for id in self.transport.send(messages) {
            self.node.report_unreachable(id);
        }
    }

    fn release_reads(&mut self) {
        let applied = self.machine.read().expect("state lock").applied;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ready_reads)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.ready_reads = waiting;
        for (_, reply) in done {
            let _ = reply.send(Ok(()));
        }
    }

    /// Applies the committed log at start, before serving: no messages are
    /// sent and nothing new is persisted at this point.
    fn catch_up(&mut self) -> Result<(), StorageError> {
        while self.node.has_ready() {
            let mut ready = self.node.ready();
            self.apply_entries(ready.take_committed_entries())?;
            self.store.persist(ready.entries(), ready.hs())?;
            let mut light = self.node.advance(ready);
            if let Some(commit) = light.commit_index() {
                self.store.set_commit(commit)?;
            }
            self.apply_entries(light.take_committed_entries())?;
            self.node.advance_apply();
        }
        Ok(())
    }

    async fn install_snapshot(&mut self, snap: Snapshot) -> Result<(), StorageError> {
        let env = SnapshotEnvelope::decode(&snap.data)?;
        let store = self.store.clone();
        let peers = env.peers.clone();
        let index = snap.get_metadata().index;
        tokio::task::spawn_blocking(move || store.apply_snapshot(&snap, &peers))
            .await
            .map_err(|e| StorageError::Io(e.to_string()))??;
        self.transport.set_peers(&env.peers);
        let mut m = self.machine.write().expect("state lock poisoned");
        m.state = env.state;
        m.applied = index;
        tracing::info!(index, "installed a snapshot from the leader");
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
            // Pending ReadIndex requests may never be answered now.
            let err = self.not_leader();
            for (_, reply) in self.reads.drain() {
                let _ = reply.send(Err(clone_err(&err)));
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

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), StorageError> {
        for entry in entries {
            let index = entry.index;
            let result = match entry.get_entry_type() {
                EntryType::EntryNormal => {
                    let mut m = self.machine.write().expect("state lock poisoned");
                    m.applied = index;
                    apply_entry(&mut m.state, &entry)
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let r = self.apply_conf_change(&entry);
                    self.machine.write().expect("state lock poisoned").applied = index;
                    r?
                }
            };
            super::refused::count(&result, &self.metrics);
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
            if let Some(p) = reply {
                self.pending_at.remove(&p.index);
                let _ = p.reply.send(outcome);
            }
            self.drop_lost_proposals(index);
        }
        Ok(())
    }

    /// Proposals at or below an applied index that were not matched lost
    /// their slot to another leader's entry: they will never apply.
    fn drop_lost_proposals(&mut self, applied: u64) {
        while let Some((&index, &id)) = self.pending_at.first_key_value() {
            if index > applied {
                break;
            }
            self.pending_at.remove(&index);
            if let Some(p) = self.pending.remove(&id) {
                let _ = p.reply.send(Err(self.dropped()));
            }
        }
    }

    fn apply_conf_change(
        &mut self,
        entry: &Entry,
    ) -> Result<edupool_core::state::Applied, StorageError> {
        let cc: ConfChangeV2 = if entry.get_entry_type() == EntryType::EntryConfChange {
            let v1 = ConfChange::parse_from_bytes(&entry.data)
                .map_err(|e| StorageError::Corrupt(e.to_string()))?;
            let mut peers = self.store.peers();
            match v1.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode
                    if !v1.context.is_empty() =>
                {
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
            let cs = match self.node.apply_conf_change(&v1) {
                Ok(cs) => cs,
                Err(e) => {
                    tracing::warn!("membership change not applied: {e}");
                    return Ok(Ok((Outcome::None, vec![])));
                }
            };
            self.store.set_conf_state(&cs, &peers)?;
            self.transport.set_peers(&peers);
            tracing::info!(voters = ?cs.voters, learners = ?cs.learners, "membership changed");
            return Ok(Ok((Outcome::None, vec![])));
        } else {
            ConfChangeV2::parse_from_bytes(&entry.data)
                .map_err(|e| StorageError::Corrupt(e.to_string()))?
        };
        // Joint changes are not proposed by edupool; apply them as raft says.
        if let Ok(cs) = self.node.apply_conf_change(&cc) {
            self.store.set_conf_state(&cs, &self.store.peers())?;
        }
        Ok(Ok((Outcome::None, vec![])))
    }

    /// The log bytes that `snapshot_entries` waits for: the last
    /// snapshot's size times the ratio, capped at half the log's limit so
    /// that a huge state is still snapshotted before that limit forces a
    /// snapshot that keeps no entries for lagging followers.
    fn log_bytes_for_snapshot(&self, snap_bytes: u64) -> u64 {
        let wanted = (snap_bytes as f64 * self.snapshot_log_ratio) as u64;
        wanted.min(self.snapshot_bytes / 2)
    }

    fn in_snapshot_turn(&self, applied: u64) -> bool {
        snapshot_turn(
            &self.store.conf_state().voters,
            self.id,
            applied,
            self.snapshot_entries,
        )
    }

    /// A copy of the state at the applied index, in its envelope. The
    /// state lock is held only for the copy, never for the encoding.
    fn snapshot_envelope(&self) -> SnapshotEnvelope {
        let m = self.machine.read().expect("state lock poisoned");
        let term = self.store.term(m.applied).unwrap_or(0);
        SnapshotEnvelope {
            v: SNAPSHOT_FORMAT,
            index: m.applied,
            term,
            peers: self.store.peers(),
            state: m.state.clone(),
        }
    }

    /// Starts a snapshot at the applied index in the background when one
    /// is due: enough entries applied since the last and a log large
    /// enough beside the last snapshot, the log over its size, or one
    /// asked for. Never while one is being written: the
    /// reasons wait, and the log's size is looked at again once that one
    /// has compacted it.
    fn maybe_snapshot(&mut self) {
        if self.snapshot.is_some() {
            return;
        }
        let applied = self.machine.read().expect("state lock").applied;
        let (snap_index, _, snap_bytes) = self.store.snapshot_info();
        let log_bytes = self.store.log_bytes();
        let too_big = log_bytes > self.snapshot_bytes;
        let by_entries = applied.saturating_sub(snap_index) >= self.snapshot_entries
            && log_bytes >= self.log_bytes_for_snapshot(snap_bytes)
            && self.in_snapshot_turn(applied);
        let asked = !self.snapshot_waiters.is_empty();
        let due = asked || (applied > snap_index && (self.snapshot_due || too_big || by_entries));
        if !due {
            // Nothing applied since the last snapshot: it already serves.
            self.snapshot_due = false;
            return;
        }
        self.snapshot_due = false;
        let copying = Instant::now();
        let env = self.snapshot_envelope();
        let copy = copying.elapsed();
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = env.index;
        meta.term = env.term;
        meta.set_conf_state(self.store.conf_state());
        // Never keep index 1: see `bootstrap`. A log over its size keeps
        // nothing behind the snapshot.
        let keep = if too_big { 0 } else { self.keep_entries };
        let compact_to = env.index.saturating_sub(keep).max(1);
        self.snapshot = Some(InFlight {
            index: env.index,
            waiters: std::mem::take(&mut self.snapshot_waiters),
        });
        let job = snapshotter::Job {
            env,
            snap,
            compact_to,
            copy,
            size_hint: snap_bytes as usize,
        };
        snapshotter::spawn(
            &self.tracker,
            self.store.clone(),
            job,
            self.stop.clone(),
            self.before_save.clone(),
            self.snapshot_done.clone(),
        );
    }

    /// Finishes the snapshot written in the background: answers who
    /// waited for it. A failed save stops the replica, as any failed
    /// write to the store does.
    fn on_snapshot_done(&mut self, done: snapshotter::Done) -> Result<(), StorageError> {
        let waiters = self.snapshot.take().map(|f| f.waiters).unwrap_or_default();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let env = match done.result {
            Ok(Written::Saved { env, bytes }) => {
                tracing::debug!(
                    replica = self.id,
                    leader = self.node.raft.state == StateRole::Leader,
                    index = done.index,
                    compact_to = done.compact_to,
                    bytes,
                    copy_ms = ms(done.copy),
                    encode_ms = ms(done.encode),
                    save_ms = ms(done.save),
                    "snapshot taken, log compacted"
                );
                let phases = &self.metrics.snapshot_duration;
                for (phase, took) in [
                    ("copy", done.copy),
                    ("encode", done.encode),
                    ("save", done.save),
                ] {
                    phases
                        .with_label_values(&[phase])
                        .observe(took.as_secs_f64());
                }
                env
            }
            Ok(Written::Superseded { env }) => {
                tracing::debug!(
                    index = done.index,
                    "snapshot not kept: the latest one is as new (installed from the leader meanwhile, or nothing applied since)"
                );
                env
            }
            Ok(Written::Abandoned) => {
                for w in waiters {
                    let _ = w.send(Err(ProposeError::Stopped));
                }
                return Ok(());
            }
            Err(e) => {
                for w in waiters {
                    let _ = w.send(Err(ProposeError::Storage(StorageError::Io(e.to_string()))));
                }
                return Err(e);
            }
        };
        let mut waiters = waiters;
        if let Some(last) = waiters.pop() {
            for w in waiters {
                let _ = w.send(Ok(env.clone()));
            }
            let _ = last.send(Ok(env));
        }
        Ok(())
    }

    fn publish_status(&mut self) {
        let raft = &self.node.raft;
        let peers = self.store.peers();
        let leader_id = Some(raft.leader_id).filter(|id| *id != 0);
        let conf = raft.prs().conf();
        let is_leader = raft.state == StateRole::Leader;
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
            snapshot_in_flight: self.snapshot.as_ref().map(|f| f.index),
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

fn clone_err(e: &ProposeError) -> ProposeError {
    match e {
        ProposeError::NotLeader { leader, address } => ProposeError::NotLeader {
            leader: *leader,
            address: address.clone(),
        },
        _ => ProposeError::Stopped,
    }
}

/// Starts a new cluster's log with a snapshot at index 1 that holds the
/// initial configuration. Every bootstrapping replica writes the same one,
/// and since the log proper starts after it, a replica that joins later
/// always begins from a snapshot, which carries the configuration, rather
/// than from entries that never held it.
fn bootstrap(store: &RaftStore, config: &ReplicaConfig) -> Result<(), StorageError> {
    let peers = store.peers();
    let env = SnapshotEnvelope {
        v: SNAPSHOT_FORMAT,
        index: 1,
        term: 1,
        peers: peers.clone(),
        state: State::default(),
    };
    let mut snap = Snapshot::default();
    let meta = snap.mut_metadata();
    meta.index = 1;
    meta.term = 1;
    meta.mut_conf_state().voters = config.voters();
    snap.data = env.encode().into();
    store.apply_snapshot(&snap, &peers)
}

/// Applies one normal log entry; entries that carry no command produce
/// nothing.
pub fn apply_entry(state: &mut State, entry: &Entry) -> edupool_core::state::Applied {
    if entry.data.is_empty() || entry.get_entry_type() != EntryType::EntryNormal {
        return Ok((Outcome::None, vec![]));
    }
    match serde_json::from_slice::<LogEntry>(&entry.data) {
        Ok(e) if e.v == LOG_FORMAT => {
            let applied = state.apply(e.cmd, e.at);
            super::refused::report(entry.index, &applied);
            applied
        }
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

/// Whether `applied` entries put replica `id` in its turn to snapshot by
/// entries: the voters take turns of `every` entries each, in the order
/// of their ids, so that they do not all encode and write a large
/// snapshot at the same moment (the entry count and the state's size,
/// hence the moment a snapshot falls due, are the same on all of them).
/// Not a voter (a learner catching up): any time.
fn snapshot_turn(voters: &[u64], id: u64, applied: u64, every: u64) -> bool {
    let mut voters = voters.to_vec();
    voters.sort_unstable();
    match voters.iter().position(|v| *v == id) {
        Some(slot) => (applied / every.max(1)) % voters.len() as u64 == slot as u64,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edupool_core::state::{JobClass, JobId, JobSpec, OnNodeLost};

    fn config(dir: &std::path::Path) -> ReplicaConfig {
        let mut c = ReplicaConfig::single(1, dir.to_path_buf(), Duration::from_millis(20));
        c.snapshot_entries = 2;
        c.snapshot_log_ratio = 0.0;
        c.keep_entries = 1;
        c
    }

    async fn start(dir: &std::path::Path) -> (Replica, CancellationToken, TaskTracker) {
        start_configured(config(dir))
    }

    fn start_configured(c: ReplicaConfig) -> (Replica, CancellationToken, TaskTracker) {
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let r = Replica::start(c, stop.clone(), &tracker).unwrap();
        (r, stop, tracker)
    }

    #[tokio::test]
    async fn a_log_over_its_size_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.snapshot_entries = 1_000_000;
        c.snapshot_bytes = 300;
        let (r, stop, tracker) = start_configured(c);
        for i in 0..20 {
            r.propose(Command::CreateTenant {
                name: format!("t{i}"),
                token_hash: format!("h{i}"),
            })
            .await
            .unwrap();
        }
        // Snapshots were taken and the log stays short.
        let mut status = r.watch_status();
        let settled = status.wait_for(|s| s.snapshot_index > 10 && s.log_entries < 5);
        tokio::time::timeout(Duration::from_secs(10), settled)
            .await
            .expect("the log is compacted by size")
            .unwrap();
        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }

    #[test]
    fn voters_take_turns_to_snapshot() {
        let turns = |id, applied| snapshot_turn(&[3, 1, 2], id, applied, 100);
        for (applied, whose) in [(0, 1), (99, 1), (100, 2), (250, 3), (300, 1), (1_334, 2)] {
            for id in 1..=3 {
                assert_eq!(turns(id, applied), id == whose, "replica {id} at {applied}");
            }
        }
        assert!(turns(4, 100), "a learner snapshots any time");
        assert!(snapshot_turn(&[1], 1, 12_345, 100), "one voter: always");
    }

    #[tokio::test]
    async fn a_snapshot_waits_for_a_log_as_large_as_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.snapshot_log_ratio = 1.0;
        // The log kept behind a snapshot counts too; keep none, so the
        // large entry leaves the log with the snapshot that holds it.
        c.keep_entries = 0;
        let (r, stop, tracker) = start_configured(c);
        let tenant = |name: String, hash_len: usize| Command::CreateTenant {
            name,
            token_hash: "h".repeat(hash_len),
        };
        // No snapshot yet: two entries make the first one due, and it
        // holds the large tenant.
        r.propose(tenant("big".into(), 20_000)).await.unwrap();
        r.propose(tenant("t0".into(), 8)).await.unwrap();
        status_until(&r, |s| {
            s.snapshot_bytes > 20_000 && s.snapshot_in_flight.is_none()
        })
        .await;
        let first = r.status();
        // Far more than two small entries: the log stays well below the
        // snapshot's size, so none is due.
        for i in 1..=30 {
            r.propose(tenant(format!("t{i}"), 8)).await.unwrap();
        }
        let after = r.status();
        assert_eq!(after.snapshot_index, first.snapshot_index, "{after:?}");
        assert_eq!(after.snapshot_in_flight, None, "{after:?}");
        assert!(after.log_entries >= 30, "{after:?}");
        // An entry that brings the log to the snapshot's size makes it due.
        r.propose(tenant("big2".into(), 25_000)).await.unwrap();
        let last = r.status().applied;
        status_until(&r, |s| s.snapshot_index >= last && s.log_entries <= 2).await;
        stop.cancel();
        tracker.close();
        tracker.wait().await;
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
        r.read_barrier().await.unwrap();
        let before = r.read(|s| s.clone());
        let hash = r.state_hash();
        // Snapshots were taken on the way (every 2 entries), so the restart
        // below starts from one and replays the rest of the log.
        assert!(r.status().snapshot_index > 0);
        stop.cancel();
        tracker.close();
        tracker.wait().await;

        let (r, stop, tracker) = start(dir.path()).await;
        // The log is replayed before the replica can be read.
        assert_eq!(r.read(|s| s.clone()), before);
        assert_eq!(r.state_hash(), hash);
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
            secret_env: Default::default(),
        };
        let out = r
            .propose(Command::SubmitJob {
                tenant: "zju".into(),
                spec,
            })
            .await
            .unwrap();
        assert_eq!(out, Outcome::Job(JobId(1)));
        let env = r.snapshot_now().await.unwrap();
        assert_eq!(env.state, r.read(|s| s.clone()));
        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }

    /// Waits (up to a generous deadline) until the published status
    /// satisfies `ok`.
    async fn status_until(r: &Replica, ok: impl Fn(&RaftStatus) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let status = r.status();
            if ok(&status) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "status never got there: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A hook that holds each snapshot between encoding and saving until
    /// the test lets it go, and tells the test which index it holds.
    fn held_snapshots() -> (
        BeforeSave,
        mpsc::UnboundedReceiver<u64>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (entered_tx, entered) = mpsc::unbounded_channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = std::sync::Mutex::new(released);
        let hook: BeforeSave = Arc::new(move |index| {
            let _ = entered_tx.send(index);
            let _ = released.lock().unwrap().recv();
        });
        (hook, entered, release)
    }

    /// A replica whose snapshots are held before their save (taken only
    /// on request), holding five tenants.
    async fn held_replica(
        dir: &std::path::Path,
    ) -> (
        Replica,
        mpsc::UnboundedReceiver<u64>,
        std::sync::mpsc::Sender<()>,
        CancellationToken,
        TaskTracker,
    ) {
        let mut c = config(dir);
        c.snapshot_entries = 1_000_000;
        let (hook, entered, release) = held_snapshots();
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let r = Replica::start_with(c, Some(hook), stop.clone(), &tracker).unwrap();
        for i in 0..5 {
            r.propose(tenant(i)).await.unwrap();
        }
        (r, entered, release, stop, tracker)
    }

    fn tenant(i: usize) -> Command {
        Command::CreateTenant {
            name: format!("t{i}"),
            token_hash: format!("h{i}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn proposals_commit_while_a_snapshot_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (r, mut entered, release, stop, tracker) = held_replica(dir.path()).await;
        let before = r.status().snapshot_index;
        let taking = tokio::spawn({
            let r = r.clone();
            async move { r.snapshot_now().await }
        });
        let index = entered.recv().await.unwrap();
        // The status is published by the driver's loop: wait for it.
        status_until(&r, |s| s.snapshot_in_flight == Some(index)).await;

        // The snapshot is held before its save, and the driver goes on:
        // proposals commit, are applied, and a second request waits.
        for i in 5..25 {
            r.propose(tenant(i)).await.unwrap();
        }
        r.read_barrier().await.unwrap();
        assert_eq!(r.read(|s| s.tenants().count()), 25);
        assert!(!taking.is_finished());
        assert_eq!(r.status().snapshot_index, before);
        let second = tokio::spawn({
            let r = r.clone();
            async move { r.snapshot_now().await }
        });

        release.send(()).unwrap();
        let env = taking.await.unwrap().unwrap();
        assert_eq!(env.index, index);
        assert_eq!(env.state.tenants().count(), 5);
        // The second snapshot starts after the first is saved and covers
        // what was applied meanwhile.
        let later = entered.recv().await.unwrap();
        assert!(later >= index + 20, "{later} after {index}");
        release.send(()).unwrap();
        let env = second.await.unwrap().unwrap();
        assert_eq!(env.state.tenants().count(), 25);
        status_until(&r, |s| {
            s.snapshot_index == later && s.snapshot_in_flight.is_none()
        })
        .await;

        // A restart from the background snapshot (and the log after it)
        // restores exactly the state.
        r.propose(tenant(25)).await.unwrap();
        let state = r.read(|s| s.clone());
        let hash = r.state_hash();
        drop(release);
        stop.cancel();
        tracker.close();
        tracker.wait().await;
        let (r, stop, tracker) = start(dir.path()).await;
        assert_eq!(r.read(|s| s.clone()), state);
        assert_eq!(r.state_hash(), hash);
        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }

    /// Encoding a snapshot yields the CPU to the threads that serve: it
    /// runs on a thread of its own at a lower priority, and the driver's
    /// threads keep theirs.
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshots_are_written_at_a_lower_priority() {
        let nice = || rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let hook: BeforeSave = Arc::new(move |_| {
            let name = std::thread::current().name().map(String::from);
            let _ = seen_tx.send((name, nice()));
        });
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let r =
            Replica::start_with(config(dir.path()), Some(hook), stop.clone(), &tracker).unwrap();
        let ours = nice();
        r.propose(tenant(0)).await.unwrap();
        r.snapshot_now().await.unwrap();
        let (name, theirs) = seen.recv().await.unwrap();
        assert_eq!(name.as_deref(), Some("edupool-snapshot"));
        assert_eq!(theirs, (ours + snapshotter::SNAPSHOT_NICE).min(19));
        assert_eq!(nice(), ours);
        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_during_a_snapshot_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (r, mut entered, release, stop, tracker) = held_replica(dir.path()).await;
        let before = r.status().snapshot_index;
        let state = r.read(|s| s.clone());
        let taking = tokio::spawn({
            let r = r.clone();
            async move { r.snapshot_now().await }
        });
        entered.recv().await.unwrap();
        stop.cancel();
        release.send(()).unwrap();
        tracker.close();
        tracker.wait().await;
        assert!(matches!(taking.await.unwrap(), Err(ProposeError::Stopped)));

        let store = RaftStore::open(&dir.path().join("raft.redb"), &[]).unwrap();
        assert_eq!(store.snapshot_info().0, before, "nothing was saved");
        drop(store);
        let (r, stop, tracker) = start(dir.path()).await;
        assert_eq!(r.read(|s| s.clone()), state);
        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
