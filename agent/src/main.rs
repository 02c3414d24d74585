//! `edupool-agent`: the command line of the node agent. It parses
//! arguments, builds an [`AgentConfig`], and hands over to
//! [`edupool_agent::run`]; everything else lives in the library.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use edupool_agent::health::HealthBoard;
use edupool_agent::host::HostArgs;
use edupool_agent::inventory::{
    GpuInfo, GpuInventory, GpuSample, GpuSpec, InventoryError, NvmlInventory, OnlyGpus,
    SimulatedInventory,
};
use edupool_agent::{AgentConfig, RuntimeChoice};
use edupool_table::Table;
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
    Run(Box<RunArgs>),
    /// Print the GPUs this agent would report to the scheduler.
    Inventory(InventoryArgs),
    /// The node's image store: the root filesystems jobs run in.
    #[command(subcommand)]
    Image(ImageCommand),
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Put an image into the store as STORE/NAME/rootfs: from an OCI image
    /// layout (checked against its digests, layers applied in order with
    /// their whiteouts), a root filesystem directory, or a root filesystem
    /// tarball (.tar or .tar.gz). Nothing is written outside the image's
    /// root, and the image appears whole or not at all.
    #[command(after_help = "Examples:\n  \
        skopeo copy docker-archive:pytorch.tar oci:/tmp/pytorch:latest\n  \
        edupool-agent image import --name pytorch-2.3 /tmp/pytorch\n  \
        edupool-agent image import --image-store /shared/images --name busybox rootfs.tar.gz")]
    Import {
        /// The image store (the agent's --image-store)
        #[arg(
            long,
            env = "EDUPOOL_IMAGE_STORE",
            value_name = "DIR",
            default_value = "/var/lib/edupool-agent/images"
        )]
        image_store: PathBuf,
        /// The image's name in the store: 1-128 letters, digits, '.', '_',
        /// '-' or ':', not starting with '.'; jobs ask for it with --image
        #[arg(long)]
        name: String,
        /// An OCI image layout directory, a root filesystem directory, or
        /// a root filesystem tarball
        source: PathBuf,
    },
}

#[derive(Debug, Args)]
struct GpuArgs {
    /// Where the GPUs come from: `nvml` (the NVIDIA driver), `simulated`
    /// (the GPUs of --simulate-gpus), or `auto` (NVML, or the simulated
    /// GPUs when the driver is missing). Default: `simulated` when
    /// --simulate-gpus is given, `nvml` otherwise.
    #[arg(
        long = "gpus",
        env = "EDUPOOL_GPUS",
        value_enum,
        value_name = "BACKEND"
    )]
    backend: Option<Backend>,

    /// Simulate GPUs instead of asking the driver, e.g. `4xA100-80GB` or
    /// `2xH100-80GB,1xT4-16GB` (count x model - memory in GB); with
    /// `--gpus auto`, the GPUs used when NVML is unavailable [default there:
    /// 1xA100-80GB].
    #[arg(long, env = "EDUPOOL_SIMULATE_GPUS", value_name = "SPEC")]
    simulate_gpus: Option<GpuSpec>,

    /// Development and tests only: inject faults into the simulated GPUs
    /// from lines appended to FILE, e.g. `0 xid 79`, `1 ecc 2`, `0 reset`
    /// (see docs/agent.md).
    #[arg(long, env = "EDUPOOL_SIMULATE_FAULTS", value_name = "FILE")]
    simulate_faults: Option<PathBuf>,

    /// Offer only these GPUs (UUIDs, comma-separated) to the pool, e.g. to
    /// keep some of a node's GPUs for other work [default: all].
    #[arg(
        long,
        env = "EDUPOOL_ONLY_GPUS",
        value_name = "UUIDS",
        value_delimiter = ','
    )]
    only_gpus: Vec<String>,

    /// The NVML library to load [default: libnvidia-ml.so.1 from the
    /// library path].
    #[arg(long, env = "EDUPOOL_NVML_LIB", value_name = "PATH")]
    nvml_lib: Option<PathBuf>,

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

    /// Where job directories and their logs are kept, and the durable
    /// records of running jobs (`records/`).
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

    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 0.0.0.0:9401
    /// (port 0: any free port; the address is printed) [default: off].
    #[arg(long, env = "EDUPOOL_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,

    /// How often GPU telemetry is sampled and health counters checked.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    telemetry_interval: Duration,

    /// The alliance's CA certificate (PEM): the scheduler must show a
    /// certificate it signed. With --cert and --key: mTLS (required unless
    /// the scheduler is on loopback).
    #[arg(long, env = "EDUPOOL_CA_CERT", value_name = "FILE", requires_all = ["cert", "key"])]
    ca_cert: Option<PathBuf>,

    /// This node's certificate (PEM), `node:<node name>`, from
    /// `edupoolctl pki issue-node`.
    #[arg(long, env = "EDUPOOL_CERT", value_name = "FILE", requires_all = ["ca_cert", "key"])]
    cert: Option<PathBuf>,

    /// The private key of --cert (PEM).
    #[arg(long, env = "EDUPOOL_KEY", value_name = "FILE", requires_all = ["ca_cert", "cert"])]
    key: Option<PathBuf>,

    /// With --allow-host-jobs and an agent that is root, run host jobs as
    /// this unprivileged user (required then, unless --allow-root). An
    /// agent that is not root runs them as itself.
    #[arg(long, env = "EDUPOOL_RUN_AS", value_name = "USER")]
    run_as: Option<String>,

    /// Allow jobs to run as root. Never needed on a shared node.
    #[arg(long, env = "EDUPOOL_ALLOW_ROOT")]
    allow_root: bool,

    #[command(flatten)]
    sandbox: SandboxArgs,

    #[command(flatten)]
    gpus: GpuArgs,

    #[command(flatten)]
    host: HostArgs,
}

