//! The security commands: `token create|list|revoke`, `tenant
//! suspend|resume` and `audit list`.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edupool_proto::v1::{
    ApiToken, AuditRecord, CreateTokenRequest, ListAuditRequest, ListTokensRequest,
    ResumeTenantRequest, RevokeTokenRequest, SuspendTenantRequest, TenantStatus,
};
use edupool_table::Table;
use serde::Serialize;

use crate::commands::{CommandError, Ctl};
use crate::output::{self, OutputFormat};
use crate::paging;

/// Audit records `audit list` shows when no --limit is given.
const DEFAULT_AUDIT_LIMIT: usize = 1000;

/// What `token create` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewToken {
    pub role: String,
    pub tenant: Option<String>,
    pub name: Option<String>,
    pub expires_in: Option<Duration>,
}

/// Which records `audit list` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub tenant: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Unix milliseconds.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: Option<u32>,
}

/// A point in time on the command line: RFC 3339 (`2026-05-01T08:00:00Z`,
/// or without the zone, read as UTC) or a duration ago (`2h`, `7d`).
pub fn parse_time(text: &str) -> Result<i64, String> {
    let at = match humantime::parse_duration(text) {
        Ok(ago) => SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("{text} ago is before 1970"))?,
        Err(_) => humantime::parse_rfc3339_weak(text).map_err(|_| {
            format!("{text:?} is neither a time (2026-05-01T08:00:00Z) nor a duration ago (2h, 7d)")
        })?,
    };
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .map_err(|_| format!("{text} is before 1970"))
}

/// `token list` / `token create` in JSON.
#[derive(Debug, Clone, Serialize)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub role: String,
    pub tenant: Option<String>,
    pub created_at: Option<String>,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub created_by: String,
}

