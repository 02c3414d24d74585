//! The gRPC services: `jobs` (tenants), `admin` (cluster admins) and
//! `agents` (node sessions); authentication; and the one place where
//! domain errors become `tonic::Status`.

pub mod admin;
pub mod agents;
pub mod convert;
pub mod jobs;

use sha2::{Digest, Sha256};
use tonic::{Code, Request, Status};

use crate::raft::{ProposeError, Replica};
use crate::state::Rejection;

/// Metadata key naming the leader when a follower refuses a write.
pub const LEADER_METADATA: &str = "x-edupool-leader";

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
        ProposeError::NotLeader { leader } => {
            let mut s = Status::unavailable(
                "this scheduler replica is not the leader; retry against the leader",
            );
            if let Some(id) = leader {
                if let Ok(v) = id.to_string().parse() {
                    s.metadata_mut().insert(LEADER_METADATA, v);
                }
            }
            s
        }
        ProposeError::Stopped => Status::unavailable("the scheduler is shutting down; retry"),
        ProposeError::Storage(e) => Status::internal(format!("the scheduler's log failed: {e}")),
    }
}

fn rejection(r: Rejection) -> Status {
    let code = match &r {
        Rejection::TenantExists(_) => Code::AlreadyExists,
        Rejection::UnknownTenant(_)
        | Rejection::UnknownJob(_)
        | Rejection::UnknownNode(_)
        | Rejection::UnknownGpu { .. } => Code::NotFound,
        Rejection::JobFinished { .. }
        | Rejection::PoolEmpty
        | Rejection::NoNodeCanHold { .. }
        | Rejection::NotPending { .. }
        | Rejection::BadPlacement { .. }
        | Rejection::NotOnNode { .. }
        | Rejection::GpuNotFaulty { .. }
        | Rejection::GpuNotReset { .. } => Code::FailedPrecondition,
    };
    Status::new(code, r.to_string())
}
