//! The scale harness: a scheduler cluster launched with its default
//! timings, thousands of simulated agents as lightweight gRPC sessions in
//! this one process, and load clients that submit numbered jobs. It backs
//! `edupool-bench scale` and the scale correctness test.
//!
//! Every job carries its number in the environment variable
//! [`SEQ_ENV`]; the simulated agents read it back from the `StartJob`
//! order, so the [`Tally`] can time each job from its submission to its
//! placement reaching a node and count how often each was started. Jobs
//! submitted as arrays carry the array's first number, and each its
//! index in the array (see [`seq_of`]).

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use edupool_proto::v1 as pb;
use edupool_proto::v1::agent_message::Msg as Up;
use edupool_proto::v1::agent_service_client::AgentServiceClient;
use edupool_proto::v1::scheduler_message::Msg as Down;
use edupool_scheduler::state::ARRAY_INDEX_ENV;
use edupoolctl::client::{BearerToken, Clients};
use edupoolctl::pki::CertKind;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::tls::{self, TestPki};
use crate::{serve_replica, Proc, ADMIN_TOKEN, AGENT_TOKEN};

/// The environment variable that carries a job's number.
pub const SEQ_ENV: &str = "BENCH_JOB_SEQ";

/// Agent sessions multiplexed on one HTTP/2 connection (servers commonly
/// allow a few hundred concurrent streams per connection).
pub const SESSIONS_PER_CONNECTION: usize = 100;

/// Replies larger than tonic's 4 MiB default: a list of every job.
const MAX_MESSAGE: usize = 512 * 1024 * 1024;

// ------------------------------------------------------------------ cluster

/// One `edupool-scheduler serve` replica of a [`ScaleCluster`].
pub struct ScaleReplica {
    pub id: u64,
    pub proc: Proc,
    pub addr: String,
    pub data_dir: PathBuf,
}

impl ScaleReplica {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// 1, 3 or 5 replicas talking to each other directly on loopback (no
/// fault proxies: nothing here is cut), with the scheduler's default
/// timings unless `extra` flags say otherwise.
pub struct ScaleCluster {
    pub replicas: Vec<ScaleReplica>,
    /// Flags every replica starts with, after `--id`.
    args: Vec<String>,
    /// The cluster's CA (`<data root>/pki`): replicas serve TLS with peer
    /// certificates, simulated agents show node certificates.
    pki: TestPki,
    _dir: Option<tempfile::TempDir>,
}

/// A loopback port the OS hands out, released for a replica to bind. A
/// replica's peers must know its address before it starts, so the port
/// is chosen first; another process taking it in between makes the
/// replica fail to start, which `ScaleCluster::start` reports.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl ScaleCluster {
    /// Starts `n` replicas with data under `data_root` (a temporary
    /// directory when `None`).
    pub fn start(n: u64, data_root: Option<&Path>, extra: &[&str]) -> Result<ScaleCluster> {
        let dir = match data_root {
            Some(_) => None,
            None => Some(tempfile::tempdir()?),
        };
        let root = data_root
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.as_ref().expect("a temp dir").path().to_path_buf());
        let addrs: Vec<String> = (0..n)
            .map(|_| free_port().map(|p| format!("127.0.0.1:{p}")))
            .collect::<Result<_>>()?;
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut args = Vec::new();
        if n > 1 {
            args.extend(["--peers".to_string(), peers]);
        }
        // A load test is one tenant's flood on purpose: lift the per-token
        // rate limit and the pending-jobs cap.
        args.extend(
            [
                "--rate-limit",
                "1000000000",
                "--rate-burst",
                "1000000000",
                "--max-pending-per-tenant",
                "1000000000",
            ]
            .map(String::from),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cluster = ScaleCluster {
            replicas: Vec::new(),
            args,
            pki: TestPki::open(&root)?,
            _dir: dir,
        };
        for (i, addr) in addrs.into_iter().enumerate() {
            let id = i as u64 + 1;
            let data_dir = root.join(format!("replica-{id}"));
            let proc = cluster.launch(id, &addr, &data_dir)?;
            cluster.replicas.push(ScaleReplica {
                id,
                proc,
                addr,
                data_dir,
            });
        }
        Ok(cluster)
    }

