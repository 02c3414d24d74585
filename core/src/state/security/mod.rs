//! API tokens and their roles, tenant suspension (the kill switch), and
//! the stores of the audit trail: the replicated half of the scheduler's
//! access control.
//!
//! Tokens are kept only as SHA-256 hashes. Expiry is a time stamped on the
//! token; the state never reads a clock, so the API edge compares it with
//! its own. How the audit trail is kept (retention, refused calls) is in
//! `audit`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

mod audit;

pub use audit::{
    Actor, AuditDropped, AuditGap, AuditRecord, AuditResult, RefusedCalls, AUDIT_FIELD_BYTES,
    AUDIT_KEEP_MS, AUDIT_MAX_RECORDS, AUDIT_REFUSED_KEYS,
};

use super::outcome::{stop_tasks, Applied, Effect, Outcome, Rejection};
use super::types::{JobId, JobState, Millis};
use super::State;

/// What a token may do (docs/security.md, "Roles").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Its tenant's tokens and jobs, and its tenant's quota view.
    TenantAdmin,
    /// Submits jobs for its tenant, sees the tenant's jobs, controls its own.
    Member,
    /// Reads everything, the audit trail included; changes nothing.
    Auditor,
    /// Only the agent session.
    Agent,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::TenantAdmin,
        Role::Member,
        Role::Auditor,
        Role::Agent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::TenantAdmin => "tenant-admin",
            Role::Member => "member",
            Role::Auditor => "auditor",
            Role::Agent => "agent",
        }
    }

    /// Tenant-admins and members act for one tenant; the others for none.
    pub fn is_tenant_role(self) -> bool {
        matches!(self, Role::TenantAdmin | Role::Member)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                format!("unknown role '{s}': use admin, tenant-admin, member, auditor or agent")
            })
    }
}

/// One API token, without its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: String,
    /// Who or what it is for, for people.
    pub name: String,
    pub role: Role,
    /// The tenant of a tenant-admin or member token.
    pub tenant: Option<String>,
    pub created_at: Millis,
    /// Refused from this time on.
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
    /// The token id of who created it.
    pub created_by: String,
    /// SHA-256 (hex) of the secret.
    pub hash: String,
}

/// A tenant that may not start new work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    pub reason: String,
    pub since: Millis,
    pub by: String,
}

/// The security part of the replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// Token id -> token, revoked ones included (so they can be listed).
    tokens: std::collections::BTreeMap<String, ApiToken>,
    /// Hash of a live (not revoked) token -> its id.
    by_hash: std::collections::BTreeMap<String, String>,
    last_token: u64,
    suspended: std::collections::BTreeMap<String, Suspension>,
    /// Who submitted each job (token id), for members' control of their
    /// own. Shared strings, like the records below, so a snapshot's copy
    /// of the state does not copy each one.
    pub(in crate::state) owners: std::collections::BTreeMap<JobId, Arc<str>>,
    /// Accepted actions, oldest first (`audit`).
    pub(super) audit: VecDeque<Arc<AuditRecord>>,
    pub(super) last_audit: u64,
    /// Refused calls, one aggregate per caller, action and result.
    #[serde(default)]
    pub(super) refused: BTreeMap<String, RefusedCalls>,
    /// What retention and the bounds dropped, for the metric.
    #[serde(default)]
    pub(super) audit_dropped: AuditDropped,
}

/// A token as the API edge sees it when a caller presents it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenGrant {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub tenant: Option<String>,
    pub expires_at: Option<Millis>,
}

/// The id of a tenant's initial token (the one `CreateTenant` returns,
/// kept as a bare hash -> tenant map since the first version): `init-` and
/// the first 12 hex digits of its hash.
fn legacy_id(hash: &str) -> String {
    let end = hash.char_indices().nth(12).map_or(hash.len(), |(i, _)| i);
    format!("init-{}", &hash[..end])
}

impl State {
    // ------------------------------------------------------------ reads

    /// The live token with this hash. A tenant's initial token is a
    /// tenant-admin token of that tenant.
    pub fn token_by_hash(&self, hash: &str) -> Option<TokenGrant> {
        if let Some(t) = self
            .security
            .by_hash
            .get(hash)
            .and_then(|id| self.security.tokens.get(id))
        {
            return Some(TokenGrant {
                id: t.id.clone(),
                name: t.name.clone(),
                role: t.role,
                tenant: t.tenant.clone(),
                expires_at: t.expires_at,
            });
        }
        self.tokens.get(hash).map(|tenant| TokenGrant {
            id: legacy_id(hash),
            name: format!("{tenant} (initial)"),
            role: Role::TenantAdmin,
            tenant: Some(tenant.clone()),
            expires_at: None,
        })
    }

