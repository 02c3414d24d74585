//! Raft messages between replicas over the tonic `RaftService`.
//!
//! Outbound, each peer has one link: a bounded queue drained by one task
//! that sends what is queued as one batch per RPC (at most `BATCH_BYTES`
//! unless one message is larger), in order, over a lazily (re)connecting
//! channel. Snapshots go apart, streamed in chunks of `SNAPSHOT_CHUNK`
//! bytes. A full queue or a failed RPC drops messages and tells the driver
//! the peer is unreachable; raft retransmits. Inbound, the service decodes
//! each batch into the driver's bounded queue; over TLS, `peer_only`
//! refuses a caller without a replica's certificate before its request
//! body is read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edupool_proto::v1 as pb;
use edupool_proto::v1::raft_service_client::RaftServiceClient;
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{ClientTlsConfig, Endpoint};

use super::storage::Peers;

/// Largest message a replica sends or accepts on `RaftService`, from an
/// authenticated peer: a batch, or a snapshot chunk. A batch holds up to
/// `BATCH_BYTES`, or one larger raft message alone (an entry holding a
/// job spec at the API's 1 MiB limit stays far below this).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// The raft messages of one `Deliver` batch, in bytes, before a batch is
/// closed.
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// The snapshot data one `InstallSnapshot` chunk carries.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// The largest snapshot a replica reassembles from a peer: this bounds
/// the state a cluster can replicate.
pub const MAX_SNAPSHOT_BYTES: usize = 1024 * 1024 * 1024;
/// Messages queued for one peer before new ones are dropped.
const QUEUE: usize = 4096;
/// Messages sent in one RPC at most.
const MAX_BATCH: usize = 256;
/// A snapshot stream that takes longer than this counts as failed.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);
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
                    let client = LinkClient::new(self.me, self.me_address.clone(), ep);
                    self.tasks.spawn(run_link(
                        client,
                        *id,
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

/// What one link sends through: batches on a client with a short
/// timeout, snapshots on one with a long one.
struct LinkClient {
    me: u64,
    me_address: Arc<Mutex<String>>,
    endpoint: Endpoint,
    batches: RaftServiceClient<tonic::transport::Channel>,
    snapshots: RaftServiceClient<tonic::transport::Channel>,
}

impl LinkClient {
    fn new(me: u64, me_address: Arc<Mutex<String>>, endpoint: Endpoint) -> LinkClient {
        let (batches, snapshots) = Self::clients(&endpoint);
        LinkClient {
            me,
            me_address,
            endpoint,
            batches,
            snapshots,
        }
    }

    fn clients(
        endpoint: &Endpoint,
    ) -> (
        RaftServiceClient<tonic::transport::Channel>,
        RaftServiceClient<tonic::transport::Channel>,
    ) {
        let client = |ep: Endpoint| {
            RaftServiceClient::new(ep.connect_lazy())
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        };
        (
            client(endpoint.clone()),
            client(endpoint.clone().timeout(SNAPSHOT_TIMEOUT)),
        )
    }

    /// Drops the connections and opens new ones on the next send. A
    /// connection that lost an RPC may be dead without knowing it: after
    /// a partition that dropped packets, the kernel retransmits on it
    /// with a growing backoff, or a firewall along the path has forgotten
    /// it, and a new connection gets through at once.
    fn reconnect(&mut self) {
        (self.batches, self.snapshots) = Self::clients(&self.endpoint);
    }

    fn address(&self) -> String {
        self.me_address.lock().expect("address lock").clone()
    }

    async fn deliver(&mut self, batch: Vec<Message>) -> Result<(), tonic::Status> {
        let request = pb::RaftBatch {
            from: self.me,
            from_address: self.address(),
            messages: batch
                .iter()
                .filter_map(|m| m.write_to_bytes().ok())
                .collect(),
        };
        self.batches.deliver(request).await.map(|_| ())
    }

    /// Streams a MsgSnapshot: the message without its data first, then
    /// the data in chunks of `SNAPSHOT_CHUNK`.
    async fn install_snapshot(&mut self, mut m: Message) -> Result<(), tonic::Status> {
        let data = m.mut_snapshot().take_data();
        let head = pb::SnapshotChunk {
            from: self.me,
            from_address: self.address(),
            message: m
                .write_to_bytes()
                .map_err(|e| tonic::Status::internal(e.to_string()))?,
            data: Vec::new(),
        };
        let pieces = data.len().div_ceil(SNAPSHOT_CHUNK);
        let chunks = tokio_stream::iter(0..pieces).map(move |i| pb::SnapshotChunk {
            data: data[i * SNAPSHOT_CHUNK..data.len().min((i + 1) * SNAPSHOT_CHUNK)].to_vec(),
            ..Default::default()
        });
        let stream = tokio_stream::once(head).chain(chunks);
        self.snapshots.install_snapshot(stream).await.map(|_| ())
    }
}

/// What a link sends next: a batch of raft messages, or one snapshot.
enum Send {
    Batch(Vec<Message>),
    Snapshot(Message),
}

/// Takes what is queued after `first` into one send: a snapshot alone,
/// else messages up to `MAX_BATCH` and `BATCH_BYTES`; the message that
/// did not fit is left in `carry` for the next send.
fn next_send(
    first: Message,
    queue: &mut mpsc::Receiver<Message>,
    carry: &mut Option<Message>,
) -> Send {
    if first.get_msg_type() == MessageType::MsgSnapshot {
        return Send::Snapshot(first);
    }
    let mut bytes = first.compute_size() as usize;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        let Ok(m) = queue.try_recv() else { break };
        let size = m.compute_size() as usize;
        if m.get_msg_type() == MessageType::MsgSnapshot || bytes + size > BATCH_BYTES {
            *carry = Some(m);
            break;
        }
        bytes += size;
        batch.push(m);
    }
    Send::Batch(batch)
}

async fn run_link(
    mut client: LinkClient,
    peer: u64,
    mut queue: mpsc::Receiver<Message>,
    feedback: mpsc::Sender<Feedback>,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    let mut carry = None;
    loop {
        let first = match carry.take() {
            Some(m) => m,
            None => tokio::select! {
                _ = stop.cancelled() => return,
                m = queue.recv() => match m { Some(m) => m, None => return },
            },
        };
        let send = next_send(first, &mut queue, &mut carry);
        let snapshot = matches!(send, Send::Snapshot(_));
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = async {
                match send {
                    Send::Batch(batch) => client.deliver(batch).await,
                    Send::Snapshot(m) => client.install_snapshot(m).await,
                }
            } => r,
        };
        if snapshot {
            let ok = result.is_ok();
            let _ = feedback.try_send(Feedback::SnapshotSent { to: peer, ok });
        }
        match result {
            Ok(()) => failures = 0,
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
                client.reconnect();
                // Back off a little so a dead peer costs no busy loop; what
                // queued meanwhile is stale and dropped, raft resends.
                let pause = Duration::from_millis(50 * u64::from(failures.min(10)));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                carry = None;
                while queue.try_recv().is_ok() {}
            }
        }
    }
}