    fn launch(&self, id: u64, addr: &str, data_dir: &Path) -> Result<Proc> {
        let mut args: Vec<OsString> = vec!["--listen".into(), addr.into(), "--data-dir".into()];
        args.push(data_dir.into());
        args.extend(["--id".into(), id.to_string().into()]);
        args.extend(self.pki.serve_args(id)?);
        args.extend(self.args.iter().map(Into::into));
        let (proc, _) = serve_replica(id, args)?;
        tls::trust(addr, &self.pki.ca_cert());
        Ok(proc)
    }

    /// Kills replica `id` (`kill -9`) and starts it again on its data;
    /// returns once the new process listens.
    pub fn restart(&mut self, id: u64) -> Result<()> {
        let i = self
            .replicas
            .iter()
            .position(|r| r.id == id)
            .ok_or_else(|| anyhow!("no replica {id}"))?;
        self.replicas[i].proc.kill9();
        let (addr, data_dir) = (
            self.replicas[i].addr.clone(),
            self.replicas[i].data_dir.clone(),
        );
        self.replicas[i].proc = self.launch(id, &addr, &data_dir)?;
        Ok(())
    }

    /// How replica `endpoint` sees the cluster.
    pub async fn status(endpoint: &str) -> Result<pb::ClusterStatus> {
        // Any replica answers from its own view, leader or not.
        let auth = BearerToken::new(Some(ADMIN_TOKEN))?.stale_ok(true);
        let mut c = Clients::with_auth(channel(endpoint).await?, auth, endpoint)?.cluster;
        let req = pb::GetClusterStatusRequest::default();
        Ok(c.get_status(req).await?.into_inner())
    }

