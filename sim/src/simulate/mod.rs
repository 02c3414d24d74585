//! Trace replay: what a policy does to real workloads, measured offline.
//!
//! - `traces`: parsers for the public traces (`../shared/traces/`), which
//!   name the file and line of a malformed row.
//! - `packing`: scenario 2, packing on the Alibaba GPU-sharing trace by the
//!   protocol of the FGD experiments: the random, best-fit and FGD
//!   baselines, and the scheduler's planner in the same run.
//! - `planner_pool`: scenario 2 through the scheduler's own state machine
//!   and planner (no placement logic of the simulator's own).
//! - `fgd`: FGD's own scoring (USENIX ATC'23), as a baseline.
//! - `alliance`: scenario 1, the Philly trace's virtual clusters as
//!   members of an alliance, replayed through the scheduler's own state
//!   machine and planner under edupool's policy and two FIFO baselines.
//! - `svg`: the plots.
//!
//! A scenario is a TOML file (see `examples/scenarios/`); `run` executes it
//! and returns a [`Report`] that is written as JSON, a text table and SVG
//! plots.

pub mod alliance;
pub mod fgd;
pub mod packing;
pub mod planner_pool;
pub mod svg;
pub mod traces;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use edupool_table::Table;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use packing::Packer;
use traces::{Csv, TraceError};

#[derive(Debug, Error)]
pub enum SimulateError {
    #[error("cannot read the scenario {}: {source}", path.display())]
    ReadScenario {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the scenario {} is invalid: {message}", path.display())]
    Scenario { path: PathBuf, message: String },
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// Where the trace paths are relative to; default: `../shared/traces`
    /// relative to the scenario file's folder's parent, or `--traces`.
    #[serde(default)]
    pub traces: Option<PathBuf>,
    #[serde(default)]
    pub packing: Option<PackingScenario>,
    #[serde(default)]
    pub alliance: Option<alliance::AllianceScenario>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackingScenario {
    /// The node list, e.g. `alibaba-openb-2023/csv/openb_node_list_gpu_node.csv`
    /// (the published experiments' cluster) or `openb_node_list_all_node.csv`.
    pub nodes: PathBuf,
    /// One or more task lists; each is run on its own.
    pub task_lists: Vec<PathBuf>,
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Arrived GPU request, as a multiple of capacity, to top up to.
    #[serde(default = "default_inflation")]
    pub inflation: f64,
    #[serde(default = "default_packers")]
    pub packers: Vec<Packer>,
    /// The published per-seed results to compare with (FGD artifact's
    /// `analysis_allo_discrete.csv`); optional.
    #[serde(default)]
    pub published: Option<PathBuf>,
}

fn default_seeds() -> Vec<u64> {
    (42..=51).collect()
}

fn default_inflation() -> f64 {
    1.3
}

fn default_packers() -> Vec<Packer> {
    Packer::ALL.to_vec()
}

impl<'de> Deserialize<'de> for Packer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Packer::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown packer '{s}'; the packers are baseline-random, \
                     baseline-best-fit, baseline-fgd and edupool-planner"
                ))
            })
    }
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, SimulateError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimulateError::ReadScenario {
            path: path.to_path_buf(),
            source,
        })?;
        let s: Scenario = toml::from_str(&text).map_err(|e| SimulateError::Scenario {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let bad = |message: String| SimulateError::Scenario {
            path: path.to_path_buf(),
            message,
        };
        if let Some(p) = &s.packing {
            if p.task_lists.is_empty() {
                return Err(bad("packing.task_lists is empty".into()));
            }
            if p.seeds.is_empty() {
                return Err(bad("packing.seeds is empty".into()));
            }
            if !(1.0..=5.0).contains(&p.inflation) {
                return Err(bad(format!(
                    "packing.inflation is {}, expected between 1.0 and 5.0",
                    p.inflation
                )));
            }
        }
        if let Some(a) = &s.alliance {
            a.validate().map_err(bad)?;
        }
        if s.packing.is_none() && s.alliance.is_none() {
            return Err(bad(
                "the scenario has neither a [packing] nor an [alliance] section".into(),
            ));
        }
        Ok(s)
    }
}

/// The outcome of a scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub wall_seconds: f64,
    pub packing: Vec<PackingResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alliance: Option<alliance::AllianceReport>,
}

