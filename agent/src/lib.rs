//! The edupool node agent: it tells the scheduler what GPUs this node has,
//! runs the jobs the scheduler places here, and reports how they end.
//!
//! - [`inventory`]: the [`GpuInventory`](inventory::GpuInventory) trait and
//!   its backends: NVML for real GPUs, and simulated GPUs from specs like
//!   `4xA100-80GB` with telemetry curves and injectable faults.
//! - [`host`]: the node's CPU and memory, less the system reserve.
//! - [`health`]: the agent's judgement of each GPU's health, from driver
//!   events and telemetry; changes go to the scheduler.
//! - `telemetry` (private): the sampler and the health event watcher, both
//!   off the async runtime.
//! - [`metrics`]: Prometheus metrics and the `/metrics` endpoint.
//! - [`runner`]: jobs as containers through crun ([`runner::container`]:
//!   the bundle, the job's cgroup, its GPUs' device nodes) or, where
//!   allowed, as host processes in their own process group; walltime, stop
//!   with a grace period, logs, and a record per job until the scheduler
//!   forgets it.
//! - [`images`]: the node's image store (unpacked root filesystems) and
//!   `image import`.
//! - `session` (private): the `AgentService.Session` stream to the
//!   scheduler, reopened with backoff over a list of endpoints.
//! - [`config`]: [`AgentConfig`] and its validation.
//! - `convert` (private): every conversion to and from `edupool_proto::v1`.
//! - [`run`]: the whole agent, until a shutdown token is cancelled.
//!
//! The library installs no global state (no tracing subscriber, no signal
//! handlers), so several agents can run in one process, as the scheduler's
//! development mode does.

pub mod config;
mod convert;
pub mod health;
pub mod host;
pub mod images;
pub mod inventory;
pub mod metrics;
pub mod runner;
mod session;
mod telemetry;

use std::error::Error;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use config::{AgentConfig, AgentTls, ConfigError, RuntimeChoice};

use health::HealthBoard;
use images::ImageStore;
use metrics::{AgentMetrics, MetricsSources};
use runner::container::{devices, Cgroups, ContainerDriver};
use runner::{Runner, RunnerConfig};
use session::{Backoff, Session, SessionStatus};