    /// The replica that leads, once one does and says so.
    pub async fn leader(&self, timeout: Duration) -> Result<&ScaleReplica> {
        let deadline = Instant::now() + timeout;
        loop {
            for r in &self.replicas {
                if let Ok(s) = Self::status(&r.endpoint()).await {
                    if s.leader_id == r.id && s.role == pb::ReplicaRole::Leader as i32 {
                        return Ok(r);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("no replica led within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn channel(endpoint: &str) -> Result<Channel> {
    channel_as(endpoint, None).await
}

/// A channel to `endpoint`: TLS trusting the CA that vouches for it (see
/// `tls::trust`), showing `identity` if given; plaintext for a scheduler
/// no test CA vouches for (one started elsewhere, e.g. in dev mode).
async fn channel_as(endpoint: &str, identity: Option<Identity>) -> Result<Channel> {
    let ep = match tls::ca_for(endpoint) {
        Some(ca) => {
            let host = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
            let pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
            let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            if let Some(identity) = identity {
                config = config.identity(identity);
            }
            Endpoint::from_shared(format!("https://{host}"))?.tls_config(config)?
        }
        None => Endpoint::from_shared(endpoint.to_string())?,
    };
    ep.connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {endpoint}"))
}

/// Clients of one replica, with the admin token.
pub async fn admin_clients(endpoint: &str) -> Result<Clients> {
    clients(endpoint, ADMIN_TOKEN).await
}

/// Clients of one replica with `token`, taking replies of any size.
pub async fn clients(endpoint: &str, token: &str) -> Result<Clients> {
    let ch = channel(endpoint).await?;
    let mut c = Clients::new(ch, Some(token), endpoint)?;
    c.jobs = c.jobs.max_decoding_message_size(MAX_MESSAGE);
    c.admin = c.admin.max_decoding_message_size(MAX_MESSAGE);
    Ok(c)
}

/// Creates a tenant; returns its token.
pub async fn create_tenant(endpoint: &str, name: &str) -> Result<String> {
    let mut c = admin_clients(endpoint).await?;
    let r = c
        .admin
        .create_tenant(pb::CreateTenantRequest { name: name.into() })
        .await?
        .into_inner();
    Ok(r.token)
}

// -------------------------------------------------------------------- tally

/// What the load clients and the simulated agents saw, per job number.
/// Times are nanoseconds since `t0`, plus one (zero: not yet).
pub struct Tally {
    t0: Instant,
    /// The wall clock at `t0`, to line seconds up with the replicas' logs.
    began: std::time::SystemTime,
    submitted_at: Vec<AtomicU64>,
    placed_at: Vec<AtomicU64>,
    starts: Vec<AtomicU32>,
    pub submitted: AtomicU64,
    pub refused: AtomicU64,
    pub placed: AtomicU64,
    pub exited: AtomicU64,
    /// `StartJob` orders for a job the agent already holds.
    pub repeated_orders: AtomicU64,
    /// `StartJob` orders whose job carries no valid number.
    pub foreign: AtomicU64,
    first_refusal: Mutex<Option<String>>,
}

impl Tally {
    pub fn new(jobs: u64) -> Tally {
        let n = jobs as usize;
        Tally {
            t0: Instant::now(),
            began: std::time::SystemTime::now(),
            submitted_at: (0..n).map(|_| AtomicU64::new(0)).collect(),
            placed_at: (0..n).map(|_| AtomicU64::new(0)).collect(),
            starts: (0..n).map(|_| AtomicU32::new(0)).collect(),
            submitted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            placed: AtomicU64::new(0),
            exited: AtomicU64::new(0),
            repeated_orders: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            first_refusal: Mutex::new(None),
        }
    }

    pub fn jobs(&self) -> u64 {
        self.starts.len() as u64
    }

    /// The wall clock when the tally began, in seconds since the Unix epoch.
    pub fn began_unix_s(&self) -> f64 {
        self.began
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    fn stamp(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64 + 1
    }

    fn submitting(&self, seq: u64) {
        self.submitted_at[seq as usize].store(self.stamp(), Ordering::Relaxed);
    }

    fn refusal(&self, jobs: u64, why: String) {
        self.refused.fetch_add(jobs, Ordering::Relaxed);
        self.first_refusal
            .lock()
            .expect("tally lock")
            .get_or_insert(why);
    }

    /// The first refusal a load client got, if any.
    pub fn first_refusal(&self) -> Option<String> {
        self.first_refusal.lock().expect("tally lock").clone()
    }

    fn started(&self, seq: Option<u64>) {
        let Some(seq) = seq.filter(|s| *s < self.jobs()) else {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let i = seq as usize;
        if self.starts[i].fetch_add(1, Ordering::Relaxed) == 0 {
            self.placed_at[i].store(self.stamp(), Ordering::Relaxed);
            self.placed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many times job `seq` was ordered to start.
    pub fn starts(&self, seq: u64) -> u32 {
        self.starts[seq as usize].load(Ordering::Relaxed)
    }

    /// Submit → first `StartJob` at a node, of every placed job.
    pub fn latencies(&self) -> Vec<Duration> {
        self.submitted_at
            .iter()
            .zip(&self.placed_at)
            .filter_map(|(s, p)| {
                let (s, p) = (s.load(Ordering::Relaxed), p.load(Ordering::Relaxed));
                (s > 0 && p > 0).then(|| Duration::from_nanos(p.saturating_sub(s)))
            })
            .collect()
    }

    /// Submit → placed of every placed job, grouped by the whole second
    /// (since the tally began) in which it was submitted, in order.
    pub fn latencies_by_second(&self) -> Vec<(u64, Vec<Duration>)> {
        let mut by: std::collections::BTreeMap<u64, Vec<Duration>> = Default::default();
        for (s, p) in self.submitted_at.iter().zip(&self.placed_at) {
            let (s, p) = (s.load(Ordering::Relaxed), p.load(Ordering::Relaxed));
            if s > 0 && p > 0 {
                by.entry((s - 1) / 1_000_000_000)
                    .or_default()
                    .push(Duration::from_nanos(p.saturating_sub(s)));
            }
        }
        by.into_iter().collect()
    }

    /// When each job was placed, since the tally began, in order.
    pub fn placement_times(&self) -> Vec<Duration> {
        let mut t: Vec<Duration> = self
            .placed_at
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .filter(|p| *p > 0)
            .map(|p| Duration::from_nanos(p - 1))
            .collect();
        t.sort();
        t
    }
}

// ------------------------------------------------------------ agent fleet

/// How the simulated agents behave.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// The leader's endpoint (agent sessions are served by the leader).
    pub endpoint: String,
    pub nodes: usize,
    pub gpus_per_node: u32,
    /// e.g. `A100-80GB`.
    pub model: String,
    /// How long a job runs before its agent reports it exited (zero: the
    /// exit follows the start at once).
    pub run_time: Duration,
    /// Node names are `{prefix}{n}`.
    pub prefix: String,
}

/// Simulated agents, each a real `AgentService` session; ended on drop.
pub struct Fleet {
    sessions: JoinSet<Result<()>>,
    pub connected: Arc<AtomicU64>,
}

impl Fleet {
    /// Opens every node's session; returns once all are connected (the
    /// scheduler commits each node's arrival before it answers).
    pub async fn connect(config: FleetConfig, tally: Arc<Tally>) -> Result<Fleet> {
        let connected = Arc::new(AtomicU64::new(0));
        let mut sessions = JoinSet::new();
        // Over TLS each agent shows its own node certificate, so it needs a
        // connection of its own; in plaintext sessions share connections.
        let pki = tls::ca_for(&config.endpoint)
            .and_then(|ca| ca.parent()?.parent().map(Path::to_path_buf))
            .map(|dir| TestPki::open(&dir))
            .transpose()?;
        let mut ch = None;
        for n in 0..config.nodes {
            let name = format!("{}{n}", config.prefix);
            if let Some(pki) = &pki {
                let (cert, key) = pki.cert(&CertKind::Node(name.clone()))?;
                let identity = Identity::from_pem(std::fs::read(cert)?, std::fs::read(key)?);
                ch = Some(channel_as(&config.endpoint, Some(identity)).await?);
            } else if n % SESSIONS_PER_CONNECTION == 0 {
                ch = Some(channel(&config.endpoint).await?);
            }
            let agent = SimAgent {
                name,
                config: config.clone(),
                tally: tally.clone(),
                connected: connected.clone(),
            };
            sessions.spawn(agent.run(ch.clone().expect("a channel")));
        }
        let mut fleet = Fleet {
            sessions,
            connected,
        };
        let deadline = Instant::now() + Duration::from_secs(60 + config.nodes as u64 / 50);
        while fleet.connected.load(Ordering::Relaxed) < config.nodes as u64 {
            fleet.check()?;
            if Instant::now() > deadline {
                bail!(
                    "only {} of {} agents connected",
                    fleet.connected.load(Ordering::Relaxed),
                    config.nodes
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(fleet)
    }

    /// Fails if a session has ended (they run until the fleet drops).
    pub fn check(&mut self) -> Result<()> {
        match self.sessions.try_join_next() {
            None => Ok(()),
            Some(Ok(Ok(()))) => bail!("an agent session ended"),
            Some(Ok(Err(e))) => Err(e.context("an agent session failed")),
            Some(Err(e)) => bail!("an agent session panicked: {e}"),
        }
    }
}

struct SimAgent {
    name: String,
    config: FleetConfig,
    tally: Arc<Tally>,
    connected: Arc<AtomicU64>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn up(msg: Up) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(msg) }
}

impl SimAgent {
    fn hello(&self) -> pb::AgentMessage {
        let gpus = (0..self.config.gpus_per_node)
            .map(|i| pb::Gpu {
                uuid: format!("GPU-{}-{i}", self.name),
                index: i,
                model: self.config.model.clone(),
                memory_bytes: 80 << 30,
                healthy: true,
                // NVLink pairs, as on the simulated agent.
                peers: vec![i ^ 1]
                    .into_iter()
                    .filter(|p| *p < self.config.gpus_per_node)
                    .collect(),
                ..Default::default()
            })
            .collect();
        up(Up::Hello(pb::AgentHello {
            node_name: self.name.clone(),
            gpus,
            jobs: vec![],
            agent_version: "edupool-bench".into(),
            // Room for every GPU's default CPU and memory, and more.
            cpu_millicores: u64::from(self.config.gpus_per_node.max(1)) * 32_000,
            memory_bytes: u64::from(self.config.gpus_per_node.max(1)) << 38,
            // The bench's jobs are host processes (no image).
            allows_host_jobs: true,
            ..Default::default()
        }))
    }

    async fn run(self, ch: Channel) -> Result<()> {
        let (tx, rx) = mpsc::channel(1024);
        tx.send(self.hello()).await?;
        let auth = BearerToken::new(Some(AGENT_TOKEN))?;
        let mut client = AgentServiceClient::with_interceptor(ch, auth);
        let mut orders = client
            .session(ReceiverStream::new(rx))
            .await
            .with_context(|| format!("opening the session of {}", self.name))?
            .into_inner();
        self.connected.fetch_add(1, Ordering::Relaxed);
        let mut heartbeat = tokio::time::interval(Duration::from_secs(2));
        let mut held: HashSet<String> = HashSet::new();
        loop {
            tokio::select! {
                m = orders.message() => {
                    let Some(m) = m.with_context(|| format!("the session of {}", self.name))? else {
                        return Ok(());
                    };
                    match m.msg {
                        Some(Down::Welcome(w)) if w.heartbeat_interval_ms > 0 => {
                            heartbeat = tokio::time::interval(Duration::from_millis(w.heartbeat_interval_ms));
                            heartbeat.tick().await;
                        }
                        Some(Down::Start(s)) => self.start(s, &mut held, &tx).await?,
                        Some(Down::Forget(f)) => { held.remove(&f.job_id); }
                        _ => {}
                    }
                }
                _ = heartbeat.tick() => {
                    tx.send(up(Up::Heartbeat(pb::Heartbeat { at_ms: now_ms() }))).await?;
                }
            }
        }
    }

    /// Acknowledges a start at once, and reports the exit after the run time.
    async fn start(
        &self,
        s: pb::StartJob,
        held: &mut HashSet<String>,
        tx: &mpsc::Sender<pb::AgentMessage>,
    ) -> Result<()> {
        if !held.insert(s.job_id.clone()) {
            // A resent order for a job this agent already runs: a real
            // agent ignores it too.
            self.tally.repeated_orders.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.tally.started(seq_of(&s.env));
        let started = now_ms();
        tx.send(up(Up::Job(pb::JobReport {
            job_id: s.job_id.clone(),
            running: true,
            started_at_ms: started,
            ..Default::default()
        })))
        .await?;
        let exit = move |finished: i64| {
            up(Up::Job(pb::JobReport {
                job_id: s.job_id,
                running: false,
                exit_code: 0,
                has_exit_code: true,
                started_at_ms: started,
                finished_at_ms: finished,
                gpu_seconds: s.gpu_uuids.len() as f64 * (finished - started) as f64 / 1000.0,
                ..Default::default()
            }))
        };
        let tally = self.tally.clone();
        if self.config.run_time.is_zero() {
            tx.send(exit(now_ms())).await?;
            tally.exited.fetch_add(1, Ordering::Relaxed);
        } else {
            let (tx, run_time) = (tx.clone(), self.config.run_time);
            tokio::spawn(async move {
                tokio::time::sleep(run_time).await;
                if tx.send(exit(now_ms())).await.is_ok() {
                    tally.exited.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        Ok(())
    }
}

// ------------------------------------------------------------ load clients

/// How the load clients submit.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The leader's endpoint.
    pub endpoint: String,
    /// The tenant's token.
    pub token: String,
    /// Concurrent submissions in flight.
    pub clients: usize,
    /// HTTP/2 connections they share.
    pub connections: usize,
    /// Jobs per second offered (open loop); `None`: as fast as the
    /// clients get answers.
    pub rate: Option<f64>,
    /// Jobs per submission: more than 1 submits job arrays of this many.
    pub array: u32,
}

/// A job's number, from its environment: the number it was submitted
/// with, plus its index when it is one of an array.
pub fn seq_of(env: &std::collections::HashMap<String, String>) -> Option<u64> {
    let base: u64 = env.get(SEQ_ENV)?.parse().ok()?;
    let index: u64 = match env.get(ARRAY_INDEX_ENV) {
        Some(i) => i.parse().ok()?,
        None => 0,
    };
    Some(base + index)
}

/// The job with number `seq`: one GPU, a command the simulated agents
/// never run.
pub fn numbered_job(seq: u64) -> pb::JobSpec {
    pb::JobSpec {
        name: format!("s{seq}"),
        command: vec!["true".into()],
        env: [(SEQ_ENV.to_string(), seq.to_string())].into(),
        gpus: 1,
        ..Default::default()
    }
}

/// Submits jobs 0..tally.jobs() from `clients` concurrent tasks, one or
/// an array of `array` per call.
pub async fn submit_all(config: LoadConfig, tally: Arc<Tally>) -> Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..config.connections.max(1) {
        conns.push(clients(&config.endpoint, &config.token).await?);
    }
    let mut tasks = JoinSet::new();
    for k in 0..config.clients.max(1) {
        let mut jobs = conns[k % conns.len()].jobs.clone();
        let (next, tally, rate) = (next.clone(), tally.clone(), config.rate);
        let per_call = u64::from(config.array.max(1));
        tasks.spawn(async move {
            loop {
                let seq = next.fetch_add(per_call, Ordering::Relaxed);
                if seq >= tally.jobs() {
                    return;
                }
                let count = per_call.min(tally.jobs() - seq);
                if let Some(rate) = rate {
                    let due = began + Duration::from_secs_f64(seq as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                (seq..seq + count).for_each(|s| tally.submitting(s));
                let req = pb::SubmitJobRequest {
                    spec: Some(numbered_job(seq)),
                    array: if per_call > 1 { count as u32 } else { 0 },
                    request_id: String::new(),
                };
                match jobs.submit_job(req).await {
                    Ok(_) => {
                        tally.submitted.fetch_add(count, Ordering::Relaxed);
                    }
                    Err(s) => tally.refusal(count, format!("job {seq}: {}", s.message())),
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| anyhow!("a load client panicked: {e}"))?;
    }
    Ok(())
}

// ------------------------------------------------------------ process stats

/// CPU time (user + system) and memory of a process, from /proc.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStats {
    pub cpu: Duration,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

/// Reads /proc/<pid>/stat and /proc/<pid>/status (Linux).
pub fn proc_stats(pid: u32) -> Result<ProcStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields count from after its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
    let hz = 100u64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(ProcStats {
        cpu: Duration::from_secs_f64(ticks as f64 / hz as f64),
        rss_bytes: kib("VmRSS:") * 1024,
        peak_rss_bytes: kib("VmHWM:") * 1024,
    })
}

/// Bytes under `dir`, recursively (the replica's log and snapshots).
pub fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The value at fraction `p` (0..=1) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
