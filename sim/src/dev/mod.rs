//! `edupool-sim dev`: a whole pool in one process, with no set-up.
//!
//! A single-replica scheduler plus N in-process agents with simulated GPUs,
//! talking real gRPC over loopback. With a workload file it creates the
//! workload's tenants, submits their jobs, follows them to the end and
//! prints where each ran and how it ended.

mod report;
pub mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use edupool_agent::host::HostResources;
use edupool_agent::inventory::SimulatedInventory;
use edupool_agent::AgentConfig;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use edupool_scheduler::api::convert::JobLimits;
use edupool_scheduler::api::new_token;
use edupool_scheduler::server::{self, ServerConfig, ServerError};
pub use workload::Workload;

#[derive(Clone, Debug)]
pub struct DevConfig {
    pub listen: SocketAddr,
    pub agents: u32,
    pub gpus_per_agent: u32,
    pub gpu_model: String,
    /// CPU (thousandths of a core) and memory (bytes) each agent reports
    /// for jobs; `None`: sized to its GPUs (`HostResources::simulated`).
    pub host_per_agent: Option<HostResources>,
    pub admin_token: Option<String>,
    /// `None`: a temporary directory, removed at exit.
    pub data_dir: Option<PathBuf>,
    pub workload: Option<PathBuf>,
    /// How long a workload may take before the run gives up.
    pub workload_timeout: Duration,
    pub node_lost_timeout: Duration,
    /// Where to serve Prometheus metrics; off when `None`.
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Error)]
pub enum DevError {
    #[error("invalid dev settings: {0}")]
    Config(String),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("cannot create the data directory: {0}")]
    DataDir(std::io::Error),
    #[error(transparent)]
    Workload(#[from] workload::WorkloadError),
    #[error("agent {node}: {message}")]
    Agent { node: String, message: String },
    #[error("the workload did not finish: {0}")]
    Run(String),
}

/// How a workload run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum DevOutcome {
    /// Ran until shut down (no workload).
    Stopped,
    /// Every job ended; `unexpected` of them not in the state the file expected.
    WorkloadDone { jobs: usize, unexpected: usize },
}

pub async fn run(config: DevConfig, shutdown: CancellationToken) -> Result<DevOutcome, DevError> {
    if config.agents == 0 || config.agents > 1000 {
        return Err(DevError::Config(
            "--agents must be between 1 and 1000".into(),
        ));
    }
    if config.gpus_per_agent == 0 || config.gpus_per_agent > 64 {
        return Err(DevError::Config(
            "--gpus-per-agent must be between 1 and 64".into(),
        ));
    }
    let workload = config.workload.as_deref().map(Workload::load).transpose()?;
    let temp = match &config.data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("edupool-dev-")
                .tempdir()
                .map_err(DevError::DataDir)?,
        ),
    };
    let data_dir = config
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.as_ref().expect("made above").path().to_path_buf());
    std::fs::create_dir_all(&data_dir).map_err(DevError::DataDir)?;

    let admin_token = config
        .admin_token
        .clone()
        .unwrap_or_else(|| new_token("epa"));
    let agent_token = new_token("epn");
    let bound = server::bind(ServerConfig {
        listen: config.listen,
        data_dir: data_dir.join("scheduler"),
        admin_token: admin_token.clone(),
        agent_token: agent_token.clone(),
        node_lost_timeout: config.node_lost_timeout,
        heartbeat_interval: Duration::from_secs(1),
        limits: JobLimits::default(),
        metrics_listen: config.metrics_listen,
        // Dev mode is plaintext on purpose, and says so loudly (banner).
        tls: None,
    })
    .await?;
    let endpoint = format!("http://{}", bound.local_addr());
    banner(&config, &endpoint, &admin_token, &data_dir, temp.is_some());
    if let Some(addr) = bound.metrics_addr() {
        // Scripts read the metrics address from this line.
        println!("edupool-scheduler metrics listening on {addr}");
    }

    let tasks = TaskTracker::new();
    let stop = shutdown.child_token();
    // A server that ends on its own (its raft driver failed) stops the
    // whole pool, so `dev` exits with the error instead of lingering.
    let server = tasks.spawn({
        let stop = stop.clone();
        async move {
            let result = server::serve(bound, stop.clone()).await;
            stop.cancel();
            result
        }
    });
    let agents_stop = stop.child_token();
    let agent_tasks = TaskTracker::new();
    for i in 1..=config.agents {
        let node = format!("dev-node-{i}");
        let spec = format!("{}x{}", config.gpus_per_agent, config.gpu_model);
        let inventory = SimulatedInventory::parse(&node, &spec).map_err(|e| DevError::Agent {
            node: node.clone(),
            message: e.to_string(),
        })?;
        let mut agent = AgentConfig::new(
            node.clone(),
            vec![endpoint.clone()],
            agent_token.clone(),
            data_dir.join("agents").join(&node),
            Arc::new(inventory),
        );
        // Dev mode is plaintext by design (see the banner), and its
        // sample jobs run as whoever started it, root included.
        agent.allow_plaintext_remote = true;
        agent.allow_root = true;
        // Without root and without a runtime: sample jobs are host
        // processes (the banner says so).
        agent.runtime = edupool_agent::RuntimeChoice::None;
        agent.allow_host_jobs = true;
        agent.host = config
            .host_per_agent
            .unwrap_or_else(|| HostResources::simulated(config.gpus_per_agent as usize));
        let agent_stop = agents_stop.clone();
        agent_tasks.spawn(async move {
            if let Err(e) = edupool_agent::run(agent, agent_stop).await {
                tracing::error!(node, "agent stopped: {e}");
            }
        });
    }

    let outcome = match workload {
        None => {
            stop.cancelled().await;
            Ok(DevOutcome::Stopped)
        }
        Some(w) => {
            let r = tokio::select! {
                r = report::run_workload(&endpoint, &admin_token, config.agents as usize, &w, config.workload_timeout) => r,
                _ = stop.cancelled() => Err(DevError::Run("interrupted".into())),
            };
            r.map(|(jobs, unexpected)| DevOutcome::WorkloadDone { jobs, unexpected })
        }
    };
    // Agents first, so their jobs are stopped while the scheduler listens.
    agents_stop.cancel();
    agent_tasks.close();
    agent_tasks.wait().await;
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    if let Ok(Err(e)) = server.await {
        return Err(e.into());
    }
    drop(temp);
    outcome
}

fn banner(config: &DevConfig, endpoint: &str, token: &str, data_dir: &std::path::Path, temp: bool) {
    println!("edupool dev pool");
    println!("  endpoint     {endpoint}");
    println!("  admin token  {token}");
    println!(
        "  data dir     {}{}",
        data_dir.display(),
        if temp { " (removed at exit)" } else { "" }
    );
    println!(
        "  agents       {} x {}x{} (simulated GPUs)",
        config.agents, config.gpus_per_agent, config.gpu_model
    );
    println!("  job driver   host processes (dev mode starts no container runtime; jobs with an image are refused)");
    println!();
    println!("WARNING: dev mode serves plaintext gRPC with generated tokens. Never use it for real work.");
    eprintln!("WARNING: edupool-sim dev: PLAINTEXT gRPC, no TLS, no client certificates; tokens travel in the clear. For trying edupool out on one machine only; `serve` with --ca-cert, --cert and --key for real work.");
    println!();
    if config.workload.is_none() {
        println!("Try:");
        println!("  export EDUPOOL_ENDPOINT={endpoint} EDUPOOL_TOKEN={token}");
        println!("  edupoolctl node list");
        println!("  edupoolctl tenant create zju");
        println!();
    }
}
