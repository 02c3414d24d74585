//! `edupool-sim`: a whole pool in one process (`dev`) and trace replay
//! through the planner (`simulate`). Kept out of `edupool-scheduler`, so
//! the server binary links no agent, GPU-inventory or command-line code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use edupool_agent::host::HostResources;
use edupool_scheduler::process::{init_tracing, spawn_signal_handler};
use edupool_sim::dev::{self, DevConfig, DevOutcome};
use edupool_sim::simulate;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// edupool without a cluster: a dev pool in one process, and trace replay.
#[derive(Parser)]
#[command(name = "edupool-sim", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a whole pool in one process: a scheduler and simulated agents,
    /// with generated tokens and plaintext gRPC. For trying edupool out.
    Dev(DevArgs),
    /// Replay real cluster traces through the placement code and report
    /// against baselines computed in the same run (see examples/scenarios/).
    Simulate(SimulateArgs),
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// The scenario file (TOML).
    #[arg(long)]
    scenario: PathBuf,
    /// The folder the scenario's trace paths are relative to.
    #[arg(long, default_value = "../shared/traces")]
    traces: PathBuf,
    /// Where report.json, report.txt and the SVG plots are written.
    #[arg(long, default_value = "target/simulate")]
    out: PathBuf,
}

#[derive(clap::Args)]
struct DevArgs {
    /// Address for the gRPC API. Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Number of in-process agents (nodes).
    #[arg(long, default_value_t = 3)]
    agents: u32,
    /// Simulated GPUs per agent.
    #[arg(long, default_value_t = 4)]
    gpus_per_agent: u32,
    /// Model of the simulated GPUs, with its memory.
    #[arg(long, default_value = "A100-80GB")]
    gpu_model: String,
    /// CPU each agent offers jobs (e.g. 32 or 500m) [default: 8 cores per GPU].
    #[arg(long, value_parser = edupool_table::units::parse_cpu, requires = "memory_per_agent")]
    cpu_per_agent: Option<u64>,
    /// Memory each agent offers jobs (e.g. 256GiB) [default: 64GiB per GPU].
    #[arg(long, value_parser = edupool_table::units::parse_memory, requires = "cpu_per_agent")]
    memory_per_agent: Option<u64>,
    /// The admin token; generated and printed when not given.
    #[arg(long, env = "EDUPOOL_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Keep the pool's state here; a temporary directory (removed at exit) otherwise.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Run this workload (see examples/), print the outcome and exit.
    #[arg(long)]
    workload: Option<PathBuf>,
    /// Give up on a workload that has not finished after this long.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    workload_timeout: Duration,
    /// A node whose agent is gone this long is lost.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    node_lost_timeout: Duration,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = match &cli.command {
        Cmd::Dev(a) => a.workload.is_some(),
        Cmd::Simulate(_) => true,
    };
    init_tracing(if quiet { "warn" } else { "info" });
    let result = match cli.command {
        Cmd::Simulate(a) => simulate(a),
        Cmd::Dev(a) => run_dev(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_dev(a: DevArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        spawn_signal_handler(shutdown.clone());
        let config = DevConfig {
            listen: a.listen,
            agents: a.agents,
            gpus_per_agent: a.gpus_per_agent,
            gpu_model: a.gpu_model,
            host_per_agent: a
                .cpu_per_agent
                .zip(a.memory_per_agent)
                .map(|(cpu, memory)| HostResources {
                    cpu_millicores: cpu,
                    memory_bytes: memory,
                }),
            admin_token: a.admin_token,
            data_dir: a.data_dir,
            workload: a.workload,
            workload_timeout: a.workload_timeout,
            node_lost_timeout: a.node_lost_timeout,
            metrics_listen: a.metrics_listen,
        };
        match dev::run(config, shutdown).await? {
            DevOutcome::WorkloadDone { unexpected: 0, .. } | DevOutcome::Stopped => {
                Ok(ExitCode::SUCCESS)
            }
            DevOutcome::WorkloadDone { .. } => Ok(ExitCode::FAILURE),
        }
    })
}

fn simulate(a: SimulateArgs) -> anyhow::Result<ExitCode> {
    use std::io::{IsTerminal, Write};
    let scenario = simulate::Scenario::load(&a.scenario)?;
    let traces = scenario.traces.clone().unwrap_or(a.traces);
    let tty = std::io::stderr().is_terminal();
    let progress = move |done: usize, total: usize| {
        // A bar on a terminal; a line per tenth in logs.
        let width = 30 * done / total.max(1);
        if tty {
            eprint!(
                "\r[{}{}] {done}/{total} done",
                "#".repeat(width),
                " ".repeat(30 - width)
            );
            if done == total {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        } else if done * 10 / total.max(1) != (done - 1) * 10 / total.max(1) {
            eprintln!("{done}/{total} done");
        }
    };
    let report = simulate::run(&scenario, &traces, &progress)?;
    print!("{}", report.table());
    for f in report.write(&a.out)? {
        println!("wrote {}", f.display());
    }
    Ok(ExitCode::SUCCESS)
}