/// Lets through only callers that show a replica's (`peer:<id>`)
/// certificate, before the request body is read: anyone else is refused
/// at once, whatever they send. Which replica may send what is checked
/// per message in `RaftServer`.
pub fn peer_only(request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    use edupool_identity::CertIdentity;
    match crate::peer_auth::client_identity(&request) {
        Some(CertIdentity::Peer(_)) => Ok(request),
        Some(other) => Err(tonic::Status::permission_denied(format!(
            "RaftService is for the pool's replicas: it needs a peer:<id> certificate, not {other}"
        ))),
        None => Err(tonic::Status::unauthenticated(
            "RaftService is for the pool's replicas: show a peer:<id> client certificate from the alliance's CA",
        )),
    }
}

/// The inbound side: the `RaftService` every replica serves.
#[derive(Clone)]
pub struct RaftServer {
    pub(super) me: u64,
    pub(super) inbound: mpsc::Sender<Message>,
    pub(super) transport: Arc<Transport>,
}

impl RaftServer {
    /// Over TLS, the caller must show replica `from`'s certificate.
    fn check_sender<T>(&self, request: &tonic::Request<T>, from: u64) -> Result<(), tonic::Status> {
        if self.transport.tls.is_some() {
            let identity = crate::peer_auth::client_identity(request);
            crate::peer_auth::check_peer(identity.as_ref(), from)?;
        }
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Message, tonic::Status> {
        let m = Message::parse_from_bytes(bytes).map_err(|e| {
            tonic::Status::invalid_argument(format!("undecodable raft message: {e}"))
        })?;
        if m.to != self.me {
            return Err(tonic::Status::failed_precondition(format!(
                "raft message for replica {} reached replica {}: check --peers",
                m.to, self.me
            )));
        }
        Ok(m)
    }

    fn accept(&self, m: Message) -> Result<(), tonic::Status> {
        // A full queue drops the message; raft resends.
        match self.inbound.try_send(m) {
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(tonic::Status::unavailable("this replica is shutting down"))
            }
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl pb::raft_service_server::RaftService for RaftServer {
    async fn deliver(
        &self,
        request: tonic::Request<pb::RaftBatch>,
    ) -> Result<tonic::Response<pb::RaftAck>, tonic::Status> {
        self.check_sender(&request, request.get_ref().from)?;
        let batch = request.into_inner();
        if !batch.from_address.is_empty() {
            self.transport.learn(batch.from, &batch.from_address);
        }
        for bytes in batch.messages {
            let m = self.decode(&bytes)?;
            self.accept(m)?;
        }
        Ok(tonic::Response::new(pb::RaftAck {}))
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<tonic::Streaming<pb::SnapshotChunk>>,
    ) -> Result<tonic::Response<pb::RaftAck>, tonic::Status> {
        let identity = crate::peer_auth::client_identity(&request);
        let mut chunks = request.into_inner();
        let head = chunks
            .message()
            .await?
            .ok_or_else(|| tonic::Status::invalid_argument("an empty snapshot stream"))?;
        if self.transport.tls.is_some() {
            crate::peer_auth::check_peer(identity.as_ref(), head.from)?;
        }
        let mut m = self.decode(&head.message)?;
        if m.get_msg_type() != MessageType::MsgSnapshot {
            return Err(tonic::Status::invalid_argument(format!(
                "InstallSnapshot carries a MsgSnapshot, not {:?}",
                m.get_msg_type()
            )));
        }
        let mut data = head.data;
        while let Some(chunk) = chunks.message().await? {
            if data.len() + chunk.data.len() > MAX_SNAPSHOT_BYTES {
                return Err(tonic::Status::resource_exhausted(format!(
                    "a snapshot over {} MiB is more than a replica accepts",
                    MAX_SNAPSHOT_BYTES >> 20
                )));
            }
            data.extend_from_slice(&chunk.data);
        }
        m.mut_snapshot().set_data(data.into());
        if !head.from_address.is_empty() {
            self.transport.learn(head.from, &head.from_address);
        }
        self.accept(m)?;
        Ok(tonic::Response::new(pb::RaftAck {}))
    }
}

#[cfg(test)]
mod tests {
    use raft::prelude::Entry;

    use super::*;

    fn append(bytes: usize) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        let mut e = Entry::default();
        e.set_data(vec![0u8; bytes].into());
        m.mut_entries().push(e);
        m
    }

    fn sizes(send: Send) -> Vec<usize> {
        match send {
            Send::Batch(b) => b.iter().map(|m| m.compute_size() as usize).collect(),
            Send::Snapshot(_) => panic!("a batch was expected"),
        }
    }

    #[test]
    fn batches_stay_within_their_byte_bound_and_a_snapshot_goes_alone() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut snapshot = Message::default();
        snapshot.set_msg_type(MessageType::MsgSnapshot);
        for m in [append(3 << 20), append(1 << 10), snapshot, append(1 << 10)] {
            tx.try_send(m).unwrap();
        }
        let mut carry = None;
        // 3 MiB queued behind 3 MiB would pass 4 MiB: it waits its turn.
        let first = sizes(next_send(append(3 << 20), &mut rx, &mut carry));
        assert_eq!(first.len(), 1);
        let second = sizes(next_send(carry.take().unwrap(), &mut rx, &mut carry));
        assert_eq!(second.len(), 2, "small messages join a batch");
        assert!(second.iter().sum::<usize>() <= BATCH_BYTES);
        let third = next_send(carry.take().unwrap(), &mut rx, &mut carry);
        assert!(
            matches!(third, Send::Snapshot(_)),
            "a snapshot is streamed alone"
        );
        assert!(carry.is_none());
        assert_eq!(
            sizes(next_send(rx.try_recv().unwrap(), &mut rx, &mut carry)).len(),
            1
        );
    }
}
