//! The job file: a job's spec written by a person, in YAML or TOML.
//!
//! ```yaml
//! name: train-resnet          # optional
//! command: ["python3", "train.py", "--epochs", "3"]
//! gpus: 2
//! class: training             # inference | training | batch | scavenger; default batch
//! walltime: 2h                # optional; the pool's default when left out
//! grace_period: 30s           # optional; the pool's default when left out
//! on_node_lost: requeue       # requeue | fail; default requeue
//! max_retries: 3              # optional
//! env: { DATASET: /data/x }   # optional
//! secret_env: { HF_TOKEN: hf_x } # optional; write-only: reads show ***
//! # Policy (docs/policy.md), all optional:
//! nodes: 2                    # a gang: this many tasks of `gpus` each, one per node, one site
//! priority: 5                 # order among your own jobs of one class; higher first
//! gpu_fraction: 250           # thousandths of one GPU (with gpus: 1)
//! gpu_model: A100-80GB        # or gpu_class: A100
//! gpu_models: [V100-16GB, V100-32GB] # any of these; likewise gpu_classes
//! cpu: 8                      # per task: cores (0.5) or millicores (500m); default: the pool's per GPU
//! memory: 64GiB               # per task, host memory; default: the pool's per GPU
//! min_gpu_memory_gib: 40
//! site: hangzhou              # required site; or preferred_site
//! data_level: 2               # data classification 0-3
//! requeue_on_preempt: false   # default true
//! image: pytorch-2.3          # optional; the nodes' image store holds it (`edupoolctl image list`)
//! ```
//!
//! Unknown fields are rejected, so a misspelt field never goes unnoticed.
//! [`JobFile::to_spec`] turns a valid file into the protocol's [`JobSpec`].

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use edupool_proto::v1::{JobClass, JobSpec, OnNodeLost};
use serde::{Deserialize, Serialize};

/// A job file's syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobFileFormat {
    Yaml,
    Toml,
}

impl JobFileFormat {
    /// The format a file's extension names: `.yaml`/`.yml` or `.toml`
    /// (any case); `None` for anything else.
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "yaml" | "yml" => Some(Self::Yaml),
            "toml" => Some(Self::Toml),
            _ => None,
        }
    }
}

/// A job's priority class, as written in job files and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Inference,
    Training,
    #[default]
    Batch,
    Scavenger,
}

impl Class {
    pub const ALL: [Class; 4] = [
        Class::Inference,
        Class::Training,
        Class::Batch,
        Class::Scavenger,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Inference => "inference",
            Class::Training => "training",
            Class::Batch => "batch",
            Class::Scavenger => "scavenger",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Class {
    type Err = JobFileError;

    /// Parses a class name, ignoring case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        Class::ALL
            .into_iter()
            .find(|c| c.name() == lower)
            .ok_or_else(|| JobFileError::UnknownClass(s.to_owned()))
    }
}

impl From<Class> for JobClass {
    fn from(class: Class) -> Self {
        match class {
            Class::Inference => JobClass::Inference,
            Class::Training => JobClass::Training,
            Class::Batch => JobClass::Batch,
            Class::Scavenger => JobClass::Scavenger,
        }
    }
}

/// What happens to a job whose node is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeLostPolicy {
    /// Put the job back in the queue (up to `max_retries` times).
    #[default]
    Requeue,
    /// Mark the job `lost`.
    Fail,
}

impl NodeLostPolicy {
    pub fn name(self) -> &'static str {
        match self {
            NodeLostPolicy::Requeue => "requeue",
            NodeLostPolicy::Fail => "fail",
        }
    }
}

impl fmt::Display for NodeLostPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for NodeLostPolicy {
    type Err = JobFileError;

    /// Parses `requeue` or `fail`, ignoring case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "requeue" => Ok(NodeLostPolicy::Requeue),
            "fail" => Ok(NodeLostPolicy::Fail),
            _ => Err(JobFileError::UnknownOnNodeLost(s.to_owned())),
        }
    }
}

impl From<NodeLostPolicy> for OnNodeLost {
    fn from(policy: NodeLostPolicy) -> Self {
        match policy {
            NodeLostPolicy::Requeue => OnNodeLost::Requeue,
            NodeLostPolicy::Fail => OnNodeLost::Fail,
        }
    }
}

