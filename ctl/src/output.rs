//! What the CLI prints: aligned tables and `key: value` pages for people,
//! JSON views for scripts.
//!
//! The JSON views are plain structs built from the protocol's messages:
//! enums are lower-case words (`running`, `training`), times are RFC 3339
//! with milliseconds (`null` when unset) and durations are whole seconds.
//! Rendering takes `now` as an argument so that ages are testable.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use edupool_proto::v1::{Gpu, Job, Node, Tenant};
use edupool_table::{units, Table};
use serde::{Deserialize, Serialize};

use crate::{class_name, job_state_is_final, job_state_name, node_status_name, on_node_lost_name};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Aligned columns and `key: value` lines, for people.
    #[default]
    Table,
    /// Pretty JSON (one compact object per line for event streams).
    Json,
}

impl FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "table" => Ok(OutputFormat::Table),
            "json" => Ok(OutputFormat::Json),
            _ => Err(format!(
                "unknown output format {s:?}; expected table or json"
            )),
        }
    }
}

// ---------------------------------------------------------------- views

/// A job, for scripts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub name: Option<String>,
    pub tenant: String,
    pub state: String,
    pub reason: Option<String>,
    pub class: String,
    pub gpus: u32,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Secret variables' names, each with `***`: the scheduler never
    /// returns a value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
    /// `null`: the pool's default.
    pub walltime_seconds: Option<u64>,
    /// `null`: the pool's default.
    pub grace_period_seconds: Option<u64>,
    pub on_node_lost: String,
    pub max_retries: u32,
    pub node: Option<String>,
    pub gpu_uuids: Vec<String>,
    pub exit_code: Option<i32>,
    pub attempt: u32,
    pub submitted_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Tasks of a gang (one per node); 1 for a single-node job.
    #[serde(default)]
    pub nodes: u32,
    /// Thousandths of one GPU; `null`: whole GPUs.
    #[serde(default)]
    pub gpu_fraction: Option<u32>,
    #[serde(default)]
    pub priority: i32,
    /// own | guaranteed | borrowed | idle; `null` until placed.
    #[serde(default)]
    pub capacity: Option<String>,
    #[serde(default)]
    pub preemptions: u32,
    /// GPU time over all attempts, GPUs x seconds.
    #[serde(default)]
    pub gpu_seconds: f64,
    /// GPU energy over all attempts, joules.
    #[serde(default)]
    pub energy_joules: f64,
    /// The image it runs in; `null`: a host process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU (thousandths of a core) and host memory (bytes) per task, the
    /// pool's defaults filled in; 0 for a job from before they existed.
    #[serde(default)]
    pub cpu_millicores: u64,
    #[serde(default)]
    pub memory_bytes: u64,
}

impl From<&Job> for JobView {
    fn from(job: &Job) -> Self {
        let spec = job.spec.clone().unwrap_or_default();
        JobView {
            id: job.id.clone(),
            name: non_empty(&spec.name),
            tenant: job.tenant.clone(),
            state: job_state_name(job.state).to_owned(),
            reason: non_empty(&job.reason),
            class: class_name(spec.class).to_owned(),
            gpus: spec.gpus,
            command: spec.command,
            env: spec.env.into_iter().collect(),
            secret_env: spec.secret_env.into_iter().collect(),
            walltime_seconds: non_zero(spec.walltime_seconds),
            grace_period_seconds: non_zero(spec.grace_period_seconds),
            on_node_lost: on_node_lost_name(spec.on_node_lost).to_owned(),
            max_retries: spec.max_retries,
            node: non_empty(&job.node),
            gpu_uuids: job.gpu_uuids.clone(),
            exit_code: job.has_exit_code.then_some(job.exit_code),
            attempt: job.attempt,
            submitted_at: timestamp(job.submitted_at_ms),
            started_at: timestamp(job.started_at_ms),
            finished_at: timestamp(job.finished_at_ms),
            nodes: spec.nodes.max(1),
            gpu_fraction: non_zero(u64::from(spec.gpu_fraction)).map(|f| f as u32),
            priority: spec.priority,
            capacity: non_empty(&job.capacity),
            preemptions: job.preemptions,
            gpu_seconds: job.gpu_seconds,
            energy_joules: job.energy_joules,
            image: non_empty(&spec.image),
            cpu_millicores: spec.cpu_millicores,
            memory_bytes: spec.memory_bytes,
        }
    }
}

