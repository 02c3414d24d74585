//! Bills, reports, the settlement between members and budget status:
//! pure functions of the ledger and the price book, in integers only.
//!
//! How a run is priced (docs/accounting.md has a worked example):
//! - Its GPU time is split at each price version's effective time; each
//!   piece is charged at the GPU-hour price of its model and class in force
//!   then. Its energy is spread evenly over the run and priced the same way.
//! - A run belongs to the period (day, month) in which it ended.
//! - Each tenant's first free GPU-hours of a calendar month (the free tier
//!   in force when a run ended) are free, taken in ledger order.
//! - The equity discount in force when the run ended comes off the rest.
//! - A run on another member's node credits that member the lending-credit
//!   percentage of its GPU charge.
//!
//! Amounts are rounded to the nearest minor unit once per run, so a bill is
//! exactly the sum of its lines.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Accounts, Budget, LedgerEntry, Money, PriceBook, TotalKey, Totals, MS_PER_HOUR};
use crate::state::types::{Millis, WHOLE_GPU};

/// Millijoules in a kilowatt-hour.
const MJ_PER_KWH: u128 = 3_600_000_000;
const MS_PER_DAY: i64 = 86_400_000;

/// A budget period, in UTC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    /// Monday to Sunday.
    Week,
    #[default]
    Month,
}

impl Period {
    pub fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    /// The start of the period that contains `at`.
    pub fn start(self, at: Millis) -> Millis {
        let day = at.div_euclid(MS_PER_DAY);
        let first = match self {
            Period::Day => day,
            // 1970-01-01 was a Thursday.
            Period::Week => day - (day + 3).rem_euclid(7),
            Period::Month => {
                let (y, m, _) = civil_from_days(day);
                days_from_civil(y, m, 1)
            }
        };
        first.saturating_mul(MS_PER_DAY)
    }

    /// The start of the period after the one that starts at `start`.
    pub fn next(self, start: Millis) -> Millis {
        match self {
            Period::Day => start.saturating_add(MS_PER_DAY),
            Period::Week => start.saturating_add(7 * MS_PER_DAY),
            Period::Month => {
                let (y, m, _) = civil_from_days(start.div_euclid(MS_PER_DAY));
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(y, m, 1).saturating_mul(MS_PER_DAY)
            }
        }
    }

