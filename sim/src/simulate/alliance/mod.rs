//! Scenario 1, the alliance on Philly: the virtual clusters of Microsoft's
//! Philly trace as members of an alliance, each contributing its nodes,
//! under three policies in the same run:
//!
//! - `partitioned-fifo`: every member alone on its own nodes, FIFO (the
//!   status quo of separate university clusters): one pool per member;
//! - `pooled-fifo`: all nodes in one pool, one FIFO queue, no guarantees;
//! - `edupool`: one pool under the default policy (guarantee = own nodes,
//!   borrowing, fair share, preemption).
//!
//! `replay` drives the scheduler's own state machine and planner; this
//! module turns the trace into jobs and members and the replays into the
//! report's figures.

pub mod replay;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use edupool_table::Table;
use serde::{Deserialize, Serialize};

use super::svg::{Chart, Series};
use super::traces::{parse_datetime, philly_jobs, philly_vcs, Csv, PhillyJob, PhillyVc};
use super::SimulateError;
use edupool_core::planner::QueueOrder;
use edupool_core::state::Millis;
use replay::{replay, Member, Params, Run, Setup, TraceJob, GPUS_PER_NODE};

/// The policies compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    PartitionedFifo,
    PooledFifo,
    Edupool,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::PartitionedFifo => "partitioned-fifo",
            Mode::PooledFifo => "pooled-fifo",
            Mode::Edupool => "edupool",
        }
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "partitioned-fifo" => Ok(Mode::PartitionedFifo),
            "pooled-fifo" => Ok(Mode::PooledFifo),
            "edupool" => Ok(Mode::Edupool),
            other => Err(serde::de::Error::custom(format!(
                "unknown policy '{other}'; the policies are partitioned-fifo, pooled-fifo and edupool"
            ))),
        }
    }
}

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// The trace, cut to the window and to the members, ready to replay.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// Members at scale 1 (node counts as listed).
    pub vcs: Vec<PhillyVc>,
    pub jobs: Vec<TraceJob>,
    /// Jobs in the window from virtual clusters that are not members.
    pub other_vcs: usize,
}

/// Selects the jobs submitted in `[from, to]` (seconds since the epoch)
/// by listed virtual clusters.
pub fn workload(jobs: &[PhillyJob], vcs: &[PhillyVc], from: i64, to: i64) -> Workload {
    let index: BTreeMap<&str, usize> = vcs
        .iter()
        .enumerate()
        .map(|(i, v)| (v.vc.as_str(), i))
        .collect();
    let mut out = vec![];
    let mut other_vcs = 0;
    for j in jobs.iter().filter(|j| (from..=to).contains(&j.submit)) {
        let Some(&tenant) = index.get(j.vc.as_str()) else {
            other_vcs += 1;
            continue;
        };
        out.push(TraceJob {
            tenant,
            submit: j.submit * 1000,
            duration: (j.duration * 1000.0).round() as Millis,
            gpus: j.gpus,
        });
    }
    // Ties in submit time keep the trace's order.
    out.sort_by_key(|j| j.submit);
    Workload {
        vcs: vcs.to_vec(),
        jobs: out,
        other_vcs,
    }
}

/// Each member's nodes at `scale`: `round(nodes × scale)`.
pub fn members(vcs: &[PhillyVc], scale: f64) -> Vec<Member> {
    vcs.iter()
        .map(|v| Member {
            name: v.vc.clone(),
            nodes: (f64::from(v.nodes) * scale).round() as u32,
        })
        .collect()
}

