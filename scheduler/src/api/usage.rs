//! `UsageService`: usage reports, the settlement, the ledger export, the
//! price book and budgets. A tenant's tokens read only their own tenant's
//! usage and budgets (asking for another tenant's is PERMISSION_DENIED);
//! admins and auditors read all; admins set prices and budgets (audited).
//! Which role may call which RPC is in `access.rs`. Reports are computed by `state::billing` from
//! the replicated ledger.

use edupool_proto::v1 as pb;
use edupool_proto::v1::usage_service_server::UsageService;
use tonic::{Request, Response, Status};

use super::access::Rpc;
use super::paging::{self, PageRequest};
use super::{status, Auth, Caller};
use crate::raft::Replica;
use crate::state::billing::{self, Bill, GroupBy, Inexact, Period};
use crate::state::{
    Accounts, Budget, Command, GpuPrice, JobClass, LedgerEntry, Millis, PriceChange, State,
};

#[derive(Clone)]
pub struct Usage {
    pub replica: Replica,
    pub auth: Auth,
}

/// Whose usage a caller may read: roles that see every tenant (admin,
/// auditor) anyone's (`None` = everyone's when no tenant is named); a
/// tenant's tokens only their own tenant's. The role itself was checked
/// against the RPC table before.
fn usage_scope(caller: &Caller, asked: &str) -> Result<Option<String>, Status> {
    match caller.tenant_scope() {
        None => Ok(Some(asked.to_string()).filter(|t| !t.is_empty())),
        Some(own) if asked.is_empty() || asked == own => Ok(Some(own.to_string())),
        Some(own) => Err(Status::permission_denied(format!(
            "tenant '{own}' may read only its own usage, not that of '{}'",
            super::convert::truncate(asked)
        ))),
    }
}

fn check_range(from: Millis, to: Millis) -> Result<(), Status> {
    if from < 0 {
        return Err(Status::invalid_argument(
            "the range starts before 1970-01-01; no usage is that old",
        ));
    }
    if from > to {
        return Err(Status::invalid_argument(format!(
            "the range starts after it ends: from {} is after to {}",
            billing::format_time(from),
            billing::format_time(to)
        )));
    }
    Ok(())
}

fn group_by(by: &str) -> Result<GroupBy, Status> {
    match by {
        "" | "day" => Ok(GroupBy::Day),
        "job" => Ok(GroupBy::Job),
        "model" => Ok(GroupBy::Model),
        "class" => Ok(GroupBy::Class),
        other => Err(Status::invalid_argument(format!(
            "cannot group by '{}': use day, job, model or class",
            super::convert::truncate(other)
        ))),
    }
}

fn period(name: &str) -> Result<Period, Status> {
    match name {
        "" | "month" => Ok(Period::Month),
        "week" => Ok(Period::Week),
        "day" => Ok(Period::Day),
        other => Err(Status::invalid_argument(format!(
            "'{}' is not a budget period: use day, week or month",
            super::convert::truncate(other)
        ))),
    }
}

fn job_class(name: &str) -> Result<Option<JobClass>, Status> {
    if name.is_empty() {
        return Ok(None);
    }
    JobClass::ALL
        .into_iter()
        .find(|c| c.name() == name)
        .map(Some)
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "'{}' is not a job class: use inference, training, batch or scavenger",
                super::convert::truncate(name)
            ))
        })
}

/// A money or quantity field that must not be negative.
fn non_negative(field: &str, v: i64) -> Result<u64, Status> {
    u64::try_from(v)
        .map_err(|_| Status::invalid_argument(format!("{field} must not be negative (got {v})")))
}

fn percent(field: &str, v: i64) -> Result<u32, Status> {
    u32::try_from(v)
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| Status::invalid_argument(format!("{field} must be 0-100 (got {v})")))
}

fn currency(a: &Accounts) -> String {
    a.prices
        .latest()
        .map(|v| v.currency.clone())
        .unwrap_or_default()
}

fn budget_states(s: &State, tenant: Option<&str>, at: Millis) -> Vec<pb::BudgetState> {
    budgets_after(s, tenant, None, at).map(|(_, b)| b).collect()
}