/// Parses a job class name (`inference`, `training`, `batch`, `scavenger`;
/// any case) into the protocol's [`JobClass`].
pub fn parse_class(name: &str) -> Result<JobClass, JobFileError> {
    name.parse::<Class>().map(JobClass::from)
}

/// Parses an on-node-lost policy (`requeue` or `fail`; any case) into the
/// protocol's [`OnNodeLost`].
pub fn parse_on_node_lost(name: &str) -> Result<OnNodeLost, JobFileError> {
    name.parse::<NodeLostPolicy>().map(OnNodeLost::from)
}

/// A job file's contents. Build one in code, or read one with [`load`] or
/// [`parse`]; [`JobFile::to_spec`] checks it and converts it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// Letters, digits, `-`, `_` and `.`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The program and its arguments; not a shell line.
    pub command: Vec<String>,
    /// Whole GPUs on one node; at least 1.
    pub gpus: u32,
    #[serde(default)]
    pub class: Class,
    /// Stop the job after this long; the pool's default when `None`.
    #[serde(
        default,
        with = "humantime_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub walltime: Option<Duration>,
    /// Time between SIGTERM and SIGKILL; the pool's default when `None`.
    #[serde(
        default,
        with = "humantime_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub grace_period: Option<Duration>,
    #[serde(default)]
    pub on_node_lost: NodeLostPolicy,
    /// How many times a job may be requeued after a node loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Environment variables added to the job's process. Numbers and
    /// booleans are taken as their text.
    #[serde(
        default,
        deserialize_with = "scalar_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values the scheduler never shows again
    /// (docs/security.md, "Secret environment values").
    #[serde(
        default,
        deserialize_with = "scalar_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub secret_env: BTreeMap<String, String>,
    /// Tasks of a gang, one per node, all in one site; 1 when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u32>,
    /// Order among the tenant's own jobs of one class; higher first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// Thousandths of one GPU (1-999), only with `gpus: 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_fraction: Option<u32>,
    /// An exact GPU model, e.g. `A100-80GB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    /// A GPU class (model family), e.g. `A100`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_class: Option<String>,
    /// Any of these GPU models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_models: Vec<String>,
    /// Any of these GPU classes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_classes: Vec<String>,
    /// CPU per task: cores (`4`, `0.5`) or millicores (`500m`).
    #[serde(
        default,
        deserialize_with = "some_scalar",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu: Option<String>,
    /// Host memory per task, e.g. `16GiB`.
    #[serde(
        default,
        deserialize_with = "some_scalar",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_gpu_memory_gib: Option<u64>,
    /// Only nodes of this site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Nodes of this site first, others if none fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_site: Option<String>,
    /// Data classification level 0-3; only nodes certified at or above it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_level: Option<u32>,
    /// Go back to the queue when preempted (the default), or end failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requeue_on_preempt: Option<bool>,
    /// The root filesystem it runs in, by name in the nodes' image stores;
    /// without one it runs as a host process, only on nodes that allow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

impl JobFile {
    /// A job file with only the required fields set.
    pub fn new(command: Vec<String>, gpus: u32) -> Self {
        JobFile {
            name: None,
            command,
            gpus,
            class: Class::default(),
            walltime: None,
            grace_period: None,
            on_node_lost: NodeLostPolicy::default(),
            max_retries: None,
            env: BTreeMap::new(),
            secret_env: BTreeMap::new(),
            nodes: None,
            priority: 0,
            gpu_fraction: None,
            gpu_model: None,
            gpu_class: None,
            gpu_models: vec![],
            gpu_classes: vec![],
            cpu: None,
            memory: None,
            min_gpu_memory_gib: None,
            site: None,
            preferred_site: None,
            data_level: None,
            requeue_on_preempt: None,
            image: None,
        }
    }