/// A GPU, for scripts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuView {
    pub uuid: String,
    pub index: u32,
    pub model: String,
    pub memory_bytes: u64,
    pub healthy: bool,
    /// `null`: free.
    pub assigned_job: Option<String>,
    /// Why it is unhealthy; `null` when healthy.
    #[serde(default)]
    pub health_reason: Option<String>,
    /// Unhealthy, but reset since: an admin may clear it.
    #[serde(default)]
    pub reset_seen: bool,
    /// The agent's latest telemetry summary; `null` when none.
    #[serde(default)]
    pub telemetry: Option<GpuTelemetryView>,
    /// `null` when unknown.
    #[serde(default)]
    pub pci_bus_id: Option<String>,
    /// `null` when unknown.
    #[serde(default)]
    pub compute_capability: Option<String>,
    /// PCI bus ids of its NVLink peers.
    #[serde(default)]
    pub nvlink_peers: Vec<String>,
    /// Indexes of the node's GPUs it shares NVLink with (what placement uses).
    #[serde(default)]
    pub peers: Vec<u32>,
}

/// A GPU's latest telemetry, for scripts (base units).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuTelemetryView {
    pub utilization_ratio: f64,
    pub memory_used_bytes: u64,
    pub temperature_celsius: f64,
    pub power_watts: f64,
    pub energy_joules: f64,
    pub sampled_at: Option<String>,
}

impl From<&Gpu> for GpuView {
    fn from(gpu: &Gpu) -> Self {
        GpuView {
            uuid: gpu.uuid.clone(),
            index: gpu.index,
            model: gpu.model.clone(),
            memory_bytes: gpu.memory_bytes,
            healthy: gpu.healthy,
            assigned_job: non_empty(&gpu.assigned_job),
            health_reason: non_empty(&gpu.health_reason),
            reset_seen: gpu.reset_seen,
            telemetry: gpu.telemetry.as_ref().map(|t| GpuTelemetryView {
                utilization_ratio: t.utilization_ratio,
                memory_used_bytes: t.memory_used_bytes,
                temperature_celsius: t.temperature_celsius,
                power_watts: t.power_watts,
                energy_joules: t.energy_joules,
                sampled_at: timestamp(t.at_ms),
            }),
            pci_bus_id: non_empty(&gpu.pci_bus_id),
            compute_capability: non_empty(&gpu.compute_capability),
            nvlink_peers: gpu.nvlink_peers.clone(),
            peers: gpu.peers.clone(),
        }
    }
}

/// A node, for scripts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub status: String,
    pub cordoned: bool,
    pub draining: bool,
    /// Healthy GPUs no job holds.
    pub free_gpus: u32,
    pub gpus: Vec<GpuView>,
    pub running_jobs: u32,
    pub last_seen_at: Option<String>,
    pub agent_version: Option<String>,
    /// The images in its store.
    #[serde(default)]
    pub images: Vec<String>,
    /// Its agent runs jobs without an image as host processes.
    #[serde(default)]
    pub allows_host_jobs: bool,
    /// CPU (thousandths of a core) and host memory (bytes) jobs may use,
    /// and how much of it no job holds.
    #[serde(default)]
    pub cpu_millicores: u64,
    #[serde(default)]
    pub free_cpu_millicores: u64,
    #[serde(default)]
    pub memory_bytes: u64,
    #[serde(default)]
    pub free_memory_bytes: u64,
}

impl From<&Node> for NodeView {
    fn from(node: &Node) -> Self {
        NodeView {
            name: node.name.clone(),
            status: node_status_name(node.status).to_owned(),
            cordoned: node.cordoned,
            draining: node.draining,
            free_gpus: free_gpus(node),
            gpus: node.gpus.iter().map(GpuView::from).collect(),
            running_jobs: node.running_jobs,
            last_seen_at: timestamp(node.last_seen_ms),
            agent_version: non_empty(&node.agent_version),
            images: node.images.clone(),
            allows_host_jobs: node.allows_host_jobs,
            cpu_millicores: node.cpu_millicores,
            free_cpu_millicores: node.free_cpu_millicores,
            memory_bytes: node.memory_bytes,
            free_memory_bytes: node.free_memory_bytes,
        }
    }
}

/// A tenant, for scripts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantView {
    pub name: String,
    pub created_at: Option<String>,
    pub running_jobs: u32,
    pub pending_jobs: u32,
    pub gpus_in_use: u32,
    /// The kill switch is on: no new work is accepted or placed.
    #[serde(default)]
    pub suspended: bool,
    #[serde(default)]
    pub suspended_reason: Option<String>,
}

