//! `edupool-scheduler`: parse the command line, build a validated config,
//! and call the library's `run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edupool_scheduler::api::convert::JobLimits;
use edupool_scheduler::api::resources::HostDefaults;
use edupool_scheduler::api::RateLimit;
use edupool_scheduler::process::{init_tracing, spawn_signal_handler};
use edupool_scheduler::raft::Peers;
use edupool_scheduler::server::{self, ReplicationConfig, ServerConfig};
use edupool_scheduler::tls::TlsConfig;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The edupool GPU scheduler for education compute alliances.
#[derive(Parser)]
#[command(name = "edupool-scheduler", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scheduler replica.
    Serve(Box<ServeArgs>),
    /// Moved to `edupool-sim dev`; says so.
    #[command(hide = true)]
    Dev(MovedArgs),
    /// Moved to `edupool-sim simulate`; says so.
    #[command(hide = true)]
    Simulate(MovedArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address for the gRPC API (jobs, admin, agents). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Where the replicated log is kept.
    #[arg(long)]
    data_dir: PathBuf,
    /// The admin token (at least 16 characters).
    #[arg(long, env = "EDUPOOL_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// The token agents present (at least 16 characters).
    #[arg(long, env = "EDUPOOL_AGENT_TOKEN", hide_env_values = true)]
    agent_token: String,
    /// A node whose agent is gone this long is lost, and its jobs requeued.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    node_lost_timeout: Duration,
    /// How often agents send a heartbeat; three missed ones end a session.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// The walltime of jobs that give none.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    default_walltime: Duration,
    /// CPU per GPU for jobs that give none (cores, e.g. 4 or 0.5, or
    /// millicores, e.g. 500m); a fraction of a GPU gets its share.
    #[arg(long, value_name = "CPU", default_value = "4", value_parser = edupool_table::units::parse_cpu)]
    default_cpu_per_gpu: u64,
    /// Host memory per GPU for jobs that give none (e.g. 16GiB).
    #[arg(long, value_name = "BYTES", default_value = "16GiB", value_parser = edupool_table::units::parse_memory)]
    default_memory_per_gpu: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    replication: ReplicationArgs,
    #[command(flatten)]
    api_limits: ApiLimitArgs,
}

/// Limits at the API edge (docs/security.md, "Limits").
#[derive(clap::Args)]
#[command(next_help_heading = "Limits")]
struct ApiLimitArgs {
    /// Requests per second one token may make, sustained (per replica).
    #[arg(long, default_value_t = 200.0)]
    rate_limit: f64,
    /// Requests one token may make at once above the sustained rate.
    #[arg(long, default_value_t = 400)]
    rate_burst: u32,
    /// Pending jobs one tenant may have; further submits get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 10_000)]
    max_pending_per_tenant: u32,
}

/// Transport security: every listener speaks TLS; `serve` does not start
/// without it.
#[derive(clap::Args)]
#[command(next_help_heading = "TLS")]
struct TlsArgs {
    /// The alliance's CA certificate (PEM): agents' and peers' client
    /// certificates must chain to it.
    #[arg(long, env = "EDUPOOL_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// This replica's certificate (PEM), from `edupoolctl pki issue-peer`
    /// (or `issue-server` for a single replica).
    #[arg(long, env = "EDUPOOL_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, env = "EDUPOOL_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
}

impl TlsArgs {
    fn config(self) -> anyhow::Result<TlsConfig> {
        match (self.ca_cert, self.cert, self.key) {
            (Some(ca), Some(cert), Some(key)) => Ok(TlsConfig::from_files(&ca, &cert, &key)?),
            (ca, cert, key) => {
                let missing: Vec<&str> = [
                    ("--ca-cert", ca.is_none()),
                    ("--cert", cert.is_none()),
                    ("--key", key.is_none()),
                ]
                .into_iter()
                .filter_map(|(flag, missing)| missing.then_some(flag))
                .collect();
                anyhow::bail!(
                    "serve needs TLS: pass --ca-cert FILE --cert FILE --key FILE (missing: {}; make them with `edupoolctl pki`, see docs/security.md), or run `edupool-sim dev` to try edupool out",
                    missing.join(", ")
                )
            }
        }
    }
}