// How jobs are sandboxed (docs/agent.md, "Running jobs").
#[derive(Debug, Args)]
struct SandboxArgs {
    /// The OCI runtime for jobs with an image: `crun` (required: the agent
    /// does not start without it), `auto` (crun when installed and the
    /// agent is root), or `none` (jobs with an image are refused).
    #[arg(long, env = "EDUPOOL_RUNTIME", value_enum, default_value_t = RuntimeArg::Auto)]
    runtime: RuntimeArg,

    /// The runtime binary [default: crun on PATH].
    #[arg(long, env = "EDUPOOL_RUNTIME_PATH", value_name = "PATH")]
    runtime_path: Option<PathBuf>,

    /// The node's image store: image NAME is the unpacked root file system
    /// DIR/NAME/rootfs/.
    #[arg(
        long,
        env = "EDUPOOL_IMAGE_STORE",
        value_name = "DIR",
        default_value = "/var/lib/edupool-agent/images"
    )]
    image_store: PathBuf,

    /// Run jobs without an image as host processes (like Nomad's raw_exec).
    /// Without it such jobs are refused, and the scheduler places none here.
    #[arg(long, env = "EDUPOOL_ALLOW_HOST_JOBS")]
    allow_host_jobs: bool,

    /// Container jobs run as uid = gid = BASE + their tenant's uid offset.
    #[arg(long, env = "EDUPOOL_TENANT_UID_BASE", value_name = "BASE",
        default_value_t = edupool_agent::runner::container::DEFAULT_TENANT_UID_BASE)]
    tenant_uid_base: u32,

    /// Where GPU device nodes (nvidiaN, nvidiactl, ...) are looked up.
    #[arg(
        long,
        env = "EDUPOOL_DEVICE_ROOT",
        value_name = "DIR",
        default_value = "/dev"
    )]
    device_root: PathBuf,

    /// A file listing the driver files (one absolute path a line, `#`
    /// comments) to mount read-only into container jobs with GPUs
    /// [default: the list in docs/agent.md].
    #[arg(long, env = "EDUPOOL_DRIVER_FILES", value_name = "FILE")]
    driver_files: Option<PathBuf>,

    /// Let container jobs of this data level (2 or more) use the network
    /// anyway, on a node approved for it; repeat for several levels.
    #[arg(
        long = "allow-egress-level",
        env = "EDUPOOL_ALLOW_EGRESS_LEVELS",
        value_name = "LEVEL",
        value_delimiter = ','
    )]
    egress_levels: Vec<u32>,

    /// The most processes a container job may have at once.
    #[arg(long, value_name = "N",
        default_value_t = edupool_agent::runner::container::DEFAULT_PIDS_LIMIT)]
    job_pids_limit: u64,

    /// The cgroup (relative path) that job cgroups are made under.
    #[arg(long, value_name = "PATH", default_value = edupool_agent::runner::container::DEFAULT_CGROUP_PARENT)]
    cgroup_parent: PathBuf,
}

