//! `edupool-agent`: the command line of the node agent. It parses
//! arguments, builds an [`AgentConfig`], and hands over to
//! [`edupool_agent::run`]; everything else lives in the library.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use edupool_agent::inventory::{GpuInfo, GpuInventory, GpuSpec, SimulatedInventory};
use edupool_agent::AgentConfig;
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::info;
use tracing_subscriber::EnvFilter;

/// The edupool node agent: reports this node's GPUs to the scheduler and
/// runs the jobs the scheduler places here.
#[derive(Debug, Parser)]
#[command(name = "edupool-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect to the scheduler and run jobs until SIGINT or SIGTERM; then
    /// stop the running jobs, each with its grace period, and exit.
    Run(RunArgs),
    /// Print the GPUs this agent would report to the scheduler.
    Inventory(InventoryArgs),
}

#[derive(Debug, Args)]
struct GpuArgs {
    /// Simulate GPUs instead of asking the driver, e.g. `4xA100-80GB` or
    /// `2xH100-80GB,1xT4-16GB` (count x model - memory in GB). Required
    /// until this build can read real GPUs through NVML.
    #[arg(long, env = "EDUPOOL_SIMULATE_GPUS", value_name = "SPEC")]
    simulate_gpus: Option<GpuSpec>,

    /// This node's name in the pool [default: the hostname].
    #[arg(long, env = "EDUPOOL_NODE_NAME", value_name = "NAME")]
    node_name: Option<String>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The scheduler, as `http://host:port` or `host:port`. Repeat the flag
    /// or separate with commas to give several; they are tried in turn.
    #[arg(
        long = "scheduler",
        env = "EDUPOOL_SCHEDULER",
        value_name = "URL",
        value_delimiter = ',',
        required = true
    )]
    schedulers: Vec<String>,

    /// The agent's token, sent to the scheduler as a bearer token.
    #[arg(
        long,
        env = "EDUPOOL_AGENT_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: String,

    /// Where job directories and their logs are kept.
    #[arg(
        long,
        env = "EDUPOOL_AGENT_WORK_DIR",
        value_name = "DIR",
        default_value = "/var/lib/edupool-agent"
    )]
    work_dir: PathBuf,

    /// SIGTERM to SIGKILL for jobs whose start order gives no grace period.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    default_grace_period: Duration,

    #[command(flatten)]
    gpus: GpuArgs,
}

#[derive(Debug, Args)]
struct InventoryArgs {
    #[command(flatten)]
    gpus: GpuArgs,

    /// `table` for people, `json` for scripts.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("edupool-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(io::stderr)
        .init();
    match cli.command {
        Command::Run(args) => run_agent(args),
        Command::Inventory(args) => print_inventory(args),
    }
}

fn run_agent(args: RunArgs) -> anyhow::Result<()> {
    let (node_name, inventory) = inventory(&args.gpus)?;
    let mut config = AgentConfig::new(
        node_name,
        args.schedulers,
        args.token,
        args.work_dir,
        inventory,
    );
    config.default_grace_period = args.default_grace_period;
    config.validate().context("invalid configuration")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let shutdown = CancellationToken::new();
        let agent = edupool_agent::run(config, shutdown.clone());
        tokio::pin!(agent);
        loop {
            let signal = tokio::select! {
                result = &mut agent => return result.context("the agent failed"),
                _ = sigint.recv() => "SIGINT",
                _ = sigterm.recv() => "SIGTERM",
            };
            if shutdown.is_cancelled() {
                info!(
                    signal,
                    "already shutting down; waiting for the jobs to stop"
                );
            } else {
                info!(signal, "shutting down");
                shutdown.cancel();
            }
        }
    })
}

/// The node's name and its inventory backend.
fn inventory(args: &GpuArgs) -> anyhow::Result<(String, Arc<dyn GpuInventory>)> {
    let node_name = match &args.node_name {
        Some(name) => name.clone(),
        None => hostname()?,
    };
    let Some(spec) = &args.simulate_gpus else {
        return Err(anyhow!(
            "NVML is not available in this build; use --simulate-gpus SPEC \
             (e.g. --simulate-gpus 4xA100-80GB) to run with simulated GPUs"
        ));
    };
    let inventory = SimulatedInventory::new(&node_name, spec);
    Ok((node_name, Arc::new(inventory)))
}

fn hostname() -> anyhow::Result<String> {
    nix::unistd::gethostname()
        .context("cannot read the hostname; give --node-name")?
        .into_string()
        .map_err(|name| anyhow!("the hostname {name:?} is not UTF-8; give --node-name"))
}

#[derive(Serialize)]
struct InventoryReport<'a> {
    node_name: &'a str,
    backend: &'a str,
    gpus: &'a [GpuInfo],
}

fn print_inventory(args: InventoryArgs) -> anyhow::Result<()> {
    let (node_name, inventory) = inventory(&args.gpus)?;
    let gpus = inventory.gpus().context("cannot read the GPU inventory")?;
    let mut out = io::stdout().lock();
    match args.output {
        Output::Json => {
            let report = InventoryReport {
                node_name: &node_name,
                backend: inventory.backend(),
                gpus: &gpus,
            };
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        }
        Output::Table => {
            writeln!(
                out,
                "node {node_name}: {} GPUs ({})",
                gpus.len(),
                inventory.backend()
            )?;
            let rows: Vec<[String; 5]> = gpus
                .iter()
                .map(|g| {
                    [
                        g.index.to_string(),
                        g.uuid.clone(),
                        g.model.clone(),
                        memory(g.memory_bytes),
                        if g.healthy { "yes" } else { "no" }.to_owned(),
                    ]
                })
                .collect();
            write_table(
                &mut out,
                ["INDEX", "UUID", "MODEL", "MEMORY", "HEALTHY"],
                &rows,
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

fn memory(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

fn write_table<const N: usize>(
    out: &mut impl Write,
    header: [&str; N],
    rows: &[[String; N]],
) -> io::Result<()> {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut line = |cells: [&str; N]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        writeln!(out, "{}", text.join("  ").trim_end())
    };
    line(header)?;
    for row in rows {
        line(row.each_ref().map(String::as_str))?;
    }
    Ok(())
}
