//! The usage ledger, the price book and budgets: the replicated record of
//! who used which GPUs for how long, and the terms it is billed on.
//!
//! One entry is appended each time a task of a run ends, however it ends
//! (exit, preemption, cancel, node loss, GPU failure), and priced then:
//! prices never change retroactively, so a run's charge is final when it
//! ends. Entries are never changed afterwards. The most recent runs are
//! kept one by one; older ones are rolled up into per-day totals (see
//! [`Accounts::rolled`]), which keeps bills, reports and the settlement
//! exact while the state stays bounded however long the pool runs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub mod billing;
mod commands;
mod run_table;

use billing::{Charge, Period};

pub(super) use commands::run_end;

use super::types::*;

/// Money in thousandths of the currency unit (1 CNY = 1000).
pub type Money = u64;

/// Milliseconds in an hour: GPU-hours are thousandths-of-a-GPU x ms
/// divided by `1000 * MS_PER_HOUR`.
pub const MS_PER_HOUR: u64 = 3_600_000;

/// How a run (one task of it) ended, as the ledger records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunEnd {
    Completed,
    Failed,
    Preempted,
    Cancelled,
    Lost,
    GpuFailed,
}

impl RunEnd {
    pub fn name(self) -> &'static str {
        match self {
            RunEnd::Completed => "completed",
            RunEnd::Failed => "failed",
            RunEnd::Preempted => "preempted",
            RunEnd::Cancelled => "cancelled",
            RunEnd::Lost => "lost",
            RunEnd::GpuFailed => "gpu_failed",
        }
    }
}

/// One task of one run of a job, from its start to its end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// 1, 2, ... in log order; never reused.
    pub seq: u64,
    pub tenant: String,
    pub job: JobId,
    /// The job's attempt this run was (1 for the first run).
    pub run: u32,
    /// The task's index within the job (0 for a single-node job).
    pub task: u32,
    pub node: String,
    /// The member whose node ran it, when that is not the tenant.
    pub lender: Option<String>,
    pub class: JobClass,
    pub gpu_model: String,
    pub gpu_class: String,
    /// GPUs of the task.
    pub gpus: u32,
    /// Thousandths of each GPU it held (1000 for whole GPUs).
    pub milli_per_gpu: u32,
    /// The run's start as its first task reported it, and this task's end.
    pub start: Millis,
    pub end: Millis,
    /// (end - start) in ms x gpus x milli_per_gpu: thousandths of a
    /// GPU-millisecond, exact.
    pub gpu_milli_ms: u64,
    /// Energy of the task's GPUs when its agent measured it.
    pub energy_mj: Option<u64>,
    pub capacity: Capacity,
    pub ended: RunEnd,
    /// What it costs, priced when it was recorded (left out of snapshots
    /// when nothing: a pool without prices).
    #[serde(default, skip_serializing_if = "Charge::is_nothing")]
    pub charge: Charge,
}

impl LedgerEntry {
    pub fn duration_ms(&self) -> u64 {
        billing::ms_between(self.start, self.end)
    }
}

/// The price of a GPU-hour of one model, for one job class or (`class:
/// None`) for every class without its own price.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GpuPrice {
    pub model: String,
    pub class: Option<JobClass>,
    pub per_gpu_hour: Money,
}

/// The prices in force from `effective_from` until the next version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceVersion {
    /// 1, 2, ...
    pub version: u32,
    pub effective_from: Millis,
    /// When an admin set it.
    pub set_at: Millis,
    /// ISO 4217 code, e.g. `CNY`; fixed by the first version.
    pub currency: String,
    /// Sorted by model, then class (`None` first).
    pub gpu_hour: Vec<GpuPrice>,
    pub energy_per_kwh: Money,
    /// GPU-hours (in thousandths) free to each tenant per calendar month.
    pub free_milli_gpu_hours: u64,
    /// Percent off a tenant's bill, for under-resourced members.
    pub equity_discount_pct: BTreeMap<String, u32>,
    /// Percent of the GPU charge of a run credited to the member whose
    /// node ran it.
    pub lending_credit_pct: u32,
}

