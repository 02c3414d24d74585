//! The security calls of `AdminService`: API tokens, the tenant kill
//! switch and the audit trail.

use edupool_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::admin::Admin;
use super::convert::{free_text, truncate};
use super::{new_token, paging, status, token_hash, Caller, Rpc};
use crate::control::now_millis;
use crate::state::{
    ApiToken, AuditGap, AuditRecord, AuditResult, Command, Indexed, JobId, RefusedCalls, Role,
    State,
};

/// Longest token name and suspension reason, in bytes.
const MAX_TEXT: usize = 256;
/// Audit records an export returns when it names no limit, and at most.
const DEFAULT_AUDIT_LIMIT: usize = 1000;
const MAX_AUDIT_LIMIT: usize = 10_000;

impl Admin {
    pub(super) async fn create_token_call(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let caller = self.auth.authorize(&req, Rpc::CreateToken).await?;
        let r = req.into_inner();
        let role: Role = r.role.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "unknown role '{}': use admin, tenant-admin, member, auditor or agent",
                truncate(&r.role)
            ))
        })?;
        let tenant = (!r.tenant.is_empty()).then(|| r.tenant.clone());
        if role.is_tenant_role() && tenant.is_none() {
            return Err(Status::invalid_argument(format!(
                "a {role} token belongs to a tenant: give --tenant"
            )));
        }
        if !role.is_tenant_role() && tenant.is_some() {
            return Err(Status::invalid_argument(format!(
                "a {role} token is not a tenant's: leave out --tenant"
            )));
        }
        free_text("name", &r.name, MAX_TEXT)?;
        // A tenant-admin hands out its own tenant's tokens, nothing more.
        if caller.role == Role::TenantAdmin {
            if !role.is_tenant_role() {
                let why = format!(
                    "a tenant-admin may create only member and tenant-admin tokens, not {role}"
                );
                return Err(self.auth.deny(&caller, Rpc::CreateToken, "", why).await);
            }
            if tenant.as_deref() != caller.tenant.as_deref() {
                return Err(Status::not_found(format!(
                    "tenant '{}' does not exist",
                    truncate(&r.tenant)
                )));
            }
        }
        let expires_at =
            match r.expires_in_seconds {
                0 => None,
                s if s > 100 * 365 * 24 * 3600 => return Err(Status::invalid_argument(
                    "expires_in_seconds is over 100 years; give 0 for a token that does not expire",
                )),
                s => Some(now_millis() + (s as i64) * 1000),
            };
        let secret = new_token(match role {
            Role::Agent => "epa",
            _ => "ept",
        });
        let token = ApiToken {
            id: String::new(),
            name: if r.name.is_empty() {
                format!("{role} token")
            } else {
                r.name
            },
            role,
            tenant,
            created_at: 0,
            expires_at,
            revoked_at: None,
            created_by: caller.token_id.clone(),
            hash: token_hash(&secret),
        };
        let out = self
            .replica
            .propose(caller.audited(Rpc::CreateToken, "", Command::CreateToken { token }))
            .await
            .map_err(status)?;
        let crate::state::Outcome::Token(id) = out else {
            return Err(Status::internal("token creation produced no token"));
        };
        let token = self
            .replica
            .read(|s| s.api_token(&id))
            .ok_or_else(|| Status::internal("the token vanished after it was written"))?;
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(token_view(&token)),
            secret,
        }))
    }

    pub(super) async fn list_tokens_call(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = self.auth.authorize(&req, Rpc::ListTokens).await?;
        super::read_barrier(&self.replica, &req).await?;
        let r = req.into_inner();
        let want = r.tenant;
        if caller
            .tenant_scope()
            .is_some_and(|own| !want.is_empty() && own != want)
        {
            return Err(Status::permission_denied(
                "a tenant's token can list only its own tenant's tokens",
            ));
        }
        let page = paging::request::<String>("tokens", paging::SMALL, r.page_size, &r.page_token)?;
        let (tokens, next_page_token) = self.replica.read(|s| {
            let matching = s
                .api_tokens()
                .into_iter()
                .filter(|t| page.after.as_ref().is_none_or(|a| t.id > *a))
                .filter(|t| visible_token(&caller, t))
                .filter(|t| want.is_empty() || t.tenant.as_deref() == Some(want.as_str()))
                .map(|t| (t.id.clone(), token_view(&t)));
            paging::cut("tokens", page.size, matching)
        });
        Ok(Response::new(pb::ListTokensResponse {
            tokens,
            next_page_token,
        }))
    }

    pub(super) async fn revoke_token_call(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::ApiToken>, Status> {
        let target = req.get_ref().id.clone();
        let caller = self
            .auth
            .authorize_on(&req, Rpc::RevokeToken, &target)
            .await?;
        let id = req.into_inner().id;
        let known = self
            .replica
            .read(|s| s.api_token(&id))
            .filter(|t| visible_token(&caller, t));
        if known.is_none() {
            return Err(Status::not_found(format!(
                "token '{}' does not exist",
                truncate(&id)
            )));
        }
        self.replica
            .propose(caller.audited(
                Rpc::RevokeToken,
                id.clone(),
                Command::RevokeToken { id: id.clone() },
            ))
            .await
            .map_err(status)?;
        let token = self
            .replica
            .read(|s| s.api_token(&id))
            .ok_or_else(|| Status::internal("the token vanished after it was revoked"))?;
        Ok(Response::new(token_view(&token)))
    }

    pub(super) async fn suspend_tenant_call(
        &self,
        req: Request<pb::SuspendTenantRequest>,
    ) -> Result<Response<pb::TenantStatus>, Status> {
        let target = req.get_ref().tenant.clone();
        let caller = self
            .auth
            .authorize_on(&req, Rpc::SuspendTenant, &target)
            .await?;
        let r = req.into_inner();
        free_text("reason", &r.reason, MAX_TEXT)?;
        let placed = |s: &Indexed| {
            s.jobs()
                .filter(|j| j.tenant == r.tenant && j.state.is_placed())
                .count() as u32
        };
        let before = self.replica.read(placed);
        self.replica
            .propose(caller.audited(
                Rpc::SuspendTenant,
                truncate(&r.tenant),
                Command::SuspendTenant {
                    tenant: r.tenant.clone(),
                    reason: r.reason,
                    stop_running: r.stop_running,
                    by: caller.token_id.clone(),
                },
            ))
            .await
            .map_err(status)?;
        let mut view = self.tenant_status(&r.tenant)?;
        if r.stop_running {
            view.stopped_jobs = before;
        }
        Ok(Response::new(view))
    }

    pub(super) async fn resume_tenant_call(
        &self,
        req: Request<pb::ResumeTenantRequest>,
    ) -> Result<Response<pb::TenantStatus>, Status> {
        let target = req.get_ref().tenant.clone();
        let caller = self
            .auth
            .authorize_on(&req, Rpc::ResumeTenant, &target)
            .await?;
        let tenant = req.into_inner().tenant;
        self.replica
            .propose(caller.audited(
                Rpc::ResumeTenant,
                truncate(&tenant),
                Command::ResumeTenant {
                    tenant: tenant.clone(),
                },
            ))
            .await
            .map_err(status)?;
        Ok(Response::new(self.tenant_status(&tenant)?))
    }

    fn tenant_status(&self, tenant: &str) -> Result<pb::TenantStatus, Status> {
        self.replica.read(|s| {
            s.tenant(tenant)
                .ok_or_else(|| Status::internal("the tenant vanished after it was written"))?;
            let mut view = pb::TenantStatus {
                tenant: tenant.to_string(),
                ..Default::default()
            };
            if let Some(sus) = s.suspension(tenant) {
                view.suspended = true;
                view.reason = sus.reason.clone();
                view.since_ms = sus.since;
                view.by = sus.by.clone();
            }
            Ok(view)
        })
    }

    pub(super) async fn list_audit_call(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.auth.authorize(&req, Rpc::ListAudit).await?;
        super::read_barrier(&self.replica, &req).await?;
        let f = req.into_inner();
        if f.until_ms != 0 && f.until_ms < f.since_ms {
            return Err(Status::invalid_argument(
                "until is before since: the time range is empty",
            ));
        }
        let size = if f.page_size == 0 {
            f.limit
        } else {
            f.page_size
        };
        let page = paging::request::<u64>("audit", paging::BULK, size, &f.page_token)?;
        let (mut records, next_page_token) = self.replica.read(|s| {
            let older = s
                .audit()
                .rev()
                .filter(|r| page.after.is_none_or(|a| r.seq < a))
                .filter(|r| audit_matches(s, r, &f))
                .map(|r| (r.seq, audit_view(r)));
            paging::cut("audit", page.size, older)
        });
        // Pages walk back in time; within one, oldest first.
        records.reverse();
        Ok(Response::new(pb::ListAuditResponse {
            records,
            next_page_token,
        }))
    }

    /// Accepted records after `after_seq`, oldest first. A position whose
    /// records were dropped is OUT_OF_RANGE, so an export never skips
    /// records without being told.
    pub(super) async fn export_audit_call(
        &self,
        req: Request<pb::ExportAuditRequest>,
    ) -> Result<Response<pb::ExportAuditResponse>, Status> {
        self.auth.authorize(&req, Rpc::ExportAudit).await?;
        super::read_barrier(&self.replica, &req).await?;
        let r = req.into_inner();
        let limit = match r.limit as usize {
            0 => DEFAULT_AUDIT_LIMIT,
            n => n.min(MAX_AUDIT_LIMIT),
        };
        self.replica.read(|s| {
            let records = s
                .audit_after(r.after_seq)
                .map_err(gap_status)?
                .take(limit)
                .map(audit_view)
                .collect();
            Ok(Response::new(pb::ExportAuditResponse {
                records,
                last_seq: s.last_audit_seq(),
            }))
        })
    }

    /// The refused-call aggregates that match, most recently seen first.
    pub(super) async fn list_refused_calls_call(
        &self,
        req: Request<pb::ListRefusedCallsRequest>,
    ) -> Result<Response<pb::ListRefusedCallsResponse>, Status> {
        self.auth.authorize(&req, Rpc::ListRefusedCalls).await?;
        super::read_barrier(&self.replica, &req).await?;
        let f = req.into_inner();
        let (calls, dropped) = self.replica.read(|s| {
            let mut calls: Vec<&RefusedCalls> = s
                .refused_calls()
                .filter(|c| refused_matches(c, &f))
                .collect();
            calls.sort_by_key(|c| std::cmp::Reverse(c.last_at));
            let calls = calls.into_iter().map(refused_view).collect();
            (calls, s.audit_dropped().refused)
        });
        Ok(Response::new(pb::ListRefusedCallsResponse {
            calls,
            dropped,
        }))
    }
}

