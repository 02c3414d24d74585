//! The gRPC services: `jobs` (tenants), `admin` (cluster admins),
//! `agents` (node sessions), `cluster` (replica set) and `usage` (ledger,
//! prices, budgets); the job streams (`streams`, with the change history
//! in `changes`); authentication;
//! read consistency; and the one place where domain errors become
//! `tonic::Status`.

pub mod access;
pub mod admin;
pub mod agents;
pub mod changes;
pub mod cluster;
pub mod convert;
pub mod deadline;
pub mod jobs;
pub mod paging;
pub mod resources;
pub mod retry_info;
pub mod security;
pub mod streams;
pub mod usage;

#[cfg(test)]
mod authz_tests;
#[cfg(test)]
mod convert_proptests;
#[cfg(test)]
mod images_tests;
#[cfg(test)]
mod input_tests;
#[cfg(test)]
mod list_tests;
#[cfg(test)]
mod secret_env_tests;

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tonic::{Code, Request, Status};

use access::RateLimiter;
pub use access::{RateLimit, Rpc};

use crate::raft::{ProposeError, Replica};
use crate::state::{Actor, AuditResult, Command, Rejection, Role};

/// Metadata key naming the leader when a follower refuses a write: the
/// address the leader serves on (`host:port`).
pub const LEADER_METADATA: &str = "x-edupool-leader";
/// Metadata key with the leader's replica id, beside `LEADER_METADATA`.
pub const LEADER_ID_METADATA: &str = "x-edupool-leader-id";
/// Request metadata `x-edupool-stale-ok: true` lets a replica answer a read
/// from its own applied state, without confirming it is current.
pub const STALE_OK_METADATA: &str = "x-edupool-stale-ok";

/// Makes a read linearizable (raft ReadIndex) unless the caller said stale
/// data is fine. Followers serve both kinds.
pub async fn read_barrier<T>(replica: &Replica, req: &Request<T>) -> Result<(), Status> {
    let stale_ok = req
        .metadata()
        .get(STALE_OK_METADATA)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    if stale_ok {
        return Ok(());
    }
    barrier_within(replica, READ_BARRIER_TIMEOUT)
        .await
        .map_err(status)
}

/// The read barrier, given up after `limit`. Why it was not confirmed
/// depends on who asks: a follower sends the read to the leader it knows
/// (or knows none), a leader asks its peers and may be too busy or cut
/// off to hear back.
async fn barrier_within(replica: &Replica, limit: Duration) -> Result<(), ProposeError> {
    match tokio::time::timeout(limit, replica.read_barrier()).await {
        Ok(r) => r,
        Err(_) if replica.leadership().borrow().is_leader => {
            Err(ProposeError::ReadUnconfirmed { waited: limit })
        }
        Err(_) => Err(replica.not_leader()),
    }
}

/// How long a linearizable read waits for a quorum before it gives up (a
/// replica cut off from the leader cannot confirm anything).
const READ_BARRIER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Who is calling: the token's id and name, its role and its tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub token_id: String,
    pub name: String,
    pub role: Role,
    /// The tenant of a tenant-admin or member token.
    pub tenant: Option<String>,
}

/// The id the bootstrap admin token (`--admin-token`) is known by.
pub const BOOTSTRAP_ADMIN_ID: &str = "bootstrap-admin";
/// The id the agent token given at start (`--agent-token`) is known by.
pub const BOOTSTRAP_AGENT_ID: &str = "bootstrap-agent";

impl Caller {
    fn bootstrap(role: Role) -> Caller {
        let id = match role {
            Role::Agent => BOOTSTRAP_AGENT_ID,
            _ => BOOTSTRAP_ADMIN_ID,
        };
        Caller {
            token_id: id.into(),
            name: id.into(),
            role,
            tenant: None,
        }
    }

    /// The tenant a job call is scoped to; `None` for roles that see every
    /// tenant (admin, auditor).
    pub fn tenant_scope(&self) -> Option<&str> {
        if self.role.is_tenant_role() {
            self.tenant.as_deref()
        } else {
            None
        }
    }

