//! `edupoolctl usage|price|budget ...`: usage reports, the settlement
//! between members, the ledger export, the price book and budgets.
//!
//! Money is shown in currency units with three decimals (the scheduler
//! keeps thousandths); GPU time in GPU-hours, energy in kWh.

use std::io::Write;

use edupool_proto::v1::{
    BudgetState, BudgetsResponse, EquityDiscount, ExportUsageRequest, GpuHourPrice, LedgerRecord,
    ListBudgetsRequest, ListPricesRequest, PriceBookResponse, SetBudgetRequest, SetPricesRequest,
    SettlementRequest, UsageReportRequest, UsageReportResponse,
};
use edupool_table::Table;
use serde::Serialize;

use crate::commands::{CommandError, Ctl};
use crate::paging;

/// How usage commands print: the global table/json, plus CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageFormat {
    Table,
    Json,
    Csv,
}

/// A time given as `2026-11-01` (midnight UTC) or RFC 3339
/// (`2026-11-01T08:00:00Z`), in Unix milliseconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    let t = humantime::parse_rfc3339_weak(&full).map_err(|e| {
        format!("'{s}' is not a time ({e}); use 2026-11-01 or 2026-11-01T08:00:00Z")
    })?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("'{s}' is before 1970"))?
        .as_millis();
    i64::try_from(ms).map_err(|_| format!("'{s}' is too far in the future"))
}

/// The first instant of `now`'s calendar month in UTC, in Unix
/// milliseconds: where a usage range starts when none is given.
pub fn month_start(now: std::time::SystemTime) -> i64 {
    let today = humantime::format_rfc3339_seconds(now).to_string();
    parse_time(&format!("{}-01", &today[..7])).unwrap_or(0)
}

/// An amount in currency units (`12.5`, `0.8`, `3`) as thousandths.
pub fn parse_money(s: &str) -> Result<i64, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("'{s}' is negative; amounts must be 0 or more"));
    }
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !(frac.is_empty() || digits(frac)) || frac.len() > 3 {
        return Err(format!(
            "'{s}' is not an amount; use a number with at most three decimals, e.g. 12.5"
        ));
    }
    let whole: i64 = whole.parse().map_err(|_| format!("'{s}' is too large"))?;
    let frac: i64 = format!("{frac:0<3}").parse().unwrap_or(0);
    whole
        .checked_mul(1000)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// `MODEL=PRICE` or `MODEL:CLASS=PRICE`, e.g. `A100-80GB:batch=6`.
pub fn parse_gpu_price(s: &str) -> Result<GpuHourPrice, String> {
    let (what, price) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not MODEL[:CLASS]=PRICE, e.g. A100-80GB:training=12.5"))?;
    let (model, class) = what.split_once(':').unwrap_or((what, ""));
    if model.is_empty() {
        return Err(format!("'{s}' names no GPU model"));
    }
    Ok(GpuHourPrice {
        model: model.to_string(),
        class: class.to_string(),
        per_gpu_hour_milli: parse_money(price)?,
    })
}

/// `TENANT=PERCENT`, e.g. `uni-b=20`.
pub fn parse_discount(s: &str) -> Result<EquityDiscount, String> {
    let (tenant, pct) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not TENANT=PERCENT, e.g. uni-b=20"))?;
    let percent: i64 = pct
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("'{pct}' is not a whole percentage"))?;
    Ok(EquityDiscount {
        tenant: tenant.to_string(),
        percent,
    })
}

/// Thousandths as a decimal: 12345 -> `12.345`.
pub fn milli(v: i128) -> String {
    let sign = if v < 0 { "-" } else { "" };
    let v = v.unsigned_abs();
    format!("{sign}{}.{:03}", v / 1000, v % 1000)
}

/// Thousandths of a GPU x ms as GPU-hours.
pub fn gpu_hours(gpu_milli_ms: u64) -> String {
    milli(i128::from((gpu_milli_ms + 1_800_000) / 3_600_000))
}

