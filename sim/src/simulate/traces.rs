//! Parsers for the public cluster traces the simulator replays.
//!
//! Each file is plain CSV with a header row and no quoting. A parser
//! checks the header, then every row, and names the file and line of the
//! first row it cannot read: a trace that is silently half-read would
//! make every figure computed from it wrong.

use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TraceError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Row {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// One CSV file, read whole, with the line number of each row.
pub struct Csv {
    path: PathBuf,
    text: String,
}

/// One data row: its 1-based line number and its fields.
pub struct Row<'a> {
    pub line: usize,
    pub fields: Vec<&'a str>,
}

impl Csv {
    pub fn open(path: &Path) -> Result<Csv, TraceError> {
        let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Csv::from_text(path, text))
    }

    pub fn from_text(path: &Path, text: String) -> Csv {
        Csv {
            path: path.to_path_buf(),
            text,
        }
    }

    pub fn error(&self, line: usize, message: impl Into<String>) -> TraceError {
        TraceError::Row {
            path: self.path.clone(),
            line,
            message: message.into(),
        }
    }

    /// The data rows, after checking that the header starts with
    /// `expected` (extra trailing columns are allowed). Blank lines are
    /// skipped; every row must have at least as many fields as `expected`.
    pub fn rows(&self, expected: &[&str]) -> Result<Vec<Row<'_>>, TraceError> {
        let mut lines = self.text.lines().enumerate();
        let header: Vec<&str> = match lines.next() {
            Some((_, h)) => h.trim_end_matches('\r').split(',').map(str::trim).collect(),
            None => return Err(self.error(1, "the file is empty; a header row was expected")),
        };
        if header.len() < expected.len() || header[..expected.len()] != *expected {
            return Err(self.error(
                1,
                format!(
                    "the header is '{}', expected it to start with '{}'",
                    header.join(","),
                    expected.join(",")
                ),
            ));
        }
        let mut rows = vec![];
        for (i, text) in lines {
            let text = text.trim_end_matches('\r');
            if text.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = text.split(',').map(str::trim).collect();
            if fields.len() < expected.len() {
                return Err(self.error(
                    i + 1,
                    format!(
                        "{} fields, expected {} ({})",
                        fields.len(),
                        expected.len(),
                        expected.join(",")
                    ),
                ));
            }
            rows.push(Row {
                line: i + 1,
                fields,
            });
        }
        Ok(rows)
    }

    /// The header row's fields.
    pub fn header(&self) -> Vec<&str> {
        self.text
            .lines()
            .next()
            .map(|h| h.trim_end_matches('\r').split(',').map(str::trim).collect())
            .unwrap_or_default()
    }

    /// Parses field `col` (named `name`) of `row`.
    pub fn field<T: std::str::FromStr>(
        &self,
        row: &Row<'_>,
        col: usize,
        name: &str,
    ) -> Result<T, TraceError> {
        let raw = row.fields[col];
        raw.parse().map_err(|_| {
            self.error(
                row.line,
                format!("column '{name}' is '{raw}', which is not a valid value"),
            )
        })
    }
}

// ------------------------------------------------------------ Philly

/// One job of `philly-pollux/philly.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct PhillyJob {
    /// Seconds since the Unix epoch (the trace's times are UTC-naive).
    pub submit: i64,
    /// Run time in seconds.
    pub duration: f64,
    pub gpus: u32,
    /// The virtual cluster, a tenant of the pool.
    pub vc: String,
}

pub fn philly_jobs(csv: &Csv) -> Result<Vec<PhillyJob>, TraceError> {
    let cols = ["timestamp", "duration", "num_gpus", "gpu_time", "cluster"];
    let mut jobs = vec![];
    for row in csv.rows(&cols)? {
        let submit = parse_datetime(row.fields[0]).ok_or_else(|| {
            csv.error(
                row.line,
                format!("'{}' is not a YYYY-MM-DD HH:MM:SS time", row.fields[0]),
            )
        })?;
        let duration: f64 = csv.field(&row, 1, "duration")?;
        if !duration.is_finite() || duration < 0.0 {
            return Err(csv.error(
                row.line,
                format!("duration {duration} is not a non-negative number of seconds"),
            ));
        }
        let gpus: u32 = csv.field(&row, 2, "num_gpus")?;
        if gpus == 0 {
            return Err(csv.error(row.line, "num_gpus is 0; every Philly job uses GPUs"));
        }
        let vc = row.fields[4];
        if vc.is_empty() {
            return Err(csv.error(row.line, "the cluster (virtual cluster) is empty"));
        }
        jobs.push(PhillyJob {
            submit,
            duration,
            gpus,
            vc: vc.to_string(),
        });
    }
    Ok(jobs)
}