/// Budgets by tenant, after the tenant `after` when given.
fn budgets_after<'s>(
    s: &'s State,
    tenant: Option<&'s str>,
    after: Option<String>,
    at: Millis,
) -> impl Iterator<Item = (String, pb::BudgetState)> + 's {
    let a = s.accounts();
    a.budgets
        .iter()
        .filter(move |(t, _)| tenant.is_none_or(|x| x == t.as_str()))
        .filter(move |(t, _)| after.as_ref().is_none_or(|x| *t > x))
        .map(move |(t, b)| {
            let st = billing::budget_status(a, t, b, at);
            let view = pb::BudgetState {
                tenant: t.clone(),
                period: b.period.name().into(),
                label: st.label.clone(),
                used_milli: st.used,
                soft_milli: b.soft,
                hard_milli: b.hard,
                over_soft: st.over_soft(),
                over_hard: st.over_hard(),
            };
            (t.clone(), view)
        })
}

/// Part of the range is kept only as daily totals: the state is not one
/// that can answer it run by run, or at that time of day.
fn inexact(e: Inexact) -> Status {
    Status::failed_precondition(e.to_string())
}

/// The usage in a range: run by run when grouped by job, else with the
/// days kept as totals.
fn usage_of<'a>(
    a: &'a Accounts,
    tenant: Option<&str>,
    r: &pb::UsageReportRequest,
    by: GroupBy,
) -> Result<Bill<'a>, Inexact> {
    match by {
        GroupBy::Job => Ok(Bill {
            runs: billing::runs(a, tenant, r.from_ms, r.to_ms)?,
            totals: vec![],
        }),
        _ => billing::bill(a, tenant, r.from_ms, r.to_ms),
    }
}

fn record(e: &LedgerEntry) -> pb::LedgerRecord {
    pb::LedgerRecord {
        seq: e.seq,
        tenant: e.tenant.clone(),
        job: e.job.to_string(),
        run: e.run,
        task: e.task,
        node: e.node.clone(),
        lender: e.lender.clone().unwrap_or_default(),
        class: e.class.name().into(),
        gpu_model: e.gpu_model.clone(),
        gpu_class: e.gpu_class.clone(),
        gpus: e.gpus,
        milli_per_gpu: e.milli_per_gpu,
        start_ms: e.start,
        end_ms: e.end,
        gpu_milli_ms: e.gpu_milli_ms,
        energy_mj: e.energy_mj,
        capacity: e.capacity.name().into(),
        ended: e.ended.name().into(),
        gross_milli: e.charge.gross(),
        discount_milli: e.charge.discount(),
        net_milli: e.charge.net(),
        lending_credit_milli: e.charge.lending_credit,
    }
}

/// The price book's versions after `after`, one page of them.
fn price_book(s: &State, page: &PageRequest<u32>) -> pb::PriceBookResponse {
    let versions = s
        .accounts()
        .prices
        .versions
        .iter()
        .filter(|v| page.after.is_none_or(|a| v.version > a))
        .map(|v| (v.version, price_version(v)));
    let (versions, next_page_token) = paging::cut("prices", page.size, versions);
    pb::PriceBookResponse {
        versions,
        next_page_token,
    }
}

fn price_version(v: &crate::state::PriceVersion) -> pb::PriceVersion {
    pb::PriceVersion {
        version: v.version,
        effective_from_ms: v.effective_from,
        set_at_ms: v.set_at,
        currency: v.currency.clone(),
        gpu_hour: v
            .gpu_hour
            .iter()
            .map(|p| pb::GpuHourPrice {
                model: p.model.clone(),
                class: p.class.map(|c| c.name().to_string()).unwrap_or_default(),
                per_gpu_hour_milli: p.per_gpu_hour as i64,
            })
            .collect(),
        energy_per_kwh_milli: v.energy_per_kwh as i64,
        free_milli_gpu_hours: v.free_milli_gpu_hours as i64,
        equity_discounts: v
            .equity_discount_pct
            .iter()
            .map(|(t, p)| pb::EquityDiscount {
                tenant: t.clone(),
                percent: i64::from(*p),
            })
            .collect(),
        lending_credit_percent: i64::from(v.lending_credit_pct),
    }
}