    /// `2026-11`, `2026-11-25` or `week of 2026-11-23`.
    pub fn label(self, at: Millis) -> String {
        let (y, m, d) = civil_from_days(self.start(at).div_euclid(MS_PER_DAY));
        match self {
            Period::Day => format!("{y:04}-{m:02}-{d:02}"),
            Period::Week => format!("week of {y:04}-{m:02}-{d:02}"),
            Period::Month => format!("{y:04}-{m:02}"),
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `2026-11-25T05:49:52Z` (milliseconds shown only when not zero).
pub fn format_time(at: Millis) -> String {
    let (y, m, d) = civil_from_days(at.div_euclid(MS_PER_DAY));
    let ms = at.rem_euclid(MS_PER_DAY);
    let (h, min, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    if frac == 0 {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{frac:03}Z")
    }
}

/// Minor units as a decimal amount: 12345 -> `12.345`.
pub fn format_money(m: Money) -> String {
    format!("{}.{:03}", m / 1000, m % 1000)
}

/// Rounds `num / den` to the nearest integer, halves up.
fn round_div(num: u128, den: u128) -> u64 {
    if den == 0 {
        return 0;
    }
    u64::try_from(num.saturating_add(den / 2) / den).unwrap_or(u64::MAX)
}

/// What one ledger entry costs, in minor units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub gpu: Money,
    pub energy: Money,
    /// The free tier's part of the GPU charge.
    pub free: Money,
    pub equity: Money,
    /// Credited to the lender (not taken off this bill).
    pub lending_credit: Money,
    /// GPU time (thousandths of a GPU x ms) of this run that no price
    /// covered: before the first version, or a model without a price.
    pub unpriced_gpu_milli_ms: u64,
}

impl Charge {
    pub fn plus(self, o: Charge) -> Charge {
        Charge {
            gpu: self.gpu.saturating_add(o.gpu),
            energy: self.energy.saturating_add(o.energy),
            free: self.free.saturating_add(o.free),
            equity: self.equity.saturating_add(o.equity),
            lending_credit: self.lending_credit.saturating_add(o.lending_credit),
            unpriced_gpu_milli_ms: self
                .unpriced_gpu_milli_ms
                .saturating_add(o.unpriced_gpu_milli_ms),
        }
    }

    pub fn is_nothing(&self) -> bool {
        *self == Charge::default()
    }

    pub fn gross(&self) -> Money {
        self.gpu.saturating_add(self.energy)
    }

    pub fn discount(&self) -> Money {
        self.free.saturating_add(self.equity)
    }

    pub fn net(&self) -> Money {
        self.gross().saturating_sub(self.discount())
    }
}

/// The GPU and energy charge of a run before discounts, piecewise over the
/// price versions it spans.
pub fn gross_charge(book: &PriceBook, e: &LedgerEntry) -> Charge {
    let per_ms = u128::from(e.gpus) * u128::from(e.milli_per_gpu);
    let energy = u128::from(e.energy_mj.unwrap_or(0));
    let (mut gpu_num, mut energy_num) = (0u128, 0u128);
    let mut unpriced_ms = 0u64;
    let first = book
        .versions
        .first()
        .map_or(Millis::MAX, |v| v.effective_from);
    // Time before the first version is priced by nothing. Stamps and
    // amounts come from the log, so the sums saturate rather than wrap or
    // panic on absurd ones.
    unpriced_ms = unpriced_ms.saturating_add(ms_between(e.start, e.end.min(first)));
    for (i, v) in book.versions.iter().enumerate() {
        let until = book
            .versions
            .get(i + 1)
            .map_or(Millis::MAX, |n| n.effective_from);
        let ms = u128::from(ms_between(e.start.max(v.effective_from), e.end.min(until)));
        if ms == 0 {
            continue;
        }
        match v.gpu_price(&e.gpu_model, e.class) {
            Some(p) => {
                let num = ms.saturating_mul(per_ms).saturating_mul(u128::from(p));
                gpu_num = gpu_num.saturating_add(num);
            }
            None => unpriced_ms = unpriced_ms.saturating_add(ms as u64),
        }
        let num = energy
            .saturating_mul(ms)
            .saturating_mul(u128::from(v.energy_per_kwh));
        energy_num = energy_num.saturating_add(num);
    }
    let duration = u128::from(e.duration_ms());
    let energy = if duration > 0 {
        round_div(energy_num, duration.saturating_mul(MJ_PER_KWH))
    } else {
        // A run of no duration: its energy at the price of its end.
        let price = book.at(e.end).map_or(0, |v| v.energy_per_kwh);
        round_div(energy.saturating_mul(u128::from(price)), MJ_PER_KWH)
    };
    Charge {
        gpu: round_div(gpu_num, u128::from(WHOLE_GPU) * u128::from(MS_PER_HOUR)),
        energy,
        unpriced_gpu_milli_ms: unpriced_ms.saturating_mul(per_ms as u64),
        ..Charge::default()
    }
}

/// Milliseconds from `start` to `end`, 0 when `end` is not later.
pub fn ms_between(start: Millis, end: Millis) -> u64 {
    u64::try_from(i128::from(end) - i128::from(start)).unwrap_or(0)
}

/// What one run costs: its GPU and energy charge before discounts,
/// piecewise over the price versions it spans, then the free tier (taken
/// from `free_used`, what the tenant has used of it this month) and the
/// equity discount and lending credit in force when it ended. A run is
/// priced once, when it is recorded: prices never change retroactively.
pub fn price_run(
    book: &PriceBook,
    free_used: &mut BTreeMap<(String, Millis), u64>,
    e: &LedgerEntry,
) -> Charge {
    let mut charge = gross_charge(book, e);
    let Some(v) = book.at(e.end) else {
        return charge;
    };
    let allowance = v.free_milli_gpu_hours.saturating_mul(MS_PER_HOUR);
    let used = free_used
        .entry((e.tenant.clone(), Period::Month.start(e.end)))
        .or_default();
    let free = allowance.saturating_sub(*used).min(e.gpu_milli_ms);
    *used += free;
    if e.gpu_milli_ms > 0 {
        charge.free = round_div(
            u128::from(charge.gpu) * u128::from(free),
            u128::from(e.gpu_milli_ms),
        );
    }
    let pct = v.equity_discount_pct.get(&e.tenant).copied().unwrap_or(0);
    let rest = charge.gross().saturating_sub(charge.free);
    charge.equity = round_div(u128::from(rest) * u128::from(pct), 100);
    if e.lender.is_some() {
        charge.lending_credit = round_div(
            u128::from(charge.gpu) * u128::from(v.lending_credit_pct),
            100,
        );
    }
    charge
}

/// Why a question about usage cannot be answered exactly: part of the
/// range is kept only as daily totals (see `Accounts::rolled`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inexact {
    /// A range boundary falls inside a day whose runs are kept only as
    /// totals.
    MidDay { at: Millis },
    /// Run-by-run records were asked for days kept only as totals; they
    /// are kept from `detail_from` on.
    RolledUp { detail_from: Millis },
}

impl std::fmt::Display for Inexact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Inexact::MidDay { at } => write!(
                f,
                "runs that ended on {} are kept only as daily totals, so a range cannot \
                 start or end at {}; start and end it at midnight UTC (e.g. {})",
                Period::Day.label(at),
                format_time(at),
                format_time(Period::Day.start(at))
            ),
            Inexact::RolledUp { detail_from } => write!(
                f,
                "runs that ended before {} are kept only as daily totals (the ledger \
                 keeps its most recent runs one by one); per-run records and reports \
                 by job cover {} onwards",
                format_time(detail_from),
                format_time(detail_from)
            ),
        }
    }
}

