//! Raft messages between replicas over the tonic `RaftService`.
//!
//! Outbound, each peer has one link: a bounded queue drained by one task
//! that sends what is queued as one batch per RPC, in order, over a lazily
//! (re)connecting channel. A full queue or a failed RPC drops messages and
//! tells the driver the peer is unreachable; raft retransmits. Inbound, the
//! service decodes each batch into the driver's bounded queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edupool_proto::v1 as pb;
use edupool_proto::v1::raft_service_client::RaftServiceClient;
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{ClientTlsConfig, Endpoint};

use super::storage::Peers;

/// Largest raft batch a replica sends or accepts: snapshots travel in one
/// message, so this bounds the state a cluster can replicate.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// Messages queued for one peer before new ones are dropped.
const QUEUE: usize = 4096;
/// Messages sent in one RPC at most.
const MAX_BATCH: usize = 256;
/// An RPC to a peer that takes longer than this counts as failed, so a
/// paused peer does not hold its link forever.
const RPC_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// What a link tells the driver about delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feedback {
    Unreachable(u64),
    SnapshotSent { to: u64, ok: bool },
}

struct Link {
    address: String,
    queue: mpsc::Sender<Message>,
    stop: CancellationToken,
}

/// The outbound side: one link per peer.
pub struct Transport {
    me: u64,
    /// Where this replica serves, sent with every batch (empty until known).
    me_address: Arc<Mutex<String>>,
    links: Mutex<HashMap<u64, Link>>,
    /// TLS to the peers; `None`: plaintext (dev mode, in-process tests).
    tls: Option<ClientTlsConfig>,
    feedback: mpsc::Sender<Feedback>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Transport {
    pub fn new(
        me: u64,
        tls: Option<ClientTlsConfig>,
        feedback: mpsc::Sender<Feedback>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Transport> {
        Arc::new(Transport {
            me,
            me_address: Arc::new(Mutex::new(String::new())),
            links: Mutex::new(HashMap::new()),
            tls,
            feedback,
            tasks,
            shutdown,
        })
    }

    /// Opens links to new peers, re-opens those whose address changed and
    /// closes those no longer listed.
    pub fn set_peers(&self, peers: &Peers) {
        if let Some(a) = peers.get(&self.me) {
            a.clone_into(&mut self.me_address.lock().expect("address lock"));
        }
        let mut links = self.links.lock().expect("links lock");
        links.retain(|id, link| {
            let keep = peers.get(id) == Some(&link.address);
            if !keep {
                link.stop.cancel();
            }
            keep
        });
        for (id, address) in peers {
            if *id == self.me || links.contains_key(id) {
                continue;
            }
            let (queue, rx) = mpsc::channel(QUEUE);
            let stop = self.shutdown.child_token();
            match endpoint(address, self.tls.as_ref()) {
                Ok(ep) => {
                    self.tasks.spawn(run_link(
                        self.me,
                        self.me_address.clone(),
                        *id,
                        ep,
                        rx,
                        self.feedback.clone(),
                        stop.clone(),
                    ));
                }
                Err(e) => {
                    tracing::error!(peer = id, %address, "bad peer address: {e}");
                    continue;
                }
            }
            links.insert(
                *id,
                Link {
                    address: address.clone(),
                    queue,
                    stop,
                },
            );
        }
    }

    /// Opens a link to a replica that is not in the address book yet: a
    /// replica that joined empty learns the leader this way, from the
    /// leader's own messages, before any snapshot tells it the members.
    pub fn learn(&self, id: u64, address: &str) {
        let known = self.links.lock().expect("links lock").contains_key(&id);
        if !known && id != self.me {
            let mut peers: Peers = self
                .links
                .lock()
                .expect("links lock")
                .iter()
                .map(|(id, l)| (*id, l.address.clone()))
                .collect();
            peers.insert(id, address.to_string());
            self.set_peers(&peers);
        }
    }

    /// Queues messages for their peers; returns the peers that could not
    /// take them (unknown, or their queue is full).
    pub fn send(&self, messages: Vec<Message>) -> Vec<u64> {
        let links = self.links.lock().expect("links lock");
        let mut unreachable = Vec::new();
        for m in messages {
            let to = m.to;
            let ok = links.get(&to).is_some_and(|l| l.queue.try_send(m).is_ok());
            if !ok && !unreachable.contains(&to) {
                unreachable.push(to);
            }
        }
        unreachable
    }
}

fn endpoint(
    address: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, tonic::transport::Error> {
    let host_port = address.split_once("://").map_or(address, |(_, rest)| rest);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{host_port}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(RPC_TIMEOUT)
        .tcp_nodelay(true);
    match tls {
        Some(tls) => endpoint.tls_config(tls.clone()),
        None => Ok(endpoint),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_link(
    me: u64,
    me_address: Arc<Mutex<String>>,
    peer: u64,
    endpoint: Endpoint,
    mut queue: mpsc::Receiver<Message>,
    feedback: mpsc::Sender<Feedback>,
    stop: CancellationToken,
) {
    let mut client = RaftServiceClient::new(endpoint.connect_lazy())
        .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES);
    let mut failures = 0u32;
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            m = queue.recv() => match m { Some(m) => m, None => return },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let snapshot = batch
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgSnapshot);
        let request = pb::RaftBatch {
            from: me,
            from_address: me_address.lock().expect("address lock").clone(),
            messages: batch
                .iter()
                .filter_map(|m| m.write_to_bytes().ok())
                .collect(),
        };
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = client.deliver(request) => r,
        };
        let ok = result.is_ok();
        if snapshot {
            let _ = feedback.try_send(Feedback::SnapshotSent { to: peer, ok });
        }
        match result {
            Ok(_) => failures = 0,
            Err(status) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(50) {
                    tracing::debug!(
                        peer,
                        failures,
                        "raft message to peer failed: {}",
                        status.message()
                    );
                }
                let _ = feedback.try_send(Feedback::Unreachable(peer));
                // Back off a little so a dead peer costs no busy loop; what
                // queued meanwhile is stale and dropped, raft resends.
                let pause = Duration::from_millis(50 * u64::from(failures.min(10)));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                while queue.try_recv().is_ok() {}
            }
        }
    }
}