impl From<&Tenant> for TenantView {
    fn from(tenant: &Tenant) -> Self {
        TenantView {
            name: tenant.name.clone(),
            created_at: timestamp(tenant.created_at_ms),
            running_jobs: tenant.running_jobs,
            pending_jobs: tenant.pending_jobs,
            gpus_in_use: tenant.gpus_in_use,
            suspended: tenant.suspended,
            suspended_reason: non_empty(&tenant.suspended_reason),
        }
    }
}

/// A tenant just created, with the token the scheduler shows only once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTenantView {
    pub tenant: TenantView,
    pub token: String,
}

/// `value` as pretty JSON, without a trailing newline.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(value)
}

/// `value` as one line of JSON.
pub fn to_json_line<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    serde_json::to_string(value)
}

// ---------------------------------------------------------------- tables

/// The GPUs a job asks for across all its tasks (nodes x gpus for a
/// gang, a fraction as its share), as the scheduler counts a tenant's
/// GPUs in use.
pub fn job_gpus(spec: &edupool_proto::v1::JobSpec) -> String {
    let milli = u64::from(spec.nodes.max(1))
        * u64::from(spec.gpus)
        * match spec.gpu_fraction {
            0 => 1000,
            f => u64::from(f),
        };
    match milli % 1000 {
        0 => (milli / 1000).to_string(),
        rest => format!(
            "{}.{}",
            milli / 1000,
            format!("{rest:03}").trim_end_matches('0')
        ),
    }
}

/// `job list`: ID NAME TENANT STATE GPUS NODE AGE/EXIT REASON. AGE/EXIT is
/// the time since submission while the job is live, `exit N` once it has
/// ended with an exit code.
pub fn job_table(jobs: &[Job], now: SystemTime) -> String {
    let mut table = Table::new([
        "ID", "NAME", "TENANT", "STATE", "GPUS", "NODE", "AGE/EXIT", "REASON",
    ]);
    for job in jobs {
        let spec = job.spec.clone().unwrap_or_default();
        let age_exit = if job_state_is_final(job.state) {
            if job.has_exit_code {
                format!("exit {}", job.exit_code)
            } else {
                "-".to_owned()
            }
        } else {
            age(job.submitted_at_ms, now)
        };
        table.row([
            job.id.clone(),
            dash(&spec.name),
            dash(&job.tenant),
            job_state_name(job.state).to_owned(),
            job_gpus(&spec),
            dash(&job.node),
            age_exit,
            dash(&job.reason),
        ]);
    }
    table.render()
}

/// `job get`: one `key: value` line per field.
pub fn job_detail(job: &Job, now: SystemTime) -> String {
    let spec = job.spec.clone().unwrap_or_default();
    let mut env: Vec<_> = spec.env.iter().collect();
    env.sort();
    let seconds = |s: u64| {
        if s == 0 {
            "pool default".to_owned()
        } else {
            humantime::format_duration(Duration::from_secs(s)).to_string()
        }
    };
    let when = |ms: i64| match timestamp(ms) {
        Some(t) => format!("{t} ({} ago)", age(ms, now)),
        None => "-".to_owned(),
    };
    let mut fields: Vec<(&str, String)> = vec![
        ("id", job.id.clone()),
        ("name", dash(&spec.name)),
        ("tenant", dash(&job.tenant)),
        ("state", job_state_name(job.state).to_owned()),
        ("reason", dash(&job.reason)),
        ("class", class_name(spec.class).to_owned()),
        ("gpus", job_gpus(&spec)),
    ];
    if !spec.image.is_empty() {
        fields.push(("image", spec.image.clone()));
    }
    if spec.cpu_millicores > 0 || spec.memory_bytes > 0 {
        fields.push(("host", host_request(&spec)));
    }
    fields.push(("command", shell_words(&spec.command)));
    if env.is_empty() {
        fields.push(("env", "-".to_owned()));
    }
    for (k, v) in env {
        fields.push(("env", format!("{k}={}", shell_quote(v))));
    }
    let mut secret: Vec<&String> = spec.secret_env.keys().collect();
    secret.sort();
    for k in secret {
        fields.push(("secret env", format!("{k}=***")));
    }
    fields.extend([
        ("walltime", seconds(spec.walltime_seconds)),
        ("grace period", seconds(spec.grace_period_seconds)),
        (
            "on node lost",
            on_node_lost_name(spec.on_node_lost).to_owned(),
        ),
        ("max retries", spec.max_retries.to_string()),
        ("node", dash(&job.node)),
        (
            "gpu uuids",
            if job.gpu_uuids.is_empty() {
                "-".to_owned()
            } else {
                job.gpu_uuids.join(", ")
            },
        ),
        (
            "exit code",
            if job.has_exit_code {
                job.exit_code.to_string()
            } else {
                "-".to_owned()
            },
        ),
        ("attempt", job.attempt.to_string()),
    ]);
    let terms = placement_terms(job, &spec);
    if terms != "-" {
        fields.push(("placement", terms));
    }
    fields.extend([
        ("submitted", when(job.submitted_at_ms)),
        ("started", when(job.started_at_ms)),
        ("finished", when(job.finished_at_ms)),
        ("gpu time", gpu_hours(job.gpu_seconds)),
        ("energy", kilowatt_hours(job.energy_joules)),
    ]);
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (key, value) in fields {
        let key = format!("{key}:");
        let _ = writeln!(out, "{key:<width$} {}", one_line(&value));
    }
    out
}

