//! A harness for end-to-end tests: the real `edupool-scheduler`,
//! `edupool-agent` and `edupoolctl` binaries started as processes on
//! loopback, with ports from the OS and temporary directories, torn down
//! when their handles drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub mod cluster;
pub mod load;
pub mod prometheus;
pub mod tls;

use tls::TestPki;
pub mod scale;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const AGENT_TOKEN: &str = "test-agent-token-0123456789";

/// Where the workspace's binaries are, built once per test process.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "--bins"])
            .args([
                "-p",
                "edupool-scheduler",
                "-p",
                "edupool-agent",
                "-p",
                "edupoolctl",
                "-p",
                "edupool-sim",
                // Faults the tests inject (`raft::failpoints`).
                "--features",
                "edupool-scheduler/failpoints",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "building the binaries failed");
        // target/<profile>/deps/<test> -> target/<profile>; a binary of
        // this crate (edupool-bench) already lives in target/<profile>.
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe.parent().expect("target dir");
        if dir.ends_with("deps") {
            dir.parent().expect("target dir").to_path_buf()
        } else {
            dir.to_path_buf()
        }
    });
    dir.join(name)
}

/// Starts an agent process with simulated GPUs that reaches the
/// scheduler at `endpoints` (one, or several comma-separated).
pub fn simulated_agent(
    endpoints: &str,
    node: &str,
    gpus: &str,
    work_dir: &Path,
    log: &str,
) -> Result<Proc> {
    let child = Command::new(bin("edupool-agent"))
        .args(["run", "--scheduler", endpoints, "--node-name", node])
        .args(["--simulate-gpus", gpus, "--work-dir"])
        .arg(work_dir)
        .args(agent_tls_args(endpoints, node)?)
        .env("EDUPOOL_AGENT_TOKEN", AGENT_TOKEN)
        .env("RUST_LOG", log)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting edupool-agent")?;
    Ok(Proc {
        child: Some(child),
        name: node.to_string(),
    })
}

/// Starts an agent process with simulated GPUs and `extra` arguments that
/// knows the schedulers at `endpoints`. With `--metrics-listen` among
/// them, also returns the address the metrics endpoint bound, as the agent
/// printed it.
pub fn agent_with(
    endpoints: &str,
    node: &str,
    gpus: &str,
    work_dir: &Path,
    extra: &[&str],
) -> Result<(Proc, Option<SocketAddr>)> {
    let mut child = Command::new(bin("edupool-agent"))
        .args(["run", "--scheduler", endpoints, "--node-name", node])
        .args(["--simulate-gpus", gpus, "--work-dir"])
        .arg(work_dir)
        .args(agent_tls_args(endpoints, node)?)
        .args(extra)
        .env("EDUPOOL_AGENT_TOKEN", AGENT_TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting edupool-agent")?;
    let stdout = child.stdout.take().expect("piped");
    let proc = Proc {
        child: Some(child),
        name: node.to_string(),
    };
    let mut lines = BufReader::new(stdout).lines();
    let mut metrics = None;
    if extra.contains(&"--metrics-listen") {
        let line = lines
            .next()
            .ok_or_else(|| anyhow!("edupool-agent exited before serving metrics"))??;
        let addr = line
            .strip_prefix("edupool-agent metrics listening on ")
            .ok_or_else(|| anyhow!("unexpected first line from edupool-agent: {line:?}"))?;
        metrics = Some(addr.trim().parse::<SocketAddr>()?);
    }
    std::thread::spawn(move || for _ in lines {});
    Ok((proc, metrics))
}

/// The agent's `--ca-cert`, `--cert` and `--key` (`node:<node>`, from the
/// CA of the scheduler at `endpoints`), `--allow-root` and
/// `--allow-host-jobs`: test jobs are host processes that run as whoever
/// runs the tests.
pub fn agent_tls_args(endpoints: &str, node: &str) -> Result<Vec<std::ffi::OsString>> {
    let mut args = vec!["--allow-root".into(), "--allow-host-jobs".into()];
    if let Some(ca) = tls::ca_for(endpoints) {
        let dir = ca
            .parent()
            .and_then(Path::parent)
            .ok_or_else(|| anyhow!("{} is not in <dir>/pki", ca.display()))?;
        args.extend(TestPki::open(dir)?.agent_args(node)?);
    }
    Ok(args)
}

/// The lines a started scheduler prints on stdout.
pub type StdoutLines = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// Reads a started scheduler's stdout (piped) until it prints the address
/// it listens on; returns that and the rest of its output.
pub fn listening_addr(child: &mut Child, what: &str) -> Result<(SocketAddr, StdoutLines)> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines
            .next()
            .ok_or_else(|| anyhow!("{what} exited before listening"))??;
        if let Some(a) = line.strip_prefix("edupool-scheduler listening on ") {
            return Ok((a.trim().parse::<SocketAddr>()?, lines));
        }
    }
}