    /// Checks what serde cannot: a non-empty command, at least one GPU,
    /// a valid name, whole-second durations, sane environment names.
    pub fn validate(&self) -> Result<(), JobFileError> {
        if let Some(name) = &self.name {
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err(JobFileError::InvalidName(name.clone()));
            }
        }
        match self.command.first() {
            None => return Err(JobFileError::EmptyCommand),
            Some(program) if program.is_empty() => return Err(JobFileError::EmptyProgram),
            Some(_) => {}
        }
        if let Some(i) = self.command.iter().position(|a| a.contains('\0')) {
            return Err(JobFileError::NulByte {
                field: format!("command[{i}]"),
            });
        }
        if self.gpus == 0 && self.cpu.is_none() {
            return Err(JobFileError::ZeroGpus);
        }
        self.host()?;
        if self.nodes == Some(0) {
            return Err(JobFileError::ZeroNodes);
        }
        match self.gpu_fraction {
            Some(f) if f == 0 || f >= 1000 => return Err(JobFileError::BadFraction(f)),
            Some(_) if self.gpus != 1 || self.nodes.unwrap_or(1) != 1 => {
                return Err(JobFileError::FractionNeedsOneGpu)
            }
            _ => {}
        }
        if let Some(level) = self.data_level.filter(|l| *l > 3) {
            return Err(JobFileError::BadDataLevel(level));
        }
        whole_seconds("walltime", self.walltime)?;
        whole_seconds("grace_period", self.grace_period)?;
        for (table, vars) in [("env", &self.env), ("secret_env", &self.secret_env)] {
            for (key, value) in vars {
                if key.is_empty() || key.contains('=') || key.contains('\0') {
                    return Err(JobFileError::InvalidEnvName(key.clone()));
                }
                if value.contains('\0') {
                    return Err(JobFileError::NulByte {
                        field: format!("{table}.{key}"),
                    });
                }
            }
        }
        if let Some(key) = self.secret_env.keys().find(|k| self.env.contains_key(*k)) {
            return Err(JobFileError::EnvInBoth(key.clone()));
        }
        Ok(())
    }

    /// CPU (thousandths of a core) and memory (bytes) per task; 0 where
    /// not given (the pool's default).
    fn host(&self) -> Result<(u64, u64), JobFileError> {
        let amount =
            |field: &'static str, text: &Option<String>, parse: fn(&str) -> Result<u64, String>| {
                text.as_deref()
                    .map_or(Ok(0), parse)
                    .map_err(|message| JobFileError::BadAmount { field, message })
            };
        Ok((
            amount("cpu", &self.cpu, edupool_table::units::parse_cpu)?,
            amount("memory", &self.memory, edupool_table::units::parse_memory)?,
        ))
    }

    /// Checks the file ([`JobFile::validate`]) and converts it to the spec
    /// the scheduler takes.
    pub fn to_spec(&self) -> Result<JobSpec, JobFileError> {
        self.validate()?;
        let (cpu_millicores, memory_bytes) = self.host()?;
        let mut spec = JobSpec {
            name: self.name.clone().unwrap_or_default(),
            command: self.command.clone(),
            env: self
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            secret_env: self
                .secret_env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            gpus: self.gpus,
            walltime_seconds: self.walltime.map_or(0, |d| d.as_secs()),
            grace_period_seconds: self.grace_period.map_or(0, |d| d.as_secs()),
            max_retries: self.max_retries.unwrap_or(0),
            nodes: self.nodes.unwrap_or(1),
            priority: self.priority,
            gpu_fraction: self.gpu_fraction.unwrap_or(0),
            gpu_model: self.gpu_model.clone().unwrap_or_default(),
            gpu_class: self.gpu_class.clone().unwrap_or_default(),
            min_gpu_memory_bytes: self.min_gpu_memory_gib.unwrap_or(0) << 30,
            site: self.site.clone().unwrap_or_default(),
            preferred_site: self.preferred_site.clone().unwrap_or_default(),
            data_level: self.data_level.unwrap_or(0),
            no_requeue_on_preempt: self.requeue_on_preempt == Some(false),
            image: self.image.clone().unwrap_or_default(),
            gpu_models: self.gpu_models.clone(),
            gpu_classes: self.gpu_classes.clone(),
            cpu_millicores,
            memory_bytes,
            ..JobSpec::default()
        };
        spec.set_class(self.class.into());
        spec.set_on_node_lost(self.on_node_lost.into());
        Ok(spec)
    }
}

/// Durations travel as whole seconds, and 0 means "the pool's default", so
/// a duration given explicitly must be a whole number of seconds, at least 1.
fn whole_seconds(field: &'static str, value: Option<Duration>) -> Result<(), JobFileError> {
    match value {
        Some(d) if d.as_secs() == 0 || d.subsec_nanos() != 0 => {
            Err(JobFileError::InvalidDuration { field, value: d })
        }
        _ => Ok(()),
    }
}