/// Millijoules as kWh.
pub fn kwh(mj: u64) -> String {
    milli(i128::from((mj + 1_800_000) / 3_600_000))
}

fn time(ms: i64) -> String {
    u64::try_from(ms)
        .ok()
        .map(|ms| {
            humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
            )
            .to_string()
        })
        .unwrap_or_else(|| ms.to_string())
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv_line(cells: &[String]) -> String {
    let mut line = cells
        .iter()
        .map(|c| csv_cell(c))
        .collect::<Vec<_>>()
        .join(",");
    line.push('\n');
    line
}

/// One row of `usage report`, for scripts (money in thousandths).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportRowView {
    pub tenant: String,
    pub key: String,
    pub runs: u64,
    pub gpu_milli_ms: u64,
    pub gpu_hours: String,
    pub borrowed_gpu_milli_ms: u64,
    pub energy_mj: u64,
    pub gross_milli: u64,
    pub discount_milli: u64,
    pub net_milli: u64,
    pub unpriced_gpu_milli_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetView {
    pub tenant: String,
    pub period: String,
    pub label: String,
    pub used_milli: u64,
    pub soft_milli: Option<u64>,
    pub hard_milli: Option<u64>,
    pub over_soft: bool,
    pub over_hard: bool,
}

impl From<&BudgetState> for BudgetView {
    fn from(b: &BudgetState) -> Self {
        BudgetView {
            tenant: b.tenant.clone(),
            period: b.period.clone(),
            label: b.label.clone(),
            used_milli: b.used_milli,
            soft_milli: b.soft_milli,
            hard_milli: b.hard_milli,
            over_soft: b.over_soft,
            over_hard: b.over_hard,
        }
    }
}

/// `usage report`, for scripts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportView {
    pub currency: String,
    pub by: String,
    pub rows: Vec<ReportRowView>,
    pub total: ReportRowView,
    pub budgets: Vec<BudgetView>,
}

/// The report for people: a table, a total, then budget lines with a
/// warning for each limit reached.
pub fn report_text(v: &ReportView) -> String {
    let mut t = Table::new([
        "TENANT",
        &v.by.to_uppercase(),
        "RUNS",
        "GPU-HOURS",
        "BORROWED",
        "ENERGY-KWH",
        "GROSS",
        "DISCOUNT",
        "NET",
    ]);
    let cells = |r: &ReportRowView| {
        [
            r.tenant.clone(),
            r.key.clone(),
            r.runs.to_string(),
            r.gpu_hours.clone(),
            gpu_hours(r.borrowed_gpu_milli_ms),
            kwh(r.energy_mj),
            milli(i128::from(r.gross_milli)),
            milli(i128::from(r.discount_milli)),
            milli(i128::from(r.net_milli)),
        ]
    };
    for r in &v.rows {
        t.row(cells(r));
    }
    t.row(cells(&v.total));
    let mut out = t.render();
    let cur = if v.currency.is_empty() {
        "(no prices set)".to_string()
    } else {
        v.currency.clone()
    };
    out.push_str(&format!("amounts in {cur}\n"));
    if v.total.unpriced_gpu_milli_ms > 0 {
        out.push_str(&format!(
            "note: {} GPU-hours ran with no price in force (before the first price version, or a model without a price)\n",
            gpu_hours(v.total.unpriced_gpu_milli_ms)
        ));
    }
    for b in &v.budgets {
        out.push_str(&budget_line(b, &v.currency));
    }
    out
}

fn budget_line(b: &BudgetView, currency: &str) -> String {
    let limit = |l: Option<u64>| l.map_or("-".into(), |l| milli(i128::from(l)));
    let warn = match (b.over_hard, b.over_soft) {
        (true, _) => " - WARNING: over the hard limit; only scavenger jobs are accepted",
        (false, true) => " - WARNING: over the soft limit",
        _ => "",
    };
    format!(
        "budget {} ({} {}): used {} {currency}, soft {}, hard {}{warn}\n",
        b.tenant,
        b.period,
        b.label,
        milli(i128::from(b.used_milli)),
        limit(b.soft_milli),
        limit(b.hard_milli),
    )
}