/// The figures of one policy at one scale.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PolicyResult {
    pub policy: Mode,
    pub jobs: usize,
    pub jct_s: Stats,
    pub queueing_s: Stats,
    /// From the first submit to the last finish.
    pub makespan_s: f64,
    /// GPU time held / (GPUs × makespan).
    pub utilisation: f64,
    /// Per member: jobs, average JCT, and that JCT divided by the
    /// member's `partitioned-fifo` JCT (below 1: better off pooled).
    pub tenants: Vec<TenantResult>,
    /// Jain's index over the members' speed-ups against
    /// `partitioned-fifo` (1: every member gains alike).
    pub jain: f64,
    pub preemptions: u64,
    pub gpu_hours_lost: f64,
    /// Placements within a guarantee that needed preemption.
    pub reclaims: usize,
    /// From the first preemption for a claimant to its placement.
    pub reclaim_p99_s: Option<f64>,
    /// The same claimants' whole wait in the queue.
    pub claimant_wait_p99_s: Option<f64>,
    pub rounds: u64,
    pub rejected_decisions: u64,
    pub wall_s: f64,
    /// Average queueing delay (h) of the jobs submitted each day.
    pub queueing_by_day_h: Vec<f64>,
    /// GPUs held, % of the pool, per timeline bucket.
    pub utilisation_timeline: Vec<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TenantResult {
    pub tenant: String,
    pub gpus: u32,
    pub jobs: usize,
    pub avg_jct_s: f64,
    pub jct_ratio: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Stats {
    pub avg: f64,
    pub median: f64,
    pub p99: f64,
}

impl Stats {
    /// Of values in milliseconds, in seconds.
    pub fn of_ms(values: &mut [Millis]) -> Stats {
        if values.is_empty() {
            return Stats::default();
        }
        values.sort_unstable();
        let n = values.len();
        let at = |q: f64| values[((q * n as f64).ceil() as usize).clamp(1, n) - 1] as f64 / 1e3;
        let median = if n % 2 == 1 {
            values[n / 2] as f64 / 1e3
        } else {
            (values[n / 2 - 1] + values[n / 2]) as f64 / 2e3
        };
        Stats {
            avg: values.iter().map(|&v| v as f64).sum::<f64>() / n as f64 / 1e3,
            median,
            p99: at(0.99),
        }
    }
}

/// All policies at one scale.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ScaleResult {
    pub scale: f64,
    pub nodes: u32,
    pub gpus: u32,
    /// Jobs replayed (submitted in the window by members that could run
    /// them alone).
    pub jobs: usize,
    /// Jobs larger than their member's own GPUs at this scale: they could
    /// never run in `partitioned-fifo`, so they are left out of every
    /// policy to compare like with like.
    pub too_large_alone: usize,
    pub timeline_bucket_h: f64,
    /// GPUs the arrived jobs would hold if each ran on arrival, per bucket.
    pub offered_load_gpus: Vec<f64>,
    pub policies: Vec<PolicyResult>,
}

/// Replays the workload at one scale under each policy, `threads` runs
/// at a time; `tick` is called once per job finished in any run.
pub fn run_scale(
    workload: &Workload,
    scale: f64,
    modes: &[Mode],
    params: &Params,
    tick: &(dyn Fn() + Sync),
) -> ScaleResult {
    let members = members(&workload.vcs, scale);
    let own: Vec<u32> = members.iter().map(|m| m.nodes * GPUS_PER_NODE).collect();
    let jobs: Vec<TraceJob> = workload
        .jobs
        .iter()
        .filter(|j| j.held() <= own[j.tenant])
        .cloned()
        .collect();
    let too_large_alone = workload.jobs.len() - jobs.len();
    let runs: Vec<(Run, f64)> = super::parallel_map(modes, |&mode| {
        let t0 = Instant::now();
        let run = run_mode(&members, &jobs, mode, params, tick);
        (run, t0.elapsed().as_secs_f64())
    });
    let gpus: u32 = own.iter().sum();
    let base = modes
        .iter()
        .position(|&m| m == Mode::PartitionedFifo)
        .map(|p| tenant_jct(&runs[p].0, &jobs, members.len()));
    let policies = modes
        .iter()
        .zip(&runs)
        .map(|(&mode, (run, wall))| {
            summarise(
                mode,
                run,
                &jobs,
                &members,
                gpus,
                base.as_deref(),
                *wall,
                params,
            )
        })
        .collect();
    ScaleResult {
        scale,
        nodes: members.iter().map(|m| m.nodes).sum(),
        gpus,
        jobs: jobs.len(),
        too_large_alone,
        timeline_bucket_h: params.bucket_ms as f64 / 3.6e6,
        offered_load_gpus: offered_load(&jobs, params.bucket_ms),
        policies,
    }
}