/// Parses and checks a job file's text.
pub fn parse(text: &str, format: JobFileFormat) -> Result<JobFile, JobFileError> {
    let file: JobFile = match format {
        JobFileFormat::Yaml => serde_yaml::from_str(text).map_err(JobFileError::Yaml)?,
        JobFileFormat::Toml => toml::from_str(text).map_err(|e| toml_error(text, &e))?,
    };
    file.validate()?;
    Ok(file)
}

/// Reads, parses and checks the job file at `path`; its extension
/// (`.yaml`, `.yml`, `.toml`) says its format. Errors name the file.
pub fn load(path: &Path) -> Result<JobFile, JobFileError> {
    let format = JobFileFormat::from_path(path).ok_or_else(|| JobFileError::UnknownFormat {
        path: path.to_owned(),
    })?;
    let text = std::fs::read_to_string(path).map_err(|error| JobFileError::Read {
        path: path.to_owned(),
        error,
    })?;
    parse(&text, format).map_err(|error| JobFileError::InFile {
        path: path.to_owned(),
        error: Box::new(error),
    })
}

/// Reads `NAME=VALUE` lines (blank lines and `#` comments skipped) for
/// `--secret-env-file`, so that values stay out of the shell's history
/// and the process list. No error repeats a line: it may hold a value.
pub fn load_secret_env(path: &Path) -> Result<BTreeMap<String, String>, JobFileError> {
    let text = std::fs::read_to_string(path).map_err(|error| JobFileError::Read {
        path: path.to_owned(),
        error,
    })?;
    let mut vars = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                vars.insert(key.trim().to_owned(), value.to_owned());
            }
            _ => {
                return Err(JobFileError::BadSecretLine {
                    path: path.to_owned(),
                    line: i + 1,
                })
            }
        }
    }
    Ok(vars)
}

/// Why a job file (or a job given with command-line flags) was refused.
/// Each message is one line for a person and carries its cause.
#[derive(Debug, thiserror::Error)]
pub enum JobFileError {
    #[error("cannot read job file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "job file {}: unknown format; name it *.yaml, *.yml or *.toml",
        path.display()
    )]
    UnknownFormat { path: PathBuf },
    #[error("job file {}: {error}", path.display())]
    InFile {
        path: PathBuf,
        error: Box<JobFileError>,
    },
    #[error("{0}")]
    Yaml(serde_yaml::Error),
    #[error("{message}{}", location.map(|(l, c)| format!(" at line {l} column {c}")).unwrap_or_default())]
    Toml {
        message: String,
        /// 1-based line and column.
        location: Option<(usize, usize)>,
    },
    #[error(
        "command is empty; give the program and its arguments, e.g. [\"python3\", \"train.py\"]"
    )]
    EmptyCommand,
    #[error("command[0], the program to run, is empty")]
    EmptyProgram,
    #[error("gpus must be at least 1, or 0 with cpu (a CPU-only job)")]
    ZeroGpus,
    #[error("{field}: {message}")]
    BadAmount {
        field: &'static str,
        message: String,
    },
    #[error("nodes must be at least 1")]
    ZeroNodes,
    #[error("gpu_fraction is {0}; use 1-999 thousandths of one GPU (leave it out for whole GPUs)")]
    BadFraction(u32),
    #[error("gpu_fraction needs gpus: 1 on one node; a fraction lives on a single GPU")]
    FractionNeedsOneGpu,
    #[error("data_level {0} does not exist; data classification levels are 0-3")]
    BadDataLevel(u32),
    #[error("invalid job name {0:?}: use only letters, digits, '-', '_' and '.'")]
    InvalidName(String),
    #[error(
        "{field} must be a whole number of seconds, at least 1s, got {} (leave it out for the pool's default)",
        humantime::format_duration(*value)
    )]
    InvalidDuration {
        field: &'static str,
        value: Duration,
    },
    #[error("invalid environment variable name {0:?}")]
    InvalidEnvName(String),
    #[error("environment variable {0} is in both env and secret_env; give it once")]
    EnvInBoth(String),
    #[error("{}, line {line}: expected NAME=VALUE (the line is not shown: it may hold a secret)", path.display())]
    BadSecretLine { path: PathBuf, line: usize },
    #[error("{field} contains a NUL byte")]
    NulByte { field: String },
    #[error("unknown job class {0:?}; expected inference, training, batch or scavenger")]
    UnknownClass(String),
    #[error("unknown on_node_lost policy {0:?}; expected requeue or fail")]
    UnknownOnNodeLost(String),
}

