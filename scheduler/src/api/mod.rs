//! The gRPC services: `jobs` (tenants), `admin` (cluster admins),
//! `agents` (node sessions), `cluster` (replica set) and `usage` (ledger,
//! prices, budgets); authentication;
//! read consistency; and the one place where domain errors become
//! `tonic::Status`.

pub mod admin;
pub mod agents;
pub mod cluster;
pub mod convert;
pub mod jobs;
pub mod usage;

use sha2::{Digest, Sha256};
use tonic::{Code, Request, Status};

use crate::raft::{ProposeError, Replica};
use crate::state::Rejection;

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
    match tokio::time::timeout(READ_BARRIER_TIMEOUT, replica.read_barrier()).await {
        Ok(r) => r.map_err(status),
        Err(_) => Err(status(replica.not_leader())),
    }
}

/// How long a linearizable read waits for a quorum before it gives up (a
/// replica cut off from the leader cannot confirm anything).
const READ_BARRIER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Tenant(String),
    Agent,
}

impl Caller {
    /// The tenant a job call is scoped to; `None` for admins (all tenants).
    pub fn tenant_scope(&self) -> Result<Option<&str>, Status> {
        match self {
            Caller::Admin => Ok(None),
            Caller::Tenant(t) => Ok(Some(t)),
            Caller::Agent => Err(Status::permission_denied(
                "an agent token may only open agent sessions",
            )),
        }
    }

    pub fn require_admin(&self) -> Result<(), Status> {
        match self {
            Caller::Admin => Ok(()),
            _ => Err(Status::permission_denied("this call needs the admin token")),
        }
    }
}

/// Checks bearer tokens. Tokens are compared by their SHA-256 hashes, so
/// neither the state nor this struct keeps a usable secret.
#[derive(Clone)]
pub struct Auth {
    admin_hash: String,
    agent_hash: String,
    replica: Replica,
}

impl Auth {
    pub fn new(admin_token: &str, agent_token: &str, replica: Replica) -> Self {
        Auth {
            admin_hash: token_hash(admin_token),
            agent_hash: token_hash(agent_token),
            replica,
        }
    }

    pub fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
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
            return Ok(Caller::Admin);
        }
        if constant_time_eq(&hash, &self.agent_hash) {
            return Ok(Caller::Agent);
        }
        self.replica
            .read(|s| s.tenant_by_token_hash(&hash).map(str::to_string))
            .map(Caller::Tenant)
            .ok_or_else(|| Status::unauthenticated("the token is not valid"))
    }
}

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
        Rejection::TenantExists(_) => Code::AlreadyExists,
        Rejection::UnknownTenant(_)
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
        | Rejection::GpuNotReset { .. } => Code::FailedPrecondition,
    };
    Status::new(code, r.to_string())
}