    /// Whether the caller may see this tenant's objects.
    pub fn sees_tenant(&self, tenant: &str) -> bool {
        self.tenant_scope().is_none_or(|t| t == tenant)
    }

    /// The audit trail's record of who this is.
    pub fn actor(&self) -> Actor {
        Actor {
            token: self.token_id.clone(),
            name: self.name.clone(),
            role: Some(self.role),
            tenant: self.tenant.clone(),
        }
    }

    /// `cmd` wrapped so that applying it also records who did it.
    pub fn audited(&self, rpc: Rpc, target: impl Into<String>, cmd: Command) -> Command {
        Command::Audited {
            actor: self.actor(),
            action: rpc.action().into(),
            target: target.into(),
            cmd: Box::new(cmd),
        }
    }
}

/// Checks bearer tokens and the request rate per token. Tokens are compared
/// by their SHA-256 hashes, so neither the state nor this struct keeps a
/// usable secret.
#[derive(Clone)]
pub struct Auth {
    admin_hash: String,
    agent_hash: String,
    replica: Replica,
    limiter: std::sync::Arc<RateLimiter>,
}

impl Auth {
    pub fn new(admin_token: &str, agent_token: &str, replica: Replica) -> Self {
        Self::with_rate_limit(admin_token, agent_token, replica, RateLimit::default())
    }

    pub fn with_rate_limit(
        admin_token: &str,
        agent_token: &str,
        replica: Replica,
        limit: RateLimit,
    ) -> Self {
        Auth {
            admin_hash: token_hash(admin_token),
            agent_hash: token_hash(agent_token),
            replica,
            limiter: std::sync::Arc::new(RateLimiter::new(limit)),
        }
    }

    /// Who presents the request's token, after its rate limit allows it.
    pub fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let caller = self.identify(req)?;
        // Agents speak over one long-lived session; the limit is for calls.
        if caller.role != Role::Agent {
            if let Err(wait) = self.limiter.take(&caller.token_id, Instant::now()) {
                return Err(rate_limited(&caller, wait));
            }
        }
        Ok(caller)
    }

    fn identify<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let value = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| {
                Status::unauthenticated(
                    "no token given: pass --token or set EDUPOOL_TOKEN (metadata 'authorization: Bearer <token>')",
                )
            })?
            .to_str()
            .map_err(|_| Status::unauthenticated("the authorization header is not valid text"))?;
        let token = value
            .strip_prefix("Bearer ")
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header must be 'Bearer <token>'")
            })?
            .trim();
        let hash = token_hash(token);
        if constant_time_eq(&hash, &self.admin_hash) {
            return Ok(Caller::bootstrap(Role::Admin));
        }
        if constant_time_eq(&hash, &self.agent_hash) {
            return Ok(Caller::bootstrap(Role::Agent));
        }
        let grant = self
            .replica
            .read(|s| s.token_by_hash(&hash))
            .ok_or_else(|| Status::unauthenticated("the token is not valid"))?;
        // The state holds no clock; each replica compares the expiry with
        // its own.
        if grant
            .expires_at
            .is_some_and(|t| t <= crate::control::now_millis())
        {
            return Err(Status::unauthenticated(format!(
                "token {} has expired; ask for a new one",
                grant.id
            )));
        }
        Ok(Caller {
            token_id: grant.id,
            name: grant.name,
            role: grant.role,
            tenant: grant.tenant,
        })
    }

    /// The caller, if its role admits `rpc`. A denied mutating call is
    /// counted among the refused calls (where this replica can write).
    pub async fn authorize<T>(&self, req: &Request<T>, rpc: Rpc) -> Result<Caller, Status> {
        self.authorize_on(req, rpc, "").await
    }

    /// `authorize` for a call on `target` (a tenant, node, job or token),
    /// which a denial's refused-call count names as its latest target.
    pub async fn authorize_on<T>(
        &self,
        req: &Request<T>,
        rpc: Rpc,
        target: &str,
    ) -> Result<Caller, Status> {
        let caller = self.caller(req)?;
        match rpc.denial(caller.role) {
            None => Ok(caller),
            Some(why) => Err(self
                .deny(&caller, rpc, &convert::truncate(target), why)
                .await),
        }
    }

    /// A PERMISSION_DENIED for `why`, counted among the refused calls when the
    /// call would have changed something.
    pub async fn deny(&self, caller: &Caller, rpc: Rpc, target: &str, why: String) -> Status {
        if rpc.is_mutating() {
            let record = Command::RecordAudit {
                actor: caller.actor(),
                action: rpc.action().into(),
                target: target.into(),
                result: AuditResult::Denied(why.clone()),
            };
            // Best effort: a follower cannot write, a replica without a
            // quorum cannot commit, and the denial stands either way.
            match tokio::time::timeout(AUDIT_WRITE_TIMEOUT, self.replica.propose(record)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!("denial not recorded in the audit trail: {e}"),
                Err(_) => {
                    tracing::warn!("denial not recorded in the audit trail: no commit in time")
                }
            }
        }
        Status::permission_denied(why)
    }
}