/// `usage settlement`, one member, for scripts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SettlementView {
    pub member: String,
    pub owes_milli: u64,
    pub owed_milli: u64,
    pub net_milli: i64,
    pub borrowed_gpu_milli_ms: u64,
    pub lent_gpu_milli_ms: u64,
}

/// One ledger entry with its charge (`usage export`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordView {
    pub seq: u64,
    pub tenant: String,
    pub job: String,
    pub run: u32,
    pub task: u32,
    pub node: String,
    pub lender: String,
    pub class: String,
    pub gpu_model: String,
    pub gpus: u32,
    pub milli_per_gpu: u32,
    pub start: String,
    pub end: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub gpu_milli_ms: u64,
    pub energy_mj: Option<u64>,
    pub capacity: String,
    pub ended: String,
    pub gross_milli: u64,
    pub discount_milli: u64,
    pub net_milli: u64,
    pub lending_credit_milli: u64,
}

impl From<&LedgerRecord> for RecordView {
    fn from(r: &LedgerRecord) -> Self {
        RecordView {
            seq: r.seq,
            tenant: r.tenant.clone(),
            job: r.job.clone(),
            run: r.run,
            task: r.task,
            node: r.node.clone(),
            lender: r.lender.clone(),
            class: r.class.clone(),
            gpu_model: r.gpu_model.clone(),
            gpus: r.gpus,
            milli_per_gpu: r.milli_per_gpu,
            start: time(r.start_ms),
            end: time(r.end_ms),
            start_ms: r.start_ms,
            end_ms: r.end_ms,
            gpu_milli_ms: r.gpu_milli_ms,
            energy_mj: r.energy_mj,
            capacity: r.capacity.clone(),
            ended: r.ended.clone(),
            gross_milli: r.gross_milli,
            discount_milli: r.discount_milli,
            net_milli: r.net_milli,
            lending_credit_milli: r.lending_credit_milli,
        }
    }
}

const EXPORT_HEADER: [&str; 21] = [
    "seq",
    "tenant",
    "job",
    "run",
    "task",
    "node",
    "lender",
    "class",
    "gpu_model",
    "gpus",
    "gpu_fraction",
    "start",
    "end",
    "gpu_hours",
    "energy_kwh",
    "capacity",
    "ended",
    "gross",
    "discount",
    "net",
    "lending_credit",
];

/// The export as CSV: a header, then one row per ledger entry (amounts in
/// currency units, GPU time in GPU-hours).
pub fn export_csv(records: &[RecordView]) -> String {
    let header: Vec<String> = EXPORT_HEADER.iter().map(|h| h.to_string()).collect();
    let mut out = csv_line(&header);
    for r in records {
        out.push_str(&csv_line(&[
            r.seq.to_string(),
            r.tenant.clone(),
            r.job.clone(),
            r.run.to_string(),
            r.task.to_string(),
            r.node.clone(),
            r.lender.clone(),
            r.class.clone(),
            r.gpu_model.clone(),
            r.gpus.to_string(),
            milli(i128::from(r.milli_per_gpu)),
            r.start.clone(),
            r.end.clone(),
            gpu_hours(r.gpu_milli_ms),
            r.energy_mj.map(kwh).unwrap_or_default(),
            r.capacity.clone(),
            r.ended.clone(),
            milli(i128::from(r.gross_milli)),
            milli(i128::from(r.discount_milli)),
            milli(i128::from(r.net_milli)),
            milli(i128::from(r.lending_credit_milli)),
        ]));
    }
    out
}

/// One price version, for scripts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriceVersionView {
    pub version: u32,
    pub effective_from: String,
    pub currency: String,
    /// `MODEL[:CLASS]` -> thousandths per GPU-hour.
    pub gpu_hour_milli: Vec<(String, i64)>,
    pub energy_per_kwh_milli: i64,
    pub free_milli_gpu_hours: i64,
    pub equity_discount_percent: Vec<(String, i64)>,
    pub lending_credit_percent: i64,
}