// Described in --runtime's help, so `run --help` stays one line an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RuntimeArg {
    Crun,
    Auto,
    None,
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
enum Backend {
    /// NVML, or the simulated GPUs when NVML is unavailable.
    Auto,
    /// Real GPUs through the NVIDIA driver.
    Nvml,
    /// The GPUs of --simulate-gpus.
    Simulated,
    /// No GPUs: a CPU-only node.
    None,
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
        Command::Run(args) => run_agent(*args),
        Command::Inventory(args) => print_inventory(args),
        Command::Image(ImageCommand::Import {
            image_store,
            name,
            source,
        }) => {
            let done = edupool_agent::images::import::import(&image_store, &name, &source)?;
            println!(
                "imported {name} ({} {}) into {}",
                done.layers,
                if done.layers == 1 { "layer" } else { "layers" },
                done.rootfs.display()
            );
            Ok(())
        }
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
    config.telemetry_interval = args.telemetry_interval;
    config.run_as = args.run_as;
    config.allow_root = args.allow_root;
    apply_sandbox(&mut config, args.sandbox)?;
    // Simulated GPUs come with a simulated node around them.
    let simulated = match args.gpus.backend {
        Some(Backend::None) => None,
        _ if config.inventory.backend() == "simulated" => Some(
            config
                .inventory
                .gpus()
                .context("cannot read the GPU inventory")?
                .len(),
        ),
        _ => None,
    };
    config.host = args
        .host
        .allocatable(simulated)
        .context("cannot read this machine's CPUs and memory")?;
    if let (Some(ca), Some(cert), Some(key)) = (&args.ca_cert, &args.cert, &args.key) {
        config.tls = Some(edupool_agent::AgentTls::from_files(ca, cert, key)?);
    }
    config.validate().context("invalid configuration")?;
    if let Some(addr) = args.metrics_listen {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        let bound = listener.local_addr()?;
        println!("edupool-agent metrics listening on {bound}");
        io::stdout().flush()?;
        config.metrics_listener = Some(Arc::new(listener));
    }

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

fn apply_sandbox(config: &mut AgentConfig, args: SandboxArgs) -> anyhow::Result<()> {
    config.runtime = match args.runtime {
        RuntimeArg::Crun => RuntimeChoice::Crun,
        RuntimeArg::Auto => RuntimeChoice::Auto,
        RuntimeArg::None => RuntimeChoice::None,
    };
    config.runtime_path = args.runtime_path;
    config.image_store = args.image_store;
    config.allow_host_jobs = args.allow_host_jobs;
    config.tenant_uid_base = args.tenant_uid_base;
    config.device_root = args.device_root;
    config.egress_levels = args.egress_levels;
    config.pids_limit = args.job_pids_limit;
    config.cgroup_parent = args.cgroup_parent;
    if let Some(file) = &args.driver_files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read --driver-files {}", file.display()))?;
        config.driver_files = driver_files(&text).map_err(|line| {
            anyhow!(
                "--driver-files {}: {line:?} is not an absolute path",
                file.display()
            )
        })?;
    }
    Ok(())
}

/// The paths of a driver files list: one absolute path a line; blank
/// lines and `#` comments are skipped. The first bad line is the error.
fn driver_files(text: &str) -> Result<Vec<PathBuf>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let path = PathBuf::from(l);
            if path.is_absolute() {
                Ok(path)
            } else {
                Err(l.to_owned())
            }
        })
        .collect()
}