/// One policy's replay: one pool, or one per member when partitioned.
pub fn run_mode(
    members: &[Member],
    jobs: &[TraceJob],
    mode: Mode,
    params: &Params,
    tick: &dyn Fn(),
) -> Run {
    let origin = jobs.iter().map(|j| j.submit).min().unwrap_or(0);
    match mode {
        Mode::PooledFifo => replay(
            members,
            jobs,
            Setup {
                owners: false,
                order: QueueOrder::Fifo,
                origin,
            },
            params,
            tick,
        ),
        Mode::Edupool => replay(
            members,
            jobs,
            Setup {
                owners: true,
                order: QueueOrder::FairShare,
                origin,
            },
            params,
            tick,
        ),
        Mode::PartitionedFifo => partitioned(members, jobs, params, tick),
    }
}

/// Every member alone with its own nodes; the runs merged back in trace
/// order on the shared timeline.
fn partitioned(members: &[Member], jobs: &[TraceJob], params: &Params, tick: &dyn Fn()) -> Run {
    let start = jobs.iter().map(|j| j.submit).min().unwrap_or(0);
    let mut merged = Run {
        jobs: vec![Default::default(); jobs.len()],
        ..Run::default()
    };
    for (t, m) in members.iter().enumerate() {
        let mine: Vec<usize> = (0..jobs.len()).filter(|&i| jobs[i].tenant == t).collect();
        if mine.is_empty() {
            continue;
        }
        let alone: Vec<TraceJob> = mine
            .iter()
            .map(|&i| TraceJob {
                tenant: 0,
                ..jobs[i].clone()
            })
            .collect();
        let setup = Setup {
            owners: true,
            order: QueueOrder::Fifo,
            origin: start,
        };
        let run = replay(std::slice::from_ref(m), &alone, setup, params, tick);
        for (k, &i) in mine.iter().enumerate() {
            merged.jobs[i] = run.jobs[k].clone();
        }
        if merged.busy.len() < run.busy.len() {
            merged.busy.resize(run.busy.len(), 0.0);
        }
        for (b, v) in run.busy.iter().enumerate() {
            merged.busy[b] += v;
        }
        merged.reclaim_ms.extend(run.reclaim_ms);
        merged.claimant_wait_ms.extend(run.claimant_wait_ms);
        merged.rounds += run.rounds;
        merged.rejected += run.rejected;
        merged.refused += run.refused;
    }
    merged
}

/// Average JCT (ms) per member.
fn tenant_jct(run: &Run, jobs: &[TraceJob], tenants: usize) -> Vec<Option<f64>> {
    let mut sum = vec![(0.0, 0usize); tenants];
    for (j, o) in jobs.iter().zip(&run.jobs) {
        if let Some(jct) = o.jct_ms() {
            sum[j.tenant].0 += jct as f64;
            sum[j.tenant].1 += 1;
        }
    }
    sum.into_iter()
        .map(|(s, n)| (n > 0).then(|| s / n as f64))
        .collect()
}

/// Jain's fairness index of non-negative values.
pub fn jain(values: &[f64]) -> f64 {
    let sum: f64 = values.iter().sum();
    let squares: f64 = values.iter().map(|v| v * v).sum();
    if values.is_empty() || squares == 0.0 {
        return 1.0;
    }
    sum * sum / (values.len() as f64 * squares)
}