/// CPU and memory per task, e.g. `4 CPU, 16GiB memory per task`.
fn host_request(spec: &edupool_proto::v1::JobSpec) -> String {
    format!(
        "{} CPU, {} memory per task",
        units::cpu(spec.cpu_millicores),
        units::memory(spec.memory_bytes)
    )
}

/// The policy side of a job in one line: shape, constraints and terms.
fn placement_terms(job: &Job, spec: &edupool_proto::v1::JobSpec) -> String {
    let mut parts = vec![];
    if spec.nodes > 1 {
        parts.push(format!("{} nodes x {} GPUs", spec.nodes, spec.gpus));
    }
    if spec.gpu_fraction > 0 {
        parts.push(format!("{}/1000 of a GPU", spec.gpu_fraction));
    }
    if spec.priority != 0 {
        parts.push(format!("priority {}", spec.priority));
    }
    for (what, value) in [
        ("model", &spec.gpu_model),
        ("class", &spec.gpu_class),
        ("model", &spec.gpu_models.join(" or ")),
        ("class", &spec.gpu_classes.join(" or ")),
        ("site", &spec.site),
        ("preferred site", &spec.preferred_site),
    ] {
        if !value.is_empty() {
            parts.push(format!("{what} {value}"));
        }
    }
    if spec.min_gpu_memory_bytes > 0 {
        parts.push(format!("at least {} GiB", spec.min_gpu_memory_bytes >> 30));
    }
    if spec.data_level > 0 {
        parts.push(format!("data level {}", spec.data_level));
    }
    if !job.capacity.is_empty() {
        parts.push(format!("{} capacity", job.capacity));
    }
    if job.preemptions > 0 {
        parts.push(format!("preempted {} times", job.preemptions));
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

/// GPU time as GPU-hours, e.g. `0.0125 GPU-hours (45.0 GPU-seconds)`.
pub fn gpu_hours(gpu_seconds: f64) -> String {
    if gpu_seconds <= 0.0 {
        return "-".to_owned();
    }
    format!(
        "{:.4} GPU-hours ({gpu_seconds:.1} GPU-seconds)",
        gpu_seconds / 3600.0
    )
}

/// Energy as kWh, e.g. `0.000125 kWh (450 J)`.
pub fn kilowatt_hours(joules: f64) -> String {
    if joules <= 0.0 {
        return "-".to_owned();
    }
    format!("{:.6} kWh ({joules:.0} J)", joules / 3.6e6)
}

/// `job watch`: one line per event, `<state> node=<node> [exit=N] [reason: ...]`.
pub fn job_event_line(job: &Job) -> String {
    let mut line = format!("{:<10} node={}", job_state_name(job.state), dash(&job.node));
    if job.has_exit_code {
        let _ = write!(line, " exit={}", job.exit_code);
    }
    if !job.reason.is_empty() {
        let _ = write!(line, " reason: {}", one_line(&job.reason));
    }
    line
}

/// `node list`: NAME STATUS GPUS FREE MODELS RUNNING CORDONED/DRAINING LAST-SEEN.
pub fn node_table(nodes: &[Node], now: SystemTime) -> String {
    let mut table = Table::new([
        "NAME",
        "STATUS",
        "GPUS",
        "FREE",
        "MODELS",
        "CPU FREE/ALL",
        "MEMORY FREE/ALL",
        "RUNNING",
        "CORDONED/DRAINING",
        "LAST-SEEN",
    ]);
    for node in nodes {
        let unhealthy = node.gpus.iter().filter(|g| !g.healthy).count();
        let gpus = if unhealthy == 0 {
            node.gpus.len().to_string()
        } else {
            format!("{} ({unhealthy} unhealthy)", node.gpus.len())
        };
        let last_seen = if node.last_seen_ms > 0 {
            format!("{} ago", age(node.last_seen_ms, now))
        } else {
            "-".to_owned()
        };
        table.row([
            node.name.clone(),
            node_status_name(node.status).to_owned(),
            gpus,
            free_gpus(node).to_string(),
            models(&node.gpus),
            format!(
                "{}/{}",
                units::cpu(node.free_cpu_millicores),
                units::cpu(node.cpu_millicores)
            ),
            format!(
                "{}/{}",
                units::memory(node.free_memory_bytes),
                units::memory(node.memory_bytes)
            ),
            node.running_jobs.to_string(),
            node_schedulability(node).to_owned(),
            last_seen,
        ]);
    }
    let mut out = table.render();
    out.push_str(&unhealthy_gpu_table(nodes));
    out
}

/// `node show`: one `key: value` line per field, then its GPUs.
pub fn node_detail(node: &Node, now: SystemTime) -> String {
    let labels = node.labels.clone().unwrap_or_default();
    let last_seen = if node.last_seen_ms > 0 {
        format!("{} ago", age(node.last_seen_ms, now))
    } else {
        "-".to_owned()
    };
    let fields = [
        ("node", node.name.clone()),
        ("status", node_status_name(node.status).to_owned()),
        ("schedulable", node_schedulability(node).to_owned()),
        (
            "gpus",
            format!("{} ({} free)", node.gpus.len(), free_gpus(node)),
        ),
        ("models", models(&node.gpus)),
        ("running", node.running_jobs.to_string()),
        ("owner", dash(&labels.owner)),
        ("site", dash(&labels.site)),
        ("data level", labels.data_level.to_string()),
        (
            "images",
            if node.images.is_empty() {
                "-".to_owned()
            } else {
                node.images.join(", ")
            },
        ),
        (
            "host jobs",
            if node.allows_host_jobs {
                "allowed (jobs without an image run as host processes)".to_owned()
            } else {
                "not allowed (only jobs with an image run here)".to_owned()
            },
        ),
        ("agent", dash(&node.agent_version)),
        ("last seen", last_seen),
    ];
    let mut out = String::new();
    for (key, value) in fields {
        let key = format!("{key}:");
        let _ = writeln!(out, "{key:<12} {}", one_line(&value));
    }
    out.push_str(&unhealthy_gpu_table(std::slice::from_ref(node)));
    out
}

/// The unhealthy GPUs of `nodes` and why, after a blank line; empty when
/// every GPU is healthy.
fn unhealthy_gpu_table(nodes: &[Node]) -> String {
    let mut table = Table::new(["NODE", "GPU", "INDEX", "RECOVERY", "WHY UNHEALTHY"]);
    for node in nodes {
        for gpu in node.gpus.iter().filter(|g| !g.healthy) {
            table.row([
                node.name.clone(),
                gpu.uuid.clone(),
                gpu.index.to_string(),
                if gpu.reset_seen {
                    "reset; clear-gpu to use".to_owned()
                } else {
                    "needs a reset".to_owned()
                },
                dash(&gpu.health_reason),
            ]);
        }
    }
    if table.is_empty() {
        String::new()
    } else {
        format!("\n{}", table.render())
    }
}

/// `draining`, `cordoned` or `-`.
pub fn node_schedulability(node: &Node) -> &'static str {
    if node.draining {
        "draining"
    } else if node.cordoned {
        "cordoned"
    } else {
        "-"
    }
}

/// `tenant list`: NAME RUNNING PENDING GPUS-IN-USE AGE.
pub fn tenant_table(tenants: &[Tenant], now: SystemTime) -> String {
    let mut table = Table::new(["NAME", "RUNNING", "PENDING", "GPUS-IN-USE", "AGE", "STATE"]);
    for t in tenants {
        let state = if t.suspended { "suspended" } else { "active" };
        table.row([
            t.name.clone(),
            t.running_jobs.to_string(),
            t.pending_jobs.to_string(),
            t.gpus_in_use.to_string(),
            age(t.created_at_ms, now),
            state.to_string(),
        ]);
    }
    table.render()
}

// ---------------------------------------------------------------- pieces

/// Unix milliseconds as RFC 3339 with milliseconds; `None` for 0 (unset).
pub fn timestamp(ms: i64) -> Option<String> {
    let ms = u64::try_from(ms).ok().filter(|&ms| ms > 0)?;
    Some(humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string())
}

/// Time from `ms` (unix milliseconds) to `now`, as [`short_duration`];
/// `-` when `ms` is unset.
pub fn age(ms: i64, now: SystemTime) -> String {
    let Ok(ms) = u64::try_from(ms) else {
        return "-".to_owned();
    };
    if ms == 0 {
        return "-".to_owned();
    }
    let then = UNIX_EPOCH + Duration::from_millis(ms);
    short_duration(now.duration_since(then).unwrap_or_default())
}

/// At most two units, largest first: `42s`, `5m30s`, `3h`, `2d4h`.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (big, big_unit, small, small_unit) = match s {
        0..60 => return format!("{s}s"),
        60..3600 => (s / 60, "m", s % 60, "s"),
        3600..86400 => (s / 3600, "h", s % 3600 / 60, "m"),
        _ => (s / 86400, "d", s % 86400 / 3600, "h"),
    };
    if small == 0 {
        format!("{big}{big_unit}")
    } else {
        format!("{big}{big_unit}{small}{small_unit}")
    }
}