/// One task list under every packer.
#[derive(Clone, Debug, Serialize)]
pub struct PackingResult {
    pub task_list: String,
    pub tasks_per_run: usize,
    /// Per packer: the median allocation (%) at each arrived percent.
    pub median_curves: BTreeMap<String, Vec<f64>>,
    /// Per packer: the median allocation (%) at 100 % arrived.
    pub at_100: BTreeMap<String, f64>,
    /// Published medians at 100 % arrived for this task list, by policy.
    pub published_at_100: BTreeMap<String, f64>,
    /// Tasks placed per second of wall time, over all runs.
    pub tasks_per_second: f64,
    pub runs: Vec<packing::Run>,
}

/// Runs a scenario; `progress` is called with (done, total) runs.
pub fn run(
    scenario: &Scenario,
    traces: &Path,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Report, SimulateError> {
    let started = Instant::now();
    let mut results = vec![];
    if let Some(p) = &scenario.packing {
        let nodes = traces::openb_nodes(&Csv::open(&traces.join(&p.nodes))?)?;
        let published = match &p.published {
            Some(f) => published_medians(&Csv::open(&traces.join(f))?)?,
            None => BTreeMap::new(),
        };
        let total = p.task_lists.len() * p.seeds.len() * p.packers.len();
        let done = std::sync::atomic::AtomicUsize::new(0);
        for list in &p.task_lists {
            let tasks = traces::openb_tasks(&Csv::open(&traces.join(list))?)?;
            let t0 = Instant::now();
            let jobs: Vec<(Packer, u64)> = p
                .packers
                .iter()
                .flat_map(|&k| p.seeds.iter().map(move |&s| (k, s)))
                .collect();
            let runs = parallel_map(&jobs, |&(packer, seed)| {
                let r = packing::run(&nodes, &tasks, packer, seed, p.inflation);
                let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                progress(d, total);
                r
            });
            let placed: usize = runs.iter().map(|r| r.tasks).sum();
            let name = list
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            results.push(summarise(
                name.clone(),
                runs,
                &p.packers,
                published.get(&name).cloned().unwrap_or_default(),
                placed as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            ));
        }
    }
    let alliance = match &scenario.alliance {
        Some(a) => Some(alliance::run(a, traces, progress)?),
        None => None,
    };
    Ok(Report {
        scenario: scenario.name.clone(),
        wall_seconds: started.elapsed().as_secs_f64(),
        packing: results,
        alliance,
    })
}

fn summarise(
    task_list: String,
    runs: Vec<packing::Run>,
    packers: &[Packer],
    published_at_100: BTreeMap<String, f64>,
    tasks_per_second: f64,
) -> PackingResult {
    let mut median_curves = BTreeMap::new();
    let mut at_100 = BTreeMap::new();
    for &k in packers {
        let mine: Vec<&packing::Run> = runs.iter().filter(|r| r.packer == k).collect();
        let len = mine.iter().map(|r| r.curve.len()).min().unwrap_or(0);
        let curve: Vec<f64> = (0..len).map(|i| packing::median_at(&mine, i)).collect();
        at_100.insert(k.name().to_string(), packing::median_at(&mine, 100));
        median_curves.insert(k.name().to_string(), curve);
    }
    PackingResult {
        task_list,
        tasks_per_run: runs.first().map_or(0, |r| r.tasks),
        median_curves,
        at_100,
        published_at_100,
        tasks_per_second,
        runs,
    }
}

/// Runs `f` over `items` on the machine's cores, keeping the order.
pub(crate) fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<(usize, R)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = vec![];
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        mine.push((i, f(item)));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a simulation thread panicked"))
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// Medians at 100 % arrived of the FGD artifact's per-seed results, by
/// task list and policy (e.g. `05-BestFit`).
pub fn published_medians(csv: &Csv) -> Result<BTreeMap<String, BTreeMap<String, f64>>, TraceError> {
    let rows = csv.rows(&["workload", "sc_policy", "tune", "seed", "total_gpus"])?;
    let header = csv.header();
    let col = header.iter().position(|h| *h == "100").ok_or_else(|| {
        csv.error(
            1,
            "no column '100' (allocation at 100 % arrived) in the header",
        )
    })?;
    let mut values: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for row in &rows {
        if row.fields.len() <= col {
            return Err(csv.error(
                row.line,
                format!("{} fields, expected at least {}", row.fields.len(), col + 1),
            ));
        }
        let v: f64 = csv.field(row, col, "100")?;
        values
            .entry((row.fields[0].to_string(), row.fields[1].to_string()))
            .or_default()
            .push(v);
    }
    let mut out: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for ((workload, policy), mut v) in values {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        out.entry(workload).or_default().insert(policy, median);
    }
    Ok(out)
}

impl Report {
    /// The human table.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {} ({:.1} s wall time)",
            self.scenario, self.wall_seconds
        );
        for r in &self.packing {
            let _ = writeln!(
                out,
                "\n{}: {} tasks a run, {:.0} tasks placed per second",
                r.task_list, r.tasks_per_run, r.tasks_per_second
            );
            let mut table = Table::new(["policy", "GPU alloc @100%"]);
            table.indent(2).align_right([1]);
            for (k, v) in &r.at_100 {
                table.row([k.clone(), format!("{v:.2}%")]);
            }
            for (k, v) in &r.published_at_100 {
                table.row([format!("published {k}"), format!("{v:.2}%")]);
            }
            out.push_str(&table.render());
            let best_fit = Packer::BestFit.name();
            if let Some(b) = r.at_100.get(best_fit) {
                for k in [Packer::Fgd.name(), Packer::Planner.name()] {
                    if let Some(v) = r.at_100.get(k) {
                        let _ = writeln!(out, "  {k} - {best_fit}: {:+.2} points", v - b);
                    }
                }
            }
            let (fgd, planner) = (Packer::Fgd.name(), Packer::Planner.name());
            if let (Some(f), Some(p)) = (r.at_100.get(fgd), r.at_100.get(planner)) {
                let _ = writeln!(out, "  {planner} - {fgd}: {:+.2} points", p - f);
            }
        }
        if let Some(a) = &self.alliance {
            out.push_str(&a.table());
        }
        out
    }

    /// Writes report.json, report.txt and one SVG per task list to `dir`.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, SimulateError> {
        let write = |name: &str, data: &str| -> Result<PathBuf, SimulateError> {
            let path = dir.join(name);
            std::fs::write(&path, data).map_err(|source| SimulateError::Write {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        };
        std::fs::create_dir_all(dir).map_err(|source| SimulateError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut files = vec![
            write(
                "report.json",
                &serde_json::to_string_pretty(self).expect("serializable"),
            )?,
            write("report.txt", &self.table())?,
        ];
        for r in &self.packing {
            let chart = svg::Chart {
                title: format!("GPU allocation on {} (median of seeds)", r.task_list),
                x_label: "arrived GPU request (% of capacity)".into(),
                y_label: "GPU allocation (%)".into(),
                series: r
                    .median_curves
                    .iter()
                    .map(|(k, c)| svg::Series {
                        label: k.clone(),
                        points: c.iter().enumerate().map(|(i, v)| (i as f64, *v)).collect(),
                    })
                    .collect(),
            };
            files.push(write(
                &format!("allocation-{}.svg", r.task_list),
                &chart.render(),
            )?);
        }
        for (name, chart) in self.alliance.iter().flat_map(|a| a.charts()) {
            files.push(write(&name, &chart.render())?);
        }
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_scenario_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios");
        let mut loaded = 0;
        for entry in std::fs::read_dir(&dir).expect("examples/scenarios") {
            let path = entry.expect("a directory entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
                loaded += 1;
            }
        }
        assert!(loaded >= 5, "only {loaded} scenarios in {}", dir.display());
    }

    #[test]
    fn an_unknown_packer_is_refused_with_the_choices() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("s.toml");
        let text = "name = \"x\"\n[packing]\nnodes = \"n.csv\"\ntask_lists = [\"t.csv\"]\n\
                    seeds = [1]\ninflation = 1.3\npackers = [\"first-fit\"]\n";
        std::fs::write(&path, text).expect("written");
        let err = Scenario::load(&path).expect_err("refused").to_string();
        assert!(
            err.contains("unknown packer 'first-fit'")
                && err.contains("baseline-fgd and edupool-planner"),
            "{err}"
        );
    }

    #[test]
    fn the_packing_table_right_aligns_the_allocation() {
        let report = Report {
            scenario: "s".into(),
            wall_seconds: 1.0,
            packing: vec![PackingResult {
                task_list: "t.csv".into(),
                tasks_per_run: 10,
                median_curves: BTreeMap::new(),
                at_100: [
                    ("baseline-best-fit".into(), 97.5),
                    ("baseline-fgd".into(), 100.0),
                ]
                .into(),
                published_at_100: [("fgd".into(), 99.25)].into(),
                tasks_per_second: 5.0,
                runs: vec![],
            }],
            alliance: None,
        };
        assert_eq!(
            report.table(),
            "scenario s (1.0 s wall time)\n\
             \nt.csv: 10 tasks a run, 5 tasks placed per second\n\
             \x20 policy             GPU alloc @100%\n\
             \x20 baseline-best-fit           97.50%\n\
             \x20 baseline-fgd               100.00%\n\
             \x20 published fgd               99.25%\n\
             \x20 baseline-fgd - baseline-best-fit: +2.50 points\n"
        );
    }
}