#[allow(clippy::too_many_arguments)]
fn summarise(
    mode: Mode,
    run: &Run,
    jobs: &[TraceJob],
    members: &[Member],
    gpus: u32,
    base: Option<&[Option<f64>]>,
    wall_s: f64,
    params: &Params,
) -> PolicyResult {
    let mut jct: Vec<Millis> = run.jobs.iter().filter_map(|o| o.jct_ms()).collect();
    let mut queued: Vec<Millis> = run
        .jobs
        .iter()
        .filter(|o| o.finish.is_some())
        .map(|o| o.queued_ms)
        .collect();
    let first = jobs.iter().map(|j| j.submit).min().unwrap_or(0);
    let last = run
        .jobs
        .iter()
        .filter_map(|o| o.finish)
        .max()
        .unwrap_or(first);
    let makespan_ms = (last - first).max(1);
    let busy: f64 = run.busy.iter().sum();
    let mine = tenant_jct(run, jobs, members.len());
    let mut speedups = vec![];
    let tenants = members
        .iter()
        .enumerate()
        .map(|(t, m)| {
            let ratio = match (mine[t], base.and_then(|b| b[t])) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            if let Some(r) = ratio.filter(|r| *r > 0.0) {
                speedups.push(1.0 / r);
            }
            TenantResult {
                tenant: m.name.clone(),
                gpus: m.nodes * GPUS_PER_NODE,
                jobs: jobs.iter().filter(|j| j.tenant == t).count(),
                avg_jct_s: mine[t].unwrap_or(0.0) / 1e3,
                jct_ratio: ratio,
            }
        })
        .collect();
    let p99 = |ms: &[Millis]| (!ms.is_empty()).then(|| Stats::of_ms(&mut ms.to_vec()).p99);
    let bucket = params.bucket_ms.max(1) as f64;
    PolicyResult {
        policy: mode,
        jobs: jct.len(),
        jct_s: Stats::of_ms(&mut jct),
        queueing_s: Stats::of_ms(&mut queued),
        makespan_s: makespan_ms as f64 / 1e3,
        utilisation: busy / (f64::from(gpus.max(1)) * makespan_ms as f64),
        tenants,
        jain: jain(&speedups),
        preemptions: run.jobs.iter().map(|o| u64::from(o.preemptions)).sum(),
        gpu_hours_lost: run.jobs.iter().map(|o| o.lost_gpu_ms as f64).sum::<f64>() / 3.6e6,
        reclaims: run.reclaim_ms.len(),
        reclaim_p99_s: p99(&run.reclaim_ms),
        claimant_wait_p99_s: p99(&run.claimant_wait_ms),
        rounds: run.rounds,
        rejected_decisions: run.rejected,
        wall_s,
        queueing_by_day_h: queueing_by_day(run, first),
        utilisation_timeline: run
            .busy
            .iter()
            .map(|b| 100.0 * b / (f64::from(gpus.max(1)) * bucket))
            .collect(),
    }
}

fn queueing_by_day(run: &Run, first: Millis) -> Vec<f64> {
    const DAY: Millis = 86_400_000;
    let mut days: Vec<(f64, usize)> = vec![];
    for o in run.jobs.iter().filter(|o| o.finish.is_some()) {
        let d = ((o.submit - first) / DAY) as usize;
        if days.len() <= d {
            days.resize(d + 1, (0.0, 0));
        }
        days[d].0 += o.queued_ms as f64 / 3.6e6;
        days[d].1 += 1;
    }
    days.into_iter()
        .map(|(s, n)| if n == 0 { 0.0 } else { s / n as f64 })
        .collect()
}

/// GPUs the jobs would hold if each ran the moment it arrived, averaged
/// per bucket.
fn offered_load(jobs: &[TraceJob], bucket_ms: Millis) -> Vec<f64> {
    let bucket = bucket_ms.max(1);
    let Some(first) = jobs.iter().map(|j| j.submit).min() else {
        return vec![];
    };
    let mut out: Vec<f64> = vec![];
    for j in jobs {
        let (mut t, end) = (j.submit, j.submit + j.duration);
        while t < end {
            let b = ((t - first) / bucket) as usize;
            let stop = (first + (b as Millis + 1) * bucket).min(end);
            if out.len() <= b {
                out.resize(b + 1, 0.0);
            }
            out[b] += f64::from(j.held()) * (stop - t) as f64;
            t = stop;
        }
    }
    out.iter().map(|v| v / bucket as f64).collect()
}

/// A counter the runs tick, shared across threads.
pub struct Progress<'a> {
    pub done: AtomicU64,
    pub total: u64,
    pub report: &'a (dyn Fn(usize, usize) + Sync),
}

impl Progress<'_> {
    pub fn tick(&self) {
        let d = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        // A report per thousandth is plenty for a bar.
        let step = (self.total / 1000).max(1);
        if d.is_multiple_of(step) || d == self.total {
            (self.report)(d as usize, self.total as usize);
        }
    }
}

/// The `[alliance]` section of a scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllianceScenario {
    /// The job list, e.g. `philly-pollux/philly.csv`.
    pub jobs: PathBuf,
    /// The members and their nodes, e.g. `helios-acme-configs/philly_vc.csv`.
    pub vcs: PathBuf,
    /// Jobs submitted from this time (`YYYY-MM-DD HH:MM:SS`, UTC) ...
    pub from: String,
    /// ... to this one, inclusive.
    pub to: String,
    /// Each member contributes `round(nodes × scale)` nodes.
    #[serde(default = "default_scales")]
    pub scales: Vec<f64>,
    #[serde(default = "default_policies")]
    pub policies: Vec<Mode>,
    #[serde(default = "default_checkpoint")]
    pub checkpoint_interval_secs: u64,
    #[serde(default = "default_restart")]
    pub restart_delay_secs: u64,
    /// The walltime jobs are submitted with: the trace has none, so it is
    /// above the longest job and the same for all.
    #[serde(default = "default_walltime")]
    pub walltime_secs: u64,
    /// Resolution of the utilisation and load timelines.
    #[serde(default = "default_bucket")]
    pub timeline_bucket_secs: u64,
}