impl PriceVersion {
    /// The GPU-hour price of a model for a class: the class's own price,
    /// else the model's price for all classes.
    pub fn gpu_price(&self, model: &str, class: JobClass) -> Option<Money> {
        let of = |c: Option<JobClass>| {
            self.gpu_hour
                .iter()
                .find(|p| p.model == model && p.class == c)
                .map(|p| p.per_gpu_hour)
        };
        of(Some(class)).or_else(|| of(None))
    }
}

/// Every price version ever set, in order of `effective_from`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceBook {
    pub versions: Vec<PriceVersion>,
}

impl PriceBook {
    /// The version in force at `at`, if any was in force yet.
    pub fn at(&self, at: Millis) -> Option<&PriceVersion> {
        self.versions.iter().rev().find(|v| v.effective_from <= at)
    }

    pub fn latest(&self) -> Option<&PriceVersion> {
        self.versions.last()
    }
}

/// A change to the price book: what is given replaces the latest
/// version's value; everything else carries over.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceChange {
    /// `None`: from the moment the change is applied.
    pub effective_from: Option<Millis>,
    pub currency: Option<String>,
    pub gpu_hour: Vec<GpuPrice>,
    pub energy_per_kwh: Option<Money>,
    pub free_milli_gpu_hours: Option<u64>,
    /// Tenant -> percent; 0 removes the discount.
    pub equity_discount_pct: BTreeMap<String, u32>,
    pub lending_credit_pct: Option<u32>,
}

/// A tenant's spending limits per period, in the price book's currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub period: Period,
    /// Over it: a warning in reports and an alert.
    pub soft: Option<Money>,
    /// Over it: no new jobs but scavenger ones.
    pub hard: Option<Money>,
}

/// Runs rolled up into a day's totals are summed under this key: what
/// reports group by and the settlement needs, without the job.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TotalKey {
    pub tenant: String,
    pub lender: Option<String>,
    pub gpu_model: String,
    pub gpu_class: String,
    pub class: JobClass,
    pub capacity: Capacity,
}

/// The sum of some runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub runs: u64,
    pub gpu_milli_ms: u64,
    pub energy_mj: u64,
    pub charge: Charge,
}

/// One day's rolled-up runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayTotals {
    #[serde(with = "pairs")]
    pub rows: BTreeMap<TotalKey, Totals>,
}

/// The version of the ledger's stored form: 0 is a ledger whose entries
/// were not priced when recorded (they are priced on load, in ledger
/// order, as bills were computed then).
const LEDGER_FORM: u32 = 1;

/// The ledger's part of the replicated state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounts {
    /// The most recent runs one by one, in ledger order: at most the pool
    /// policy's `ledger_runs_kept`. Shared, never changed once recorded, so
    /// a copy of the state for a snapshot does not copy them. Serialized
    /// as one table (see `run_table`).
    #[serde(with = "run_table")]
    pub entries: VecDeque<Arc<LedgerEntry>>,
    /// Older runs, summed per day they ended (UTC midnight) and key.
    #[serde(default)]
    pub rolled: BTreeMap<Millis, DayTotals>,
    pub prices: PriceBook,
    pub budgets: BTreeMap<String, Budget>,
    /// The sequence number of the last run recorded.
    #[serde(default)]
    pub last_seq: u64,
    /// The latest end of a run recorded: prices may not change before it.
    #[serde(default)]
    pub last_end: Millis,
    /// Free-tier GPU time (thousandths of a GPU x ms) each tenant has used
    /// per calendar month (keyed by its start).
    #[serde(default, with = "pairs")]
    free_used: BTreeMap<(String, Millis), u64>,
    #[serde(default)]
    form: u32,
    /// Net charges per tenant and day, for budget checks (derived from
    /// the runs and the totals; rebuilt on load).
    #[serde(skip)]
    net_by_day: BTreeMap<(String, Millis), Money>,
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts {
            entries: VecDeque::new(),
            rolled: BTreeMap::new(),
            prices: PriceBook::default(),
            budgets: BTreeMap::new(),
            last_seq: 0,
            last_end: Millis::MIN,
            free_used: BTreeMap::new(),
            form: LEDGER_FORM,
            net_by_day: BTreeMap::new(),
        }
    }
}