impl From<&ApiToken> for TokenView {
    fn from(t: &ApiToken) -> Self {
        TokenView {
            id: t.id.clone(),
            name: t.name.clone(),
            role: t.role.clone(),
            tenant: output::non_empty(&t.tenant),
            created_at: output::timestamp(t.created_at_ms),
            expires_at: output::timestamp(t.expires_at_ms),
            revoked_at: output::timestamp(t.revoked_at_ms),
            created_by: t.created_by.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct NewTokenView {
    token: TokenView,
    secret: String,
}

/// `tenant suspend|resume` in JSON.
#[derive(Debug, Clone, Serialize)]
pub struct TenantStatusView {
    pub tenant: String,
    pub suspended: bool,
    pub reason: Option<String>,
    pub since: Option<String>,
    pub by: Option<String>,
    pub stopped_jobs: u32,
}

impl From<&TenantStatus> for TenantStatusView {
    fn from(s: &TenantStatus) -> Self {
        TenantStatusView {
            tenant: s.tenant.clone(),
            suspended: s.suspended,
            reason: output::non_empty(&s.reason),
            since: output::timestamp(s.since_ms),
            by: output::non_empty(&s.by),
            stopped_jobs: s.stopped_jobs,
        }
    }
}

/// `audit list` in JSON.
#[derive(Debug, Clone, Serialize)]
pub struct AuditView {
    pub seq: u64,
    pub at: Option<String>,
    pub actor_token: String,
    pub actor_name: String,
    pub actor_role: Option<String>,
    pub actor_tenant: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub result: String,
    pub detail: Option<String>,
}

impl From<&AuditRecord> for AuditView {
    fn from(r: &AuditRecord) -> Self {
        AuditView {
            seq: r.seq,
            at: output::timestamp(r.at_ms),
            actor_token: r.actor_token.clone(),
            actor_name: r.actor_name.clone(),
            actor_role: output::non_empty(&r.actor_role),
            actor_tenant: output::non_empty(&r.actor_tenant),
            action: r.action.clone(),
            target: output::non_empty(&r.target),
            result: r.result.clone(),
            detail: output::non_empty(&r.detail),
        }
    }
}

fn or_dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

/// `token list`: ID NAME ROLE TENANT CREATED EXPIRES STATE.
pub fn token_table(tokens: &[ApiToken]) -> String {
    let mut table = Table::new([
        "ID", "NAME", "ROLE", "TENANT", "CREATED", "EXPIRES", "STATE",
    ]);
    for t in tokens {
        let v = TokenView::from(t);
        let state = if v.revoked_at.is_some() {
            "revoked"
        } else {
            "live"
        };
        table.row([
            v.id,
            v.name,
            v.role,
            or_dash(v.tenant),
            or_dash(v.created_at),
            v.expires_at.unwrap_or_else(|| "never".into()),
            state.to_string(),
        ]);
    }
    table.render()
}

/// `audit list`: SEQ TIME ACTOR ROLE TENANT ACTION TARGET RESULT DETAIL.
pub fn audit_table(records: &[AuditRecord]) -> String {
    let mut table = Table::new([
        "SEQ", "TIME", "ACTOR", "ROLE", "TENANT", "ACTION", "TARGET", "RESULT", "DETAIL",
    ]);
    for r in records {
        let v = AuditView::from(r);
        table.row([
            v.seq.to_string(),
            or_dash(v.at),
            v.actor_token,
            or_dash(v.actor_role),
            or_dash(v.actor_tenant),
            v.action,
            or_dash(v.target),
            v.result,
            v.detail.unwrap_or_default(),
        ]);
    }
    table.render()
}

impl<W: Write> Ctl<W> {
    /// `token create`: prints the token and its secret, shown only once.
    pub async fn create_token(&mut self, new: NewToken) -> Result<String, CommandError> {
        let r = self
            .clients
            .admin
            .create_token(CreateTokenRequest {
                role: new.role,
                tenant: new.tenant.unwrap_or_default(),
                name: new.name.unwrap_or_default(),
                expires_in_seconds: new.expires_in.map_or(0, |d| d.as_secs().max(1)),
            })
            .await?
            .into_inner();
        let token = r.token.ok_or(CommandError::MissingField("token"))?;
        match self.format {
            OutputFormat::Table => write!(
                self.out,
                "created token {} ({}{})\nsecret: {}\n\
                 Keep this secret now: the scheduler stores only its hash and cannot show it again.\n",
                token.id,
                token.role,
                if token.tenant.is_empty() {
                    String::new()
                } else {
                    format!(" of {}", token.tenant)
                },
                r.secret
            )?,
            OutputFormat::Json => self.print_json(&NewTokenView {
                token: TokenView::from(&token),
                secret: r.secret.clone(),
            })?,
        }
        self.out.flush()?;
        Ok(r.secret)
    }

    /// `token list`: never shows secrets (the scheduler has none).
    pub async fn list_tokens(
        &mut self,
        tenant: Option<String>,
    ) -> Result<Vec<ApiToken>, CommandError> {
        let tenant = tenant.unwrap_or_default();
        let client = &mut self.clients.admin;
        let tokens = paging::walk(None, async |page_token, _| {
            let request = ListTokensRequest {
                tenant: tenant.clone(),
                page_size: 0,
                page_token,
            };
            let r = client.list_tokens(request).await?.into_inner();
            Ok::<_, CommandError>((r.tokens, r.next_page_token))
        })
        .await?;
        match self.format {
            OutputFormat::Table if tokens.is_empty() => writeln!(self.out, "no tokens")?,
            OutputFormat::Table => self.out.write_all(token_table(&tokens).as_bytes())?,
            OutputFormat::Json => {
                self.print_json(&tokens.iter().map(TokenView::from).collect::<Vec<_>>())?
            }
        }
        self.out.flush()?;
        Ok(tokens)
    }

    /// `token revoke`.
    pub async fn revoke_token(&mut self, id: &str) -> Result<ApiToken, CommandError> {
        let token = self
            .clients
            .admin
            .revoke_token(RevokeTokenRequest { id: id.to_owned() })
            .await?
            .into_inner();
        match self.format {
            OutputFormat::Table => writeln!(self.out, "revoked token {}", token.id)?,
            OutputFormat::Json => self.print_json(&TokenView::from(&token))?,
        }
        self.out.flush()?;
        Ok(token)
    }

    /// `tenant suspend`.
    pub async fn suspend_tenant(
        &mut self,
        tenant: &str,
        reason: Option<String>,
        stop_running: bool,
    ) -> Result<TenantStatus, CommandError> {
        let s = self
            .clients
            .admin
            .suspend_tenant(SuspendTenantRequest {
                tenant: tenant.to_owned(),
                reason: reason.unwrap_or_default(),
                stop_running,
            })
            .await?
            .into_inner();
        match self.format {
            OutputFormat::Table => {
                write!(self.out, "suspended tenant {}", s.tenant)?;
                if stop_running {
                    write!(self.out, "; stopping {} running jobs", s.stopped_jobs)?;
                }
                writeln!(self.out)?;
            }
            OutputFormat::Json => self.print_json(&TenantStatusView::from(&s))?,
        }
        self.out.flush()?;
        Ok(s)
    }

    /// `tenant resume`.
    pub async fn resume_tenant(&mut self, tenant: &str) -> Result<TenantStatus, CommandError> {
        let s = self
            .clients
            .admin
            .resume_tenant(ResumeTenantRequest {
                tenant: tenant.to_owned(),
            })
            .await?
            .into_inner();
        match self.format {
            OutputFormat::Table => writeln!(self.out, "resumed tenant {}", s.tenant)?,
            OutputFormat::Json => self.print_json(&TenantStatusView::from(&s))?,
        }
        self.out.flush()?;
        Ok(s)
    }

    /// `audit list`: oldest first, the newest `limit` that match.
    pub async fn list_audit(
        &mut self,
        filter: AuditFilter,
    ) -> Result<Vec<AuditRecord>, CommandError> {
        let base = ListAuditRequest {
            tenant: filter.tenant.unwrap_or_default(),
            actor: filter.actor.unwrap_or_default(),
            action: filter.action.unwrap_or_default(),
            since_ms: filter.since_ms.unwrap_or(0),
            until_ms: filter.until_ms.unwrap_or(0),
            ..Default::default()
        };
        let limit = filter.limit.map_or(DEFAULT_AUDIT_LIMIT, |n| n as usize);
        let client = &mut self.clients.admin;
        // Pages walk back in time, each oldest first: collected newest
        // first, then turned around.
        let mut records = paging::walk(Some(limit), async |page_token, want| {
            let request = ListAuditRequest {
                page_size: want,
                page_token,
                ..base.clone()
            };
            let r = client.list_audit(request).await?.into_inner();
            let newest_first = r.records.into_iter().rev().collect();
            Ok::<_, CommandError>((newest_first, r.next_page_token))
        })
        .await?;
        records.reverse();
        match self.format {
            OutputFormat::Table if records.is_empty() => {
                writeln!(self.out, "no audit records match")?
            }
            OutputFormat::Table => self.out.write_all(audit_table(&records).as_bytes())?,
            OutputFormat::Json => {
                self.print_json(&records.iter().map(AuditView::from).collect::<Vec<_>>())?
            }
        }
        self.out.flush()?;
        Ok(records)
    }

    fn print_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CommandError> {
        writeln!(self.out, "{}", output::to_json(value)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        assert_eq!(parse_time("2026-01-01T00:00:00Z"), Ok(1_767_225_600_000));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let hour_ago = parse_time("1h").unwrap();
        assert!((now - 3_600_000 - hour_ago).abs() < 60_000);
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn token_tables_show_no_secret_and_say_revoked() {
        let t = ApiToken {
            id: "tok-1".into(),
            name: "ci".into(),
            role: "member".into(),
            tenant: "zju".into(),
            created_at_ms: 1_767_225_600_000,
            revoked_at_ms: 1_767_225_700_000,
            ..Default::default()
        };
        let text = token_table(&[t]);
        assert!(text.contains("tok-1"), "{text}");
        assert!(text.contains("revoked"), "{text}");
        assert!(text.contains("never"), "{text}");
    }
}
