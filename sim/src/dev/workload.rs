//! Sample workloads for the dev pool: tenants and their jobs in one TOML
//! file, submitted over the real gRPC API with each tenant's own token.
//!
//! ```toml
//! [[tenant]]
//! name = "zju"
//! [[tenant.job]]
//! name = "resnet-train"
//! command = ["sh", "-c", "echo training on $CUDA_VISIBLE_DEVICES"]
//! gpus = 4
//! class = "training"
//! expect = "succeeded"   # optional: the final state this job should reach
//! ```
//! Each job takes the fields of a job file (see `edupoolctl`'s job files),
//! plus `expect`.

use std::path::Path;

use edupoolctl::jobfile::JobFile;
use serde::Deserialize;
use thiserror::Error;

#[derive(Debug)]
pub struct Workload {
    pub tenants: Vec<WorkloadTenant>,
}

#[derive(Debug)]
pub struct WorkloadTenant {
    pub name: String,
    /// The dev nodes this member contributed: they are labelled with it as
    /// owner, so their GPUs are its guarantee.
    pub owns: Vec<String>,
    pub jobs: Vec<WorkloadJob>,
}

#[derive(Debug)]
pub struct WorkloadJob {
    pub file: JobFile,
    /// The final state the job should reach, as `edupoolctl` names it.
    pub expect: Option<String>,
}

#[derive(Debug, Error)]
pub enum WorkloadError {
    #[error("cannot read workload {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("workload {path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    tenant: Vec<RawTenant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: String,
    #[serde(default)]
    owns: Vec<String>,
    #[serde(default)]
    job: Vec<toml::Table>,
}

const FINAL_STATES: [&str; 4] = ["succeeded", "failed", "cancelled", "lost"];

impl Workload {
    pub fn load(path: &Path) -> Result<Workload, WorkloadError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| WorkloadError::Read {
            path: shown.clone(),
            source,
        })?;
        Workload::parse(&text).map_err(|message| WorkloadError::Invalid {
            path: shown,
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Workload, String> {
        let raw: RawWorkload = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut tenants = vec![];
        for t in raw.tenant {
            let mut jobs = vec![];
            for (i, mut table) in t.job.into_iter().enumerate() {
                let at = || format!("tenant '{}', job {}", t.name, i + 1);
                let expect = match table.remove("expect") {
                    None => None,
                    Some(toml::Value::String(s)) if FINAL_STATES.contains(&s.as_str()) => Some(s),
                    Some(v) => {
                        return Err(format!(
                            "{}: expect must be one of {}, not {v}",
                            at(),
                            FINAL_STATES.join(", ")
                        ))
                    }
                };
                let file: JobFile = toml::Value::Table(table)
                    .try_into()
                    .map_err(|e| format!("{}: {e}", at()))?;
                file.validate().map_err(|e| format!("{}: {e}", at()))?;
                jobs.push(WorkloadJob { file, expect });
            }
            tenants.push(WorkloadTenant {
                name: t.name,
                owns: t.owns,
                jobs,
            });
        }
        if tenants.is_empty() {
            return Err("the workload names no tenant".into());
        }
        Ok(Workload { tenants })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tenants_jobs_and_expectations() {
        let w = Workload::parse(
            r#"
            [[tenant]]
            name = "zju"
            owns = ["dev-node-1"]
            [[tenant.job]]
            name = "a"
            command = ["true"]
            gpus = 2
            expect = "succeeded"
            [[tenant]]
            name = "hdu"
            "#,
        )
        .unwrap();
        assert_eq!(w.tenants.len(), 2);
        assert_eq!(w.tenants[0].jobs[0].file.gpus, 2);
        assert_eq!(w.tenants[0].jobs[0].expect.as_deref(), Some("succeeded"));
        assert!(w.tenants[1].jobs.is_empty());
        assert_eq!(w.tenants[0].owns, vec!["dev-node-1"]);
        assert!(w.tenants[1].owns.is_empty());
    }

    #[test]
    fn rejects_unknown_fields_and_bad_expectations() {
        let bad_field = "[[tenant]]\nname='a'\n[[tenant.job]]\ncommand=['x']\ngpus=1\ngpu=2\n";
        assert!(Workload::parse(bad_field).unwrap_err().contains("gpu"));
        let bad_expect =
            "[[tenant]]\nname='a'\n[[tenant.job]]\ncommand=['x']\ngpus=1\nexpect='done'\n";
        assert!(Workload::parse(bad_expect).unwrap_err().contains("expect"));
    }

    #[test]
    fn the_shipped_examples_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml")
                && path.to_string_lossy().contains("workload")
            {
                Workload::load(&path).unwrap();
            }
        }
    }
}