fn default_scales() -> Vec<f64> {
    vec![1.0, 0.35]
}

fn default_policies() -> Vec<Mode> {
    vec![Mode::PartitionedFifo, Mode::PooledFifo, Mode::Edupool]
}

fn default_checkpoint() -> u64 {
    15 * 60
}

fn default_restart() -> u64 {
    60
}

fn default_walltime() -> u64 {
    60 * 86_400
}

fn default_bucket() -> u64 {
    6 * 3600
}

impl AllianceScenario {
    /// The window in seconds since the epoch, or what is wrong with it.
    pub fn window(&self) -> Result<(i64, i64), String> {
        let parse = |what: &str, s: &str| {
            parse_datetime(s).ok_or_else(|| {
                format!("alliance.{what} is '{s}', expected a YYYY-MM-DD HH:MM:SS time")
            })
        };
        let (from, to) = (parse("from", &self.from)?, parse("to", &self.to)?);
        if to < from {
            return Err(format!(
                "alliance.to ({}) is before alliance.from ({})",
                self.to, self.from
            ));
        }
        Ok((from, to))
    }

    pub fn validate(&self) -> Result<(), String> {
        self.window()?;
        if self.scales.is_empty() {
            return Err("alliance.scales is empty".into());
        }
        if let Some(s) = self.scales.iter().find(|s| !(0.01..=100.0).contains(*s)) {
            return Err(format!(
                "alliance.scales has {s}, expected between 0.01 and 100"
            ));
        }
        if !self.policies.contains(&Mode::PartitionedFifo) {
            return Err(
                "alliance.policies must include partitioned-fifo: every member's JCT is compared with it"
                    .into(),
            );
        }
        if self.checkpoint_interval_secs == 0 {
            return Err("alliance.checkpoint_interval_secs is 0, expected at least 1".into());
        }
        if self.timeline_bucket_secs < 60 {
            return Err("alliance.timeline_bucket_secs is below 60".into());
        }
        Ok(())
    }

    pub fn params(&self) -> Params {
        Params {
            checkpoint_ms: self.checkpoint_interval_secs as Millis * 1000,
            restart_delay_ms: self.restart_delay_secs as Millis * 1000,
            walltime_secs: self.walltime_secs,
            bucket_ms: self.timeline_bucket_secs as Millis * 1000,
        }
    }
}

/// The outcome of scenario 1.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AllianceReport {
    pub from: String,
    pub to: String,
    pub members: usize,
    /// Jobs in the window from virtual clusters that are not members.
    pub other_vc_jobs: usize,
    pub checkpoint_interval_s: u64,
    pub restart_delay_s: u64,
    pub walltime_s: u64,
    pub scales: Vec<ScaleResult>,
    pub wall_seconds: f64,
    /// Jobs replayed (over every policy and scale) per second of wall time.
    pub jobs_per_second: f64,
}

