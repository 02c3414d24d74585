//! The handle on a local replica that the rest of the scheduler holds:
//! propose commands, read the applied state or keep a private copy of it
//! (`mirror`), follow leadership, status and applied effects, change
//! membership, take snapshots. `start` opens
//! the store and starts the driver (`driver`), which does the work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use edupool_core::state::{Command, Indexed, Outcome, State};
use raft::prelude::{Message, Snapshot};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ReplicaConfig;
use crate::driver::{self, AppliedEffects, DriverEnd, Request};
use crate::feed::Feed;
use crate::machine::Machine;
use crate::metrics::RaftMetrics;
use crate::mirror::{Mirror, FEED_CAPACITY};
use crate::snapshot::{SnapshotEnvelope, SNAPSHOT_FORMAT};
use crate::snapshotter::BeforeSave;
use crate::status::RaftStatus;
use crate::step::{Leadership, MembershipChange, ProposeError};
use crate::storage::{RaftStore, StorageError};
use crate::transport::{RaftServer, Transport};

/// A handle on the local replica: propose commands, read the state.
#[derive(Clone)]
pub struct Replica {
    id: u64,
    requests: mpsc::Sender<Request>,
    machine: Arc<RwLock<Machine>>,
    /// Applied entries, for copies of the state (`mirror`).
    feed: Feed,
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
    pub(crate) fn start_with(
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
        let (state, applied) = match store.snapshot_info() {
            (0, _, _) => (State::default(), 0),
            _ => {
                let env = SnapshotEnvelope::decode(&store.snapshot_data().data)?;
                (env.state, env.index)
            }
        };
        let machine = Arc::new(RwLock::new(Machine {
            state: Indexed::new(state),
            applied,
        }));
        let feed = Feed::default();
        let started = driver::start(
            &config,
            store,
            machine.clone(),
            feed.clone(),
            before_save,
            shutdown,
            tracker,
        )?;
        Ok(Replica {
            id: config.id,
            requests: started.requests,
            machine,
            feed,
            applied: started.applied,
            leadership: started.leadership,
            status: started.status,
            inbound: started.inbound,
            transport: started.transport,
            end: started.end,
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

    /// Reads the applied state (this replica's view; may lag the leader),
    /// with the planner's indexes beside it.
    pub fn read<R>(&self, f: impl FnOnce(&Indexed) -> R) -> R {
        f(&self.machine.read().expect("state lock poisoned").state)
    }

    /// `read`, with the index of the last entry the state reflects.
    pub fn read_at<R>(&self, f: impl FnOnce(&State) -> R) -> (u64, R) {
        let m = self.machine.read().expect("state lock poisoned");
        (m.applied, f(&m.state))
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
        f: impl FnOnce(&Indexed) -> R,
    ) -> Result<R, ProposeError> {
        self.read_barrier().await?;
        Ok(self.read(f))
    }

    /// The applied index and the SHA-256 (hex) of the serialized state at
    /// that index: replicas at the same index show the same hash.
    pub fn state_hash(&self) -> (u64, String) {
        let m = self.machine.read().expect("state lock poisoned");
        (m.applied, hash(m.state.state()))
    }

    /// A private copy of the applied state, kept current from the
    /// entries the driver applies: a long reader (the planner) reads it
    /// without holding the driver's lock. Copying takes the read lock
    /// once, for as long as cloning the state takes.
    pub fn mirror(&self) -> Mirror {
        Mirror::start(self.machine.clone(), self.feed.clone(), FEED_CAPACITY)
    }

    /// `mirror`, with a feed of `capacity` batches.
    #[cfg(test)]
    pub(crate) fn mirror_with_capacity(&self, capacity: usize) -> Mirror {
        Mirror::start(self.machine.clone(), self.feed.clone(), capacity)
    }

    /// Drops every copy from the feed, as installing a snapshot does.
    #[cfg(test)]
    pub(crate) fn cut_feed(&self) {
        self.feed.cut();
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

/// The SHA-256 (hex) of a state's JSON form.
pub(crate) fn hash(state: &State) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(state).expect("the state always serializes");
    hex::encode(Sha256::digest(bytes))
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
