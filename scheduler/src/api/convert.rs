//! Conversions between the wire types (`edupool_proto::v1`) and the domain,
//! and validation of what callers send. Nothing past this module sees a
//! protobuf type.

use std::collections::BTreeMap;

use edupool_proto::v1 as pb;
use thiserror::Error;

use super::resources::{self, HostDefaults, MAX_CPU_MILLICORES, MAX_KINDS, MAX_MEMORY_BYTES};
use crate::planner::accounting::TenantReport;
use crate::state::{
    valid_image_name, Constraints, GpuInfo, Job, JobClass, JobId, JobSpec, JobState, JobUsage,
    Millis, Node, NodeLabels, NodeStatus, OnNodeLost, Quota, SecretEnv, MAX_NODE_IMAGES, WHOLE_GPU,
};

/// Bounds on what a job spec may hold, and the pool's defaults.
#[derive(Clone, Debug)]
pub struct JobLimits {
    pub max_gpus: u32,
    pub default_walltime_secs: u64,
    pub max_walltime_secs: u64,
    pub default_grace_secs: u64,
    pub max_grace_secs: u64,
    pub default_max_retries: u32,
    /// Pending jobs one tenant may have; a submit beyond is refused with
    /// RESOURCE_EXHAUSTED.
    pub max_pending_per_tenant: u32,
    /// Requests per second and burst per token at the API edge.
    pub rate: crate::api::RateLimit,
    /// CPU and memory for jobs that give none.
    pub host: HostDefaults,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            max_gpus: 1024,
            default_walltime_secs: 24 * 3600,
            max_walltime_secs: 30 * 24 * 3600,
            default_grace_secs: 30,
            max_grace_secs: 3600,
            default_max_retries: 3,
            max_pending_per_tenant: 10_000,
            rate: crate::api::RateLimit::default(),
            host: HostDefaults::default(),
        }
    }
}

pub const MAX_NAME_LEN: usize = 128;
pub const MAX_ARGS: usize = 1024;
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
pub const MAX_ENV_VARS: usize = 256;
pub const MAX_ENV_BYTES: usize = 64 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("the job spec is missing")]
    Missing,
    #[error("the command is empty: give the program to run and its arguments")]
    EmptyCommand,
    #[error("the program name (command[0]) is empty")]
    EmptyProgram,
    #[error("command argument {index} contains a NUL byte")]
    NulInArgument { index: usize },
    #[error("the command has {count} arguments; at most {MAX_ARGS} are allowed")]
    TooManyArgs { count: usize },
    #[error("the command is {bytes} bytes long; at most {MAX_COMMAND_BYTES} are allowed")]
    CommandTooLong { bytes: usize },
    #[error("a job with gpus = 0 must ask for CPU: set cpu_millicores (1000 is one core)")]
    NothingRequested,
    #[error("cpu_millicores is {0}, more than any node has (at most {MAX_CPU_MILLICORES}); it counts thousandths of a core, e.g. 4000 for 4 cores")]
    CpuTooLarge(u64),
    #[error("memory_bytes is {0}, more than any node has (at most {MAX_MEMORY_BYTES}, 1 PiB); give bytes, e.g. 17179869184 for 16 GiB")]
    MemoryTooLarge(u64),
    #[error("{0} is set for a job with gpus = 0; GPU constraints need GPUs")]
    GpuConstraintWithoutGpus(&'static str),
    #[error("{field} names {count} entries; at most {MAX_KINDS} are allowed")]
    TooManyKinds { field: &'static str, count: usize },
    #[error("a job may ask for at most {max} GPUs; it asked for {requested}")]
    TooManyGpus { requested: u32, max: u32 },
    #[error("unknown job class {0}; use inference, training, batch or scavenger")]
    UnknownClass(i32),
    #[error("unknown on_node_lost value {0}; use requeue or fail")]
    UnknownOnNodeLost(i32),
    #[error("walltime of {secs}s is over the pool's limit of {max}s")]
    WalltimeTooLong { secs: u64, max: u64 },
    #[error("grace period of {secs}s is over the pool's limit of {max}s")]
    GraceTooLong { secs: u64, max: u64 },
    #[error("invalid job name '{0}': use at most {MAX_NAME_LEN} letters, digits, '-', '_' or '.'")]
    BadName(String),
    #[error("invalid environment variable name '{0}': use letters, digits and '_', not starting with a digit")]
    BadEnvName(String),
    #[error("environment variable {0} is reserved for edupool")]
    ReservedEnv(String),
    #[error("environment variable {0} contains a NUL byte")]
    NulInEnv(String),
    #[error("environment variable {0} is in both env and secret_env; give it once")]
    EnvInBoth(String),
    #[error("the environment has {count} variables ({bytes} bytes); at most {MAX_ENV_VARS} variables and {MAX_ENV_BYTES} bytes are allowed")]
    EnvTooLarge { count: usize, bytes: usize },
    #[error("gpu_fraction is {0} thousandths; use 1-999 (a part of one GPU), or 0 for whole GPUs")]
    BadFraction(u32),
    #[error(
        "gpu_fraction needs gpus = 1 (a fraction lives on one GPU); the job asks for {0} GPUs"
    )]
    FractionWithManyGpus(u32),
    #[error("gpu_fraction cannot be combined with nodes = {0}; a fractional job runs on one node")]
    FractionWithGang(u32),
    #[error("min_gpu_memory_bytes is {0}, more than any GPU has (at most {MAX_GPU_MEMORY_BYTES}, 16 TiB); give bytes, e.g. 85899345920 for 80 GiB")]
    GpuMemoryTooLarge(u64),
    #[error("data_level {0} does not exist; data classification levels are 0-3")]
    BadDataLevel(u32),
    #[error("a job may span at most {max} nodes; it asked for {requested}")]
    TooManyNodes { requested: u32, max: u32 },
    #[error("a job may ask for at most {max} GPUs in all; {nodes} nodes x {gpus} GPUs is {total}")]
    TooManyGpusInAll {
        nodes: u32,
        gpus: u32,
        total: u64,
        max: u32,
    },
    #[error(
        "invalid {field} '{value}': use at most {MAX_NAME_LEN} letters, digits, '-', '_' or '.'"
    )]
    BadLabel { field: &'static str, value: String },
    #[error("invalid image '{0}': an image name is 1-128 letters, digits, '.', '_', '-' or ':', not starting with '.' (`edupoolctl image list` shows the nodes' images)")]
    BadImage(String),
    #[error("site and preferred_site are both set and differ ('{site}' vs '{preferred}'); a required site leaves no choice")]
    ConflictingSites { site: String, preferred: String },
}