/// The node's name and its inventory backend.
fn inventory(args: &GpuArgs) -> anyhow::Result<(String, Arc<dyn GpuInventory>)> {
    let node_name = match &args.node_name {
        Some(name) => name.clone(),
        None => hostname()?,
    };
    let backend = args.backend.unwrap_or(if args.simulate_gpus.is_some() {
        Backend::Simulated
    } else {
        Backend::Nvml
    });
    if args.simulate_faults.is_some() && backend == Backend::Nvml {
        return Err(anyhow!(
            "--simulate-faults works with simulated GPUs only (--gpus simulated or auto)"
        ));
    }
    let only = |inventory: Arc<dyn GpuInventory>| -> Arc<dyn GpuInventory> {
        if args.only_gpus.is_empty() {
            inventory
        } else {
            Arc::new(OnlyGpus::new(inventory, args.only_gpus.clone()))
        }
    };
    let simulated = |spec: &GpuSpec| -> Arc<dyn GpuInventory> {
        let inventory = SimulatedInventory::new(&node_name, spec);
        match &args.simulate_faults {
            Some(path) => only(Arc::new(inventory.with_fault_file(path))),
            None => only(Arc::new(inventory)),
        }
    };
    let inventory: Arc<dyn GpuInventory> = match backend {
        Backend::None => Arc::new(SimulatedInventory::new(&node_name, &GpuSpec::none())),
        Backend::Simulated => {
            let Some(spec) = &args.simulate_gpus else {
                return Err(anyhow!(
                    "--gpus simulated needs --simulate-gpus SPEC, e.g. --simulate-gpus 4xA100-80GB"
                ));
            };
            simulated(spec)
        }
        Backend::Nvml => only(Arc::new(
            NvmlInventory::open(args.nvml_lib.as_deref()).map_err(|err| {
                anyhow!(
                    "{err} (to run without GPUs, use --simulate-gpus SPEC, or --gpus auto \
                     to fall back to simulated GPUs)"
                )
            })?,
        )),
        Backend::Auto => match NvmlInventory::open(args.nvml_lib.as_deref()) {
            Ok(nvml) => only(Arc::new(nvml)),
            Err(err @ InventoryError::Unavailable { .. }) => {
                let spec = match &args.simulate_gpus {
                    Some(spec) => spec.clone(),
                    None => AUTO_FALLBACK_SPEC.parse().expect("a valid spec"),
                };
                eprintln!("edupool-agent: {err}; using simulated GPUs {spec} instead");
                simulated(&spec)
            }
            Err(err) => return Err(err).context("cannot read the GPUs"),
        },
    };
    Ok((node_name, inventory))
}

/// The simulated GPUs of `--gpus auto` without NVML and without
/// `--simulate-gpus`.
const AUTO_FALLBACK_SPEC: &str = "1xA100-80GB";

fn hostname() -> anyhow::Result<String> {
    nix::unistd::gethostname()
        .context("cannot read the hostname; give --node-name")?
        .into_string()
        .map_err(|name| anyhow!("the hostname {name:?} is not UTF-8; give --node-name"))
}

/// What `inventory --output json` prints.
#[derive(Serialize)]
struct InventoryReport<'a> {
    node_name: &'a str,
    backend: &'a str,
    driver_version: Option<&'a str>,
    cuda_version: Option<&'a str>,
    gpus: Vec<GpuReport<'a>>,
}

#[derive(Serialize)]
struct GpuReport<'a> {
    #[serde(flatten)]
    info: &'a GpuInfo,
    /// One telemetry reading; `None` when the GPU did not answer.
    telemetry: Option<&'a GpuSample>,
}

fn print_inventory(args: InventoryArgs) -> anyhow::Result<()> {
    let (node_name, inventory) = inventory(&args.gpus)?;
    let mut gpus = inventory.gpus().context("cannot read the GPU inventory")?;
    // A single look: the events waiting now (none from NVML, which reports
    // only what happens while it is watched; injected faults for simulated
    // GPUs), then the faults the counters show (ECC, pending retirement, a
    // lost GPU).
    let (board, _changes) = HealthBoard::new();
    let events = inventory
        .wait_for_events(Duration::ZERO)
        .context("cannot read the GPUs' health events")?;
    for event in &events {
        board.on_event(event);
    }
    let samples = inventory
        .sample()
        .context("cannot read the GPUs' telemetry")?;
    for sample in &samples {
        board.on_sample(sample);
    }
    board.overlay(&mut gpus);
    let mut out = io::stdout().lock();
    match args.output {
        Output::Json => {
            let first = gpus.first();
            let report = InventoryReport {
                node_name: &node_name,
                backend: inventory.backend(),
                driver_version: first.and_then(|g| g.driver_version.as_deref()),
                cuda_version: first.and_then(|g| g.cuda_version.as_deref()),
                gpus: gpus
                    .iter()
                    .map(|info| GpuReport {
                        info,
                        telemetry: samples.iter().find(|s| s.uuid == info.uuid),
                    })
                    .collect(),
            };
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        }
        Output::Table => {
            write_inventory_table(&mut out, &node_name, inventory.backend(), &gpus, &samples)?
        }
    }
    out.flush()?;
    Ok(())
}