/// One day's rolled-up runs under one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DayTotal<'a> {
    pub day: Millis,
    pub key: &'a TotalKey,
    pub totals: &'a Totals,
}

/// The usage in a range: runs kept one by one, and days kept as totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bill<'a> {
    pub runs: Vec<&'a LedgerEntry>,
    pub totals: Vec<DayTotal<'a>>,
}

/// The runs that ended in `[from, to)`, of one tenant or all, with their
/// charges; days kept only as totals are included whole. A boundary
/// inside such a day cannot be answered exactly and is refused.
pub fn bill<'a>(
    accounts: &'a Accounts,
    tenant: Option<&str>,
    from: Millis,
    to: Millis,
) -> Result<Bill<'a>, Inexact> {
    let of_tenant = |t: &str| tenant.is_none_or(|x| x == t);
    let rolled_on = |day: Millis| {
        accounts
            .rolled
            .get(&day)
            .is_some_and(|d| d.rows.keys().any(|k| of_tenant(&k.tenant)))
    };
    for at in [from, to] {
        let day = Period::Day.start(at);
        if day != at && rolled_on(day) {
            return Err(Inexact::MidDay { at });
        }
    }
    let totals = accounts
        .rolled
        .range(from..to.max(from))
        .flat_map(|(day, d)| {
            d.rows.iter().map(|(key, totals)| DayTotal {
                day: *day,
                key,
                totals,
            })
        })
        .filter(|t| of_tenant(&t.key.tenant))
        .collect();
    let runs = accounts
        .entries
        .iter()
        .map(|e| &**e)
        .filter(|e| of_tenant(&e.tenant) && e.end >= from && e.end < to)
        .collect();
    Ok(Bill { runs, totals })
}

/// The runs that ended in `[from, to)` one by one, for an export or a
/// report by job: refused when some of them are kept only as totals.
pub fn runs<'a>(
    accounts: &'a Accounts,
    tenant: Option<&str>,
    from: Millis,
    to: Millis,
) -> Result<Vec<&'a LedgerEntry>, Inexact> {
    let of_tenant = |t: &str| tenant.is_none_or(|x| x == t);
    let rolled = accounts
        .rolled
        .range(Period::Day.start(from)..to.max(from))
        .any(|(_, d)| d.rows.keys().any(|k| of_tenant(&k.tenant)));
    if rolled {
        let last = accounts.rolled.keys().next_back().copied().unwrap_or(from);
        return Err(Inexact::RolledUp {
            detail_from: Period::Day.next(last),
        });
    }
    Ok(accounts
        .entries
        .iter()
        .map(|e| &**e)
        .filter(|e| of_tenant(&e.tenant) && e.end >= from && e.end < to)
        .collect())
}

/// How to group a usage report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Day,
    Job,
    Model,
    Class,
}

/// One row of a usage report: a tenant's runs under one key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRow {
    pub tenant: String,
    pub key: String,
    pub runs: u64,
    pub gpu_milli_ms: u64,
    /// Of it, on borrowed capacity.
    pub borrowed_gpu_milli_ms: u64,
    pub energy_mj: u64,
    pub gross: Money,
    pub discount: Money,
    pub net: Money,
    pub unpriced_gpu_milli_ms: u64,
}

/// A run, or a day's totals under one key, as reports sum them.
struct Item<'a> {
    tenant: &'a str,
    day: Millis,
    job: Option<crate::state::types::JobId>,
    gpu_model: &'a str,
    class: crate::state::types::JobClass,
    capacity: crate::state::types::Capacity,
    lender: Option<&'a str>,
    runs: u64,
    gpu_milli_ms: u64,
    energy_mj: u64,
    charge: Charge,
}