/// Replication: how this replica joins a 3- or 5-replica cluster.
#[derive(clap::Args)]
#[command(next_help_heading = "Replication")]
struct ReplicationArgs {
    /// This replica's id (1 and up), unique in the cluster.
    #[arg(long, default_value_t = 1)]
    id: u64,
    /// Every replica of the initial cluster, this one included, as
    /// id=host:port (the address each serves on; raft and clients share
    /// it). Left out: a single-replica pool, which serves no raft traffic
    /// and cannot grow (name at least this replica to grow it later).
    #[arg(long, value_delimiter = ',', value_parser = parse_peer, value_name = "ID=ADDR")]
    peers: Vec<(u64, String)>,
    /// Start empty and wait to be added by the leader with
    /// `edupoolctl cluster add-member` (for a replica added later).
    #[arg(long)]
    join: bool,
    /// Restore this backup (from `edupoolctl cluster snapshot`) into the
    /// empty data directory, as a single-replica cluster to grow afterwards.
    #[arg(long, value_name = "FILE")]
    restore_from: Option<PathBuf>,
    /// The raft clock: elections after 10 to 20 ticks without a leader,
    /// heartbeats every 2.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    raft_tick: Duration,
    /// Snapshot the state and compact the log after this many entries
    /// (see --snapshot-log-ratio).
    #[arg(long, default_value_t = 100_000)]
    snapshot_entries: u64,
    /// Before --snapshot-entries makes a snapshot due, wait until the log
    /// holds this many times the last snapshot's size in bytes, so a large
    /// state is not encoded more often than a log of its size is written
    /// (0: entries alone decide).
    #[arg(long, default_value_t = 1.0)]
    snapshot_log_ratio: f64,
}

fn parse_peer(text: &str) -> Result<(u64, String), String> {
    let (id, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not id=host:port"))?;
    let id = id
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("{id:?} is not a replica id (a number from 1)"))?;
    let addr = addr.trim().trim_start_matches("http://");
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok((id, addr.to_string()))
        }
        _ => Err(format!("{addr:?} is not host:port")),
    }
}

impl ReplicationArgs {
    fn config(self) -> anyhow::Result<ReplicationConfig> {
        let mut peers = Peers::new();
        for (id, addr) in self.peers {
            if peers.insert(id, addr).is_some() {
                anyhow::bail!("--peers names replica {id} twice");
            }
        }
        Ok(ReplicationConfig {
            id: self.id,
            peers,
            join: self.join,
            restore_from: self.restore_from,
            raft_tick: self.raft_tick,
            snapshot_entries: self.snapshot_entries,
            snapshot_log_ratio: self.snapshot_log_ratio,
        })
    }
}

/// The arguments of a subcommand that moved to another binary.
#[derive(clap::Args)]
struct MovedArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    _rest: Vec<String>,
}

fn main() -> ExitCode {
    let serve = match Cli::parse().command {
        Cmd::Serve(a) => a,
        Cmd::Dev(_) => return moved("dev"),
        Cmd::Simulate(_) => return moved("simulate"),
    };
    init_tracing("info");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(*serve)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Says where a subcommand that left this binary went.
fn moved(name: &str) -> ExitCode {
    eprintln!(
        "error: `edupool-scheduler {name}` is now `edupool-sim {name}` (same options; `cargo run -p edupool-sim -- {name} ...` from a checkout)"
    );
    ExitCode::from(2)
}

async fn run(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let tls = a.tls.config()?;
    let replication = a.replication.config()?;
    let config = ServerConfig {
        listen: a.listen,
        data_dir: a.data_dir,
        admin_token: a.admin_token,
        agent_token: a.agent_token,
        node_lost_timeout: a.node_lost_timeout,
        heartbeat_interval: a.heartbeat_interval,
        limits: JobLimits {
            default_walltime_secs: a.default_walltime.as_secs(),
            host: HostDefaults {
                cpu_per_gpu: a.default_cpu_per_gpu,
                memory_per_gpu: a.default_memory_per_gpu,
            },
            max_pending_per_tenant: a.api_limits.max_pending_per_tenant,
            rate: RateLimit {
                per_second: a.api_limits.rate_limit,
                burst: a.api_limits.rate_burst,
            },
            ..JobLimits::default()
        },
        metrics_listen: a.metrics_listen,
        tls: Some(tls),
    };
    let bound = server::bind(config).await?.with_replication(replication)?;
    // Tests and scripts read the bound address from this line.
    println!("edupool-scheduler listening on {}", bound.local_addr());
    if let Some(addr) = bound.metrics_addr() {
        println!("edupool-scheduler metrics listening on {addr}");
    }
    server::serve(bound, shutdown)
        .await
        .context("scheduler stopped")?;
    Ok(ExitCode::SUCCESS)
}