/// Polls `f` until it returns `Some`, or fails after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    child: Option<Child>,
    pub name: String,
}

/// Starts replica `id` of a test cluster: `edupool-scheduler serve` with
/// `args`, the test tokens and quiet logs; returns it once it listens,
/// with the address it listens on.
pub fn serve_replica<I, A>(id: u64, args: I) -> Result<(Proc, SocketAddr)>
where
    I: IntoIterator<Item = A>,
    A: AsRef<std::ffi::OsStr>,
{
    let mut child = Command::new(bin("edupool-scheduler"))
        .arg("serve")
        .args(args)
        .env("EDUPOOL_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("EDUPOOL_AGENT_TOKEN", AGENT_TOKEN)
        .env(
            "RUST_LOG",
            std::env::var("EDUPOOL_TEST_REPLICA_LOG").unwrap_or_else(|_| "warn,raft=error".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting edupool-scheduler")?;
    let (addr, lines) = listening_addr(&mut child, &format!("replica {id}"))?;
    std::thread::spawn(move || for _ in lines {});
    Ok((Proc::new(child, &format!("replica-{id}")), addr))
}

impl Proc {
    /// Takes charge of a started child: killed and reaped on drop.
    pub fn new(child: Child, name: &str) -> Proc {
        Proc {
            child: Some(child),
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `kill -9`, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until the process exits on its own; how it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("{} is not running", self.name))?;
        let status = eventually(&format!("{} to exit", self.name), timeout, || {
            child.try_wait().ok().flatten()
        })?;
        self.child = None;
        Ok(status)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A scheduler replica started with `edupool-scheduler serve`.
pub struct Scheduler {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub node_lost_timeout: String,
    /// Where `/metrics` is served, for a scheduler started with metrics.
    pub metrics_addr: Option<SocketAddr>,
    /// The test's CA (in the data directory's parent), which signed the
    /// scheduler's certificate.
    pub ca_cert: PathBuf,
}

impl Scheduler {
    pub fn start(data_dir: &Path) -> Result<Scheduler> {
        Self::start_with(data_dir, "127.0.0.1:0", "30s")
    }

    pub fn start_with(data_dir: &Path, listen: &str, node_lost_timeout: &str) -> Result<Scheduler> {
        Self::spawn(data_dir, listen, node_lost_timeout, false, &[])
    }

    /// Starts replica 1 of a replica set that names only itself in
    /// `--peers` (as a restored pool does before it grows), so it serves
    /// `RaftService`.
    pub fn start_in_replica_set(data_dir: &Path) -> Result<Scheduler> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let listen = addr.to_string();
        let peers = format!("1={addr}");
        Self::spawn(data_dir, &listen, "30s", false, &["--peers", &peers])
    }

    /// Starts a replica that also serves `/metrics` on a port from the OS.
    pub fn start_with_metrics(data_dir: &Path) -> Result<Scheduler> {
        Self::spawn(data_dir, "127.0.0.1:0", "30s", true, &[])
    }

    fn spawn(
        data_dir: &Path,
        listen: &str,
        node_lost_timeout: &str,
        metrics: bool,
        extra: &[&str],
    ) -> Result<Scheduler> {
        let pki = TestPki::open(data_dir.parent().unwrap_or(data_dir))?;
        let mut cmd = Command::new(bin("edupool-scheduler"));
        cmd.args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(pki.serve_args(1)?);
        if metrics {
            cmd.args(["--metrics-listen", "127.0.0.1:0"]);
        }
        cmd.args(extra);
        let mut child = cmd
            .args([
                "--node-lost-timeout",
                node_lost_timeout,
                "--heartbeat-interval",
                "200ms",
            ])
            .env("EDUPOOL_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("EDUPOOL_AGENT_TOKEN", AGENT_TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting edupool-scheduler")?;
        let (addr, mut lines) = listening_addr(&mut child, "edupool-scheduler")?;
        tls::trust(&addr.to_string(), &pki.ca_cert());
        let mut metrics_addr = None;
        while metrics && metrics_addr.is_none() {
            let line = lines
                .next()
                .ok_or_else(|| anyhow!("edupool-scheduler exited before serving metrics"))??;
            if let Some(a) = line.strip_prefix("edupool-scheduler metrics listening on ") {
                metrics_addr = Some(a.trim().parse::<SocketAddr>()?);
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Scheduler {
            proc: Proc {
                child: Some(child),
                name: "scheduler".into(),
            },
            addr,
            data_dir: data_dir.to_path_buf(),
            node_lost_timeout: node_lost_timeout.to_string(),
            metrics_addr,
            ca_cert: pki.ca_cert(),
        })
    }

    /// Starts a new process on the same data directory and port.
    pub fn restart(&mut self) -> Result<()> {
        self.proc.kill9();
        let listen = self.addr.to_string();
        let metrics = self.metrics_addr.is_some();
        let again = eventually("the port to be free again", Duration::from_secs(10), || {
            Self::spawn(
                &self.data_dir,
                &listen,
                &self.node_lost_timeout,
                metrics,
                &[],
            )
            .ok()
        })?;
        *self = again;
        Ok(())
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A gRPC channel to the scheduler over TLS, trusting the test's CA.
    pub async fn channel(&self) -> Result<tonic::transport::Channel> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
        let ca = std::fs::read(&self.ca_cert)?;
        Ok(Endpoint::from_shared(format!("https://{}", self.addr))?
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?
            .connect()
            .await?)
    }

    /// Starts an agent process with simulated GPUs.
    pub fn agent(&self, node: &str, gpus: &str, work_dir: &Path) -> Result<Proc> {
        simulated_agent(&self.endpoint(), node, gpus, work_dir, "warn")
    }

    /// Starts an agent process with simulated GPUs and `extra` arguments
    /// (see [`agent_with`]).
    pub fn agent_with(
        &self,
        node: &str,
        gpus: &str,
        work_dir: &Path,
        extra: &[&str],
    ) -> Result<(Proc, Option<SocketAddr>)> {
        agent_with(&self.endpoint(), node, gpus, work_dir, extra)
    }

    /// Runs `edupoolctl --output json <args>` with `token`.
    pub fn ctl(&self, token: &str, args: &[&str]) -> Output {
        Command::new(bin("edupoolctl"))
            .args(["--endpoint", &self.endpoint(), "--output", "json"])
            .arg("--ca-cert")
            .arg(&self.ca_cert)
            .args(args)
            .env("EDUPOOL_TOKEN", token)
            .output()
            .expect("edupoolctl runs")
    }

    /// `ctl` that must succeed; its stdout parsed as JSON.
    pub fn ctl_json(&self, token: &str, args: &[&str]) -> Result<serde_json::Value> {
        let out = self.ctl(token, args);
        if !out.status.success() {
            bail!(
                "edupoolctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "edupoolctl {} printed no JSON: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}
