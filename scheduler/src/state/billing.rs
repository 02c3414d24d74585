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

use super::ledger::{Accounts, Budget, LedgerEntry, Money, PriceBook, MS_PER_HOUR};
use super::types::{Millis, WHOLE_GPU};

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
    u64::try_from((num + den / 2) / den).unwrap_or(u64::MAX)
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
    pub fn gross(&self) -> Money {
        self.gpu + self.energy
    }

    pub fn discount(&self) -> Money {
        self.free + self.equity
    }

    pub fn net(&self) -> Money {
        self.gross().saturating_sub(self.discount())
    }
}

/// A ledger entry and its charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line<'a> {
    pub entry: &'a LedgerEntry,
    pub charge: Charge,
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
    // Time before the first version is priced by nothing.
    unpriced_ms += (e.end.min(first) - e.start).max(0) as u64;
    for (i, v) in book.versions.iter().enumerate() {
        let until = book
            .versions
            .get(i + 1)
            .map_or(Millis::MAX, |n| n.effective_from);
        let ms = (e.end.min(until) - e.start.max(v.effective_from)).max(0) as u128;
        if ms == 0 {
            continue;
        }
        match v.gpu_price(&e.gpu_model, e.class) {
            Some(p) => gpu_num += ms * per_ms * u128::from(p),
            None => unpriced_ms += ms as u64,
        }
        energy_num += energy * ms * u128::from(v.energy_per_kwh);
    }
    let duration = u128::from(e.duration_ms());
    let energy = if duration > 0 {
        round_div(energy_num, duration * MJ_PER_KWH)
    } else {
        // A run of no duration: its energy at the price of its end.
        let price = book.at(e.end).map_or(0, |v| v.energy_per_kwh);
        round_div(energy * u128::from(price), MJ_PER_KWH)
    };
    Charge {
        gpu: round_div(gpu_num, u128::from(WHOLE_GPU) * u128::from(MS_PER_HOUR)),
        energy,
        unpriced_gpu_milli_ms: unpriced_ms * per_ms as u64,
        ..Charge::default()
    }
}

/// Prices the runs that ended in `[from, to)`, of one tenant or all.
/// Runs of the same month before `from` are priced too (and dropped), so
/// the free tier is consumed the same way whatever range is asked for.
pub fn bill<'a>(
    accounts: &'a Accounts,
    tenant: Option<&str>,
    from: Millis,
    to: Millis,
) -> Vec<Line<'a>> {
    let month = Period::Month.start(from);
    let mut free_used: BTreeMap<(&str, Millis), u64> = BTreeMap::new();
    let book = &accounts.prices;
    accounts
        .entries
        .iter()
        .filter(|e| tenant.is_none_or(|t| e.tenant == t) && e.end >= month && e.end < to)
        .map(|e| {
            let mut charge = gross_charge(book, e);
            if let Some(v) = book.at(e.end) {
                let allowance = v.free_milli_gpu_hours.saturating_mul(MS_PER_HOUR);
                let used = free_used
                    .entry((e.tenant.as_str(), Period::Month.start(e.end)))
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
                let rest = charge.gross() - charge.free;
                charge.equity = round_div(u128::from(rest) * u128::from(pct), 100);
                if e.lender.is_some() {
                    charge.lending_credit = round_div(
                        u128::from(charge.gpu) * u128::from(v.lending_credit_pct),
                        100,
                    );
                }
            }
            Line { entry: e, charge }
        })
        .filter(|l| l.entry.end >= from)
        .collect()
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

/// Sums bill lines per tenant and key, in key order.
pub fn report(lines: &[Line], by: GroupBy) -> Vec<ReportRow> {
    let mut rows: BTreeMap<(String, String), ReportRow> = BTreeMap::new();
    for l in lines {
        let e = l.entry;
        let key = match by {
            GroupBy::Day => Period::Day.label(e.end),
            GroupBy::Job => e.job.to_string(),
            GroupBy::Model => e.gpu_model.clone(),
            GroupBy::Class => e.class.name().to_string(),
        };
        let row = rows
            .entry((e.tenant.clone(), key.clone()))
            .or_insert_with(|| ReportRow {
                tenant: e.tenant.clone(),
                key,
                ..ReportRow::default()
            });
        row.runs += 1;
        row.gpu_milli_ms += e.gpu_milli_ms;
        if e.capacity == super::types::Capacity::Borrowed {
            row.borrowed_gpu_milli_ms += e.gpu_milli_ms;
        }
        row.energy_mj += e.energy_mj.unwrap_or(0);
        row.gross += l.charge.gross();
        row.discount += l.charge.discount();
        row.net += l.charge.net();
        row.unpriced_gpu_milli_ms += l.charge.unpriced_gpu_milli_ms;
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
pub fn settlement(lines: &[Line]) -> Vec<SettlementRow> {
    let mut rows: BTreeMap<String, SettlementRow> = BTreeMap::new();
    fn row<'r>(rows: &'r mut BTreeMap<String, SettlementRow>, name: &str) -> &'r mut SettlementRow {
        rows.entry(name.to_string())
            .or_insert_with(|| SettlementRow {
                member: name.to_string(),
                ..SettlementRow::default()
            })
    }
    for l in lines {
        let Some(lender) = &l.entry.lender else {
            continue;
        };
        let user = row(&mut rows, &l.entry.tenant);
        user.owes += l.charge.net();
        user.borrowed_gpu_milli_ms += l.entry.gpu_milli_ms;
        let owner = row(&mut rows, lender);
        owner.owed += l.charge.lending_credit;
        owner.lent_gpu_milli_ms += l.entry.gpu_milli_ms;
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
    let used = bill(accounts, Some(tenant), start, end)
        .iter()
        .map(|l| l.charge.net())
        .sum();
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
