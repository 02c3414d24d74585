//! A real Prometheus server for tests: `prometheus` started as a process
//! on a loopback port with a generated configuration, queried through its
//! HTTP API, killed and its data removed on drop.
//!
//! Debian's `prometheus` package provides `prometheus` and `promtool`;
//! `.ci/run` installs it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{eventually, Proc};

/// Set to 1 to make a missing Prometheus a failure outside CI as well.
pub const REQUIRE_ENV: &str = "EDUPOOL_REQUIRE_PROMETHEUS";

/// Whether `prometheus` and `promtool` can be run. In CI (`CI` is set, and
/// `.ci/run` installs them) or with `EDUPOOL_REQUIRE_PROMETHEUS=1`, their
/// absence fails the test with what to install; elsewhere the test says
/// loudly that it skips, so `cargo test` works with only the Rust toolchain.
pub fn tools_available() -> bool {
    let runs = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if runs("prometheus") && runs("promtool") {
        return true;
    }
    let required = std::env::var_os("CI").is_some_and(|v| !v.is_empty())
        || std::env::var(REQUIRE_ENV).as_deref() == Ok("1");
    if required {
        panic!(
            "this test needs `prometheus` and `promtool` on the PATH: run .ci/run, or \
             `apt-get install prometheus` (Debian/Ubuntu)"
        );
    }
    eprintln!(
        "SKIPPED: prometheus/promtool are not installed, so the checks against a real \
         Prometheus did not run (apt-get install prometheus, or run .ci/run)"
    );
    false
}

/// Runs `promtool ARGS...`; fails with its output unless it succeeds.
pub fn promtool(args: &[&str], stdin: Option<&[u8]>) -> Result<String> {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting promtool")?;
    let mut input = child.stdin.take().expect("piped");
    if let Some(bytes) = stdin {
        input.write_all(bytes)?;
    }
    drop(input);
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("promtool {} failed:\n{text}", args.join(" "));
    }
    Ok(text)
}

/// A running Prometheus server.
pub struct Prometheus {
    _proc: Proc,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus with `config` (a file) keeping its data under
    /// `dir`, and waits until it is ready.
    pub fn start(config: &Path, dir: &Path) -> Result<Prometheus> {
        // Prometheus takes a port, not a listener: ask the OS for a free one.
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting prometheus")?;
        let mut proc = Proc::new(child, "prometheus");
        let p = eventually("prometheus to be ready", Duration::from_secs(30), || {
            if !proc.is_running() {
                return Some(Err(()));
            }
            let (status, _) = http_get(addr, "/-/ready").ok()?;
            (status == 200).then_some(Ok(()))
        })?;
        if p.is_err() {
            bail!(
                "prometheus exited at start:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok(Prometheus {
            _proc: proc,
            addr,
            log,
        })
    }

    /// Evaluates an instant query; the `data.result` array.
    pub fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let v = self.api(&format!("/api/v1/query?query={}", url_encode(promql)))?;
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The alerts Prometheus holds now (pending and firing).
    pub fn alerts(&self) -> Result<Vec<Value>> {
        let v = self.api("/api/v1/alerts")?;
        Ok(v["data"]["alerts"].as_array().cloned().unwrap_or_default())
    }

    /// What Prometheus logged, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn api(&self, path: &str) -> Result<Value> {
        let (status, body) = http_get(self.addr, path)?;
        let v: Value = serde_json::from_slice(&body)
            .with_context(|| format!("prometheus answered {path} with no JSON"))?;
        if status != 200 || v["status"] != "success" {
            bail!(
                "prometheus refused {path}: {} {}",
                v["errorType"].as_str().unwrap_or("?"),
                v["error"].as_str().unwrap_or("?")
            );
        }
        Ok(v)
    }
}

/// A plain HTTP/1.0 GET (no chunked bodies, the connection closes at the
/// end of the response); the status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = vec![];
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("an HTTP response without a header end")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("an HTTP response without a status")?;
    Ok((status, raw[split + 4..].to_vec()))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