impl Accounts {
    /// Prices a new run, appends it and rolls the oldest runs beyond
    /// `kept` up into their days' totals.
    fn record(&mut self, mut e: LedgerEntry, kept: usize) {
        self.last_seq += 1;
        e.seq = self.last_seq;
        e.charge = billing::price_run(&self.prices, &mut self.free_used, &e);
        self.last_end = self.last_end.max(e.end);
        let net = self
            .net_by_day
            .entry((e.tenant.clone(), Period::Day.start(e.end)))
            .or_default();
        *net = net.saturating_add(e.charge.net());
        self.entries.push_back(Arc::new(e));
        while self.entries.len() > kept {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.roll_up(Arc::unwrap_or_clone(old));
        }
    }

    fn roll_up(&mut self, e: LedgerEntry) {
        let key = TotalKey {
            tenant: e.tenant,
            lender: e.lender,
            gpu_model: e.gpu_model,
            gpu_class: e.gpu_class,
            class: e.class,
            capacity: e.capacity,
        };
        let day = self.rolled.entry(Period::Day.start(e.end)).or_default();
        let t = day.rows.entry(key).or_default();
        t.runs = t.runs.saturating_add(1);
        t.gpu_milli_ms = t.gpu_milli_ms.saturating_add(e.gpu_milli_ms);
        t.energy_mj = t.energy_mj.saturating_add(e.energy_mj.unwrap_or(0));
        t.charge = t.charge.plus(e.charge);
    }

    /// A tenant's net charges for the runs that ended in `[from, to)`,
    /// both at UTC midnight (budget periods are whole days).
    pub fn spent(&self, tenant: &str, from: Millis, to: Millis) -> Money {
        if from >= to {
            return 0;
        }
        self.net_by_day
            .range((tenant.to_string(), from)..(tenant.to_string(), to))
            .fold(0, |sum, (_, m)| sum.saturating_add(*m))
    }

    /// Completes a ledger read from a snapshot: prices the runs of a
    /// ledger stored before runs were priced when recorded (in ledger
    /// order, with today's price book, as its bills were computed), and
    /// rebuilds the derived sums.
    pub(super) fn loaded(&mut self) {
        if self.form < LEDGER_FORM {
            self.free_used.clear();
            for e in &mut self.entries {
                let e = Arc::make_mut(e);
                e.charge = billing::price_run(&self.prices, &mut self.free_used, e);
            }
            self.last_seq = self.entries.back().map_or(0, |e| e.seq);
            self.last_end = self
                .entries
                .iter()
                .map(|e| e.end)
                .max()
                .unwrap_or(Millis::MIN);
            self.form = LEDGER_FORM;
        }
        let mut net: BTreeMap<(String, Millis), Money> = BTreeMap::new();
        let mut add = |key, m: Money| {
            let sum = net.entry(key).or_default();
            *sum = sum.saturating_add(m);
        };
        for e in &self.entries {
            add((e.tenant.clone(), Period::Day.start(e.end)), e.charge.net());
        }
        for (day, d) in &self.rolled {
            for (k, t) in &d.rows {
                add((k.tenant.clone(), *day), t.charge.net());
            }
        }
        self.net_by_day = net;
    }
}

/// A map with keys that are not strings, stored as a list of pairs (JSON
/// objects take string keys only).
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}
