//! The agent's Prometheus metrics and the `/metrics` HTTP endpoint.
//!
//! Names, labels and units (base units: bytes, watts, joules, hertz,
//! ratios 0..1):
//!
//! - `edupool_gpu_info{node,gpu_uuid,model,index}` = 1
//! - `edupool_gpu_healthy{node,gpu_uuid,model}` 1/0
//! - `edupool_gpu_utilization_ratio`, `edupool_gpu_memory_used_bytes`,
//!   `edupool_gpu_memory_total_bytes`, `edupool_gpu_temperature_celsius`,
//!   `edupool_gpu_power_watts`, `edupool_gpu_sm_clock_hertz` (gauges),
//!   `edupool_gpu_energy_joules_total`, `edupool_gpu_xid_errors_total`
//!   (counters), all `{node,gpu_uuid,model}`
//! - `edupool_gpu_ecc_errors_total{node,gpu_uuid,model,kind="volatile|aggregate"}`
//!   (uncorrectable errors)
//! - `edupool_gpu_remapped_rows{node,gpu_uuid,model,cause="correctable|uncorrectable"}`
//!   (rows of device memory remapped over the GPU's life; A100, H100 and
//!   later), `edupool_gpu_row_remap_pending{node,gpu_uuid,model}` and
//!   `edupool_gpu_row_remap_failed{node,gpu_uuid,model}` 1/0
//! - `edupool_agent_jobs_running{node}`, `edupool_agent_runner_errors_total{node}`,
//!   `edupool_agent_session_connected{node}` 1/0,
//!   `edupool_agent_sessions_established_total{node}` (more than one:
//!   the agent reconnected)
//!
//! GPU values are set by the telemetry sampler; the agent's own values are
//! read when the endpoint is scraped. Each agent has its own registry, so
//! several agents can run in one process.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{
    core::{AtomicF64, AtomicU64, GenericCounter},
    CounterVec, Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;

use crate::health::HealthBoard;
use crate::inventory::{GpuInfo, GpuSample};
use crate::runner::Runner;
use crate::session::SessionStatus;

const GPU_LABELS: &[&str] = &["node", "gpu_uuid", "model"];

/// Every metric of one agent.
pub struct AgentMetrics {
    registry: Registry,
    node: String,
    /// uuid -> (model, index), from the last inventory.
    gpus: Mutex<HashMap<String, (String, u32)>>,
    gpu_info: IntGaugeVec,
    healthy: IntGaugeVec,
    utilization: GaugeVec,
    memory_used: GaugeVec,
    memory_total: GaugeVec,
    temperature: GaugeVec,
    power: GaugeVec,
    energy: CounterVec,
    sm_clock: GaugeVec,
    xid: IntCounterVec,
    ecc: IntCounterVec,
    remapped_rows: IntGaugeVec,
    remap_pending: IntGaugeVec,
    remap_failed: IntGaugeVec,
    jobs_running: IntGaugeVec,
    runner_errors: IntCounterVec,
    session_connected: IntGaugeVec,
    sessions_established: IntCounterVec,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: M) -> M {
    registry
        .register(Box::new(m.clone()))
        .expect("metric names are unique and valid");
    m
}