fn price_views(book: &PriceBookResponse) -> Vec<PriceVersionView> {
    book.versions
        .iter()
        .map(|v| PriceVersionView {
            version: v.version,
            effective_from: time(v.effective_from_ms),
            currency: v.currency.clone(),
            gpu_hour_milli: v
                .gpu_hour
                .iter()
                .map(|p| {
                    let what = if p.class.is_empty() {
                        p.model.clone()
                    } else {
                        format!("{}:{}", p.model, p.class)
                    };
                    (what, p.per_gpu_hour_milli)
                })
                .collect(),
            energy_per_kwh_milli: v.energy_per_kwh_milli,
            free_milli_gpu_hours: v.free_milli_gpu_hours,
            equity_discount_percent: v
                .equity_discounts
                .iter()
                .map(|d| (d.tenant.clone(), d.percent))
                .collect(),
            lending_credit_percent: v.lending_credit_percent,
        })
        .collect()
}

fn prices_text(views: &[PriceVersionView]) -> String {
    if views.is_empty() {
        return "no prices set; an admin sets them with `edupoolctl price set`\n".into();
    }
    let mut out = String::new();
    for v in views {
        let gpu: Vec<String> = v
            .gpu_hour_milli
            .iter()
            .map(|(w, p)| format!("{w}={}", milli(i128::from(*p))))
            .collect();
        let equity: Vec<String> = v
            .equity_discount_percent
            .iter()
            .map(|(t, p)| format!("{t}={p}%"))
            .collect();
        out.push_str(&format!(
            "version {} from {} ({})\n  GPU-hour:        {}\n  energy per kWh:  {}\n  free GPU-hours:  {} per tenant per month\n  equity discount: {}\n  lending credit:  {}%\n",
            v.version,
            v.effective_from,
            v.currency,
            if gpu.is_empty() { "-".into() } else { gpu.join(", ") },
            milli(i128::from(v.energy_per_kwh_milli)),
            milli(i128::from(v.free_milli_gpu_hours)),
            if equity.is_empty() { "-".into() } else { equity.join(", ") },
            v.lending_credit_percent,
        ));
    }
    out
}

fn sum_rows(rows: &[ReportRowView]) -> ReportRowView {
    let mut t = ReportRowView {
        tenant: "TOTAL".into(),
        key: String::new(),
        runs: 0,
        gpu_milli_ms: 0,
        gpu_hours: String::new(),
        borrowed_gpu_milli_ms: 0,
        energy_mj: 0,
        gross_milli: 0,
        discount_milli: 0,
        net_milli: 0,
        unpriced_gpu_milli_ms: 0,
    };
    for r in rows {
        t.runs += r.runs;
        t.gpu_milli_ms += r.gpu_milli_ms;
        t.borrowed_gpu_milli_ms += r.borrowed_gpu_milli_ms;
        t.energy_mj += r.energy_mj;
        t.gross_milli += r.gross_milli;
        t.discount_milli += r.discount_milli;
        t.net_milli += r.net_milli;
        t.unpriced_gpu_milli_ms += r.unpriced_gpu_milli_ms;
    }
    t.gpu_hours = gpu_hours(t.gpu_milli_ms);
    t
}

impl<W: Write> Ctl<W> {
    fn write_json<T: Serialize>(&mut self, v: &T) -> Result<(), CommandError> {
        writeln!(self.out, "{}", serde_json::to_string_pretty(v)?)?;
        self.out.flush()?;
        Ok(())
    }

    fn write_text(&mut self, text: &str) -> Result<(), CommandError> {
        self.out.write_all(text.as_bytes())?;
        self.out.flush()?;
        Ok(())
    }