/// The most GPU memory a job may ask for: far above any GPU made, low
/// enough that a unit slip (bytes for GiB) is caught at submit.
pub const MAX_GPU_MEMORY_BYTES: u64 = 16 << 40;

/// The most nodes one gang may span.
pub const MAX_NODES: u32 = 256;

/// An optional name-like field: empty means unset.
pub(crate) fn label(field: &'static str, value: String) -> Result<Option<String>, SpecError> {
    if value.is_empty() {
        return Ok(None);
    }
    if !valid_name(&value) {
        return Err(SpecError::BadLabel {
            field,
            value: truncate(&value),
        });
    }
    Ok(Some(value))
}

/// Checks the policy fields of a spec: gang size, fraction and constraints.
fn policy_fields(
    spec: &mut pb::JobSpec,
    limits: &JobLimits,
) -> Result<(u32, Constraints), SpecError> {
    let nodes = spec.nodes.max(1);
    if nodes > MAX_NODES {
        return Err(SpecError::TooManyNodes {
            requested: nodes,
            max: MAX_NODES,
        });
    }
    let total = u64::from(nodes) * u64::from(spec.gpus);
    if total > u64::from(limits.max_gpus) {
        return Err(SpecError::TooManyGpusInAll {
            nodes,
            gpus: spec.gpus,
            total,
            max: limits.max_gpus,
        });
    }
    match spec.gpu_fraction {
        0 => {}
        f if f >= 1000 => return Err(SpecError::BadFraction(f)),
        _ if spec.gpus != 1 => return Err(SpecError::FractionWithManyGpus(spec.gpus)),
        _ if nodes != 1 => return Err(SpecError::FractionWithGang(nodes)),
        _ => {}
    }
    if spec.data_level > 3 {
        return Err(SpecError::BadDataLevel(spec.data_level));
    }
    if spec.min_gpu_memory_bytes > MAX_GPU_MEMORY_BYTES {
        return Err(SpecError::GpuMemoryTooLarge(spec.min_gpu_memory_bytes));
    }
    let site = label("site", std::mem::take(&mut spec.site))?;
    let preferred_site = label("preferred_site", std::mem::take(&mut spec.preferred_site))?;
    if let (Some(s), Some(p)) = (&site, &preferred_site) {
        if s != p {
            return Err(SpecError::ConflictingSites {
                site: s.clone(),
                preferred: p.clone(),
            });
        }
    }
    let (gpu_models, gpu_classes) = resources::gpu_kinds(spec)?;
    Ok((
        nodes,
        Constraints {
            // The sets are the stored form; the singles joined them.
            gpu_model: None,
            gpu_class: None,
            min_gpu_memory_bytes: spec.min_gpu_memory_bytes,
            site,
            preferred_site,
            data_level: spec.data_level as u8,
            gpu_models,
            gpu_classes,
        },
    ))
}