fn gap_status(gap: AuditGap) -> Status {
    match gap {
        AuditGap::Dropped {
            first_missing,
            oldest,
        } => Status::out_of_range(format!(
            "audit records {first_missing} to {} were dropped before they were read \
             (retention or the record bound); the oldest kept is {oldest}: \
             export from after {} to go on past the gap",
            oldest - 1,
            oldest - 1
        )),
        AuditGap::Ahead { last } => Status::out_of_range(format!(
            "there is no audit record after that yet: the newest is {last} \
             (a position from another pool, or from a state that was reset?)"
        )),
    }
}

fn refused_matches(c: &RefusedCalls, f: &pb::ListRefusedCallsRequest) -> bool {
    let tenant_ok = f.tenant.is_empty() || c.actor.tenant.as_deref() == Some(f.tenant.as_str());
    let actor_ok = f.actor.is_empty() || c.actor.token == f.actor || c.actor.name == f.actor;
    let action_ok = f.action.is_empty()
        || c.action == f.action
        || (f.action.ends_with('.') && c.action.starts_with(&f.action));
    tenant_ok && actor_ok && action_ok
}

fn refused_view(c: &RefusedCalls) -> pb::RefusedCalls {
    let detail = match &c.result {
        AuditResult::Ok => String::new(),
        AuditResult::Rejected(d) | AuditResult::Denied(d) => d.clone(),
    };
    pb::RefusedCalls {
        actor_token: c.actor.token.clone(),
        actor_name: c.actor.name.clone(),
        actor_role: c
            .actor
            .role
            .map(|r| r.name().to_string())
            .unwrap_or_default(),
        actor_tenant: c.actor.tenant.clone().unwrap_or_default(),
        action: c.action.clone(),
        result: c.result.name().into(),
        detail,
        last_target: c.last_target.clone(),
        first_at_ms: c.first_at,
        last_at_ms: c.last_at,
        count: c.count,
    }
}