    /// `usage report`: usage and charges of runs that ended in [from, to).
    pub async fn usage_report(
        &mut self,
        tenant: Option<&str>,
        from_ms: i64,
        to_ms: i64,
        by: &str,
        format: UsageFormat,
    ) -> Result<ReportView, CommandError> {
        let base = UsageReportRequest {
            tenant: tenant.unwrap_or_default().to_string(),
            from_ms,
            to_ms,
            by: by.to_string(),
            ..Default::default()
        };
        let client = &mut self.clients.usage;
        let mut first: Option<UsageReportResponse> = None;
        let rows = paging::walk(None, async |page_token, _| {
            let request = UsageReportRequest {
                page_token,
                ..base.clone()
            };
            let mut r = client.get_usage_report(request).await?.into_inner();
            let rows = std::mem::take(&mut r.rows);
            let next = r.next_page_token.clone();
            first.get_or_insert(r);
            Ok::<_, CommandError>((rows, next))
        })
        .await?;
        // Currency and budgets come with the first page.
        let r = UsageReportResponse {
            rows,
            ..first.unwrap_or_default()
        };
        let rows: Vec<ReportRowView> = r
            .rows
            .iter()
            .map(|x| ReportRowView {
                tenant: x.tenant.clone(),
                key: x.key.clone(),
                runs: x.runs,
                gpu_milli_ms: x.gpu_milli_ms,
                gpu_hours: gpu_hours(x.gpu_milli_ms),
                borrowed_gpu_milli_ms: x.borrowed_gpu_milli_ms,
                energy_mj: x.energy_mj,
                gross_milli: x.gross_milli,
                discount_milli: x.discount_milli,
                net_milli: x.net_milli,
                unpriced_gpu_milli_ms: x.unpriced_gpu_milli_ms,
            })
            .collect();
        let view = ReportView {
            currency: r.currency,
            by: if by.is_empty() { "day" } else { by }.to_string(),
            total: sum_rows(&rows),
            rows,
            budgets: r.budgets.iter().map(BudgetView::from).collect(),
        };
        match format {
            UsageFormat::Table => self.write_text(&report_text(&view))?,
            UsageFormat::Json => self.write_json(&view)?,
            UsageFormat::Csv => {
                let mut out = csv_line(
                    &[
                        "tenant",
                        &view.by,
                        "runs",
                        "gpu_hours",
                        "borrowed_gpu_hours",
                        "energy_kwh",
                        "gross",
                        "discount",
                        "net",
                        "currency",
                    ]
                    .map(String::from),
                );
                for x in &view.rows {
                    out.push_str(&csv_line(&[
                        x.tenant.clone(),
                        x.key.clone(),
                        x.runs.to_string(),
                        x.gpu_hours.clone(),
                        gpu_hours(x.borrowed_gpu_milli_ms),
                        kwh(x.energy_mj),
                        milli(i128::from(x.gross_milli)),
                        milli(i128::from(x.discount_milli)),
                        milli(i128::from(x.net_milli)),
                        view.currency.clone(),
                    ]));
                }
                self.write_text(&out)?;
            }
        }
        Ok(view)
    }

    /// `usage settlement` (admins): per member, owes, owed and net.
    pub async fn usage_settlement(
        &mut self,
        from_ms: i64,
        to_ms: i64,
        format: UsageFormat,
    ) -> Result<Vec<SettlementView>, CommandError> {
        let r = self
            .clients
            .usage
            .get_settlement(SettlementRequest { from_ms, to_ms })
            .await?
            .into_inner();
        let views: Vec<SettlementView> = r
            .rows
            .iter()
            .map(|x| SettlementView {
                member: x.member.clone(),
                owes_milli: x.owes_milli,
                owed_milli: x.owed_milli,
                net_milli: x.net_milli,
                borrowed_gpu_milli_ms: x.borrowed_gpu_milli_ms,
                lent_gpu_milli_ms: x.lent_gpu_milli_ms,
            })
            .collect();
        let cells = |v: &SettlementView| {
            [
                v.member.clone(),
                gpu_hours(v.borrowed_gpu_milli_ms),
                milli(i128::from(v.owes_milli)),
                gpu_hours(v.lent_gpu_milli_ms),
                milli(i128::from(v.owed_milli)),
                milli(i128::from(v.net_milli)),
            ]
        };
        match format {
            UsageFormat::Json => self.write_json(&views)?,
            UsageFormat::Csv => {
                let mut out = csv_line(
                    &[
                        "member",
                        "borrowed_gpu_hours",
                        "owes",
                        "lent_gpu_hours",
                        "owed",
                        "net",
                    ]
                    .map(String::from),
                );
                for v in &views {
                    out.push_str(&csv_line(&cells(v)));
                }
                self.write_text(&out)?;
            }
            UsageFormat::Table => {
                let mut t = Table::new([
                    "MEMBER",
                    "BORROWED-GPU-H",
                    "OWES",
                    "LENT-GPU-H",
                    "OWED",
                    "NET",
                ]);
                for v in &views {
                    t.row(cells(v));
                }
                let mut text = t.render();
                text.push_str(&format!(
                    "amounts in {}; NET = OWED - OWES (positive: the alliance owes the member)\n",
                    if r.currency.is_empty() {
                        "(no prices set)"
                    } else {
                        &r.currency
                    }
                ));
                self.write_text(&text)?;
            }
        }
        Ok(views)
    }