fn write_inventory_table(
    out: &mut impl Write,
    node_name: &str,
    backend: &str,
    gpus: &[GpuInfo],
    samples: &[GpuSample],
) -> io::Result<()> {
    let versions = gpus
        .first()
        .map(|g| {
            format!(
                ", driver {}, CUDA {}",
                g.driver_version.as_deref().unwrap_or("-"),
                g.cuda_version.as_deref().unwrap_or("-")
            )
        })
        .unwrap_or_default();
    writeln!(
        out,
        "node {node_name}: {} GPUs ({backend}{versions})",
        gpus.len()
    )?;
    let mut table = Table::new([
        "INDEX",
        "UUID",
        "MODEL",
        "MEMORY",
        "PCI",
        "CC",
        "MIG/NVLINK",
        "POWER",
        "HEALTH",
    ]);
    for g in gpus {
        let sample = samples.iter().find(|s| s.uuid == g.uuid);
        let power = match (sample.and_then(|s| s.power_watts), g.power_limit_watts) {
            (Some(now), Some(limit)) => format!("{now:.0}/{limit:.0} W"),
            (Some(now), None) => format!("{now:.0} W"),
            (None, Some(limit)) => format!("-/{limit:.0} W"),
            (None, None) => "-".into(),
        };
        let health = match (&g.health_reason, sample) {
            (Some(reason), _) => format!("unhealthy: {reason}"),
            (None, Some(s)) if !s.throttle_reasons.is_empty() => {
                format!("healthy (throttled: {})", s.throttle_reasons.join(", "))
            }
            _ => "healthy".into(),
        };
        let mig = match &g.mig {
            Some(m) if m.enabled => format!("on ({})", m.instances.len()),
            Some(_) => "off".into(),
            None => "-".into(),
        };
        table.row([
            g.index.to_string(),
            g.uuid.clone(),
            g.model.clone(),
            memory(g.memory_bytes),
            g.pci_bus_id.clone().unwrap_or_else(|| "-".into()),
            g.compute_capability.clone().unwrap_or_else(|| "-".into()),
            format!("{mig}, {} NVLink peers", g.nvlink_peers.len()),
            power,
            health,
        ]);
        for m in g.mig.iter().flat_map(|m| &m.instances) {
            // A MIG instance has only these; the rest stays blank.
            table.row([
                format!("{}/{}", g.index, m.index),
                m.uuid.clone(),
                format!("MIG {}", m.name),
                memory(m.memory_bytes),
            ]);
        }
    }
    out.write_all(table.render().as_bytes())
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

#[cfg(test)]
mod tests {
    use edupool_agent::inventory::{MigInfo, MigInstance};

    use super::*;

    fn table(gpus: &[GpuInfo]) -> String {
        let mut out = Vec::new();
        write_inventory_table(&mut out, "n1", "simulated", gpus, &[]).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn inventory_table_aligns_gpus_and_their_mig_instances() {
        let mut a100 = GpuInfo::basic("GPU-a".into(), 0, "A100-80GB".into(), 80 << 30);
        a100.mig = Some(MigInfo {
            enabled: true,
            instances: vec![MigInstance {
                uuid: "MIG-a1".into(),
                index: 1,
                name: "1g.10gb".into(),
                memory_bytes: 10 << 30,
            }],
        });
        let t4 = GpuInfo::basic("GPU-bb".into(), 1, "T4".into(), 15 << 30);
        assert_eq!(
            table(&[a100, t4]),
            "node n1: 2 GPUs (simulated, driver -, CUDA -)\n\
             INDEX  UUID    MODEL        MEMORY  PCI  CC  MIG/NVLINK              POWER  HEALTH\n\
             0      GPU-a   A100-80GB    80 GiB  -    -   on (1), 0 NVLink peers  -      healthy\n\
             0/1    MIG-a1  MIG 1g.10gb  10 GiB\n\
             1      GPU-bb  T4           15 GiB  -    -   -, 0 NVLink peers       -      healthy\n"
        );
    }

    #[test]
    fn driver_file_lists_take_absolute_paths_and_skip_comments() {
        let text = "# libraries\n/usr/lib/libcuda.so.1\n\n  /usr/bin/nvidia-smi  \n";
        assert_eq!(
            driver_files(text).unwrap(),
            vec![
                PathBuf::from("/usr/lib/libcuda.so.1"),
                PathBuf::from("/usr/bin/nvidia-smi")
            ]
        );
        assert_eq!(driver_files("lib/x.so").unwrap_err(), "lib/x.so");
    }

    #[test]
    fn an_unhealthy_reason_over_several_lines_stays_on_its_row() {
        let mut gpu = GpuInfo::basic("GPU-a".into(), 0, "A100-80GB".into(), 80 << 30);
        gpu.healthy = false;
        gpu.health_reason = Some("Xid 79\nfallen off the bus".into());
        let text = table(&[gpu]);
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(
            text.ends_with("unhealthy: Xid 79 fallen off the bus\n"),
            "{text}"
        );
    }
}