/// One virtual cluster of `helios-acme-configs/philly_vc.csv`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhillyVc {
    pub vc: String,
    pub nodes: u32,
}

pub fn philly_vcs(csv: &Csv) -> Result<Vec<PhillyVc>, TraceError> {
    let mut vcs = vec![];
    for row in csv.rows(&["vc", "node num"])? {
        vcs.push(PhillyVc {
            vc: row.fields[0].to_string(),
            nodes: csv.field(&row, 1, "node num")?,
        });
    }
    Ok(vcs)
}

/// `YYYY-MM-DD HH:MM:SS` as seconds since the Unix epoch, read as UTC.
pub fn parse_datetime(s: &str) -> Option<i64> {
    let (date, time) = s.split_once(' ')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if d.next().is_some() || t.next().is_some() {
        return None;
    }
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    Some(days_from_civil(y, m, day) * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// well-known `days_from_civil` algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ------------------------------------------------------------ Alibaba openb

/// One node of `openb_node_list_*.csv`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenbNode {
    pub name: String,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpus: u32,
    /// Empty for CPU-only nodes.
    pub model: String,
}

pub fn openb_nodes(csv: &Csv) -> Result<Vec<OpenbNode>, TraceError> {
    let mut nodes = vec![];
    for row in csv.rows(&["sn", "cpu_milli", "memory_mib", "gpu", "model"])? {
        let node = OpenbNode {
            name: row.fields[0].to_string(),
            cpu_milli: csv.field(&row, 1, "cpu_milli")?,
            memory_mib: csv.field(&row, 2, "memory_mib")?,
            gpus: csv.field(&row, 3, "gpu")?,
            model: row.fields[4].to_string(),
        };
        if node.gpus > 0 && node.model.is_empty() {
            return Err(csv.error(row.line, "a node with GPUs must name their model"));
        }
        nodes.push(node);
    }
    Ok(nodes)
}

/// One task (pod) of `openb_pod_list_*.csv`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenbTask {
    pub name: String,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpus: u32,
    /// Thousandths of each GPU: below 1000 only with one GPU (a shared GPU).
    pub gpu_milli: u32,
    /// GPU models the task may use; empty = any.
    pub models: Vec<String>,
}

impl OpenbTask {
    /// The task's GPU request in thousandths of a GPU.
    pub fn gpu_request_milli(&self) -> u64 {
        u64::from(self.gpus) * u64::from(self.gpu_milli)
    }
}