    /// `usage export`: one CSV row (or JSON object) per ledger entry.
    pub async fn usage_export(
        &mut self,
        tenant: Option<&str>,
        from_ms: i64,
        to_ms: i64,
        format: UsageFormat,
    ) -> Result<Vec<RecordView>, CommandError> {
        let tenant = tenant.unwrap_or_default().to_string();
        let client = &mut self.clients.usage;
        let records = paging::walk(None, async |page_token, _| {
            let request = ExportUsageRequest {
                tenant: tenant.clone(),
                from_ms,
                to_ms,
                page_size: 0,
                page_token,
            };
            let r = client.export_usage(request).await?.into_inner();
            Ok::<_, CommandError>((r.records, r.next_page_token))
        })
        .await?;
        let views: Vec<RecordView> = records.iter().map(RecordView::from).collect();
        match format {
            UsageFormat::Json => self.write_json(&views)?,
            UsageFormat::Table | UsageFormat::Csv => self.write_text(&export_csv(&views))?,
        }
        Ok(views)
    }

    fn print_prices(&mut self, book: &PriceBookResponse) -> Result<(), CommandError> {
        let views = price_views(book);
        match self.format {
            crate::output::OutputFormat::Table => self.write_text(&prices_text(&views)),
            crate::output::OutputFormat::Json => self.write_json(&views),
        }
    }

    /// `price set` (admins): a new price version.
    pub async fn set_prices(&mut self, req: SetPricesRequest) -> Result<(), CommandError> {
        let book = self.clients.usage.set_prices(req).await?.into_inner();
        self.print_prices(&book)
    }

    /// `price list`: every price version, oldest first.
    pub async fn list_prices(&mut self) -> Result<(), CommandError> {
        let client = &mut self.clients.usage;
        let versions = paging::walk(None, async |page_token, _| {
            let request = ListPricesRequest {
                page_size: 0,
                page_token,
            };
            let r = client.list_prices(request).await?.into_inner();
            Ok::<_, CommandError>((r.versions, r.next_page_token))
        })
        .await?;
        self.print_prices(&PriceBookResponse {
            versions,
            next_page_token: String::new(),
        })
    }

    fn print_budgets(&mut self, r: &BudgetsResponse) -> Result<(), CommandError> {
        let views: Vec<BudgetView> = r.budgets.iter().map(BudgetView::from).collect();
        match self.format {
            crate::output::OutputFormat::Json => self.write_json(&views),
            crate::output::OutputFormat::Table => {
                if views.is_empty() {
                    return self.write_text("no budgets set\n");
                }
                let text: String = views.iter().map(|b| budget_line(b, &r.currency)).collect();
                self.write_text(&text)
            }
        }
    }

    /// `budget set` (admins).
    pub async fn set_budget(&mut self, req: SetBudgetRequest) -> Result<(), CommandError> {
        let r = self.clients.usage.set_budget(req).await?.into_inner();
        self.print_budgets(&r)
    }