/// Checks a submitted spec and fills in the pool's defaults.
pub fn job_spec(spec: Option<pb::JobSpec>, limits: &JobLimits) -> Result<JobSpec, SpecError> {
    let mut spec = spec.ok_or(SpecError::Missing)?;
    check_command(&spec.command)?;
    if spec.gpus > limits.max_gpus {
        return Err(SpecError::TooManyGpus {
            requested: spec.gpus,
            max: limits.max_gpus,
        });
    }
    if !spec.name.is_empty() && !valid_name(&spec.name) {
        return Err(SpecError::BadName(truncate(&spec.name)));
    }
    let (nodes, constraints) = policy_fields(&mut spec, limits)?;
    let (cpu_millicores, memory_bytes) = resources::host_request(&spec, limits.host)?;
    let env = check_env(spec.env)?;
    let secret_env = check_secret_env(spec.secret_env, &env)?;
    let image = image(std::mem::take(&mut spec.image))?;
    let class = match pb::JobClass::try_from(spec.class) {
        Ok(pb::JobClass::Unspecified | pb::JobClass::Batch) => JobClass::Batch,
        Ok(pb::JobClass::Inference) => JobClass::Inference,
        Ok(pb::JobClass::Training) => JobClass::Training,
        Ok(pb::JobClass::Scavenger) => JobClass::Scavenger,
        Err(_) => return Err(SpecError::UnknownClass(spec.class)),
    };
    let on_node_lost = match pb::OnNodeLost::try_from(spec.on_node_lost) {
        Ok(pb::OnNodeLost::Unspecified | pb::OnNodeLost::Requeue) => OnNodeLost::Requeue,
        Ok(pb::OnNodeLost::Fail) => OnNodeLost::Fail,
        Err(_) => return Err(SpecError::UnknownOnNodeLost(spec.on_node_lost)),
    };
    let walltime_secs = or_default(spec.walltime_seconds, limits.default_walltime_secs);
    if walltime_secs > limits.max_walltime_secs {
        return Err(SpecError::WalltimeTooLong {
            secs: walltime_secs,
            max: limits.max_walltime_secs,
        });
    }
    let grace_period_secs = or_default(spec.grace_period_seconds, limits.default_grace_secs);
    if grace_period_secs > limits.max_grace_secs {
        return Err(SpecError::GraceTooLong {
            secs: grace_period_secs,
            max: limits.max_grace_secs,
        });
    }
    let max_retries = match spec.max_retries {
        0 => limits.default_max_retries,
        n => n,
    };
    Ok(JobSpec {
        name: spec.name,
        command: spec.command,
        env,
        gpus: spec.gpus,
        nodes,
        class,
        walltime_secs,
        grace_period_secs,
        on_node_lost,
        max_retries,
        priority: spec.priority,
        gpu_fraction: spec.gpu_fraction,
        constraints,
        requeue_on_preempt: !spec.no_requeue_on_preempt,
        secret_env,
        image,
        cpu_millicores,
        memory_bytes,
    })
}

/// A spec's image: empty is none (a host process).
fn image(name: String) -> Result<Option<String>, SpecError> {
    match name.as_str() {
        "" => Ok(None),
        n if valid_image_name(n) => Ok(Some(name)),
        n => Err(SpecError::BadImage(truncate(n))),
    }
}

fn or_default(v: u64, default: u64) -> u64 {
    if v == 0 {
        default
    } else {
        v
    }
}

fn check_command(command: &[String]) -> Result<(), SpecError> {
    let first = command.first().ok_or(SpecError::EmptyCommand)?;
    if first.is_empty() {
        return Err(SpecError::EmptyProgram);
    }
    if command.len() > MAX_ARGS {
        return Err(SpecError::TooManyArgs {
            count: command.len(),
        });
    }
    let bytes: usize = command.iter().map(String::len).sum();
    if bytes > MAX_COMMAND_BYTES {
        return Err(SpecError::CommandTooLong { bytes });
    }
    if let Some(index) = command.iter().position(|a| a.contains('\0')) {
        return Err(SpecError::NulInArgument { index });
    }
    Ok(())
}

fn check_env(
    env: std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, SpecError> {
    let bytes: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if env.len() > MAX_ENV_VARS || bytes > MAX_ENV_BYTES {
        return Err(SpecError::EnvTooLarge {
            count: env.len(),
            bytes,
        });
    }
    let mut out = BTreeMap::new();
    for (k, v) in env {
        let ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(SpecError::BadEnvName(truncate(&k)));
        }
        if k.starts_with("EDUPOOL_") || k == "CUDA_VISIBLE_DEVICES" {
            return Err(SpecError::ReservedEnv(k));
        }
        if v.contains('\0') {
            return Err(SpecError::NulInEnv(k));
        }
        out.insert(k, v);
    }
    Ok(out)
}

/// Secret variables follow the rules of `env`, share its size limit, and
/// name no variable `env` has (which value wins would be a guess).
fn check_secret_env(
    secret: std::collections::HashMap<String, String>,
    env: &BTreeMap<String, String>,
) -> Result<SecretEnv, SpecError> {
    let secret = check_env(secret)?;
    if let Some(k) = secret.keys().find(|k| env.contains_key(*k)) {
        return Err(SpecError::EnvInBoth(k.clone()));
    }
    let count = env.len() + secret.len();
    let bytes: usize = env
        .iter()
        .chain(&secret)
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if count > MAX_ENV_VARS || bytes > MAX_ENV_BYTES {
        return Err(SpecError::EnvTooLarge { count, bytes });
    }
    Ok(SecretEnv(secret))
}

/// Names of jobs and nodes: letters, digits, '-', '_', '.'.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Tenant names: 1-63 lower-case letters, digits and '-', starting with a letter.
pub fn valid_tenant_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Shortens hostile input before it is echoed back in an error: the one
/// helper every message that quotes a caller's input goes through, so no
/// error carries more than 64 bytes of it (escaped).
pub fn truncate(s: &str) -> String {
    let (head, tail) = cut(s, 64);
    format!("{}{tail}", head.escape_debug())
}