/// Checks a price change's numbers and names; the state checks the rest
/// (models, tenants, times, currency).
fn price_change(r: pb::SetPricesRequest) -> Result<PriceChange, Status> {
    let gpu_hour = r
        .gpu_hour
        .into_iter()
        .map(|p| {
            if p.model.is_empty() {
                return Err(Status::invalid_argument("a GPU-hour price needs a model"));
            }
            Ok(GpuPrice {
                per_gpu_hour: non_negative(
                    &format!(
                        "the GPU-hour price of {}",
                        super::convert::truncate(&p.model)
                    ),
                    p.per_gpu_hour_milli,
                )?,
                class: job_class(&p.class)?,
                model: p.model,
            })
        })
        .collect::<Result<_, _>>()?;
    let equity_discount_pct = r
        .equity_discounts
        .into_iter()
        .map(|d| Ok((d.tenant, percent("an equity discount", d.percent)?)))
        .collect::<Result<_, Status>>()?;
    Ok(PriceChange {
        effective_from: r.effective_from_ms,
        currency: Some(r.currency).filter(|c| !c.is_empty()),
        gpu_hour,
        energy_per_kwh: r
            .energy_per_kwh_milli
            .map(|v| non_negative("the energy price", v))
            .transpose()?,
        free_milli_gpu_hours: r
            .free_milli_gpu_hours
            .map(|v| non_negative("the free tier", v))
            .transpose()?,
        equity_discount_pct,
        lending_credit_pct: r
            .lending_credit_percent
            .map(|v| percent("the lending credit", v))
            .transpose()?,
    })
}

/// Where a usage report page ends: a row's tenant and key (rows come in
/// that order). Written `tenant/key`; tenant names hold no '/'.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RowKey {
    tenant: String,
    key: String,
}

impl RowKey {
    fn of(tenant: &str, key: &str) -> RowKey {
        RowKey {
            tenant: tenant.into(),
            key: key.into(),
        }
    }

    /// Whether the row `(tenant, key)` comes after this one.
    fn is_before(&self, tenant: &str, key: &str) -> bool {
        (self.tenant.as_str(), self.key.as_str()) < (tenant, key)
    }
}

impl std::fmt::Display for RowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.tenant, self.key)
    }
}

impl std::str::FromStr for RowKey {
    type Err = ();
    fn from_str(s: &str) -> Result<RowKey, ()> {
        let (tenant, key) = s.split_once('/').ok_or(())?;
        Ok(RowKey::of(tenant, key))
    }
}

#[tonic::async_trait]
impl UsageService for Usage {
    async fn get_usage_report(
        &self,
        req: Request<pb::UsageReportRequest>,
    ) -> Result<Response<pb::UsageReportResponse>, Status> {
        let caller = self.auth.authorize(&req, Rpc::GetUsageReport).await?;
        super::read_barrier(&self.replica, &req).await?;
        let r = req.into_inner();
        let tenant = usage_scope(&caller, &r.tenant)?;
        check_range(r.from_ms, r.to_ms)?;
        let by = group_by(&r.by)?;
        let page = paging::request::<RowKey>("usage", paging::BULK, r.page_size, &r.page_token)?;
        let now = crate::control::now_millis();
        let reply = self.replica.read(|s| {
            let a = s.accounts();
            let usage = usage_of(a, tenant.as_deref(), &r, by).map_err(inexact)?;
            let after = billing::report(&usage, by)
                .into_iter()
                .filter(|x| {
                    page.after
                        .as_ref()
                        .is_none_or(|k| k.is_before(&x.tenant, &x.key))
                })
                .map(|x| {
                    (
                        RowKey::of(&x.tenant, &x.key),
                        pb::UsageReportRow {
                            tenant: x.tenant,
                            key: x.key,
                            runs: x.runs,
                            gpu_milli_ms: x.gpu_milli_ms,
                            borrowed_gpu_milli_ms: x.borrowed_gpu_milli_ms,
                            energy_mj: x.energy_mj,
                            gross_milli: x.gross,
                            discount_milli: x.discount,
                            net_milli: x.net,
                            unpriced_gpu_milli_ms: x.unpriced_gpu_milli_ms,
                        },
                    )
                });
            let (rows, next_page_token) = paging::cut("usage", page.size, after);
            let budgets = match page.after {
                None => budget_states(s, tenant.as_deref(), now),
                Some(_) => vec![],
            };
            Ok::<_, Status>(pb::UsageReportResponse {
                currency: currency(a),
                rows,
                budgets,
                next_page_token,
            })
        })?;
        Ok(Response::new(reply))
    }

