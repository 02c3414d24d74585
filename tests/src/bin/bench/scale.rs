//! `edupool-bench scale`: many simulated agents and many jobs through a
//! real scheduler cluster on loopback (see `edupool_tests::scale`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use edupool_tests::scale::{
    self, disk_usage, percentile, proc_stats, Fleet, FleetConfig, LoadConfig, ProcStats,
    ScaleCluster, Tally,
};

/// The `scale` subcommand's options.
#[derive(clap::Args)]
pub struct ScaleArgs {
    /// Replicas to start (1, 3 or 5); ignored with --endpoints.
    #[arg(long, default_value_t = 3)]
    replicas: u64,
    /// Target a running cluster instead (comma-separated); its leader is
    /// found and used. Its agent token must be the harness's.
    #[arg(long)]
    endpoints: Option<String>,
    /// With --endpoints: the leader's pid, for its CPU and memory.
    #[arg(long)]
    leader_pid: Option<u32>,
    /// With --endpoints: the leader's data directory, for the log size.
    #[arg(long)]
    leader_data_dir: Option<PathBuf>,
    /// Where started replicas keep their data (a temporary directory if
    /// left out; removed afterwards either way unless given).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Simulated nodes (agent sessions).
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// GPUs on each simulated node.
    #[arg(long, default_value_t = 8)]
    gpus_per_node: u32,
    /// Single-GPU jobs to submit.
    #[arg(long, default_value_t = 100_000)]
    jobs: u64,
    /// Concurrent submissions in flight.
    #[arg(long, default_value_t = 256)]
    clients: usize,
    /// Connections the load clients share.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Jobs per second offered (open loop); left out: as fast as the
    /// scheduler answers.
    #[arg(long)]
    rate: Option<f64>,
    /// Submit job arrays of this many jobs per call (1: one job per call).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    array: u32,
    /// How long each job runs on its simulated node.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    run_time: Duration,
    /// Before submitting, measure the leader idle with every agent
    /// connected and heartbeating, for this long.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// Afterwards, take a snapshot on the leader, restart a replica and
    /// time both.
    #[arg(long)]
    snapshot: bool,
    /// Write submit → placed per second of submission (jobs, p50, p99,
    /// max in milliseconds) to this CSV file, to see when a tail happened.
    #[arg(long)]
    latency_csv: Option<PathBuf>,
    /// Extra flags for every started replica (e.g. "--snapshot-entries=50000").
    #[arg(long, allow_hyphen_values = true)]
    replica_flag: Vec<String>,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// The leader process as far as the harness can see it.
struct Leader {
    endpoint: String,
    pid: Option<u32>,
    data_dir: Option<PathBuf>,
}

impl Leader {
    fn stats(&self) -> Option<ProcStats> {
        self.pid.and_then(|p| proc_stats(p).ok())
    }
}

/// CPU cores the leader used between two samples.
fn cores(a: Option<ProcStats>, b: Option<ProcStats>, wall: Duration) -> Option<f64> {
    Some((b?.cpu.saturating_sub(a?.cpu)).as_secs_f64() / wall.as_secs_f64())
}

pub fn run(rt: &tokio::runtime::Runtime, a: ScaleArgs) -> Result<()> {
    let extra: Vec<&str> = a.replica_flag.iter().map(String::as_str).collect();
    let mut cluster = match &a.endpoints {
        Some(_) => None,
        None => Some(ScaleCluster::start(
            a.replicas,
            a.data_dir.as_deref(),
            &extra,
        )?),
    };
    let leader = rt.block_on(async {
        match (&cluster, &a.endpoints) {
            (Some(c), _) => {
                let l = c.leader(Duration::from_secs(30)).await?;
                Ok::<_, anyhow::Error>(Leader {
                    endpoint: l.endpoint(),
                    pid: Some(l.proc.pid()),
                    data_dir: Some(l.data_dir.clone()),
                })
            }
            (None, Some(list)) => {
                let first = list.split(',').next().context("an endpoint")?.trim();
                let s = ScaleCluster::status(first).await?;
                if s.leader_address.is_empty() {
                    bail!("{first} knows no leader");
                }
                Ok(Leader {
                    endpoint: format!("http://{}", s.leader_address.trim_start_matches("http://")),
                    pid: a.leader_pid,
                    data_dir: a.leader_data_dir.clone(),
                })
            }
            (None, None) => unreachable!("a cluster is started without --endpoints"),
        }
    })?;
    eprintln!("leader at {}", leader.endpoint);
    let outcome = rt.block_on(drive(&a, &leader));
    if a.snapshot {
        if let Some(c) = cluster.as_mut() {
            rt.block_on(snapshot_and_restart(c, &leader))?;
        } else {
            eprintln!("--snapshot needs a started cluster; skipped");
        }
    }
    outcome
}

async fn drive(a: &ScaleArgs, leader: &Leader) -> Result<()> {
    let base = leader.stats();
    let tally = Arc::new(Tally::new(a.jobs));
    let token = scale::create_tenant(&leader.endpoint, "bench").await?;
    let began = Instant::now();
    let mut fleet = Fleet::connect(
        FleetConfig {
            endpoint: leader.endpoint.clone(),
            nodes: a.nodes,
            gpus_per_node: a.gpus_per_node,
            model: "A100-80GB".into(),
            run_time: a.run_time,
            prefix: "sim-".into(),
        },
        tally.clone(),
    )
    .await?;
    let connected = leader.stats();
    println!(
        "agents: {} nodes ({} GPUs) connected in {:.1}s",
        a.nodes,
        a.nodes as u64 * a.gpus_per_node as u64,
        began.elapsed().as_secs_f64()
    );
    if let (Some(b), Some(c)) = (base, connected) {
        println!(
            "leader memory: {:.0} MiB before the agents, {:.0} MiB after ({:.1} KiB per node)",
            mib(b.rss_bytes),
            mib(c.rss_bytes),
            c.rss_bytes.saturating_sub(b.rss_bytes) as f64 / 1024.0 / a.nodes.max(1) as f64
        );
    }
    if !a.idle.is_zero() {
        let before = leader.stats();
        let t = Instant::now();
        tokio::time::sleep(a.idle).await;
        fleet.check()?;
        if let Some(c) = cores(before, leader.stats(), t.elapsed()) {
            println!(
                "idle with {} agents heartbeating: leader CPU {:.3} cores over {:.0}s",
                a.nodes,
                c,
                a.idle.as_secs_f64()
            );
        }
    }
    if a.jobs == 0 {
        return Ok(());
    }
    let before = leader.stats();
    let t0 = Instant::now();
    let load = tokio::spawn(scale::submit_all(
        LoadConfig {
            endpoint: leader.endpoint.clone(),
            token,
            clients: a.clients,
            connections: a.connections,
            rate: a.rate,
            array: a.array,
        },
        tally.clone(),
    ));
    let progress = Progress::new(a.jobs);
    let mut peak_rss = 0;
    loop {
        fleet.check()?;
        if let Some(s) = leader.stats() {
            peak_rss = peak_rss.max(s.rss_bytes);
        }
        let settled = tally.placed.load(Ordering::Relaxed) + tally.refused.load(Ordering::Relaxed);
        progress.show(&tally, t0.elapsed());
        if load.is_finished() && settled >= a.jobs {
            break;
        }
        if load.is_finished() && tally.refused.load(Ordering::Relaxed) > 0 {
            // Refused submissions never place; wait for the rest only.
            let ok = tally.submitted.load(Ordering::Relaxed);
            if tally.placed.load(Ordering::Relaxed) >= ok {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    progress.done();
    load.await??;
    let wall = t0.elapsed();
    let after = leader.stats();
    report(
        a,
        &tally,
        wall,
        cores(before, after, wall),
        after,
        peak_rss,
        leader,
    );
    Ok(())
}

fn write_latency_csv(path: &std::path::Path, tally: &Tally) -> Result<()> {
    use std::fmt::Write as _;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // unix_s: the second's start on the wall clock, as the replicas'
    // log lines are stamped.
    let mut out = String::from("second,unix_s,jobs,p50_ms,p99_ms,max_ms\n");
    let began = tally.began_unix_s();
    for (second, mut lat) in tally.latencies_by_second() {
        lat.sort();
        let _ = writeln!(
            out,
            "{second},{:.1},{},{:.1},{:.1},{:.1}",
            began + second as f64,
            lat.len(),
            ms(percentile(&lat, 0.50)),
            ms(percentile(&lat, 0.99)),
            ms(lat.last().copied().unwrap_or_default())
        );
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

fn report(
    a: &ScaleArgs,
    tally: &Tally,
    wall: Duration,
    leader_cores: Option<f64>,
    after: Option<ProcStats>,
    peak_rss: u64,
    leader: &Leader,
) {
    let placed = tally.placed.load(Ordering::Relaxed);
    println!(
        "jobs: {} submitted OK, {} refused, {} placed, {} exits reported, {} repeated start orders",
        tally.submitted.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        placed,
        tally.exited.load(Ordering::Relaxed),
        tally.repeated_orders.load(Ordering::Relaxed),
    );
    if let Some(why) = tally.first_refusal() {
        println!("first refusal: {why}");
    }
    let times = tally.placement_times();
    // Sustained: between the 10th and the 90th percentile placement, so
    // start-up and the tail do not count.
    if times.len() >= 10 {
        let (lo, hi) = (times.len() / 10, times.len() * 9 / 10);
        let span = times[hi] - times[lo];
        println!(
            "placements: {placed} in {:.1}s = {:.0}/s overall, {:.0}/s sustained (10th-90th percentile)",
            wall.as_secs_f64(),
            placed as f64 / wall.as_secs_f64(),
            (hi - lo) as f64 / span.as_secs_f64().max(1e-9)
        );
    }
    let mut lat = tally.latencies();
    lat.sort();
    println!(
        "submit -> placed: p50 {:?}, p99 {:?}, max {:?}{}",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or_default(),
        a.rate
            .map(|r| format!(" (offered {r}/s)"))
            .unwrap_or_default()
    );
    if let Some(path) = &a.latency_csv {
        match write_latency_csv(path, tally) {
            Ok(()) => println!("latency per second written to {}", path.display()),
            Err(e) => println!("could not write {}: {e:#}", path.display()),
        }
    }
    if let (Some(c), Some(s)) = (leader_cores, after) {
        println!(
            "leader: CPU {c:.2} cores on average; RSS {:.0} MiB now, {:.0} MiB peak seen",
            mib(s.rss_bytes),
            mib(peak_rss.max(s.rss_bytes))
        );
    }
    if let Some(dir) = &leader.data_dir {
        println!(
            "leader data on disk (log and snapshots): {:.1} MiB",
            mib(disk_usage(dir))
        );
    }
}

/// Takes a snapshot on the leader and restarts a replica, timing both.
async fn snapshot_and_restart(c: &mut ScaleCluster, leader: &Leader) -> Result<()> {
    let mut admin = scale::admin_clients(&leader.endpoint)
        .await?
        .cluster
        .max_decoding_message_size(1 << 30);
    let t = Instant::now();
    let snap = admin
        .snapshot(edupool_proto::v1::SnapshotRequest {})
        .await?
        .into_inner();
    println!(
        "snapshot: {:.1} MiB at index {}, taken and sent in {:.2}s",
        mib(snap.data.len() as u64),
        snap.index,
        t.elapsed().as_secs_f64()
    );
    // A follower when there is one, so the cluster keeps its leader.
    let id = c
        .replicas
        .iter()
        .find(|r| r.endpoint() != leader.endpoint)
        .or(c.replicas.first())
        .map(|r| r.id)
        .context("a replica")?;
    let target = ScaleCluster::status(&leader.endpoint).await?.commit_index;
    let t = Instant::now();
    c.restart(id)?;
    let endpoint = c
        .replicas
        .iter()
        .find(|r| r.id == id)
        .map(|r| r.endpoint())
        .context("the replica")?;
    loop {
        if let Ok(s) = ScaleCluster::status(&endpoint).await {
            if s.applied_index >= target {
                break;
            }
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("replica {id} did not catch up in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "restart: replica {id} killed, restarted and applied index {target} in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A one-line progress bar on stderr, only when it is a terminal.
struct Progress {
    total: u64,
    on: bool,
}

impl Progress {
    fn new(total: u64) -> Progress {
        Progress {
            total,
            on: std::io::stderr().is_terminal(),
        }
    }

    fn show(&self, tally: &Tally, elapsed: Duration) {
        if !self.on {
            return;
        }
        let placed = tally.placed.load(Ordering::Relaxed);
        let width = 30;
        let filled = (placed * width / self.total.max(1)) as usize;
        eprint!(
            "\r[{}{}] {placed}/{} placed, {} submitted, {:.0}/s, {:.0}s ",
            "#".repeat(filled),
            " ".repeat(width as usize - filled),
            self.total,
            tally.submitted.load(Ordering::Relaxed),
            placed as f64 / elapsed.as_secs_f64().max(1e-9),
            elapsed.as_secs_f64()
        );
    }

    fn done(&self) {
        if self.on {
            eprintln!();
        }
    }
}