/// The state's rejections quote names as given (the core knows no
/// callers): their messages are cut to 1 KiB where they become statuses.
pub fn bounded_message(s: String) -> String {
    match cut(&s, 1024) {
        (_, "") => s,
        (head, tail) => format!("{head}{tail}"),
    }
}

/// `s` cut to at most `max` bytes on a character boundary, and "..." to
/// follow it when anything was cut.
fn cut(s: &str, max: usize) -> (&str, &'static str) {
    if s.len() <= max {
        return (s, "");
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], "...")
}

/// A free-text field a caller sets (a reason, a token's name): at most
/// `max` bytes and no control characters, or INVALID_ARGUMENT naming it.
pub fn free_text(field: &str, value: &str, max: usize) -> Result<(), tonic::Status> {
    if value.len() > max {
        return Err(tonic::Status::invalid_argument(format!(
            "{field} is {} bytes long; at most {max} are allowed",
            value.len()
        )));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(tonic::Status::invalid_argument(format!(
            "{field} contains the control character {}; use printable text on one line",
            c.escape_unicode()
        )));
    }
    Ok(())
}

/// A reason reported by an agent, kept for people to read: control
/// characters become spaces and it is cut at 512 bytes, but quotes and
/// other text stay as they are (unlike `truncate`, which is for echoing
/// hostile input in errors).
pub fn reported_reason(s: &str) -> String {
    const MAX: usize = 512;
    let mut end = s.len().min(MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let clean: String = s[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if end < s.len() {
        format!("{clean}...")
    } else {
        clean
    }
}

/// A job in full, as `GetJob` gives it.
pub fn job(j: &Job) -> pb::Job {
    job_with(j, spec(&j.spec))
}

/// A job as lists give it: the spec without its command and environment,
/// which may be large (up to 64 KiB each).
pub fn job_summary(j: &Job) -> pb::Job {
    job_with(j, spec_summary(&j.spec))
}

/// A job id from a request; a bad one is INVALID_ARGUMENT, echoed bounded.
pub fn job_id(s: &str) -> Result<JobId, tonic::Status> {
    s.parse().map_err(|_| {
        tonic::Status::invalid_argument(format!(
            "'{}' is not a job id; job ids look like j-42",
            truncate(s)
        ))
    })
}

fn job_with(j: &Job, spec: pb::JobSpec) -> pb::Job {
    pb::Job {
        id: j.id.to_string(),
        tenant: j.tenant.clone(),
        spec: Some(spec),
        state: job_state(j.state) as i32,
        // A requeued job keeps its last run's tasks (for its logs), but it
        // holds no node or GPU while it waits.
        node: if j.state == JobState::Pending {
            String::new()
        } else {
            j.nodes().collect::<Vec<_>>().join(",")
        },
        gpu_uuids: if j.state == JobState::Pending {
            vec![]
        } else {
            j.gpu_uuids().map(String::from).collect()
        },
        exit_code: j.exit_code.unwrap_or(0),
        has_exit_code: j.exit_code.is_some(),
        reason: j.reason.clone(),
        submitted_at_ms: j.submitted_at,
        started_at_ms: j.started_at.unwrap_or(0),
        finished_at_ms: j.finished_at.unwrap_or(0),
        attempt: j.attempt,
        tasks: j
            .tasks
            .iter()
            .map(|t| pb::JobTask {
                node: t.node.clone(),
                gpu_uuids: t.gpus.clone(),
                lender: t.lender.clone().unwrap_or_default(),
                started: t.started,
                finished: t.finished,
            })
            .collect(),
        capacity: if j.placed_at.is_some() {
            j.capacity.name().to_string()
        } else {
            String::new()
        },
        preemptions: j.preemptions,
        placed_at_ms: j.placed_at.unwrap_or(0),
        reclaimed: j.reclaimed,
        gpu_seconds: j.usage.gpu_ms as f64 / 1e3,
        energy_joules: j.usage.energy_mj as f64 / 1e3,
    }
}

/// What an agent measured for one run; negative or non-finite values
/// (a broken agent) count as nothing.
pub fn usage(r: &pb::JobReport) -> JobUsage {
    let milli = |v: f64| {
        if v.is_finite() && v > 0.0 {
            (v * 1e3).min(u64::MAX as f64) as u64
        } else {
            0
        }
    };
    JobUsage {
        gpu_ms: milli(r.gpu_seconds),
        energy_mj: milli(r.energy_joules),
    }
}

pub fn spec(s: &JobSpec) -> pb::JobSpec {
    pb::JobSpec {
        command: s.command.clone(),
        env: s.env.clone().into_iter().collect(),
        // Write-only: a read shows the names, never the values.
        secret_env: s.secret_env.masked().collect(),
        ..spec_summary(s)
    }
}

/// The spec without its command and environments.
fn spec_summary(s: &JobSpec) -> pb::JobSpec {
    pb::JobSpec {
        name: s.name.clone(),
        command: vec![],
        env: Default::default(),
        gpus: s.gpus,
        class: job_class(s.class) as i32,
        walltime_seconds: s.walltime_secs,
        grace_period_seconds: s.grace_period_secs,
        on_node_lost: match s.on_node_lost {
            OnNodeLost::Requeue => pb::OnNodeLost::Requeue,
            OnNodeLost::Fail => pb::OnNodeLost::Fail,
        } as i32,
        max_retries: s.max_retries,
        nodes: s.nodes,
        priority: s.priority,
        gpu_fraction: s.gpu_fraction,
        gpu_model: s.constraints.gpu_model.clone().unwrap_or_default(),
        gpu_class: s.constraints.gpu_class.clone().unwrap_or_default(),
        min_gpu_memory_bytes: s.constraints.min_gpu_memory_bytes,
        site: s.constraints.site.clone().unwrap_or_default(),
        preferred_site: s.constraints.preferred_site.clone().unwrap_or_default(),
        data_level: u32::from(s.constraints.data_level),
        no_requeue_on_preempt: !s.requeue_on_preempt,
        secret_env: Default::default(),
        image: s.image.clone().unwrap_or_default(),
        cpu_millicores: s.cpu_millicores,
        memory_bytes: s.memory_bytes,
        gpu_models: s.constraints.gpu_models.clone(),
        gpu_classes: s.constraints.gpu_classes.clone(),
    }
}

pub fn job_class(c: JobClass) -> pb::JobClass {
    match c {
        JobClass::Inference => pb::JobClass::Inference,
        JobClass::Training => pb::JobClass::Training,
        JobClass::Batch => pb::JobClass::Batch,
        JobClass::Scavenger => pb::JobClass::Scavenger,
    }
}

pub fn job_state(s: JobState) -> pb::JobState {
    match s {
        JobState::Pending => pb::JobState::Pending,
        JobState::Assigned => pb::JobState::Assigned,
        JobState::Running => pb::JobState::Running,
        JobState::Cancelling | JobState::Preempting => pb::JobState::Cancelling,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
        JobState::Lost => pb::JobState::Lost,
    }
}

pub fn parse_job_state(v: i32) -> Option<JobState> {
    Some(match pb::JobState::try_from(v).ok()? {
        pb::JobState::Unspecified => return None,
        pb::JobState::Pending => JobState::Pending,
        pb::JobState::Assigned => JobState::Assigned,
        pb::JobState::Running => JobState::Running,
        pb::JobState::Cancelling => JobState::Cancelling,
        pb::JobState::Succeeded => JobState::Succeeded,
        pb::JobState::Failed => JobState::Failed,
        pb::JobState::Cancelled => JobState::Cancelled,
        pb::JobState::Lost => JobState::Lost,
    })
}

pub fn node(n: &Node, running_jobs: u32, last_seen_ms: Millis) -> pb::Node {
    pb::Node {
        name: n.name.clone(),
        status: match n.status {
            NodeStatus::Ready => pb::NodeStatus::Ready,
            NodeStatus::Down => pb::NodeStatus::Down,
            NodeStatus::Lost => pb::NodeStatus::Lost,
        } as i32,
        cordoned: n.cordoned,
        draining: n.draining,
        gpus: n
            .gpus
            .iter()
            .map(|g| pb::Gpu {
                uuid: g.info.uuid.clone(),
                index: g.info.index,
                model: g.info.model.clone(),
                memory_bytes: g.info.memory_bytes,
                healthy: g.usable(),
                assigned_job: g
                    .holders
                    .keys()
                    .map(|j| j.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                peers: g.info.peers.clone(),
                health_reason: match &g.fault {
                    Some(f) => f.reason.clone(),
                    None => g.info.health_reason.clone(),
                },
                reset_seen: g.fault.as_ref().is_some_and(|f| f.reset_seen),
                // Observed, not replicated: filled in by the admin service.
                telemetry: None,
                pci_bus_id: g.info.pci_bus_id.clone(),
                compute_capability: g.info.compute_capability.clone(),
                nvlink_peers: g.info.nvlink_peers.clone(),
            })
            .collect(),
        running_jobs,
        last_seen_ms,
        agent_version: n.agent_version.clone(),
        labels: Some(pb::NodeLabels {
            owner: n.labels.owner.clone().unwrap_or_default(),
            site: n.labels.site.clone().unwrap_or_default(),
            data_level: u32::from(n.labels.data_level),
            gpu_class: n.labels.gpu_class.clone().unwrap_or_default(),
        }),
        images: n.images.clone(),
        allows_host_jobs: n.allows_host_jobs,
        cpu_millicores: n.cpu_millicores,
        memory_bytes: n.memory_bytes,
        free_cpu_millicores: n.host_free().cpu_millicores,
        free_memory_bytes: n.host_free().memory_bytes,
    }
}

/// Checks node labels an admin sets.
pub fn node_labels(l: Option<pb::NodeLabels>) -> Result<NodeLabels, SpecError> {
    let l = l.unwrap_or_default();
    if l.data_level > 3 {
        return Err(SpecError::BadDataLevel(l.data_level));
    }
    Ok(NodeLabels {
        owner: label("owner", l.owner)?,
        site: label("site", l.site)?,
        data_level: l.data_level as u8,
        gpu_class: label("gpu_class", l.gpu_class)?,
    })
}

/// Why a policy setting was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("{field} is {value}; use a number of GPUs from 0 up, or -1 for {default}")]
    Negative {
        field: &'static str,
        value: i64,
        default: &'static str,
    },
    #[error("{field} of {value} GPUs is more than the {max} any pool can hold")]
    TooLarge {
        field: &'static str,
        value: i64,
        max: i64,
    },
    #[error("the quota needs a GPU class, e.g. A100")]
    MissingClass,
    #[error("invalid GPU class '{0}': use letters, digits, '-', '_' or '.'")]
    BadClass(String),
    #[error("the {field} must be from 1 to 1000000 thousandths (0.001-1000.0); it was {value}")]
    BadWeight { field: &'static str, value: u32 },
    #[error("unknown job class {0}; use inference, training, batch or scavenger")]
    UnknownJobClass(i32),
}

const MAX_POLICY_GPUS: i64 = 1 << 24;

fn gpu_count(
    field: &'static str,
    v: i64,
    default: &'static str,
) -> Result<Option<u32>, PolicyError> {
    match v {
        -1 => Ok(None),
        v if v < 0 => Err(PolicyError::Negative {
            field,
            value: v,
            default,
        }),
        v if v > MAX_POLICY_GPUS => Err(PolicyError::TooLarge {
            field,
            value: v,
            max: MAX_POLICY_GPUS,
        }),
        v => Ok(Some(v as u32)),
    }
}

/// A quota from the wire: (GPU class, quota).
pub fn quota(q: Option<pb::Quota>) -> Result<(String, Quota), PolicyError> {
    let q = q.ok_or(PolicyError::MissingClass)?;
    if q.gpu_class.is_empty() {
        return Err(PolicyError::MissingClass);
    }
    if !valid_name(&q.gpu_class) {
        return Err(PolicyError::BadClass(truncate(&q.gpu_class)));
    }
    Ok((
        q.gpu_class,
        Quota {
            guaranteed: gpu_count("guaranteed", q.guaranteed, "the GPUs of the nodes it owns")?,
            borrow_limit: gpu_count("borrow_limit", q.borrow_limit, "unlimited")?,
        },
    ))
}

/// A share weight in thousandths; 0 keeps `current`.
pub fn weight(field: &'static str, v: u32, current: u32) -> Result<u32, PolicyError> {
    match v {
        0 => Ok(current),
        v if v > 1_000_000 => Err(PolicyError::BadWeight { field, value: v }),
        v => Ok(v),
    }
}

pub fn parse_job_class(v: i32) -> Result<JobClass, PolicyError> {
    match pb::JobClass::try_from(v) {
        Ok(pb::JobClass::Inference) => Ok(JobClass::Inference),
        Ok(pb::JobClass::Training) => Ok(JobClass::Training),
        Ok(pb::JobClass::Batch | pb::JobClass::Unspecified) => Ok(JobClass::Batch),
        Ok(pb::JobClass::Scavenger) => Ok(JobClass::Scavenger),
        Err(_) => Err(PolicyError::UnknownJobClass(v)),
    }
}

pub fn cap(v: i64) -> Result<Option<u32>, PolicyError> {
    gpu_count("max_gpus", v, "no cap")
}

/// A tenant's policy and capacity for `tenant show`.
pub fn tenant_view(r: &TenantReport) -> pb::TenantPolicyView {
    let gpus = |m: u64| m as f64 / f64::from(WHOLE_GPU);
    pb::TenantPolicyView {
        name: r.name.clone(),
        classes: r
            .classes
            .iter()
            .map(|c| pb::TenantClassView {
                gpu_class: c.gpu_class.clone(),
                guaranteed: gpus(c.guaranteed),
                in_use: gpus(c.in_use),
                borrowed: gpus(c.borrowed),
                lent: gpus(c.lent),
                guarantee_override: c.quota.guaranteed.map_or(-1, i64::from),
                borrow_limit: c.quota.borrow_limit.map_or(-1, i64::from),
            })
            .collect(),
        weight_milli: r.weight_milli,
        equity_milli: r.equity_milli,
        usage_gpu_seconds: r.usage_gpu_seconds,
        usage_share: r.usage_share,
        pending_jobs: r.pending_jobs,
        running_jobs: r.running_jobs,
        class_caps: r
            .class_caps
            .iter()
            .map(|(c, n)| (c.name().to_string(), *n))
            .collect(),
        queue: r.queue.iter().map(|j| j.to_string()).collect(),
        uid_offset: r.uid_offset,
        cpu_millicores_in_use: r.host_in_use.cpu_millicores,
        memory_bytes_in_use: r.host_in_use.memory_bytes,
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum InventoryError {
    #[error("invalid node name '{0}': use letters, digits, '-', '_' or '.'")]
    BadNodeName(String),
    #[error("the agent reported {0} GPUs; at most 64 per node are supported")]
    TooManyGpus(usize),
    #[error("GPU {index} has an empty UUID")]
    EmptyUuid { index: u32 },
    #[error("GPU UUID {0} is reported twice")]
    DuplicateUuid(String),
    #[error("the agent reported {0} images; at most {MAX_NODE_IMAGES} per node are supported")]
    TooManyImages(usize),
    #[error("the agent reported an invalid image name '{0}': an image name is 1-128 letters, digits, '.', '_', '-' or ':', not starting with '.'")]
    BadImage(String),
}

/// What a node can run jobs in, as its agent reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Software {
    /// The images in its store, sorted, each once.
    pub images: Vec<String>,
    pub allows_host_jobs: bool,
}

/// Checks the images an agent reports (their number before anything is
/// allocated from them, then each name) and whether it runs host jobs.
///
/// A hello with none of the fields its agent reports about the host (CPU,
/// memory, images, host jobs: AgentHello 5-8) comes from an agent that
/// predates them, which runs every job as a host process: such a node is
/// taken to allow host jobs, as it always did (docs/policy.md, "Images").
pub fn software(hello: &pb::AgentHello) -> Result<Software, InventoryError> {
    if hello.images.len() > MAX_NODE_IMAGES {
        return Err(InventoryError::TooManyImages(hello.images.len()));
    }
    let mut images = Vec::with_capacity(hello.images.len());
    for name in &hello.images {
        if !valid_image_name(name) {
            return Err(InventoryError::BadImage(truncate(name)));
        }
        images.push(name.clone());
    }
    images.sort_unstable();
    images.dedup();
    let predates = hello.cpu_millicores == 0
        && hello.memory_bytes == 0
        && images.is_empty()
        && !hello.allows_host_jobs;
    Ok(Software {
        images,
        allows_host_jobs: hello.allows_host_jobs || predates,
    })
}

/// NVLink peers kept per GPU (NVML has at most 18 links).
const MAX_NVLINK_PEERS: usize = 18;

/// Checks an agent's inventory report.
pub fn inventory(node_name: &str, gpus: Vec<pb::Gpu>) -> Result<Vec<GpuInfo>, InventoryError> {
    if !valid_name(node_name) {
        return Err(InventoryError::BadNodeName(truncate(node_name)));
    }
    if gpus.len() > 64 {
        return Err(InventoryError::TooManyGpus(gpus.len()));
    }
    let mut seen = std::collections::BTreeSet::new();
    gpus.into_iter()
        .map(|g| {
            if g.uuid.is_empty() || g.uuid.len() > MAX_NAME_LEN {
                return Err(InventoryError::EmptyUuid { index: g.index });
            }
            if !seen.insert(g.uuid.clone()) {
                return Err(InventoryError::DuplicateUuid(truncate(&g.uuid)));
            }
            Ok(GpuInfo {
                uuid: g.uuid,
                index: g.index,
                model: truncate(&g.model),
                memory_bytes: g.memory_bytes,
                healthy: g.healthy,
                peers: g.peers.into_iter().filter(|p| *p < 64).collect(),
                health_reason: truncate(&g.health_reason),
                pci_bus_id: truncate(&g.pci_bus_id),
                compute_capability: truncate(&g.compute_capability),
                nvlink_peers: g
                    .nvlink_peers
                    .iter()
                    .take(MAX_NVLINK_PEERS)
                    .map(|p| truncate(p))
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> pb::JobSpec {
        pb::JobSpec {
            command: vec!["python3".into(), "train.py".into()],
            gpus: 2,
            ..Default::default()
        }
    }

    fn check(f: impl FnOnce(&mut pb::JobSpec)) -> Result<JobSpec, SpecError> {
        let mut s = base();
        f(&mut s);
        job_spec(Some(s), &JobLimits::default())
    }

    #[test]
    fn reported_reasons_keep_their_text_and_lose_control_characters() {
        assert_eq!(
            reported_reason("preempted: tenant 'wzu' reclaims\nits GPUs"),
            "preempted: tenant 'wzu' reclaims its GPUs"
        );
        let long = "x".repeat(600);
        assert_eq!(reported_reason(&long).len(), 515);
    }

    #[test]
    fn policy_fields_are_checked_precisely() {
        assert_eq!(
            check(|s| {
                s.gpus = 2;
                s.gpu_fraction = 250;
            }),
            Err(SpecError::FractionWithManyGpus(2))
        );
        assert_eq!(
            check(|s| {
                s.gpus = 1;
                s.gpu_fraction = 1000;
            }),
            Err(SpecError::BadFraction(1000))
        );
        assert_eq!(
            check(|s| {
                s.gpus = 1;
                s.gpu_fraction = 500;
                s.nodes = 2;
            }),
            Err(SpecError::FractionWithGang(2))
        );
        assert_eq!(check(|s| s.data_level = 4), Err(SpecError::BadDataLevel(4)));
        let err = check(|s| s.min_gpu_memory_bytes = u64::MAX).unwrap_err();
        assert_eq!(err, SpecError::GpuMemoryTooLarge(u64::MAX));
        assert!(err
            .to_string()
            .starts_with("min_gpu_memory_bytes is 18446744073709551615"));
        assert!(check(|s| s.min_gpu_memory_bytes = 80 << 30).is_ok());
        assert_eq!(
            check(|s| s.nodes = 1000),
            Err(SpecError::TooManyNodes {
                requested: 1000,
                max: MAX_NODES
            })
        );
        assert!(matches!(
            check(|s| s.site = "a b".into()),
            Err(SpecError::BadLabel { field: "site", .. })
        ));
        let s = check(|s| {
            s.nodes = 2;
            s.gpus = 4;
            s.gpu_class = "A100".into();
            s.data_level = 2;
            s.priority = -3;
            s.no_requeue_on_preempt = true;
        })
        .unwrap();
        assert_eq!((s.nodes, s.gpus, s.priority), (2, 4, -3));
        assert_eq!(s.constraints.gpu_classes, ["A100"]);
        assert_eq!(s.constraints.gpu_class, None);
        assert_eq!(s.constraints.data_level, 2);
        assert!(!s.requeue_on_preempt);
    }

    #[test]
    fn quotas_and_weights_are_checked_precisely() {
        let q = |guaranteed, borrow_limit| {
            quota(Some(pb::Quota {
                gpu_class: "A100".into(),
                guaranteed,
                borrow_limit,
            }))
        };
        assert_eq!(
            q(-1, -1),
            Ok((
                "A100".into(),
                Quota {
                    guaranteed: None,
                    borrow_limit: None
                }
            ))
        );
        assert_eq!(
            q(4, 0).unwrap().1,
            Quota {
                guaranteed: Some(4),
                borrow_limit: Some(0)
            }
        );
        assert_eq!(
            q(-3, -1).unwrap_err().to_string(),
            "guaranteed is -3; use a number of GPUs from 0 up, or -1 for the GPUs of the nodes it owns"
        );
        assert_eq!(
            quota(Some(pb::Quota::default())),
            Err(PolicyError::MissingClass)
        );
        assert_eq!(weight("weight", 0, 1500), Ok(1500));
        assert!(weight("equity", 2_000_000, 1000).is_err());
        assert_eq!(
            node_labels(Some(pb::NodeLabels {
                data_level: 9,
                ..Default::default()
            })),
            Err(SpecError::BadDataLevel(9))
        );
    }

    #[test]
    fn defaults_are_filled_in() {
        let s = check(|_| {}).unwrap();
        assert_eq!(s.class, JobClass::Batch);
        assert_eq!(s.walltime_secs, 24 * 3600);
        assert_eq!(s.grace_period_secs, 30);
        assert_eq!(s.on_node_lost, OnNodeLost::Requeue);
        assert_eq!(s.max_retries, 3);
    }

    #[test]
    fn bad_specs_get_precise_errors() {
        assert_eq!(
            job_spec(None, &JobLimits::default()),
            Err(SpecError::Missing)
        );
        assert_eq!(check(|s| s.command.clear()), Err(SpecError::EmptyCommand));
        assert_eq!(
            check(|s| s.command[0].clear()),
            Err(SpecError::EmptyProgram)
        );
        assert_eq!(check(|s| s.gpus = 0), Err(SpecError::NothingRequested));
        assert_eq!(
            check(|s| s.gpus = u32::MAX),
            Err(SpecError::TooManyGpus {
                requested: u32::MAX,
                max: 1024
            })
        );
        assert_eq!(check(|s| s.class = 9), Err(SpecError::UnknownClass(9)));
        assert_eq!(
            check(|s| s.on_node_lost = -1),
            Err(SpecError::UnknownOnNodeLost(-1))
        );
        assert_eq!(
            check(|s| s.command.push("a\0b".into())),
            Err(SpecError::NulInArgument { index: 2 })
        );
        assert!(matches!(
            check(|s| s.command = vec!["x".repeat(70_000)]),
            Err(SpecError::CommandTooLong { .. })
        ));
        assert!(matches!(
            check(|s| s.name = "a b".into()),
            Err(SpecError::BadName(_))
        ));
        assert!(matches!(
            check(|s| {
                s.env.insert("1X".into(), "v".into());
            }),
            Err(SpecError::BadEnvName(_))
        ));
        assert!(matches!(
            check(|s| {
                s.env.insert("CUDA_VISIBLE_DEVICES".into(), "0".into());
            }),
            Err(SpecError::ReservedEnv(_))
        ));
        assert!(matches!(
            check(|s| s.walltime_seconds = u64::MAX),
            Err(SpecError::WalltimeTooLong { .. })
        ));
    }

    #[test]
    fn tenant_names() {
        assert!(valid_tenant_name("zju"));
        assert!(valid_tenant_name("lishui-no2-middle"));
        assert!(!valid_tenant_name(""));
        assert!(!valid_tenant_name("ZJU"));
        assert!(!valid_tenant_name("1school"));
        assert!(!valid_tenant_name(&"a".repeat(64)));
    }

    #[test]
    fn inventory_checks() {
        let g = |u: &str| pb::Gpu {
            uuid: u.into(),
            ..Default::default()
        };
        assert!(inventory("n1", vec![g("a"), g("b")]).is_ok());
        assert_eq!(
            inventory("n1", vec![g("a"), g("a")]),
            Err(InventoryError::DuplicateUuid("a".into()))
        );
        assert!(matches!(
            inventory("bad name", vec![]),
            Err(InventoryError::BadNodeName(_))
        ));
    }
}