/// `2xA100-80GB,1xH100`: GPU models and how many of each, in index order
/// of first appearance.
fn models(gpus: &[Gpu]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for gpu in gpus {
        let model = if gpu.model.is_empty() {
            "unknown"
        } else {
            gpu.model.as_str()
        };
        match counts.iter_mut().find(|(m, _)| *m == model) {
            Some((_, n)) => *n += 1,
            None => counts.push((model, 1)),
        }
    }
    if counts.is_empty() {
        return "-".to_owned();
    }
    counts
        .iter()
        .map(|(m, n)| format!("{n}x{m}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn free_gpus(node: &Node) -> u32 {
    let free = node
        .gpus
        .iter()
        .filter(|g| g.healthy && g.assigned_job.is_empty())
        .count();
    u32::try_from(free).unwrap_or(u32::MAX)
}

/// An argv as a shell would need it typed.
pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `word` unchanged when a shell would read it as is, else single-quoted.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

pub fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

fn non_zero(n: u64) -> Option<u64> {
    (n != 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use edupool_proto::v1::{JobClass, JobSpec, JobState, NodeStatus, OnNodeLost};

    use super::*;

    /// 2025-01-01T00:00:00Z
    const T0: i64 = 1_735_689_600_000;

    fn at(ms: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap())
    }

    fn running_job() -> Job {
        let mut spec = JobSpec {
            name: "train-resnet".into(),
            command: vec![
                "python3".into(),
                "train.py".into(),
                "--note".into(),
                "a b".into(),
            ],
            env: [("DATASET".to_owned(), "/data/x".to_owned())].into(),
            gpus: 2,
            walltime_seconds: 7200,
            grace_period_seconds: 0,
            max_retries: 3,
            ..JobSpec::default()
        };
        spec.set_class(JobClass::Training);
        spec.set_on_node_lost(OnNodeLost::Fail);
        let mut job = Job {
            id: "j-0001".into(),
            tenant: "physics".into(),
            spec: Some(spec),
            node: "gpu-01".into(),
            gpu_uuids: vec!["GPU-aaa".into(), "GPU-bbb".into()],
            submitted_at_ms: T0,
            started_at_ms: T0 + 1_500,
            attempt: 1,
            gpu_seconds: 90.0,
            energy_joules: 18_000.0,
            ..Job::default()
        };
        job.set_state(JobState::Running);
        job
    }

    fn failed_job() -> Job {
        let mut job = Job {
            id: "j-0002".into(),
            tenant: "bio".into(),
            spec: Some(JobSpec {
                command: vec!["false".into()],
                gpus: 1,
                ..JobSpec::default()
            }),
            node: "gpu-02".into(),
            exit_code: 1,
            has_exit_code: true,
            reason: "exited with code 1".into(),
            submitted_at_ms: T0,
            started_at_ms: T0 + 1_000,
            finished_at_ms: T0 + 2_000,
            attempt: 1,
            ..Job::default()
        };
        job.set_state(JobState::Failed);
        job
    }

    fn pending_job() -> Job {
        let mut job = Job {
            id: "j-0003".into(),
            tenant: "bio".into(),
            spec: Some(JobSpec {
                command: vec!["x".into()],
                gpus: 8,
                ..JobSpec::default()
            }),
            reason: "waiting for 8 free GPUs\non one node".into(),
            submitted_at_ms: T0 + 60_000,
            ..Job::default()
        };
        job.set_state(JobState::Pending);
        job
    }

    #[test]
    fn job_gpus_count_every_task_and_fractions_as_their_share() {
        let spec = |nodes, gpus, gpu_fraction| edupool_proto::v1::JobSpec {
            nodes,
            gpus,
            gpu_fraction,
            ..Default::default()
        };
        assert_eq!(job_gpus(&spec(3, 4, 0)), "12");
        assert_eq!(job_gpus(&spec(0, 2, 0)), "2");
        assert_eq!(job_gpus(&spec(1, 1, 250)), "0.25");
    }

    #[test]
    fn job_table_golden() {
        let now = at(T0 + 3_725_000);
        let text = job_table(&[running_job(), failed_job(), pending_job()], now);
        let expected = "\
ID      NAME          TENANT   STATE    GPUS  NODE    AGE/EXIT  REASON
j-0001  train-resnet  physics  running  2     gpu-01  1h2m      -
j-0002  -             bio      failed   1     gpu-02  exit 1    exited with code 1
j-0003  -             bio      pending  8     -       1h1m      waiting for 8 free GPUs on one node
";
        assert_eq!(text, expected);
    }

    #[test]
    fn job_detail_golden() {
        let now = at(T0 + 90_000);
        let expected = "\
id:           j-0001
name:         train-resnet
tenant:       physics
state:        running
reason:       -
class:        training
gpus:         2
command:      python3 train.py --note 'a b'
env:          DATASET=/data/x
walltime:     2h
grace period: pool default
on node lost: fail
max retries:  3
node:         gpu-01
gpu uuids:    GPU-aaa, GPU-bbb
exit code:    -
attempt:      1
submitted:    2025-01-01T00:00:00.000Z (1m30s ago)
started:      2025-01-01T00:00:01.500Z (1m28s ago)
finished:     -
gpu time:     0.0250 GPU-hours (90.0 GPU-seconds)
energy:       0.005000 kWh (18000 J)
";
        assert_eq!(job_detail(&running_job(), now), expected);
    }

    #[test]
    fn job_event_lines() {
        assert_eq!(job_event_line(&running_job()), "running    node=gpu-01");
        assert_eq!(
            job_event_line(&failed_job()),
            "failed     node=gpu-02 exit=1 reason: exited with code 1"
        );
        assert_eq!(
            job_event_line(&pending_job()),
            "pending    node=- reason: waiting for 8 free GPUs on one node"
        );
    }

    #[test]
    fn job_view_json() {
        let view = JobView::from(&running_job());
        let json: serde_json::Value = serde_json::from_str(&to_json(&view).unwrap()).unwrap();
        assert_eq!(json["state"], "running");
        assert_eq!(json["class"], "training");
        assert_eq!(json["on_node_lost"], "fail");
        assert_eq!(json["walltime_seconds"], 7200);
        assert_eq!(json["grace_period_seconds"], serde_json::Value::Null);
        assert_eq!(json["submitted_at"], "2025-01-01T00:00:00.000Z");
        assert_eq!(json["started_at"], "2025-01-01T00:00:01.500Z");
        assert_eq!(json["finished_at"], serde_json::Value::Null);
        assert_eq!(json["exit_code"], serde_json::Value::Null);
        assert_eq!(json["env"]["DATASET"], "/data/x");
        assert_eq!(json["gpu_uuids"][1], "GPU-bbb");

        let failed = JobView::from(&failed_job());
        assert_eq!(failed.state, "failed");
        assert_eq!(failed.exit_code, Some(1));
        assert_eq!(failed.class, "batch");
        assert_eq!(failed.on_node_lost, "requeue");
        assert_eq!(failed.name, None);

        let line = to_json_line(&failed).unwrap();
        assert!(!line.contains('\n'));
    }

    fn node() -> Node {
        let gpu = |i: u32, model: &str, job: &str, healthy: bool| Gpu {
            uuid: format!("GPU-{i}"),
            index: i,
            model: model.into(),
            memory_bytes: 80 << 30,
            healthy,
            assigned_job: job.into(),
            peers: vec![],
            health_reason: if healthy {
                String::new()
            } else {
                "XID 79: GPU has fallen off the bus".into()
            },
            reset_seen: false,
            ..Gpu::default()
        };
        let mut node = Node {
            name: "gpu-01".into(),
            cordoned: true,
            draining: false,
            gpus: vec![
                gpu(0, "A100-80GB", "j-0001", true),
                gpu(1, "A100-80GB", "", true),
                gpu(2, "A100-80GB", "", false),
                gpu(3, "H100", "", true),
            ],
            running_jobs: 1,
            last_seen_ms: T0,
            agent_version: "0.1.0".into(),
            cpu_millicores: 63_000,
            free_cpu_millicores: 55_500,
            memory_bytes: 510 << 30,
            free_memory_bytes: 478 << 30,
            ..Node::default()
        };
        node.set_status(NodeStatus::Ready);
        node
    }

    #[test]
    fn node_table_golden() {
        let mut lost = Node {
            name: "gpu-02".into(),
            ..Node::default()
        };
        lost.set_status(NodeStatus::Lost);
        let text = node_table(&[node(), lost], at(T0 + 4_000));
        let expected = "\
NAME    STATUS  GPUS             FREE  MODELS              CPU FREE/ALL  MEMORY FREE/ALL  RUNNING  CORDONED/DRAINING  LAST-SEEN
gpu-01  ready   4 (1 unhealthy)  2     3xA100-80GB,1xH100  55.5/63       478GiB/510GiB    1        cordoned           4s ago
gpu-02  lost    0                0     -                   0/0           0B/0B            0        -                  -

NODE    GPU    INDEX  RECOVERY       WHY UNHEALTHY
gpu-01  GPU-2  2      needs a reset  XID 79: GPU has fallen off the bus
";
        assert_eq!(text, expected);

        let view = NodeView::from(&node());
        assert_eq!(view.free_gpus, 2);
        assert_eq!(view.status, "ready");
        assert_eq!(view.gpus[0].assigned_job.as_deref(), Some("j-0001"));
        assert_eq!(view.gpus[1].assigned_job, None);
        assert_eq!(
            view.last_seen_at.as_deref(),
            Some("2025-01-01T00:00:00.000Z")
        );
    }

    #[test]
    fn tenant_table_and_view() {
        let tenant = Tenant {
            name: "physics".into(),
            created_at_ms: T0,
            running_jobs: 2,
            pending_jobs: 5,
            gpus_in_use: 6,
            ..Tenant::default()
        };
        assert_eq!(
            tenant_table(std::slice::from_ref(&tenant), at(T0 + 2 * 86_400_000 + 3_600_000)),
            "NAME     RUNNING  PENDING  GPUS-IN-USE  AGE   STATE\nphysics  2        5        6            2d1h  active\n"
        );
        let view = NewTenantView {
            tenant: TenantView::from(&tenant),
            token: "tok".into(),
        };
        let json: serde_json::Value = serde_json::from_str(&to_json(&view).unwrap()).unwrap();
        assert_eq!(json["tenant"]["created_at"], "2025-01-01T00:00:00.000Z");
        assert_eq!(json["token"], "tok");
    }

    #[test]
    fn durations_and_times() {
        assert_eq!(short_duration(Duration::from_secs(0)), "0s");
        assert_eq!(short_duration(Duration::from_secs(59)), "59s");
        assert_eq!(short_duration(Duration::from_secs(60)), "1m");
        assert_eq!(short_duration(Duration::from_secs(330)), "5m30s");
        assert_eq!(short_duration(Duration::from_secs(3 * 3600 + 59)), "3h");
        assert_eq!(short_duration(Duration::from_secs(3 * 3600 + 720)), "3h12m");
        assert_eq!(
            short_duration(Duration::from_secs(86_400 * 2 + 3600 * 4)),
            "2d4h"
        );
        assert_eq!(timestamp(0), None);
        assert_eq!(timestamp(-5), None);
        assert_eq!(
            timestamp(T0 + 7).as_deref(),
            Some("2025-01-01T00:00:00.007Z")
        );
        assert_eq!(age(0, at(T0)), "-");
        // A clock behind the server's reads as 0s, not a panic.
        assert_eq!(age(T0 + 5_000, at(T0)), "0s");
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("train.py"), "train.py");
        assert_eq!(shell_quote("--lr=0.1"), "--lr=0.1");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn output_format_parses() {
        assert_eq!("JSON".parse::<OutputFormat>(), Ok(OutputFormat::Json));
        assert_eq!("table".parse::<OutputFormat>(), Ok(OutputFormat::Table));
        assert!("yaml".parse::<OutputFormat>().is_err());
    }
}
