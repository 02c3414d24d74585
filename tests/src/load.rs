//! A client that follows the leader across replicas, and a record of what
//! it was told: the load side of the fault tests and of `edupool-bench`.
//!
//! The client retries a call only when the answer proves it was not
//! applied (a follower's UNAVAILABLE naming the leader); any other failure
//! leaves the outcome unknown, and the record says so.

use std::time::{Duration, Instant};

use edupool_proto::v1 as pb;
use edupoolctl::client::{self, BearerToken, Clients};
use tonic::Code;

/// How long one call may take before its outcome counts as unknown.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HOPS: usize = 3;

/// What a call ended as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<T> {
    /// The scheduler said OK.
    Ok(T),
    /// The scheduler said no: nothing was applied.
    Refused(Code),
    /// No answer, or one that does not say: it may or may not be applied.
    Unknown,
}

pub struct LeaderClient {
    endpoints: Vec<String>,
    token: String,
    clients: Option<Clients>,
    next: usize,
}

impl LeaderClient {
    pub fn new(endpoints: &str, token: &str) -> LeaderClient {
        LeaderClient {
            endpoints: client::split_endpoints(endpoints),
            token: token.to_string(),
            clients: None,
            next: 0,
        }
    }

    async fn clients(&mut self) -> Option<Clients> {
        if self.clients.is_none() {
            // Start at a different replica each time so a dead one is skipped.
            let mut order = self.endpoints.clone();
            let shift = self.next % order.len().max(1);
            order.rotate_left(shift);
            self.next += 1;
            let options = client::ConnectOptions {
                tls: self.tls(),
                ..Default::default()
            };
            self.clients = client::connect_leader(&order, Some(&self.token), options)
                .await
                .ok();
        }
        self.clients.clone()
    }

    /// The test CA that vouches for these endpoints (see `crate::tls`).
    fn tls(&self) -> Option<client::ClientTls> {
        crate::tls::client_tls_for(&self.endpoints.join(","))
    }

    async fn follow(&mut self, status: &tonic::Status) -> bool {
        match client::leader_hint(status) {
            Some(addr) => {
                let auth = BearerToken::new(Some(&self.token)).expect("valid token");
                self.clients = client::connect_to(&addr, auth, self.tls().as_ref())
                    .await
                    .ok();
                self.clients.is_some()
            }
            None => {
                self.clients = None;
                false
            }
        }
    }

    /// Runs one call on the leader as far as known, following leader
    /// hints. A broken connection (a killed or cut-off replica) or a
    /// timeout leaves the outcome unknown: the call may have been applied.
    async fn call<T, Fut>(&mut self, op: impl Fn(Clients) -> Fut) -> Reply<T>
    where
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        for _ in 0..MAX_HOPS {
            let Some(c) = self.clients().await else {
                return Reply::Unknown;
            };
            match tokio::time::timeout(CALL_TIMEOUT, op(c)).await {
                Ok(Ok(v)) => return Reply::Ok(v),
                Ok(Err(s)) if s.code() == Code::Unavailable => {
                    if !self.follow(&s).await {
                        return Reply::Unknown;
                    }
                }
                Ok(Err(s)) if refusal(s.code()) => return Reply::Refused(s.code()),
                Ok(Err(_)) | Err(_) => {
                    self.clients = None;
                    return Reply::Unknown;
                }
            }
        }
        Reply::Unknown
    }

    pub async fn submit(&mut self, spec: pb::JobSpec) -> Reply<String> {
        self.call(|mut c| {
            let req = pb::SubmitJobRequest {
                array: 0,
                request_id: String::new(),
                spec: Some(spec.clone()),
            };
            async move {
                let r = c.jobs.submit_job(req).await?.into_inner();
                Ok(r.job.map(|j| j.id).unwrap_or_default())
            }
        })
        .await
    }

    /// The clients of the replica last reached (the leader, as far as known).
    pub fn connected(&self) -> Option<Clients> {
        self.clients.clone()
    }

    /// Creates a tenant (needs the admin token): a write that needs no node.
    pub async fn create_tenant(&mut self, name: &str) -> Reply<()> {
        self.call(|mut c| {
            let req = pb::CreateTenantRequest {
                name: name.to_string(),
            };
            async move { c.admin.create_tenant(req).await.map(drop) }
        })
        .await
    }

    pub async fn cancel(&mut self, id: &str) -> Reply<()> {
        self.call(|mut c| {
            let req = pb::CancelJobRequest {
                id: id.to_string(),
                reason: "load test".into(),
            };
            async move { c.jobs.cancel_job(req).await.map(drop) }
        })
        .await
    }
}

/// Codes by which the scheduler says "no" to a request it did not apply.
fn refusal(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::Unauthenticated
            | Code::ResourceExhausted
            | Code::OutOfRange
    )
}

/// A job that runs briefly on one GPU, named so it can be found again.
pub fn job(name: &str, seconds: &str) -> pb::JobSpec {
    pb::JobSpec {
        name: name.to_string(),
        command: vec!["sleep".into(), seconds.into()],
        gpus: 1,
        ..Default::default()
    }
}

/// What one load client saw.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// (name, id) of every submission answered OK.
    pub submitted: Vec<(String, String)>,
    /// Names of submissions whose outcome is unknown.
    pub unknown: Vec<String>,
    /// Ids of jobs whose cancel was answered OK.
    pub cancelled: Vec<String>,
    /// Latency of each OK'd submit.
    pub latencies: Vec<Duration>,
}

/// Submits (and now and then cancels) jobs named `{prefix}-{n}` until
/// `stop` says so.
pub async fn run_client(
    endpoints: String,
    token: String,
    prefix: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> History {
    use std::sync::atomic::Ordering;
    let mut c = LeaderClient::new(&endpoints, &token);
    let mut h = History::default();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let name = format!("{prefix}-{n}");
        let began = Instant::now();
        match c.submit(job(&name, "0.2")).await {
            Reply::Ok(id) => {
                h.latencies.push(began.elapsed());
                h.submitted.push((name, id));
            }
            Reply::Refused(_) => {}
            Reply::Unknown => {
                h.unknown.push(name);
                // Give a failing-over cluster a moment instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if n.is_multiple_of(5) {
            let pick = h.submitted.len() / 2;
            if let Some((_, id)) = h.submitted.get(pick).cloned() {
                if !h.cancelled.contains(&id) && c.cancel(&id).await == Reply::Ok(()) {
                    h.cancelled.push(id);
                }
            }
        }
    }
    h
}
