//! `audit export` (every accepted record from a sequence number on, as
//! JSON lines, stopping at a gap) and `audit refused` (the refused-call
//! aggregates).

use std::io::Write;
use std::time::Duration;

use edupool_proto::v1::{ExportAuditRequest, ListRefusedCallsRequest, RefusedCalls};
use edupool_table::Table;
use serde::Serialize;

use crate::commands::{CommandError, Ctl};
use crate::output::{self, OutputFormat};
use crate::security::AuditView;

/// Records one export call asks for.
const EXPORT_PAGE: u32 = 1000;

/// Which aggregates `audit refused` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefusedFilter {
    pub tenant: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
}

/// `audit refused` in JSON.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedView {
    pub actor_token: String,
    pub actor_name: String,
    pub actor_role: Option<String>,
    pub actor_tenant: Option<String>,
    pub action: String,
    pub result: String,
    pub count: u64,
    pub first_at: Option<String>,
    pub last_at: Option<String>,
    pub last_target: Option<String>,
    pub detail: Option<String>,
}

impl From<&RefusedCalls> for RefusedView {
    fn from(c: &RefusedCalls) -> Self {
        RefusedView {
            actor_token: c.actor_token.clone(),
            actor_name: c.actor_name.clone(),
            actor_role: output::non_empty(&c.actor_role),
            actor_tenant: output::non_empty(&c.actor_tenant),
            action: c.action.clone(),
            result: c.result.clone(),
            count: c.count,
            first_at: output::timestamp(c.first_at_ms),
            last_at: output::timestamp(c.last_at_ms),
            last_target: output::non_empty(&c.last_target),
            detail: output::non_empty(&c.detail),
        }
    }
}

/// `audit refused`: ACTOR ROLE TENANT ACTION RESULT COUNT FIRST LAST TARGET DETAIL.
pub fn refused_table(calls: &[RefusedCalls]) -> String {
    let mut table = Table::new([
        "ACTOR", "ROLE", "TENANT", "ACTION", "RESULT", "COUNT", "FIRST", "LAST", "TARGET", "DETAIL",
    ]);
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for c in calls {
        let v = RefusedView::from(c);
        table.row([
            v.actor_token,
            dash(v.actor_role),
            dash(v.actor_tenant),
            v.action,
            v.result,
            v.count.to_string(),
            dash(v.first_at),
            dash(v.last_at),
            dash(v.last_target),
            v.detail.unwrap_or_default(),
        ]);
    }
    table.render()
}

impl<W: Write> Ctl<W> {
    /// `audit export`: one JSON line per record after `after`, in order;
    /// with `follow`, polls every `poll` for new ones until stopped. A
    /// dropped position ends it with the scheduler's OUT_OF_RANGE, so a
    /// gap is never skipped quietly. Returns the last number written.
    pub async fn export_audit(
        &mut self,
        mut after: u64,
        follow: Option<Duration>,
    ) -> Result<u64, CommandError> {
        loop {
            let page = self
                .clients
                .admin
                .export_audit(ExportAuditRequest {
                    after_seq: after,
                    limit: EXPORT_PAGE,
                })
                .await?
                .into_inner();
            for r in &page.records {
                writeln!(self.out, "{}", output::to_json_line(&AuditView::from(r))?)?;
                after = r.seq;
            }
            self.out.flush()?;
            if after < page.last_seq && !page.records.is_empty() {
                continue;
            }
            match follow {
                Some(poll) => tokio::time::sleep(poll).await,
                None => return Ok(after),
            }
        }
    }

    /// `audit refused`: most recently seen first.
    pub async fn list_refused_calls(
        &mut self,
        filter: RefusedFilter,
    ) -> Result<Vec<RefusedCalls>, CommandError> {
        let r = self
            .clients
            .admin
            .list_refused_calls(ListRefusedCallsRequest {
                tenant: filter.tenant.unwrap_or_default(),
                actor: filter.actor.unwrap_or_default(),
                action: filter.action.unwrap_or_default(),
            })
            .await?
            .into_inner();
        match self.format {
            OutputFormat::Table if r.calls.is_empty() => {
                writeln!(self.out, "no refused calls match")?
            }
            OutputFormat::Table => self.out.write_all(refused_table(&r.calls).as_bytes())?,
            OutputFormat::Json => {
                let views: Vec<RefusedView> = r.calls.iter().map(RefusedView::from).collect();
                writeln!(self.out, "{}", output::to_json(&views)?)?
            }
        }
        if r.dropped > 0 && self.format == OutputFormat::Table {
            writeln!(
                self.out,
                "({} older aggregates were dropped to stay bounded)",
                r.dropped
            )?;
        }
        self.out.flush()?;
        Ok(r.calls)
    }
}