/// Admins and auditors see every token; a tenant-admin its tenant's.
fn visible_token(caller: &Caller, t: &ApiToken) -> bool {
    match caller.tenant_scope() {
        None => true,
        Some(own) => t.tenant.as_deref() == Some(own),
    }
}

fn audit_matches(s: &State, r: &AuditRecord, f: &pb::ListAuditRequest) -> bool {
    let tenant_ok = f.tenant.is_empty()
        || r.actor.tenant.as_deref() == Some(f.tenant.as_str())
        || r.target == f.tenant
        || r.target
            .parse::<JobId>()
            .ok()
            .and_then(|id| s.job(id))
            .is_some_and(|j| j.tenant == f.tenant);
    let actor_ok = f.actor.is_empty() || r.actor.token == f.actor || r.actor.name == f.actor;
    let action_ok = f.action.is_empty()
        || r.action == f.action
        || (f.action.ends_with('.') && r.action.starts_with(&f.action));
    let time_ok = r.at >= f.since_ms && (f.until_ms == 0 || r.at <= f.until_ms);
    tenant_ok && actor_ok && action_ok && time_ok
}

fn audit_view(r: &AuditRecord) -> pb::AuditRecord {
    let detail = match &r.result {
        AuditResult::Ok => String::new(),
        AuditResult::Rejected(d) | AuditResult::Denied(d) => d.clone(),
    };
    pb::AuditRecord {
        seq: r.seq,
        at_ms: r.at,
        actor_token: r.actor.token.clone(),
        actor_name: r.actor.name.clone(),
        actor_role: r
            .actor
            .role
            .map(|r| r.name().to_string())
            .unwrap_or_default(),
        actor_tenant: r.actor.tenant.clone().unwrap_or_default(),
        action: r.action.clone(),
        target: r.target.clone(),
        result: r.result.name().into(),
        detail,
    }
}

pub fn token_view(t: &ApiToken) -> pb::ApiToken {
    pb::ApiToken {
        id: t.id.clone(),
        name: t.name.clone(),
        role: t.role.name().into(),
        tenant: t.tenant.clone().unwrap_or_default(),
        created_at_ms: t.created_at,
        expires_at_ms: t.expires_at.unwrap_or(0),
        revoked_at_ms: t.revoked_at.unwrap_or(0),
        created_by: t.created_by.clone(),
    }
}
