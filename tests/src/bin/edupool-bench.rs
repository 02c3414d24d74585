//! `edupool-bench`: figures for a three-replica scheduler on loopback,
//! recorded in docs/benchmarks.md. Not a test: it asserts nothing.
//!
//! - `failover`: kill -9 the leader, time until a new leader accepts a
//!   write; p50/p99 over the trials.
//! - `throughput`: committed submissions per second from many concurrent
//!   clients (the driver batches them into shared fsyncs).
//! - `latency`: p50/p99 submit latency at a fixed offered rate.
//! - `scale`: thousands of simulated agents and up to millions of jobs
//!   through a 1- or 3-replica cluster: placements/s, submit→placed
//!   latency, leader CPU and memory, log size, snapshot and restart.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use edupool_proto::v1 as pb;
use edupool_tests::cluster::Cluster;
use edupool_tests::eventually;
use edupool_tests::load::{job, LeaderClient, Reply};

#[path = "bench/scale.rs"]
mod scale;

/// Benchmarks of a three-replica edupool scheduler on loopback.
#[derive(Parser)]
#[command(name = "edupool-bench")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Time from a leader kill to a new leader accepting writes.
    Failover {
        /// Number of leader kills.
        #[arg(long, default_value_t = 20)]
        trials: usize,
    },
    /// Committed submissions per second with many concurrent clients.
    Throughput {
        /// Concurrent clients.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// How long to run.
        #[arg(long, default_value = "10s", value_parser = humantime_secs)]
        duration: Duration,
    },
    /// Submit latency at a fixed offered rate.
    Latency {
        /// Submissions per second offered.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// How long to run.
        #[arg(long, default_value = "10s", value_parser = humantime_secs)]
        duration: Duration,
    },
    /// Many simulated agents and many jobs: placements/s, latency, leader
    /// CPU and memory, log size (the scale figures).
    Scale(Box<scale::ScaleArgs>),
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    s.trim_end_matches('s')
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{s:?} is not a number of seconds like 10s"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what}: n={} p50={:?} p99={:?} max={:?}",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        samples.last().copied().unwrap_or_default()
    );
}

/// A cluster with one agent (so submissions are admissible) and a tenant.
fn pool() -> Result<(Cluster, edupool_tests::Proc, tempfile::TempDir, String)> {
    // One token drives every client: lift its rate limit, which is not what
    // these benchmarks measure.
    let c = Cluster::start(3, &["--rate-limit", "1000000", "--rate-burst", "1000000"])?;
    let work = tempfile::tempdir()?;
    let agent = c.agent("n1", "8xA100-80GB", work.path())?;
    c.leader(Duration::from_secs(30))?;
    let all = c.endpoints();
    let t = Cluster::ctl_json(
        &all,
        edupool_tests::ADMIN_TOKEN,
        &["tenant", "create", "bench"],
    )?;
    let token = t["token"].as_str().context("a tenant token")?.to_string();
    eventually("the agent's node", Duration::from_secs(30), || {
        let v = Cluster::ctl_json(&all, edupool_tests::ADMIN_TOKEN, &["node", "list"]).ok()?;
        (v.as_array()?.len() == 1).then_some(())
    })?;
    // Cordoned: submissions are admitted (a node could hold them) but stay
    // pending, so the figures measure the replicated log, not job churn on
    // the same two cores.
    Cluster::ctl_json(&all, edupool_tests::ADMIN_TOKEN, &["node", "cordon", "n1"])?;
    Ok((c, agent, work, token))
}

fn run(cli: Cli) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Cmd::Failover { trials } => failover(&rt, trials),
        Cmd::Throughput { clients, duration } => throughput(&rt, clients, duration),
        Cmd::Latency { rate, duration } => latency(&rt, rate, duration),
        Cmd::Scale(a) => scale::run(&rt, *a),
    }
}

fn failover(rt: &tokio::runtime::Runtime, trials: usize) -> Result<()> {
    let mut c = Cluster::start(3, &[])?;
    let mut samples = Vec::new();
    for trial in 0..trials {
        let leader = c.leader(Duration::from_secs(30))?;
        let others: Vec<String> = c
            .ids()
            .into_iter()
            .filter(|i| *i != leader)
            .map(|i| c.endpoint(i))
            .collect();
        let mut client = LeaderClient::new(&others.join(","), edupool_tests::ADMIN_TOKEN);
        c.kill9(leader);
        let killed = Instant::now();
        let took = rt.block_on(async {
            loop {
                let name = format!("t{trial}");
                if matches!(
                    create_tenant(&mut client, &name).await,
                    Reply::Ok(()) | Reply::Refused(tonic::Code::AlreadyExists)
                ) {
                    return killed.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        println!("trial {trial}: {took:?}");
        samples.push(took);
        c.restart(leader)?;
        c.converged(Duration::from_secs(30))?;
    }
    report("leader kill -> write accepted", samples);
    Ok(())
}

async fn create_tenant(client: &mut LeaderClient, name: &str) -> Reply<()> {
    client.create_tenant(name).await
}

fn throughput(rt: &tokio::runtime::Runtime, clients: usize, duration: Duration) -> Result<()> {
    let (c, _agent, _work, token) = pool()?;
    let endpoints = c.endpoints();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|k| {
            let (stop, done, endpoints, token) =
                (stop.clone(), done.clone(), endpoints.clone(), token.clone());
            rt.spawn(async move {
                let mut client = LeaderClient::new(&endpoints, &token);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    if let Reply::Ok(_) = client.submit(job(&format!("b{k}-{n}"), "0")).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        rt.block_on(t)?;
    }
    let secs = began.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "throughput: {n} committed submissions in {secs:.1}s = {:.0}/s with {clients} clients",
        n as f64 / secs
    );
    Ok(())
}

fn latency(rt: &tokio::runtime::Runtime, rate: u64, duration: Duration) -> Result<()> {
    let (c, _agent, _work, token) = pool()?;
    let endpoints = c.endpoints();
    let samples = rt.block_on(async move {
        // A pool of connections to the leader, used round-robin by an
        // open-loop generator: a slow reply never delays the next send.
        let mut clients = Vec::new();
        for _ in 0..16 {
            let mut cl = LeaderClient::new(&endpoints, &token);
            cl.submit(job("warm", "0")).await;
            clients.push(cl.connected().expect("connected"));
        }
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let end = Instant::now() + duration;
        let mut handles = Vec::new();
        let mut n = 0usize;
        while Instant::now() < end {
            ticker.tick().await;
            n += 1;
            let mut jobs = clients[n % clients.len()].jobs.clone();
            handles.push(tokio::spawn(async move {
                let began = Instant::now();
                let req = pb::SubmitJobRequest {
                    array: 0,
                    request_id: String::new(),
                    spec: Some(job(&format!("l{n}"), "0")),
                };
                jobs.submit_job(req).await.ok().map(|_| began.elapsed())
            }));
        }
        let mut samples = Vec::new();
        for h in handles {
            if let Ok(Some(d)) = h.await {
                samples.push(d);
            }
        }
        samples
    });
    println!(
        "offered {rate}/s for {duration:?}: {} committed",
        samples.len()
    );
    report("submit latency", samples);
    Ok(())
}