impl<'a> Bill<'a> {
    fn items(&self) -> impl Iterator<Item = Item<'a>> + '_ {
        let runs = self.runs.iter().map(|e| Item {
            tenant: &e.tenant,
            day: Period::Day.start(e.end),
            job: Some(e.job),
            gpu_model: &e.gpu_model,
            class: e.class,
            capacity: e.capacity,
            lender: e.lender.as_deref(),
            runs: 1,
            gpu_milli_ms: e.gpu_milli_ms,
            energy_mj: e.energy_mj.unwrap_or(0),
            charge: e.charge,
        });
        let totals = self.totals.iter().map(|t| Item {
            tenant: &t.key.tenant,
            day: t.day,
            job: None,
            gpu_model: &t.key.gpu_model,
            class: t.key.class,
            capacity: t.key.capacity,
            lender: t.key.lender.as_deref(),
            runs: t.totals.runs,
            gpu_milli_ms: t.totals.gpu_milli_ms,
            energy_mj: t.totals.energy_mj,
            charge: t.totals.charge,
        });
        runs.chain(totals)
    }
}

/// Sums a bill per tenant and key, in key order. Days kept only as
/// totals have no job: grouped by job, they are one row keyed `-` (the
/// API asks for a bill of runs one by one instead, see [`runs`]).
pub fn report(bill: &Bill, by: GroupBy) -> Vec<ReportRow> {
    let mut rows: BTreeMap<(String, String), ReportRow> = BTreeMap::new();
    for i in bill.items() {
        let key = match by {
            GroupBy::Day => Period::Day.label(i.day),
            GroupBy::Job => i.job.map_or_else(|| "-".to_string(), |j| j.to_string()),
            GroupBy::Model => i.gpu_model.to_string(),
            GroupBy::Class => i.class.name().to_string(),
        };
        let row = rows
            .entry((i.tenant.to_string(), key.clone()))
            .or_insert_with(|| ReportRow {
                tenant: i.tenant.to_string(),
                key,
                ..ReportRow::default()
            });
        row.runs += i.runs;
        row.gpu_milli_ms += i.gpu_milli_ms;
        if i.capacity == crate::state::types::Capacity::Borrowed {
            row.borrowed_gpu_milli_ms += i.gpu_milli_ms;
        }
        row.energy_mj += i.energy_mj;
        row.gross += i.charge.gross();
        row.discount += i.charge.discount();
        row.net += i.charge.net();
        row.unpriced_gpu_milli_ms += i.charge.unpriced_gpu_milli_ms;
    }
    rows.into_values().collect()
}

/// What one member owes and is owed between members over a period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementRow {
    pub member: String,
    /// Its net charges for runs on other members' nodes.
    pub owes: Money,
    /// Credits for its nodes running other members' jobs.
    pub owed: Money,
    /// GPU time it used on others' nodes, and lent to others.
    pub borrowed_gpu_milli_ms: u64,
    pub lent_gpu_milli_ms: u64,
}

impl SettlementRow {
    /// Positive: the alliance owes the member.
    pub fn net(&self) -> i128 {
        i128::from(self.owed) - i128::from(self.owes)
    }
}

/// Per member: owes for use of others' GPUs, owed for lending, in member
/// order.
pub fn settlement(bill: &Bill) -> Vec<SettlementRow> {
    let mut rows: BTreeMap<String, SettlementRow> = BTreeMap::new();
    fn row<'r>(rows: &'r mut BTreeMap<String, SettlementRow>, name: &str) -> &'r mut SettlementRow {
        rows.entry(name.to_string())
            .or_insert_with(|| SettlementRow {
                member: name.to_string(),
                ..SettlementRow::default()
            })
    }
    for i in bill.items() {
        let Some(lender) = i.lender else {
            continue;
        };
        let user = row(&mut rows, i.tenant);
        user.owes += i.charge.net();
        user.borrowed_gpu_milli_ms += i.gpu_milli_ms;
        let owner = row(&mut rows, lender);
        owner.owed += i.charge.lending_credit;
        owner.lent_gpu_milli_ms += i.gpu_milli_ms;
    }
    rows.into_values().collect()
}

/// A tenant's spending in the budget period that contains `at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetStatus {
    pub label: String,
    pub used: Money,
    pub currency: String,
    pub budget: Budget,
}

impl BudgetStatus {
    pub fn over_soft(&self) -> bool {
        self.budget.soft.is_some_and(|s| self.used >= s)
    }

    pub fn over_hard(&self) -> bool {
        self.budget.hard.is_some_and(|h| self.used >= h)
    }
}

pub fn budget_status(
    accounts: &Accounts,
    tenant: &str,
    budget: &Budget,
    at: Millis,
) -> BudgetStatus {
    let start = budget.period.start(at);
    let end = budget.period.next(start);
    let used = accounts.spent(tenant, start, end);
    BudgetStatus {
        label: budget.period.label(at),
        used,
        currency: accounts
            .prices
            .latest()
            .map(|v| v.currency.clone())
            .unwrap_or_default(),
        budget: *budget,
    }
}