    async fn get_settlement(
        &self,
        req: Request<pb::SettlementRequest>,
    ) -> Result<Response<pb::SettlementResponse>, Status> {
        self.auth.authorize(&req, Rpc::GetSettlement).await?;
        super::read_barrier(&self.replica, &req).await?;
        let r = req.into_inner();
        check_range(r.from_ms, r.to_ms)?;
        let reply = self.replica.read(|s| {
            let a = s.accounts();
            let usage = billing::bill(a, None, r.from_ms, r.to_ms).map_err(inexact)?;
            let rows = billing::settlement(&usage)
                .into_iter()
                .map(|x| pb::SettlementRow {
                    net_milli: i64::try_from(x.net()).unwrap_or(i64::MAX),
                    member: x.member,
                    owes_milli: x.owes,
                    owed_milli: x.owed,
                    borrowed_gpu_milli_ms: x.borrowed_gpu_milli_ms,
                    lent_gpu_milli_ms: x.lent_gpu_milli_ms,
                })
                .collect();
            Ok::<_, Status>(pb::SettlementResponse {
                currency: currency(a),
                rows,
            })
        })?;
        Ok(Response::new(reply))
    }

    async fn export_usage(
        &self,
        req: Request<pb::ExportUsageRequest>,
    ) -> Result<Response<pb::ExportUsageResponse>, Status> {
        let caller = self.auth.authorize(&req, Rpc::ExportUsage).await?;
        super::read_barrier(&self.replica, &req).await?;
        let r = req.into_inner();
        let tenant = usage_scope(&caller, &r.tenant)?;
        check_range(r.from_ms, r.to_ms)?;
        let page = paging::request::<u64>("ledger", paging::BULK, r.page_size, &r.page_token)?;
        let reply = self.replica.read(|s| {
            let a = s.accounts();
            let runs = billing::runs(a, tenant.as_deref(), r.from_ms, r.to_ms).map_err(inexact)?;
            let after = runs
                .into_iter()
                .filter(|e| page.after.is_none_or(|x| e.seq > x))
                .map(|e| (e.seq, record(e)));
            let (records, next_page_token) = paging::cut("ledger", page.size, after);
            Ok::<_, Status>(pb::ExportUsageResponse {
                currency: currency(a),
                records,
                next_page_token,
            })
        })?;
        Ok(Response::new(reply))
    }

    async fn set_prices(
        &self,
        req: Request<pb::SetPricesRequest>,
    ) -> Result<Response<pb::PriceBookResponse>, Status> {
        let caller = self.auth.authorize(&req, Rpc::SetPrices).await?;
        let change = price_change(req.into_inner())?;
        self.replica
            .propose(caller.audited(Rpc::SetPrices, "", Command::SetPrices(change)))
            .await
            .map_err(status)?;
        let first = paging::request("prices", paging::SMALL, 0, "")?;
        Ok(Response::new(self.replica.read(|s| price_book(s, &first))))
    }

    async fn list_prices(
        &self,
        req: Request<pb::ListPricesRequest>,
    ) -> Result<Response<pb::PriceBookResponse>, Status> {
        self.auth.authorize(&req, Rpc::ListPrices).await?;
        super::read_barrier(&self.replica, &req).await?;
        let r = req.into_inner();
        let page = paging::request("prices", paging::SMALL, r.page_size, &r.page_token)?;
        Ok(Response::new(self.replica.read(|s| price_book(s, &page))))
    }