/// TOML's own message spans several lines with a source excerpt; keep its
/// first-cause message and a line/column, like YAML's.
fn toml_error(text: &str, error: &toml::de::Error) -> JobFileError {
    let location = error.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    });
    JobFileError::Toml {
        message: error
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(": "),
        location,
    }
}

/// `Option<Duration>` as a humantime string (`2h`, `30s`, `1h 30m`).
mod humantime_opt {
    use std::{fmt, time::Duration};

    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_any(Visitor)
    }

    struct Visitor;

    impl de::Visitor<'_> for Visitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"2h\", \"90m\" or \"30s\"")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            humantime::parse_duration(v.trim())
                .map(Some)
                .map_err(|e| E::custom(format!("invalid duration {v:?}: {e}")))
        }

        /// YAML's `~`/`null`: the same as leaving the field out.
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
}

/// A map whose values may be written as strings, numbers or booleans.
fn scalar_map<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Scalar(#[serde(deserialize_with = "scalar")] String);

    let map: BTreeMap<String, Scalar> = BTreeMap::deserialize(d)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.0)).collect())
}

fn some_scalar<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    scalar(d).map(Some)
}

fn scalar<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct Visitor;

    impl serde::de::Visitor<'_> for Visitor {
        type Value = String;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string, number or boolean")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }

    d.deserialize_any(Visitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
name: train-resnet
command: ["python3", "train.py", "--epochs", "3"]
gpus: 2
class: training
walltime: 2h
grace_period: 30s
on_node_lost: fail
max_retries: 3
env: { DATASET: /data/x, SEED: 42, DEBUG: true }
"#;

    const TOML: &str = r#"
name = "train-resnet"
command = ["python3", "train.py", "--epochs", "3"]
gpus = 2
class = "training"
walltime = "2h"
grace_period = "30s"
on_node_lost = "fail"
max_retries = 3

[env]
DATASET = "/data/x"
SEED = 42
DEBUG = true
"#;

    fn expected() -> JobFile {
        JobFile {
            name: Some("train-resnet".into()),
            command: ["python3", "train.py", "--epochs", "3"]
                .map(String::from)
                .to_vec(),
            gpus: 2,
            class: Class::Training,
            walltime: Some(Duration::from_secs(7200)),
            grace_period: Some(Duration::from_secs(30)),
            on_node_lost: NodeLostPolicy::Fail,
            max_retries: Some(3),
            env: [("DATASET", "/data/x"), ("SEED", "42"), ("DEBUG", "true")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..JobFile::new(vec![], 0)
        }
    }

    #[test]
    fn policy_keys_become_spec_fields() {
        let file = parse(
            "command: [x]\ngpus: 1\nnodes: 1\npriority: 3\ngpu_fraction: 250\ngpu_class: A100\n\
             min_gpu_memory_gib: 40\nsite: hz\ndata_level: 2\nrequeue_on_preempt: false\n",
            JobFileFormat::Yaml,
        )
        .unwrap();
        let spec = file.to_spec().unwrap();
        assert_eq!(
            (spec.priority, spec.gpu_fraction, spec.gpu_class.as_str()),
            (3, 250, "A100")
        );
        assert_eq!(spec.min_gpu_memory_bytes, 40 << 30);
        assert_eq!((spec.site.as_str(), spec.data_level), ("hz", 2));
        assert!(spec.no_requeue_on_preempt);
        assert_eq!(
            yaml_err("command: [x]\ngpus: 2\ngpu_fraction: 250\n"),
            "gpu_fraction needs gpus: 1 on one node; a fraction lives on a single GPU"
        );
        assert_eq!(
            yaml_err("command: [x]\ngpus: 1\ndata_level: 4\n"),
            "data_level 4 does not exist; data classification levels are 0-3"
        );
    }

    fn yaml_err(text: &str) -> String {
        parse(text, JobFileFormat::Yaml).unwrap_err().to_string()
    }

    fn toml_err(text: &str) -> String {
        parse(text, JobFileFormat::Toml).unwrap_err().to_string()
    }

    #[test]
    fn a_secret_env_table_becomes_the_specs_secret_env() {
        let yaml = "command: [a]\ngpus: 1\nenv: { A: '1' }\nsecret_env: { TOKEN: s3cr3t, N: 7 }\n";
        let toml = "command = [\"a\"]\ngpus = 1\n[env]\nA = \"1\"\n[secret_env]\nTOKEN = \"s3cr3t\"\nN = 7\n";
        for (text, format) in [(yaml, JobFileFormat::Yaml), (toml, JobFileFormat::Toml)] {
            let spec = parse(text, format).unwrap().to_spec().unwrap();
            assert_eq!(spec.env.len(), 1);
            assert_eq!(
                spec.secret_env.get("TOKEN").map(String::as_str),
                Some("s3cr3t")
            );
            assert_eq!(spec.secret_env.get("N").map(String::as_str), Some("7"));
        }
        assert_eq!(
            yaml_err("command: [a]\ngpus: 1\nenv: { T: x }\nsecret_env: { T: y }\n"),
            "environment variable T is in both env and secret_env; give it once"
        );
    }

    #[test]
    fn a_secret_env_file_is_name_value_lines_and_its_errors_show_no_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.env");
        std::fs::write(&path, "# keys\n\nTOKEN=a=b\n  OTHER = x\n").unwrap();
        let vars = load_secret_env(&path).unwrap();
        assert_eq!(vars.get("TOKEN").map(String::as_str), Some("a=b"));
        assert_eq!(vars.get("OTHER").map(String::as_str), Some(" x"));
        std::fs::write(&path, "TOKEN=ok\nhunter2\n").unwrap();
        let err = load_secret_env(&path).unwrap_err().to_string();
        assert!(err.contains("line 2") && !err.contains("hunter2"), "{err}");
    }

    #[test]
    fn parses_full_yaml() {
        assert_eq!(parse(YAML, JobFileFormat::Yaml).unwrap(), expected());
    }

    #[test]
    fn parses_full_toml() {
        assert_eq!(parse(TOML, JobFileFormat::Toml).unwrap(), expected());
    }

    #[test]
    fn full_file_becomes_spec() {
        let spec = expected().to_spec().unwrap();
        assert_eq!(spec.name, "train-resnet");
        assert_eq!(spec.command, ["python3", "train.py", "--epochs", "3"]);
        assert_eq!(spec.gpus, 2);
        assert_eq!(spec.class(), JobClass::Training);
        assert_eq!(spec.walltime_seconds, 7200);
        assert_eq!(spec.grace_period_seconds, 30);
        assert_eq!(spec.on_node_lost(), OnNodeLost::Fail);
        assert_eq!(spec.max_retries, 3);
        assert_eq!(spec.env.get("SEED").map(String::as_str), Some("42"));
        assert_eq!(spec.env.len(), 3);
    }

    #[test]
    fn minimal_file_takes_defaults() {
        let file = parse("command: [nvidia-smi]\ngpus: 1\n", JobFileFormat::Yaml).unwrap();
        assert_eq!(file, JobFile::new(vec!["nvidia-smi".into()], 1));
        let spec = file.to_spec().unwrap();
        assert_eq!(spec.name, "");
        assert_eq!(spec.class(), JobClass::Batch);
        assert_eq!(spec.on_node_lost(), OnNodeLost::Requeue);
        assert_eq!(spec.walltime_seconds, 0);
        assert_eq!(spec.grace_period_seconds, 0);
        assert_eq!(spec.max_retries, 0);
        assert!(spec.env.is_empty());
    }

    #[test]
    fn serializes_back_to_the_same_file() {
        let yaml = serde_yaml::to_string(&expected()).unwrap();
        assert!(yaml.contains("walltime: 2h"), "{yaml}");
        assert_eq!(parse(&yaml, JobFileFormat::Yaml).unwrap(), expected());
        let toml_text = toml::to_string(&expected()).unwrap();
        assert_eq!(parse(&toml_text, JobFileFormat::Toml).unwrap(), expected());
    }

    #[test]
    fn unknown_field_is_named() {
        let err = yaml_err("command: [a]\ngpus: 1\ngpu_modle: A100\n");
        assert!(err.contains("unknown field `gpu_modle`"), "{err}");
        assert!(err.contains("line 3"), "{err}");

        let err = toml_err("command = [\"a\"]\ngpus = 1\ngpu_modle = \"A100\"\n");
        assert!(err.contains("unknown field `gpu_modle`"), "{err}");
        assert!(err.contains("line 3 column 1"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn missing_required_fields_are_named() {
        let err = yaml_err("gpus: 1\n");
        assert!(err.contains("missing field `command`"), "{err}");
        let err = toml_err("command = [\"a\"]\n");
        assert!(err.contains("missing field `gpus`"), "{err}");
    }

    #[test]
    fn empty_command_is_refused() {
        let err = yaml_err("command: []\ngpus: 1\n");
        assert!(err.starts_with("command is empty"), "{err}");
        let err = toml_err("command = [\"\"]\ngpus = 1\n");
        assert!(err.contains("program to run, is empty"), "{err}");
    }

    #[test]
    fn zero_gpus_is_refused() {
        assert_eq!(
            yaml_err("command: [a]\ngpus: 0\n"),
            "gpus must be at least 1, or 0 with cpu (a CPU-only job)"
        );
        let err = yaml_err("command: [a]\ngpus: -1\n");
        assert!(err.contains("gpus"), "{err}");
    }

    #[test]
    fn bad_class_is_refused() {
        let err = yaml_err("command: [a]\ngpus: 1\nclass: urgent\n");
        assert!(err.contains("unknown variant `urgent`"), "{err}");
        assert!(err.contains("`scavenger`"), "{err}");
        let err = toml_err("command = [\"a\"]\ngpus = 1\nclass = \"urgent\"\n");
        assert!(err.contains("unknown variant `urgent`"), "{err}");
    }

    #[test]
    fn bad_duration_is_refused() {
        let err = yaml_err("command: [a]\ngpus: 1\nwalltime: 2 fortnights\n");
        assert!(err.contains("invalid duration \"2 fortnights\""), "{err}");
        assert!(err.contains("line 3"), "{err}");

        let err = yaml_err("command: [a]\ngpus: 1\nwalltime: 3600\n");
        assert!(err.contains("expected a duration such as"), "{err}");

        let err = toml_err("command = [\"a\"]\ngpus = 1\ngrace_period = \"soon\"\n");
        assert!(err.contains("invalid duration \"soon\""), "{err}");

        let err = yaml_err("command: [a]\ngpus: 1\ngrace_period: 500ms\n");
        assert!(
            err.starts_with("grace_period must be a whole number of seconds"),
            "{err}"
        );
        let err = yaml_err("command: [a]\ngpus: 1\nwalltime: 0s\n");
        assert!(err.starts_with("walltime must be"), "{err}");
    }

    #[test]
    fn bad_name_and_env_are_refused() {
        let err = yaml_err("name: my job\ncommand: [a]\ngpus: 1\n");
        assert!(err.starts_with("invalid job name \"my job\""), "{err}");
        let err = yaml_err("command: [a]\ngpus: 1\nenv: { \"A=B\": x }\n");
        assert!(
            err.starts_with("invalid environment variable name"),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_are_reported_with_a_location() {
        let err = yaml_err("command: [a\ngpus: 1\n");
        assert!(err.contains("line "), "{err}");
        let err = toml_err("command = [\"a\"\ngpus = 1\n");
        assert!(err.contains(" at line "), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn class_and_policy_parse_any_case() {
        assert_eq!(parse_class("Inference").unwrap(), JobClass::Inference);
        assert_eq!(parse_class("scavenger").unwrap(), JobClass::Scavenger);
        let err = parse_class("gold").unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown job class \"gold\"; expected inference, training, batch or scavenger"
        );
        assert_eq!(parse_on_node_lost("FAIL").unwrap(), OnNodeLost::Fail);
        assert!(parse_on_node_lost("retry").is_err());
    }

    #[test]
    fn load_picks_format_from_extension_and_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();

        let yml = dir.join("job.YML");
        std::fs::write(&yml, YAML).unwrap();
        assert_eq!(load(&yml).unwrap(), expected());

        let toml_path = dir.join("job.toml");
        std::fs::write(&toml_path, TOML).unwrap();
        assert_eq!(load(&toml_path).unwrap(), expected());

        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, "command: [a]\ngpus: 0\n").unwrap();
        let err = load(&bad).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "job file {}: gpus must be at least 1, or 0 with cpu (a CPU-only job)",
                bad.display()
            )
        );

        let json = dir.join("job.json");
        std::fs::write(&json, "{}").unwrap();
        let err = load(&json).unwrap_err().to_string();
        assert!(err.contains("job.json: unknown format"), "{err}");

        let missing = dir.join("missing.yaml");
        let err = load(&missing).unwrap_err().to_string();
        assert!(err.starts_with("cannot read job file"), "{err}");
        assert!(err.contains("missing.yaml"), "{err}");
    }
}