/// Runs scenario 1; `progress` hears (jobs done, jobs in all runs).
pub fn run(
    sc: &AllianceScenario,
    traces: &Path,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<AllianceReport, SimulateError> {
    let started = Instant::now();
    let jobs = philly_jobs(&Csv::open(&traces.join(&sc.jobs))?)?;
    let vcs = philly_vcs(&Csv::open(&traces.join(&sc.vcs))?)?;
    let (from, to) = sc.window().map_err(|message| SimulateError::Scenario {
        path: sc.jobs.clone(),
        message,
    })?;
    let w = workload(&jobs, &vcs, from, to);
    let params = sc.params();
    let replayed = |scale: f64| {
        let own: Vec<u32> = members(&w.vcs, scale)
            .iter()
            .map(|m| m.nodes * GPUS_PER_NODE)
            .collect();
        w.jobs.iter().filter(|j| j.held() <= own[j.tenant]).count() as u64
    };
    let total: u64 = sc
        .scales
        .iter()
        .map(|&s| replayed(s) * sc.policies.len() as u64)
        .sum();
    let counter = Progress {
        done: AtomicU64::new(0),
        total,
        report: progress,
    };
    let tick = || counter.tick();
    let scales: Vec<ScaleResult> = sc
        .scales
        .iter()
        .map(|&s| run_scale(&w, s, &sc.policies, &params, &tick))
        .collect();
    let wall = started.elapsed().as_secs_f64();
    Ok(AllianceReport {
        from: sc.from.clone(),
        to: sc.to.clone(),
        members: vcs.len(),
        other_vc_jobs: w.other_vcs,
        checkpoint_interval_s: sc.checkpoint_interval_secs,
        restart_delay_s: sc.restart_delay_secs,
        walltime_s: sc.walltime_secs,
        scales,
        wall_seconds: wall,
        jobs_per_second: total as f64 / wall.max(1e-9),
    })
}

impl AllianceReport {
    /// The human table.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nalliance on Philly: jobs submitted {} .. {}, {} members; checkpoint every {} s, restart delay {} s",
            self.from, self.to, self.members, self.checkpoint_interval_s, self.restart_delay_s
        );
        let _ = writeln!(
            out,
            "  {:.1} s wall time, {:.0} simulated jobs per second",
            self.wall_seconds, self.jobs_per_second
        );
        for s in &self.scales {
            let _ = writeln!(
                out,
                "\nscale {}: {} nodes, {} GPUs, {} jobs ({} left out: larger than their member alone)",
                s.scale, s.nodes, s.gpus, s.jobs, s.too_large_alone
            );
            out.push_str(&policy_table(&s.policies));
            let _ = writeln!(
                out,
                "  per member: average JCT / its partitioned-fifo JCT (below 1: better off in the pool)"
            );
            out.push_str(&member_table(&s.policies));
            if s.policies.is_empty() {
                continue;
            }
            for p in &s.policies {
                let worse: Vec<String> = p
                    .tenants
                    .iter()
                    .filter(|t| t.jct_ratio.is_some_and(|r| r > 1.0 + 1e-9))
                    .map(|t| format!("{} ({:.2})", t.tenant, t.jct_ratio.unwrap_or(0.0)))
                    .collect();
                if p.policy != Mode::PartitionedFifo && !worse.is_empty() {
                    let _ = writeln!(
                        out,
                        "  worse off than alone under {}: {}",
                        p.policy.name(),
                        worse.join(", ")
                    );
                }
            }
            let _ = writeln!(
                out,
                "  replay: {}",
                s.policies
                    .iter()
                    .map(|p| format!("{} {:.1} s, {} rounds", p.policy.name(), p.wall_s, p.rounds))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        out
    }

    /// The plots, by file name.
    pub fn charts(&self) -> Vec<(String, Chart)> {
        let mut out = vec![];
        for s in &self.scales {
            let tag = format!("{}", s.scale);
            let days = |p: &PolicyResult| Series {
                label: p.policy.name().into(),
                points: p
                    .queueing_by_day_h
                    .iter()
                    .enumerate()
                    .map(|(d, v)| (d as f64, *v))
                    .collect(),
            };
            out.push((
                format!("alliance-queueing-{tag}.svg"),
                Chart {
                    title: format!("Queueing delay, Philly at scale {tag}"),
                    x_label: "day of submission".into(),
                    y_label: "average queueing delay (h)".into(),
                    series: s.policies.iter().map(days).collect(),
                },
            ));
            let step = s.timeline_bucket_h / 24.0;
            let timeline = |label: &str, v: &[f64]| Series {
                label: label.into(),
                points: v
                    .iter()
                    .enumerate()
                    .map(|(b, v)| (b as f64 * step, *v))
                    .collect(),
            };
            out.push((
                format!("alliance-utilisation-{tag}.svg"),
                Chart {
                    title: format!("GPU utilisation, Philly at scale {tag}"),
                    x_label: "day".into(),
                    y_label: "GPUs held (% of the pool)".into(),
                    series: s
                        .policies
                        .iter()
                        .map(|p| timeline(p.policy.name(), &p.utilisation_timeline))
                        .collect(),
                },
            ));
            let gpus = f64::from(s.gpus);
            let mut load = vec![timeline("arrived load", &s.offered_load_gpus)];
            load.extend(s.policies.iter().map(|p| {
                let held: Vec<f64> = p
                    .utilisation_timeline
                    .iter()
                    .map(|u| u * gpus / 100.0)
                    .collect();
                timeline(p.policy.name(), &held)
            }));
            let horizon = load[0].points.last().map_or(0.0, |p| p.0);
            load.push(Series {
                label: "pool GPUs".into(),
                points: vec![(0.0, gpus), (horizon, gpus)],
            });
            out.push((
                format!("alliance-allocation-{tag}.svg"),
                Chart {
                    title: format!("Allocation vs arrived load, Philly at scale {tag}"),
                    x_label: "day".into(),
                    y_label: "GPUs".into(),
                    series: load,
                },
            ));
            let names: Vec<String> = s
                .policies
                .first()
                .map(|p| p.tenants.iter().map(|t| t.tenant.clone()).collect())
                .unwrap_or_default();
            let mut ratios: Vec<Series> = s
                .policies
                .iter()
                .filter(|p| p.policy != Mode::PartitionedFifo)
                .map(|p| Series {
                    label: p.policy.name().into(),
                    points: p
                        .tenants
                        .iter()
                        .enumerate()
                        .filter_map(|(i, t)| t.jct_ratio.map(|r| ((i + 1) as f64, r)))
                        .collect(),
                })
                .collect();
            ratios.push(Series {
                label: "alone (1.0)".into(),
                points: vec![(1.0, 1.0), (names.len().max(1) as f64, 1.0)],
            });
            out.push((
                format!("alliance-member-jct-{tag}.svg"),
                Chart {
                    title: format!("Member JCT / partitioned-fifo JCT, scale {tag}"),
                    x_label: names
                        .iter()
                        .enumerate()
                        .map(|(i, n)| format!("{} {n}", i + 1))
                        .collect::<Vec<_>>()
                        .join("  "),
                    y_label: "average JCT / alone".into(),
                    series: ratios,
                },
            ));
        }
        out
    }
}

/// Seconds as hours for the table.
/// One row per policy: completion and waiting times, makespan, use,
/// fairness and preemption.
fn policy_table(policies: &[PolicyResult]) -> String {
    let mut table = Table::new([
        "policy",
        "JCT avg",
        "JCT med",
        "JCT p99",
        "wait avg",
        "wait med",
        "wait p99",
        "makespan",
        "util",
        "Jain",
        "preempt",
        "GPU-h lost",
        "reclaim99",
    ]);
    table.indent(2).align_right(1..13);
    for p in policies {
        table.row([
            p.policy.name().to_string(),
            hours(p.jct_s.avg),
            hours(p.jct_s.median),
            hours(p.jct_s.p99),
            hours(p.queueing_s.avg),
            hours(p.queueing_s.median),
            hours(p.queueing_s.p99),
            hours(p.makespan_s),
            format!("{:.1}%", 100.0 * p.utilisation),
            format!("{:.3}", p.jain),
            p.preemptions.to_string(),
            format!("{:.1}", p.gpu_hours_lost),
            p.reclaim_p99_s.map_or("-".into(), hours),
        ]);
    }
    table.render()
}

/// One row per member: its GPUs and jobs, then under each policy its
/// average JCT and that over its partitioned-fifo JCT.
fn member_table(policies: &[PolicyResult]) -> String {
    let names = policies.iter().map(|p| p.policy.name().to_string());
    let header = ["member", "GPUs", "jobs"].map(String::from);
    let mut table = Table::new(header.into_iter().chain(names));
    table.indent(2).align_right(1..3 + policies.len());
    let Some(first) = policies.first() else {
        return table.render();
    };
    for (t, m) in first.tenants.iter().enumerate() {
        let cells = policies.iter().map(|p| {
            let r = &p.tenants[t];
            match r.jct_ratio {
                Some(x) => format!("{} ({x:.2})", hours(r.avg_jct_s)),
                None => "-".into(),
            }
        });
        let head = [m.tenant.clone(), m.gpus.to_string(), m.jobs.to_string()];
        table.row(head.into_iter().chain(cells));
    }
    table.render()
}

fn hours(secs: f64) -> String {
    format!("{:.2} h", secs / 3600.0)
}