    async fn set_budget(
        &self,
        req: Request<pb::SetBudgetRequest>,
    ) -> Result<Response<pb::BudgetsResponse>, Status> {
        let caller = self.auth.authorize(&req, Rpc::SetBudget).await?;
        let r = req.into_inner();
        let budget = if r.remove {
            None
        } else {
            Some(Budget {
                period: period(&r.period)?,
                soft: r
                    .soft_milli
                    .map(|v| non_negative("the soft limit", v))
                    .transpose()?,
                hard: r
                    .hard_milli
                    .map(|v| non_negative("the hard limit", v))
                    .transpose()?,
            })
        };
        let tenant = r.tenant;
        self.replica
            .propose(caller.audited(
                Rpc::SetBudget,
                tenant.clone(),
                Command::SetBudget {
                    tenant: tenant.clone(),
                    budget,
                },
            ))
            .await
            .map_err(status)?;
        let now = crate::control::now_millis();
        Ok(Response::new(self.replica.read(|s| pb::BudgetsResponse {
            currency: currency(s.accounts()),
            budgets: budget_states(s, Some(&tenant), now),
            next_page_token: String::new(),
        })))
    }

    async fn list_budgets(
        &self,
        req: Request<pb::ListBudgetsRequest>,
    ) -> Result<Response<pb::BudgetsResponse>, Status> {
        let caller = self.auth.authorize(&req, Rpc::ListBudgets).await?;
        super::read_barrier(&self.replica, &req).await?;
        let r = req.into_inner();
        let tenant = usage_scope(&caller, &r.tenant)?;
        let page = paging::request::<String>("budgets", paging::SMALL, r.page_size, &r.page_token)?;
        let now = crate::control::now_millis();
        Ok(Response::new(self.replica.read(|s| {
            let after = budgets_after(s, tenant.as_deref(), page.after.clone(), now);
            let (budgets, next_page_token) = paging::cut("budgets", page.size, after);
            pb::BudgetsResponse {
                currency: currency(s.accounts()),
                budgets,
                next_page_token,
            }
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Role;
    use tonic::Code;

    fn caller(role: Role, tenant: Option<&str>) -> Caller {
        Caller {
            token_id: "t1".into(),
            name: "t1".into(),
            role,
            tenant: tenant.map(str::to_string),
        }
    }

    #[test]
    fn a_tenant_reads_only_its_own_usage() {
        for role in [Role::TenantAdmin, Role::Member] {
            let t = caller(role, Some("zju"));
            assert_eq!(usage_scope(&t, "").unwrap().as_deref(), Some("zju"));
            assert_eq!(usage_scope(&t, "zju").unwrap().as_deref(), Some("zju"));
            let err = usage_scope(&t, "hdu").unwrap_err();
            assert_eq!(err.code(), Code::PermissionDenied);
            assert_eq!(
                err.message(),
                "tenant 'zju' may read only its own usage, not that of 'hdu'"
            );
        }
        for role in [Role::Admin, Role::Auditor] {
            let a = caller(role, None);
            assert_eq!(usage_scope(&a, "").unwrap(), None);
            assert_eq!(usage_scope(&a, "hdu").unwrap().as_deref(), Some("hdu"));
        }
    }

    #[test]
    fn bad_numbers_are_invalid_arguments() {
        let negative = pb::SetPricesRequest {
            currency: "CNY".into(),
            gpu_hour: vec![pb::GpuHourPrice {
                model: "A100-80GB".into(),
                class: String::new(),
                per_gpu_hour_milli: -5,
            }],
            ..Default::default()
        };
        let err = price_change(negative).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(
            err.message(),
            "the GPU-hour price of A100-80GB must not be negative (got -5)"
        );
        let bad_class = pb::SetPricesRequest {
            gpu_hour: vec![pb::GpuHourPrice {
                model: "A100-80GB".into(),
                class: "gaming".into(),
                per_gpu_hour_milli: 5,
            }],
            ..Default::default()
        };
        assert!(price_change(bad_class)
            .unwrap_err()
            .message()
            .contains("'gaming' is not a job class"));
        let err = check_range(10, 5).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err
            .message()
            .contains("from 1970-01-01T00:00:00.010Z is after to"));
        assert!(check_range(-1, 5).is_err());
        assert!(check_range(0, i64::MAX).is_ok());
        assert!(group_by("week").is_err());
        assert!(period("year").is_err());
    }

    #[test]
    fn a_question_about_rolled_up_days_is_a_failed_precondition() {
        let err = inexact(Inexact::RolledUp { detail_from: 0 });
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err
            .message()
            .contains("per-run records and reports by job cover 1970-01-01T00:00:00Z onwards"));
    }
}