    /// Every token, revoked ones included, initial tenant tokens as
    /// tenant-admin tokens; sorted by id.
    pub fn api_tokens(&self) -> Vec<ApiToken> {
        let mut all: Vec<ApiToken> = self.security.tokens.values().cloned().collect();
        all.extend(self.tokens.iter().map(|(hash, tenant)| {
            let created_at = self.tenants.get(tenant).map_or(0, |t| t.created_at);
            ApiToken {
                id: legacy_id(hash),
                name: format!("{tenant} (initial)"),
                role: Role::TenantAdmin,
                tenant: Some(tenant.clone()),
                created_at,
                expires_at: None,
                revoked_at: None,
                created_by: "admin".into(),
                hash: hash.clone(),
            }
        }));
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    pub fn api_token(&self, id: &str) -> Option<ApiToken> {
        self.api_tokens().into_iter().find(|t| t.id == id)
    }

    pub fn suspension(&self, tenant: &str) -> Option<&Suspension> {
        self.security.suspended.get(tenant)
    }

    /// The token id that submitted the job, when it was recorded.
    pub fn job_owner(&self, job: JobId) -> Option<&str> {
        self.security.owners.get(&job).map(|t| &**t)
    }

    /// Forgets who submitted an archived job: nobody can act on it any
    /// more, and the record would otherwise grow with the pool's history.
    pub(super) fn forget_owner(&mut self, job: JobId) {
        self.security.owners.remove(&job);
    }

    // ------------------------------------------------------------ writes

    pub(super) fn create_token(&mut self, mut token: ApiToken, at: Millis) -> Applied {
        if let Some(t) = &token.tenant {
            if !self.tenants.contains_key(t) {
                return Err(Rejection::UnknownTenant(t.clone()));
            }
        }
        if token.role.is_tenant_role() != token.tenant.is_some() {
            return Err(Rejection::BadToken(format!(
                "a {} token {} a tenant",
                token.role,
                if token.role.is_tenant_role() {
                    "needs"
                } else {
                    "has no"
                }
            )));
        }
        if self.security.by_hash.contains_key(&token.hash) || self.tokens.contains_key(&token.hash)
        {
            return Err(Rejection::BadToken("the token is already known".into()));
        }
        self.security.last_token += 1;
        token.id = format!("tok-{}", self.security.last_token);
        token.created_at = at;
        token.revoked_at = None;
        let id = token.id.clone();
        self.security.by_hash.insert(token.hash.clone(), id.clone());
        self.security.tokens.insert(id.clone(), token);
        Ok((Outcome::Token(id), vec![]))
    }

    pub(super) fn revoke_token(&mut self, id: &str, at: Millis) -> Applied {
        if let Some(t) = self.security.tokens.get_mut(id) {
            if t.revoked_at.is_none() {
                t.revoked_at = Some(at);
                self.security.by_hash.remove(&t.hash);
            }
            return Ok((Outcome::Token(id.to_string()), vec![]));
        }
        let legacy = self
            .tokens
            .keys()
            .find(|h| legacy_id(h) == id)
            .cloned()
            .ok_or_else(|| Rejection::UnknownToken(id.to_string()))?;
        // An initial token has no record to mark, so it moves into the
        // token table as revoked, to stay listed.
        let tenant = self.tokens.remove(&legacy);
        let created_at = tenant
            .as_ref()
            .and_then(|t| self.tenants.get(t))
            .map_or(0, |t| t.created_at);
        self.security.tokens.insert(
            id.to_string(),
            ApiToken {
                id: id.to_string(),
                name: format!("{} (initial)", tenant.clone().unwrap_or_default()),
                role: Role::TenantAdmin,
                tenant,
                created_at,
                expires_at: None,
                revoked_at: Some(at),
                created_by: "admin".into(),
                hash: legacy,
            },
        );
        Ok((Outcome::Token(id.to_string()), vec![]))
    }

    /// The kill switch: no new submissions, no placements, and with
    /// `stop_running` every placed job is stopped the way a cancel stops it
    /// (SIGTERM, then SIGKILL after its grace period).
    pub(super) fn suspend_tenant(
        &mut self,
        tenant: &str,
        reason: String,
        stop_running: bool,
        by: String,
        at: Millis,
    ) -> Applied {
        if !self.tenants.contains_key(tenant) {
            return Err(Rejection::UnknownTenant(tenant.to_string()));
        }
        self.security.suspended.insert(
            tenant.to_string(),
            Suspension {
                reason: reason.clone(),
                since: at,
                by,
            },
        );
        let mut effects = vec![];
        if stop_running {
            let why = if reason.is_empty() {
                "tenant suspended".to_string()
            } else {
                format!("tenant suspended: {reason}")
            };
            for job in self.jobs.values_mut().map(Arc::make_mut) {
                if job.tenant != tenant || !job.state.is_placed() {
                    continue;
                }
                // A job already being stopped keeps its own stop order.
                if !matches!(job.state, JobState::Cancelling | JobState::Preempting) {
                    job.state = JobState::Cancelling;
                    job.reason = why.clone();
                    effects.extend(stop_tasks(job, &why));
                    effects.push(Effect::JobChanged(job.id));
                }
            }
        }
        Ok((Outcome::Tenant(tenant.to_string()), effects))
    }

    pub(super) fn resume_tenant(&mut self, tenant: &str) -> Applied {
        if !self.tenants.contains_key(tenant) {
            return Err(Rejection::UnknownTenant(tenant.to_string()));
        }
        self.security.suspended.remove(tenant);
        Ok((Outcome::Tenant(tenant.to_string()), vec![]))
    }
}
