//! Observed state: the agents connected to this replica, kept in memory.
//!
//! What the log says should run is desired state; what agents report is
//! observed here, never replicated. The agent session handler and the
//! control loops use this registry to send orders to nodes and to ask a
//! node for a job's log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edupool_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use crate::state::{GpuInfo, Host};

/// A node's inventory as its agent reported it.
#[derive(Clone, Debug)]
pub struct Hello {
    pub gpus: Vec<GpuInfo>,
    pub agent_version: String,
    /// Its images and whether it runs host jobs, checked.
    pub software: crate::api::convert::Software,
    /// CPU and memory jobs may use there.
    pub host: Host,
}

#[derive(Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    nodes: HashMap<String, Session>,
    log_requests: HashMap<u64, oneshot::Sender<pb::LogChunk>>,
    next_id: u64,
}

struct Session {
    id: u64,
    /// The inventory the agent opened the session with.
    hello: Hello,
    tx: mpsc::Sender<pb::SchedulerMessage>,
    last_seen: Instant,
    last_seen_ms: i64,
    /// The agent's latest telemetry summary, by GPU UUID.
    telemetry: HashMap<String, pb::GpuTelemetry>,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("node '{0}' is not connected")]
    NotConnected(String),
    #[error("node '{0}' did not answer in time")]
    Timeout(String),
}

impl Sessions {
    /// Registers a node's session, replacing an older one; returns its id.
    pub fn open(
        &self,
        node: &str,
        hello: Hello,
        tx: mpsc::Sender<pb::SchedulerMessage>,
        now_ms: i64,
    ) -> u64 {
        crate::metrics::edge().agent_sessions_opened.inc();
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.nodes.insert(
            node.to_string(),
            Session {
                id,
                hello,
                tx,
                last_seen: Instant::now(),
                last_seen_ms: now_ms,
                telemetry: HashMap::new(),
            },
        );
        id
    }

    /// Notes a GPU health change in the session's inventory, so that a
    /// `NodeConnected` re-proposed from it carries the GPU as it is now.
    pub fn set_gpu_health(&self, node: &str, id: u64, gpu: &str, healthy: bool, reason: &str) {
        if let Some(s) = self.lock().nodes.get_mut(node).filter(|s| s.id == id) {
            for g in s.hello.gpus.iter_mut().filter(|g| g.uuid == gpu) {
                g.healthy = healthy;
                g.health_reason = reason.to_string();
            }
        }
    }

    /// Keeps the agent's latest telemetry summary.
    pub fn set_telemetry(&self, node: &str, id: u64, gpus: Vec<pb::GpuTelemetry>) {
        if let Some(s) = self.lock().nodes.get_mut(node).filter(|s| s.id == id) {
            s.telemetry = gpus.into_iter().map(|g| (g.gpu_uuid.clone(), g)).collect();
        }
    }

    /// The latest telemetry of a connected node's GPU.
    pub fn telemetry(&self, node: &str, gpu: &str) -> Option<pb::GpuTelemetry> {
        self.lock()
            .nodes
            .get(node)
            .and_then(|s| s.telemetry.get(gpu).cloned())
    }

    /// Removes the session if it is still the current one for the node.
    pub fn close(&self, node: &str, id: u64) -> bool {
        let mut inner = self.lock();
        if inner.nodes.get(node).is_some_and(|s| s.id == id) {
            inner.nodes.remove(node);
            return true;
        }
        false
    }

    pub fn touch(&self, node: &str, id: u64, now_ms: i64) {
        if let Some(s) = self.lock().nodes.get_mut(node).filter(|s| s.id == id) {
            s.last_seen = Instant::now();
            s.last_seen_ms = now_ms;
        }
    }

    /// What a connected node's agent reported when it opened its session.
    pub fn hello(&self, node: &str) -> Option<Hello> {
        self.lock().nodes.get(node).map(|s| s.hello.clone())
    }

    pub fn is_connected(&self, node: &str) -> bool {
        self.lock().nodes.contains_key(node)
    }

    pub fn last_seen_ms(&self, node: &str) -> Option<i64> {
        self.lock().nodes.get(node).map(|s| s.last_seen_ms)
    }

    /// Nodes whose session has been silent longer than `timeout`.
    pub fn silent_for(&self, timeout: Duration) -> Vec<(String, u64)> {
        self.lock()
            .nodes
            .iter()
            .filter(|(_, s)| s.last_seen.elapsed() > timeout)
            .map(|(n, s)| (n.clone(), s.id))
            .collect()
    }

    pub fn connected(&self) -> usize {
        self.lock().nodes.len()
    }

    /// Queues an order for a node; false if it is not connected or its
    /// queue is full (the reconciler resends on the next session).
    pub fn send(&self, node: &str, msg: pb::SchedulerMessage) -> bool {
        let tx = self.lock().nodes.get(node).map(|s| s.tx.clone());
        tx.is_some_and(|tx| tx.try_send(msg).is_ok())
    }

    /// Asks a node for a slice of a job's log.
    pub async fn read_log(
        &self,
        node: &str,
        mut req: pb::LogRequest,
        timeout: Duration,
    ) -> Result<pb::LogChunk, SessionError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut inner = self.lock();
            inner.next_id += 1;
            let id = inner.next_id;
            inner.log_requests.insert(id, tx);
            id
        };
        req.request_id = id;
        let msg = pb::SchedulerMessage {
            msg: Some(pb::scheduler_message::Msg::LogRequest(req)),
        };
        if !self.send(node, msg) {
            self.lock().log_requests.remove(&id);
            return Err(SessionError::NotConnected(node.to_string()));
        }
        let answer = tokio::time::timeout(timeout, rx).await;
        self.lock().log_requests.remove(&id);
        match answer {
            Ok(Ok(chunk)) => Ok(chunk),
            Ok(Err(_)) => Err(SessionError::NotConnected(node.to_string())),
            Err(_) => Err(SessionError::Timeout(node.to_string())),
        }
    }

    /// Delivers a node's answer to a log request.
    pub fn log_answer(&self, chunk: pb::LogChunk) {
        if let Some(tx) = self.lock().log_requests.remove(&chunk.request_id) {
            let _ = tx.send(chunk);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("sessions lock poisoned")
    }
}