impl AgentMetrics {
    /// The metrics of the agent of `node`, all empty.
    pub fn new(node: &str) -> Self {
        let r = Registry::new();
        let gauge = |name: &str, help: &str| {
            register(
                &r,
                GaugeVec::new(Opts::new(name, help), GPU_LABELS).expect("valid metric"),
            )
        };
        let flag = |name: &str, help: &str| {
            register(
                &r,
                IntGaugeVec::new(Opts::new(name, help), GPU_LABELS).expect("valid metric"),
            )
        };
        AgentMetrics {
            node: node.to_owned(),
            gpus: Mutex::default(),
            gpu_info: register(
                &r,
                IntGaugeVec::new(
                    Opts::new("edupool_gpu_info", "A GPU of this node (always 1)."),
                    &["node", "gpu_uuid", "model", "index"],
                )
                .expect("valid metric"),
            ),
            healthy: flag(
                "edupool_gpu_healthy",
                "1 if the GPU may run jobs, 0 after a fatal health event.",
            ),
            utilization: gauge(
                "edupool_gpu_utilization_ratio",
                "Share of the last sample period in which a kernel ran (0 to 1).",
            ),
            memory_used: gauge("edupool_gpu_memory_used_bytes", "Device memory in use."),
            memory_total: gauge("edupool_gpu_memory_total_bytes", "Device memory in all."),
            temperature: gauge("edupool_gpu_temperature_celsius", "GPU die temperature."),
            power: gauge("edupool_gpu_power_watts", "Power draw."),
            energy: register(
                &r,
                CounterVec::new(
                    Opts::new(
                        "edupool_gpu_energy_joules_total",
                        "Energy used since the driver's counter started.",
                    ),
                    GPU_LABELS,
                )
                .expect("valid metric"),
            ),
            sm_clock: gauge("edupool_gpu_sm_clock_hertz", "SM clock."),
            xid: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "edupool_gpu_xid_errors_total",
                        "XID errors seen since the agent started.",
                    ),
                    GPU_LABELS,
                )
                .expect("valid metric"),
            ),
            ecc: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "edupool_gpu_ecc_errors_total",
                        "Uncorrectable ECC errors: since the driver loaded (volatile) or \
                         over the device's life (aggregate).",
                    ),
                    &["node", "gpu_uuid", "model", "kind"],
                )
                .expect("valid metric"),
            ),
            remapped_rows: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "edupool_gpu_remapped_rows",
                        "Rows of device memory remapped to spare rows over the GPU's life, \
                         by the kind of error that caused it.",
                    ),
                    &["node", "gpu_uuid", "model", "cause"],
                )
                .expect("valid metric"),
            ),
            remap_pending: flag(
                "edupool_gpu_row_remap_pending",
                "1 while a row remapping waits for a GPU reset to take effect.",
            ),
            remap_failed: flag(
                "edupool_gpu_row_remap_failed",
                "1 once a row remapping has failed (no spare row left): the GPU needs service.",
            ),
            jobs_running: register(
                &r,
                IntGaugeVec::new(
                    Opts::new("edupool_agent_jobs_running", "Jobs running on this node."),
                    &["node"],
                )
                .expect("valid metric"),
            ),
            runner_errors: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "edupool_agent_runner_errors_total",
                        "Jobs that could not be started or whose exit could not be collected.",
                    ),
                    &["node"],
                )
                .expect("valid metric"),
            ),
            session_connected: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "edupool_agent_session_connected",
                        "1 while a session with the scheduler is established.",
                    ),
                    &["node"],
                )
                .expect("valid metric"),
            ),
            sessions_established: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "edupool_agent_sessions_established_total",
                        "Sessions established with the scheduler since the agent started.",
                    ),
                    &["node"],
                )
                .expect("valid metric"),
            ),
            registry: r,
        }
    }

    /// Records the node's GPUs (for labels and `edupool_gpu_info`).
    pub fn set_inventory(&self, gpus: &[GpuInfo]) {
        let mut known = self.gpus.lock().unwrap_or_else(PoisonError::into_inner);
        for g in gpus {
            self.gpu_info
                .with_label_values(&[&self.node, &g.uuid, &g.model, &g.index.to_string()])
                .set(1);
            known.insert(g.uuid.clone(), (g.model.clone(), g.index));
        }
    }

    fn model(&self, uuid: &str) -> String {
        self.gpus
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(uuid)
            .map_or_else(|| "unknown".to_owned(), |(model, _)| model.clone())
    }

    /// Takes in one round of samples and the board's health.
    pub fn observe(&self, samples: &[GpuSample], board: &HealthBoard) {
        for s in samples {
            let model = self.model(&s.uuid);
            let labels = [self.node.as_str(), s.uuid.as_str(), model.as_str()];
            let set = |gauge: &GaugeVec, value: Option<f64>| {
                if let Some(v) = value {
                    gauge.with_label_values(&labels).set(v);
                }
            };
            set(&self.utilization, s.utilization_ratio);
            set(&self.memory_used, s.memory_used_bytes.map(|v| v as f64));
            set(&self.memory_total, s.memory_total_bytes.map(|v| v as f64));
            set(&self.temperature, s.temperature_celsius);
            set(&self.power, s.power_watts);
            set(&self.sm_clock, s.sm_clock_hz.map(|v| v as f64));
            if let Some(joules) = s.energy_joules {
                mirror_f64(&self.energy.with_label_values(&labels), joules);
            }
            for (kind, count) in [
                ("volatile", s.ecc_volatile_uncorrected),
                ("aggregate", s.ecc_aggregate_uncorrected),
            ] {
                if let Some(count) = count {
                    let c = self
                        .ecc
                        .with_label_values(&[&self.node, &s.uuid, &model, kind]);
                    mirror_u64(&c, count);
                }
            }
            if let Some(rows) = s.remapped_rows {
                for (cause, count) in [
                    ("correctable", rows.correctable),
                    ("uncorrectable", rows.uncorrectable),
                ] {
                    self.remapped_rows
                        .with_label_values(&[&self.node, &s.uuid, &model, cause])
                        .set(i64::try_from(count).unwrap_or(i64::MAX));
                }
                self.remap_pending
                    .with_label_values(&labels)
                    .set(i64::from(rows.pending));
                self.remap_failed
                    .with_label_values(&labels)
                    .set(i64::from(rows.failed));
            }
            mirror_u64(
                &self.xid.with_label_values(&labels),
                board.xid_errors(&s.uuid),
            );
            let healthy = board.fault(&s.uuid).is_none();
            self.healthy
                .with_label_values(&labels)
                .set(i64::from(healthy));
        }
    }

    /// The metrics in Prometheus' text format, with the agent's own values
    /// read now.
    pub(crate) fn render(&self, runner: &Runner, sessions: &SessionStatus) -> String {
        let node = [self.node.as_str()];
        let running = runner.reports().iter().filter(|r| r.is_running()).count();
        self.jobs_running
            .with_label_values(&node)
            .set(i64::try_from(running).unwrap_or(i64::MAX));
        mirror_u64(
            &self.runner_errors.with_label_values(&node),
            runner.errors(),
        );
        self.session_connected
            .with_label_values(&node)
            .set(i64::from(sessions.connected.load(Ordering::Relaxed)));
        mirror_u64(
            &self.sessions_established.with_label_values(&node),
            sessions.established.load(Ordering::Relaxed),
        );
        let mut out = vec![];
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("metrics encode to text");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// Sets a counter to a total kept elsewhere; a total that went down (the
/// driver reloaded) restarts the counter, which Prometheus reads as a reset.
fn mirror_u64(counter: &GenericCounter<AtomicU64>, total: u64) {
    let current = counter.get();
    if total < current {
        counter.reset();
        counter.inc_by(total);
    } else {
        counter.inc_by(total - current);
    }
}

fn mirror_f64(counter: &GenericCounter<AtomicF64>, total: f64) {
    let current = counter.get();
    if total < current {
        counter.reset();
        counter.inc_by(total.max(0.0));
    } else {
        counter.inc_by(total - current);
    }
}

/// What the `/metrics` endpoint reads.
#[derive(Clone)]
pub(crate) struct MetricsSources {
    pub(crate) metrics: Arc<AgentMetrics>,
    pub(crate) runner: Runner,
    pub(crate) status: Arc<SessionStatus>,
}

/// Serves `GET /metrics` on `listener` until `stop` is cancelled.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    sources: MetricsSources,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use axum::http::header::CONTENT_TYPE;
    use axum::routing::get;

    let app = axum::Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State(s): axum::extract::State<MetricsSources>| async move {
                    let body = s.metrics.render(&s.runner, &s.status);
                    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], body)
                },
            ),
        )
        .with_state(sources);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::HealthBoard;
    use crate::inventory::{HealthEvent, HealthEventKind, RemappedRows};
    use crate::runner::RunnerConfig;

    #[tokio::test]
    async fn renders_the_agreed_names_labels_and_units() {
        let metrics = AgentMetrics::new("n1");
        metrics.set_inventory(&[GpuInfo::basic(
            "GPU-a".into(),
            0,
            "A100-80GB".into(),
            80 << 30,
        )]);
        let (board, _changes) = HealthBoard::new();
        board.on_event(&HealthEvent {
            uuid: "GPU-a".into(),
            kind: HealthEventKind::Xid(79),
        });
        let sample = GpuSample {
            uuid: "GPU-a".into(),
            utilization_ratio: Some(0.5),
            memory_used_bytes: Some(1024),
            memory_total_bytes: Some(80 << 30),
            temperature_celsius: Some(61.0),
            power_watts: Some(250.5),
            energy_joules: Some(1000.0),
            sm_clock_hz: Some(1_410_000_000),
            ecc_volatile_uncorrected: Some(1),
            ecc_aggregate_uncorrected: Some(3),
            remapped_rows: Some(RemappedRows {
                correctable: 2,
                uncorrectable: 1,
                pending: true,
                failed: false,
            }),
            ..Default::default()
        };
        metrics.observe(std::slice::from_ref(&sample), &board);
        metrics.observe(
            &[GpuSample {
                energy_joules: Some(1500.0),
                ..sample
            }],
            &board,
        );
        let dir = tempfile::tempdir().unwrap();
        let (runner, _events) = Runner::new(RunnerConfig::new(dir.path()));
        let sessions = SessionStatus::default();
        sessions.connected.store(true, Ordering::Relaxed);
        sessions.established.store(2, Ordering::Relaxed);
        let text = metrics.render(&runner, &sessions);
        let gpu = r#"{gpu_uuid="GPU-a",model="A100-80GB",node="n1"}"#;
        for line in [
            r#"edupool_gpu_info{gpu_uuid="GPU-a",index="0",model="A100-80GB",node="n1"} 1"#.to_owned(),
            format!("edupool_gpu_healthy{gpu} 0"),
            format!("edupool_gpu_utilization_ratio{gpu} 0.5"),
            format!("edupool_gpu_memory_used_bytes{gpu} 1024"),
            format!("edupool_gpu_memory_total_bytes{gpu} 85899345920"),
            format!("edupool_gpu_temperature_celsius{gpu} 61"),
            format!("edupool_gpu_power_watts{gpu} 250.5"),
            format!("edupool_gpu_energy_joules_total{gpu} 1500"),
            format!("edupool_gpu_sm_clock_hertz{gpu} 1410000000"),
            format!("edupool_gpu_xid_errors_total{gpu} 1"),
            r#"edupool_gpu_ecc_errors_total{gpu_uuid="GPU-a",kind="volatile",model="A100-80GB",node="n1"} 1"#.to_owned(),
            r#"edupool_gpu_ecc_errors_total{gpu_uuid="GPU-a",kind="aggregate",model="A100-80GB",node="n1"} 3"#.to_owned(),
            r#"edupool_gpu_remapped_rows{cause="correctable",gpu_uuid="GPU-a",model="A100-80GB",node="n1"} 2"#.to_owned(),
            r#"edupool_gpu_remapped_rows{cause="uncorrectable",gpu_uuid="GPU-a",model="A100-80GB",node="n1"} 1"#.to_owned(),
            format!("edupool_gpu_row_remap_pending{gpu} 1"),
            format!("edupool_gpu_row_remap_failed{gpu} 0"),
            r#"edupool_agent_jobs_running{node="n1"} 0"#.to_owned(),
            r#"edupool_agent_runner_errors_total{node="n1"} 0"#.to_owned(),
            r#"edupool_agent_session_connected{node="n1"} 1"#.to_owned(),
            r#"edupool_agent_sessions_established_total{node="n1"} 2"#.to_owned(),
            "# TYPE edupool_gpu_energy_joules_total counter".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