/// How long recording a denial may hold up the denied call's answer.
const AUDIT_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// RESOURCE_EXHAUSTED with when to retry: `retry-after` (whole seconds, as
/// HTTP has it), `x-edupool-retry-after-ms`, and a google.rpc.RetryInfo
/// detail for clients that read rich errors.
fn rate_limited(caller: &Caller, wait: Duration) -> Status {
    let ms = wait.as_millis().max(1) as u64;
    let details = retry_info::encode(wait);
    let mut s = Status::with_details(
        Code::ResourceExhausted,
        format!(
            "token {} is over its request rate; retry in {ms} ms",
            caller.token_id
        ),
        details.into(),
    );
    let secs = ms.div_ceil(1000).to_string();
    if let Ok(v) = secs.parse() {
        s.metadata_mut().insert("retry-after", v);
    }
    if let Ok(v) = ms.to_string().parse() {
        s.metadata_mut().insert(RETRY_AFTER_MS_METADATA, v);
    }
    s
}

/// Metadata key on RESOURCE_EXHAUSTED: milliseconds until a retry may pass.
pub const RETRY_AFTER_MS_METADATA: &str = "x-edupool-retry-after-ms";

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: a prefix that says what it is, then 256 random bits.
pub fn new_token(prefix: &str) -> String {
    format!("{prefix}_{}", hex::encode(rand::random::<[u8; 32]>()))
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The one mapping from domain errors to gRPC statuses.
pub fn status(err: ProposeError) -> Status {
    match err {
        ProposeError::Rejected(r) => rejection(r),
        ProposeError::NotLeader { leader, address } => leader_hint(
            Status::unavailable(match &address {
                Some(a) => format!("this scheduler replica is not the leader; the leader is at {a}"),
                None => "this scheduler replica is not the leader and knows no leader yet; retry shortly".into(),
            }),
            leader,
            address,
        ),
        ProposeError::Dropped { leader, address } => leader_hint(
            Status::unavailable(
                "leadership changed before the request was committed; it was not applied, retry against the leader",
            ),
            leader,
            address,
        ),
        ProposeError::ReadUnconfirmed { waited } => Status::unavailable(format!(
            "the read could not be confirmed by a quorum within {} s (the scheduler is overloaded or cut off from its peers); retry, or pass {STALE_OK_METADATA}: true (edupoolctl --stale-ok) to read this replica's state unconfirmed",
            waited.as_secs_f64()
        )),
        ProposeError::Membership(m) => Status::failed_precondition(m),
        ProposeError::Stopped => Status::unavailable("the scheduler is shutting down; retry"),
        ProposeError::Storage(e) => Status::internal(format!("the scheduler's log failed: {e}")),
    }
}

/// Adds where the leader is to an UNAVAILABLE status, so clients follow it.
fn leader_hint(mut s: Status, leader: Option<u64>, address: Option<String>) -> Status {
    if let Some(v) = address.and_then(|a| a.parse().ok()) {
        s.metadata_mut().insert(LEADER_METADATA, v);
    }
    if let Some(v) = leader.and_then(|id| id.to_string().parse().ok()) {
        s.metadata_mut().insert(LEADER_ID_METADATA, v);
    }
    s
}

fn rejection(r: Rejection) -> Status {
    let code = match &r {
        Rejection::TenantExists(_) | Rejection::RequestIdReused { .. } => Code::AlreadyExists,
        Rejection::BadToken(_) | Rejection::BadArraySize { .. } | Rejection::BadRequestId(_) => {
            Code::InvalidArgument
        }
        Rejection::NotASubmission | Rejection::Inconsistent { .. } => Code::Internal,
        Rejection::UnknownToken(_)
        | Rejection::UnknownTenant(_)
        | Rejection::UnknownJob(_)
        | Rejection::UnknownNode(_)
        | Rejection::UnknownGpu { .. } => Code::NotFound,
        Rejection::BadPrice(_) | Rejection::UnknownGpuModel(_) | Rejection::BadBudget(_) => {
            Code::InvalidArgument
        }
        Rejection::OverBudget { .. } => Code::FailedPrecondition,
        Rejection::JobFinished { .. }
        | Rejection::PoolEmpty
        | Rejection::NoNodeCanHold { .. }
        | Rejection::NotPending { .. }
        | Rejection::BadPlacement { .. }
        | Rejection::NotOnNode { .. }
        | Rejection::Infeasible(_)
        | Rejection::NotPreemptible { .. }
        | Rejection::GpuNotFaulty { .. }
        | Rejection::GpuNotReset { .. }
        | Rejection::TenantSuspended { .. } => Code::FailedPrecondition,
    };
    Status::new(code, convert::bounded_message(r.to_string()))
}

#[cfg(test)]
mod read_barrier_tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::raft::{MembershipChange, ReplicaConfig};

    /// A leader that can no longer confirm a read: a second voter that
    /// never answers was added, and with ticks an hour apart the leader
    /// never checks its quorum, so it stays leader throughout.
    #[tokio::test]
    async fn an_unconfirmed_read_on_the_leader_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let config = ReplicaConfig::single(1, dir.path().join("a"), Duration::from_secs(3600));
        let leader = Replica::start(config, stop.clone(), &tracker).unwrap();
        leader.leadership().wait_for(|l| l.is_leader).await.unwrap();
        barrier_within(&leader, Duration::from_secs(60))
            .await
            .unwrap();
        // Nothing listens on port 1 of loopback.
        let address = "127.0.0.1:1".to_string();
        leader
            .change_membership(MembershipChange::AddLearner { id: 2, address })
            .await
            .unwrap();
        leader
            .change_membership(MembershipChange::Promote { id: 2 })
            .await
            .unwrap();

        let err = barrier_within(&leader, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(leader.leadership().borrow().is_leader);
        assert!(
            matches!(err, ProposeError::ReadUnconfirmed { .. }),
            "{err:?}"
        );
        let s = status(err);
        assert_eq!(s.code(), Code::Unavailable);
        assert!(
            s.message()
                .contains("could not be confirmed by a quorum within 0.2 s")
                && s.message().contains("x-edupool-stale-ok: true"),
            "{}",
            s.message()
        );
        assert!(s.metadata().get(LEADER_METADATA).is_none());

        // A replica waiting to join knows no leader, and says so.
        let mut joining = ReplicaConfig::single(3, dir.path().join("b"), Duration::from_secs(3600));
        joining.join = true;
        let joining = Replica::start(joining, stop.clone(), &tracker).unwrap();
        let err = barrier_within(&joining, Duration::from_millis(200))
            .await
            .unwrap_err();
        let s = status(err);
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("not the leader"), "{}", s.message());

        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