/// The reason recorded for jobs stopped because the agent shuts down.
pub const SHUTDOWN_REASON: &str = "agent shutting down";

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is invalid.
    #[error("invalid agent configuration")]
    Config(#[from] ConfigError),
    /// The work directory cannot be created or resolved.
    #[error("cannot use the work directory {}", path.display())]
    WorkDir {
        /// The directory as configured.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The metrics listener cannot be used.
    #[error("cannot serve metrics")]
    Metrics(#[source] io::Error),
    /// The durable job records cannot be read, or what they name cannot
    /// be stopped.
    #[error("cannot recover the jobs of the previous agent from {}", path.display())]
    Recover {
        /// The work directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// No user to run jobs as.
    #[error(transparent)]
    JobUser(#[from] runner::JobUserError),
    /// `--runtime crun` and the runtime cannot be used.
    #[error("cannot run container jobs with crun: {0}")]
    Runtime(String),
}

/// Runs the agent until `shutdown` is cancelled: first stops whatever a
/// previous agent on the same work directory left running (see
/// [`Runner::recover`](runner::Runner::recover)), then keeps a session with the
/// scheduler open (reconnecting as needed), runs the jobs it is given, and
/// on shutdown stops every running job with its grace period and returns
/// once they have all exited and their exits have been offered to the
/// scheduler.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    config.validate()?;
    // Who host jobs run as; a node without host jobs needs no such user.
    let (job_user, notice) = if config.allow_host_jobs {
        runner::resolve_job_user(config.run_as.as_deref(), config.allow_root)?
    } else {
        (runner::JobUser::Agent, None)
    };
    if let Some(notice) = notice {
        tracing::warn!("{notice}");
    }
    let work_dir = prepare_work_dir(&config.work_dir).await?;
    let containers = container_driver(&config).await?;
    let tracker = TaskTracker::new();
    let (runner, events) = Runner::new(RunnerConfig {
        work_dir: work_dir.clone(),
        default_grace_period: config.default_grace_period,
        energy: Some(Arc::clone(&config.inventory)),
        job_user,
        containers: containers.clone(),
        allow_host_jobs: config.allow_host_jobs,
    });
    // Before the first hello: a GPU is reported free only once nothing of
    // an earlier agent's job holds it.
    let recovered = runner
        .recover()
        .await
        .map_err(|source| AgentError::Recover {
            path: work_dir.clone(),
            source,
        })?;
    if recovered > 0 {
        info!(
            jobs = recovered,
            "holding jobs of the previous agent until the scheduler forgets them"
        );
    }
    let (board, changes) = HealthBoard::new();
    let (feed, telemetry_feed) = tokio::sync::watch::channel(Vec::new());
    let status = Arc::new(SessionStatus::default());
    let metrics = Arc::new(AgentMetrics::new(&config.node_name));
    let session = Session {
        node_name: config.node_name.clone(),
        endpoints: config.tonic_endpoints()?,
        connector: config.connector(),
        authorization: config.authorization()?,
        inventory: config.inventory.clone(),
        runner: runner.clone(),
        tracker: tracker.clone(),
        backoff: Backoff::new(config.reconnect_min, config.reconnect_max),
        health: board.clone(),
        status: Arc::clone(&status),
        images: containers.as_ref().map(|c| c.images.clone()),
        allows_host_jobs: config.allow_host_jobs,
        host: config.host,
    };
    // Telemetry and metrics run until the jobs are stopped, so the last
    // exits are metered and the endpoint shows the shutdown.
    let telemetry_stop = CancellationToken::new();
    // Should this future be dropped rather than shut down, the watchers
    // still stop (a blocking one would otherwise hold up the runtime).
    let _stop_watchers = telemetry_stop.clone().drop_guard();
    if let Some(listener) = &config.metrics_listener {
        let sources = MetricsSources {
            metrics: Arc::clone(&metrics),
            runner: runner.clone(),
            status,
        };
        serve_metrics(listener, sources, &tracker, &telemetry_stop)?;
    }
    watch_gpus(&config, board, metrics, feed, &tracker, &telemetry_stop);
    info!(node = %config.node_name, work_dir = %work_dir.display(),
        endpoints = ?config.endpoints, gpus = config.inventory.backend(), "agent starting");

    // The session outlives the jobs, so that their last exits are reported.
    let session_stop = CancellationToken::new();
    tracker.spawn(session.run(events, changes, telemetry_feed, session_stop.clone()));

    shutdown.cancelled().await;
    info!(node = %config.node_name, "agent shutting down");
    runner.shutdown(SHUTDOWN_REASON).await;
    session_stop.cancel();
    telemetry_stop.cancel();
    tracker.close();
    tracker.wait().await;
    info!(node = %config.node_name, "agent stopped");
    Ok(())
}

/// The container driver the configuration asks for, or `None`; says once
/// which driver jobs get. With `RuntimeChoice::Auto`, a runtime that cannot
/// be used (not installed, the agent not root, no usable cgroups) means
/// none, with a warning saying why.
async fn container_driver(
    config: &AgentConfig,
) -> Result<Option<Arc<ContainerDriver>>, AgentError> {
    let host = if config.allow_host_jobs {
        "jobs without an image run as host processes (--allow-host-jobs)"
    } else {
        "jobs without an image are refused"
    };
    let auto = match config.runtime {
        RuntimeChoice::None => {
            info!("job driver: no container runtime (--runtime none): jobs with an image are refused; {host}");
            return Ok(None);
        }
        RuntimeChoice::Auto => true,
        RuntimeChoice::Crun => false,
    };
    match detect_driver(config).await {
        Ok(driver) => {
            info!(runtime = %driver.runtime.display(), images = %driver.images.dir().display(),
                "job driver: {} with {}; {host}", driver.version, driver.cgroups);
            Ok(Some(Arc::new(driver)))
        }
        Err(why) if auto => {
            tracing::warn!(
                "job driver: no container runtime ({why}): jobs with an image are refused; {host}"
            );
            Ok(None)
        }
        Err(why) => Err(AgentError::Runtime(why)),
    }
}

async fn detect_driver(config: &AgentConfig) -> Result<ContainerDriver, String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("the agent is not root".to_owned());
    }
    let runtime = runner::container::find_runtime(config.runtime_path.as_deref())
        .map_err(|e| e.to_string())?;
    let output = tokio::process::Command::new(&runtime)
        .arg("--version")
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", runtime.display()))?;
    let version = String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .unwrap_or("crun")
        .trim()
        .to_owned();
    let cgroups = Cgroups::detect(&config.cgroup_root).map_err(|e| e.to_string())?;
    let inventory = Arc::clone(&config.inventory);
    let gpus = tokio::task::spawn_blocking(move || inventory.gpus())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot read the GPUs: {e}"))?;
    Ok(ContainerDriver {
        runtime,
        version,
        images: ImageStore::new(&config.image_store),
        cgroups,
        cgroup_parent: config.cgroup_parent.clone(),
        tenant_uid_base: config.tenant_uid_base,
        device_root: config.device_root.clone(),
        driver_files: config.driver_files.clone(),
        egress_levels: config.egress_levels.clone(),
        pids_limit: config.pids_limit,
        gpu_units: devices::gpu_units(&gpus),
    })
}

/// Serves `/metrics` on `listener` until `stop` is cancelled.
fn serve_metrics(
    listener: &std::net::TcpListener,
    sources: MetricsSources,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> Result<(), AgentError> {
    let listener = listener
        .try_clone()
        .and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        })
        .map_err(AgentError::Metrics)?;
    let stop = stop.clone();
    tracker.spawn(async move {
        if let Err(err) = metrics::serve(listener, sources, stop).await {
            tracing::warn!(error = %err, "the metrics endpoint failed");
        }
    });
    Ok(())
}

/// Starts the telemetry sampler and the health event watcher, until `stop`
/// is cancelled.
fn watch_gpus(
    config: &AgentConfig,
    board: HealthBoard,
    metrics: Arc<AgentMetrics>,
    feed: tokio::sync::watch::Sender<Vec<inventory::GpuSample>>,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) {
    tracker.spawn(telemetry::run_sampler(
        Arc::clone(&config.inventory),
        board.clone(),
        metrics,
        feed,
        config.telemetry_interval,
        stop.clone(),
    ));
    let (inventory, stop) = (Arc::clone(&config.inventory), stop.clone());
    tracker.spawn_blocking(move || telemetry::watch_events(inventory, board, stop));
}

/// Creates `<work_dir>/jobs` and returns the work directory as an absolute
/// path, so that jobs' directories do not depend on the current directory.
async fn prepare_work_dir(work_dir: &std::path::Path) -> Result<PathBuf, AgentError> {
    let error = |source| AgentError::WorkDir {
        path: work_dir.to_owned(),
        source,
    };
    tokio::fs::create_dir_all(work_dir.join("jobs"))
        .await
        .map_err(error)?;
    tokio::fs::canonicalize(work_dir).await.map_err(error)
}

/// `err` and its sources, joined by `": "`.
pub(crate) fn error_chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