    /// `budget list`: budgets and this period's spending.
    pub async fn list_budgets(&mut self, tenant: Option<&str>) -> Result<(), CommandError> {
        let tenant = tenant.unwrap_or_default().to_string();
        let client = &mut self.clients.usage;
        let mut currency = String::new();
        let budgets = paging::walk(None, async |page_token, _| {
            let request = ListBudgetsRequest {
                tenant: tenant.clone(),
                page_size: 0,
                page_token,
            };
            let r = client.list_budgets(request).await?.into_inner();
            currency = r.currency;
            Ok::<_, CommandError>((r.budgets, r.next_page_token))
        })
        .await?;
        self.print_budgets(&BudgetsResponse {
            currency,
            budgets,
            next_page_token: String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_and_times_parse_exactly_or_say_why_not() {
        assert_eq!(parse_money("12.5"), Ok(12_500));
        assert_eq!(parse_money("0.001"), Ok(1));
        assert_eq!(parse_money("3"), Ok(3_000));
        assert!(parse_money("-1").unwrap_err().contains("negative"));
        assert!(parse_money("1.2345")
            .unwrap_err()
            .contains("at most three decimals"));
        assert!(parse_money("abc").is_err());
        assert_eq!(parse_time("1970-01-02"), Ok(86_400_000));
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Ok(1_000));
        assert!(parse_time("yesterday")
            .unwrap_err()
            .contains("is not a time"));
        let p = parse_gpu_price("A100-80GB:batch=6").unwrap();
        assert_eq!(
            (p.model.as_str(), p.class.as_str(), p.per_gpu_hour_milli),
            ("A100-80GB", "batch", 6_000)
        );
        assert_eq!(parse_gpu_price("A100-80GB=8").unwrap().class, "");
        assert!(parse_gpu_price("A100").is_err());
        assert_eq!(parse_discount("uni-b=20%").unwrap().percent, 20);
    }

    #[test]
    fn a_range_starts_at_the_first_of_the_month_in_utc() {
        let at = |ms: u64| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        let dec_1 = parse_time("2026-12-01").unwrap();
        let dec_7 = parse_time("2026-12-07T18:52:27Z").unwrap();
        assert_eq!(month_start(at(dec_7 as u64)), dec_1);
        assert_eq!(month_start(at(dec_1 as u64)), dec_1);
        let last_ms_of_nov = (dec_1 - 1) as u64;
        assert_eq!(
            month_start(at(last_ms_of_nov)),
            parse_time("2026-11-01").unwrap()
        );
    }

    #[test]
    fn export_is_one_csv_row_per_entry_and_amounts_are_decimal() {
        let r = RecordView {
            seq: 1,
            tenant: "uni-b".into(),
            job: "j-1".into(),
            run: 1,
            task: 0,
            node: "node-a".into(),
            lender: "uni-a".into(),
            class: "training".into(),
            gpu_model: "A100-80GB".into(),
            gpus: 2,
            milli_per_gpu: 1000,
            start: "2026-11-09T23:00:00.000Z".into(),
            end: "2026-11-10T01:00:00.000Z".into(),
            start_ms: 0,
            end_ms: 0,
            gpu_milli_ms: 4 * 3_600_000 * 1000,
            energy_mj: Some(7_200_000_000),
            capacity: "borrowed".into(),
            ended: "completed".into(),
            gross_milli: 37_600,
            discount_milli: 14_720,
            net_milli: 22_880,
            lending_credit_milli: 25_200,
        };
        let csv = export_csv(&[r]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("seq,tenant,job,"));
        assert_eq!(
            lines[1],
            "1,uni-b,j-1,1,0,node-a,uni-a,training,A100-80GB,2,1.000,2026-11-09T23:00:00.000Z,\
             2026-11-10T01:00:00.000Z,4.000,2.000,borrowed,completed,37.600,14.720,22.880,25.200"
        );
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(milli(-22_880), "-22.880");
    }
}