pub fn openb_tasks(csv: &Csv) -> Result<Vec<OpenbTask>, TraceError> {
    let cols = ["name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli"];
    let mut tasks = vec![];
    for row in csv.rows(&cols)? {
        let gpus: u32 = csv.field(&row, 3, "num_gpu")?;
        let gpu_milli: u32 = csv.field(&row, 4, "gpu_milli")?;
        if gpu_milli > 1000 {
            return Err(csv.error(
                row.line,
                format!("gpu_milli {gpu_milli} is above 1000 (one whole GPU)"),
            ));
        }
        if gpus > 1 && gpu_milli != 1000 {
            return Err(csv.error(row.line, format!("{gpus} GPUs of {gpu_milli} thousandths each: a fraction is only valid for one GPU")));
        }
        if gpus >= 1 && gpu_milli == 0 {
            return Err(csv.error(row.line, "num_gpu is set but gpu_milli is 0"));
        }
        // Only the full-format lists carry gpu_spec (the sixth column).
        let models = row
            .fields
            .get(5)
            .filter(|s| !s.is_empty())
            .map(|s| s.split('|').map(str::to_string).collect())
            .unwrap_or_default();
        tasks.push(OpenbTask {
            name: row.fields[0].to_string(),
            cpu_milli: csv.field(&row, 1, "cpu_milli")?,
            memory_mib: csv.field(&row, 2, "memory_mib")?,
            gpus,
            gpu_milli: if gpus == 0 { 0 } else { gpu_milli },
            models,
        });
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str) -> Csv {
        Csv::from_text(Path::new("t.csv"), text.to_string())
    }

    #[test]
    fn philly_rows_parse_and_times_are_utc_seconds() {
        let c = csv("timestamp,duration,num_gpus,gpu_time,cluster\n2017-10-09 07:01:55,66.0,1,66.0,11cb48\n\n");
        let jobs = philly_jobs(&c).unwrap();
        assert_eq!(
            jobs,
            vec![PhillyJob {
                submit: 1_507_532_515,
                duration: 66.0,
                gpus: 1,
                vc: "11cb48".into()
            }]
        );
        assert_eq!(parse_datetime("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse_datetime("2000-03-01 00:00:00"), Some(951_868_800));
        assert_eq!(parse_datetime("2017-13-01 00:00:00"), None);
    }

    #[test]
    fn a_bad_row_is_named_by_its_line() {
        let c = csv("timestamp,duration,num_gpus,gpu_time,cluster\n2017-10-09 07:01:55,66.0,1,66.0,a\n2017-10-09 07:01:55,x,1,66.0,a\n");
        let e = philly_jobs(&c).unwrap_err().to_string();
        assert_eq!(
            e,
            "t.csv:3: column 'duration' is 'x', which is not a valid value"
        );
        let c = csv("timestamp,duration\n");
        let e = philly_jobs(&c).unwrap_err().to_string();
        assert!(
            e.starts_with("t.csv:1: the header is 'timestamp,duration'"),
            "{e}"
        );
        let c = csv("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1000,10,2,500\n");
        let e = openb_tasks(&c).unwrap_err().to_string();
        assert_eq!(
            e,
            "t.csv:2: 2 GPUs of 500 thousandths each: a fraction is only valid for one GPU"
        );
        let c = csv("sn,cpu_milli,memory_mib,gpu,model\nn,1000,10\n");
        let e = openb_nodes(&c).unwrap_err().to_string();
        assert_eq!(
            e,
            "t.csv:2: 3 fields, expected 5 (sn,cpu_milli,memory_mib,gpu,model)"
        );
    }

    #[test]
    fn malformed_philly_rows_and_vcs_are_named_by_their_line() {
        let header = "timestamp,duration,num_gpus,gpu_time,cluster\n";
        let ok = "2017-10-09 07:01:55,66.0,1,66.0,a\n";
        let cases = [
            (
                "2017-10-09 7:01,66.0,1,66.0,a",
                "t.csv:3: '2017-10-09 7:01' is not a YYYY-MM-DD HH:MM:SS time",
            ),
            (
                "2017-10-09 07:01:55,-1.0,1,-1.0,a",
                "t.csv:3: duration -1 is not a non-negative number of seconds",
            ),
            (
                "2017-10-09 07:01:55,66.0,0,0.0,a",
                "t.csv:3: num_gpus is 0; every Philly job uses GPUs",
            ),
            (
                "2017-10-09 07:01:55,66.0,1,66.0,",
                "t.csv:3: the cluster (virtual cluster) is empty",
            ),
            (
                "2017-10-09 07:01:55,66.0,1",
                "t.csv:3: 3 fields, expected 5 (timestamp,duration,num_gpus,gpu_time,cluster)",
            ),
        ];
        for (row, want) in cases {
            let c = csv(&format!("{header}{ok}{row}\n"));
            assert_eq!(philly_jobs(&c).unwrap_err().to_string(), want);
        }
        let c = csv("vc,node num\n6214e9,64\n\n7f04ca,many\n");
        assert_eq!(
            philly_vcs(&c).unwrap_err().to_string(),
            "t.csv:4: column 'node num' is 'many', which is not a valid value"
        );
    }

    #[test]
    fn openb_tasks_keep_model_sets_and_fractions() {
        let c = csv("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos\na,6000,12288,1,460,,LS\nb,1000,10,2,1000,V100M16|V100M32,BE\nc,500,10,0,0,,BE\n");
        let t = openb_tasks(&c).unwrap();
        assert_eq!(t[0].gpu_request_milli(), 460);
        assert!(t[0].models.is_empty());
        assert_eq!(t[1].models, vec!["V100M16", "V100M32"]);
        assert_eq!(t[1].gpu_request_milli(), 2000);
        assert_eq!(t[2].gpu_request_milli(), 0);
    }
}