/// The inbound side: the `RaftService` every replica serves.
#[derive(Clone)]
pub struct RaftServer {
    pub(super) me: u64,
    pub(super) inbound: mpsc::Sender<Message>,
    pub(super) transport: Arc<Transport>,
}

#[tonic::async_trait]
impl pb::raft_service_server::RaftService for RaftServer {
    async fn deliver(
        &self,
        request: tonic::Request<pb::RaftBatch>,
    ) -> Result<tonic::Response<pb::RaftAck>, tonic::Status> {
        if self.transport.tls.is_some() {
            let identity = crate::tls::client_identity(&request);
            crate::tls::check_peer(identity.as_ref(), request.get_ref().from)?;
        }
        let batch = request.into_inner();
        if !batch.from_address.is_empty() {
            self.transport.learn(batch.from, &batch.from_address);
        }
        for bytes in batch.messages {
            let m = Message::parse_from_bytes(&bytes).map_err(|e| {
                tonic::Status::invalid_argument(format!("undecodable raft message: {e}"))
            })?;
            if m.to != self.me {
                return Err(tonic::Status::failed_precondition(format!(
                    "raft message for replica {} reached replica {}: check --peers",
                    m.to, self.me
                )));
            }
            // A full queue drops the message; raft resends.
            if let Err(mpsc::error::TrySendError::Closed(_)) = self.inbound.try_send(m) {
                return Err(tonic::Status::unavailable("this replica is shutting down"));
            }
        }
        Ok(tonic::Response::new(pb::RaftAck {}))
    }
}
