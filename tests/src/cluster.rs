//! A fault harness for a replicated scheduler: N `edupool-scheduler`
//! replicas as real processes on loopback, which tests kill (`kill -9`),
//! restart, pause (SIGSTOP/SIGCONT) and partition.
//!
//! Partitions use a loopback TCP proxy per directed peer link, owned by the
//! harness: replica `i` reaches replica `j` only through proxy `i→j`, and
//! cutting a link closes its connections and refuses new ones. This needs
//! no root and no test hook in the binaries, runs on any CI machine, and
//! can cut one direction alone (network namespaces with veth pairs would
//! need root and per-test setup, which CI machines and developer laptops
//! do not all grant). Clients reach each replica through a proxy of its
//! own, which is never cut, so a restarted replica (on a new OS-given port)
//! keeps its address.

use std::collections::BTreeMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::tls::{self, TestPki};
use crate::{bin, eventually, serve_replica, simulated_agent, Proc, ADMIN_TOKEN};

/// A loopback TCP proxy for one direction of one link.
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<ProxyShared>,
}

struct ProxyShared {
    target: Mutex<Option<SocketAddr>>,
    cut: AtomicBool,
    stop: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
    /// One flag per spliced connection: set, the connection is a black
    /// hole (what is sent is read and dropped, nothing comes back).
    frozen: Mutex<Vec<Arc<AtomicBool>>>,
}

impl Proxy {
    pub fn start() -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(ProxyShared {
            target: Mutex::new(None),
            cut: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
            frozen: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(inbound) = conn else { continue };
                let target = *s.target.lock().expect("proxy lock");
                match target {
                    Some(t) if !s.cut.load(Ordering::SeqCst) => {
                        if let Ok(outbound) = TcpStream::connect(t) {
                            splice(&s, inbound, outbound);
                        }
                    }
                    // Cut or no target: the connection is refused by closing it.
                    _ => drop(inbound),
                }
            }
        });
        Ok(Proxy { addr, shared })
    }

    pub fn set_target(&self, target: SocketAddr) {
        *self.shared.target.lock().expect("proxy lock") = Some(target);
        self.close_all();
    }

    /// Loses everything from now on, like a cable pulled.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.close_all();
    }

    /// Loses everything from now on without closing anything, like a
    /// path whose routers or firewalls drop packets: the connections open
    /// now stay open but never carry another byte, even after `heal`
    /// (the path's state is gone), and new ones are refused until then.
    pub fn black_hole(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        for f in self.shared.frozen.lock().expect("proxy lock").drain(..) {
            f.store(true, Ordering::SeqCst);
        }
    }

    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    fn close_all(&self) {
        for s in self.shared.open.lock().expect("proxy lock").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.close_all();
        // Wake the accept loop so its thread ends.
        let _ = TcpStream::connect(self.addr);
    }
}

fn splice(shared: &Arc<ProxyShared>, a: TcpStream, b: TcpStream) {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    {
        let mut open = shared.open.lock().expect("proxy lock");
        open.retain(|s| s.peer_addr().is_ok());
        if let (Ok(a3), Ok(b3)) = (a.try_clone(), b.try_clone()) {
            open.push(a3);
            open.push(b3);
        }
    }
    let frozen = Arc::new(AtomicBool::new(false));
    shared
        .frozen
        .lock()
        .expect("proxy lock")
        .push(frozen.clone());
    pipe(a, b2, frozen.clone());
    pipe(b, a2, frozen);
}

fn pipe(mut from: TcpStream, mut to: TcpStream, frozen: Arc<AtomicBool>) {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                // A frozen connection reads and drops: the sender sees
                // its bytes accepted and never an answer.
                Ok(_) if frozen.load(Ordering::SeqCst) => continue,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// One replica process and where it lives.
pub struct Replica {
    pub id: u64,
    pub proc: Option<Proc>,
    pub addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// Clients reach the replica here (never cut).
    pub client: Proxy,
    extra: Vec<String>,
}

/// N replicas wired through proxies.
pub struct Cluster {
    pub replicas: BTreeMap<u64, Replica>,
    /// (from, to) -> the proxy `from` uses to reach `to`.
    pub links: BTreeMap<(u64, u64), Proxy>,
    _dir: tempfile::TempDir,
    paused: Vec<u64>,
}

impl Cluster {
    /// Starts `n` replicas (ids 1..=n) that bootstrap one cluster.
    /// `extra` flags go to every replica (e.g. `--snapshot-entries 200`).
    pub fn start(n: u64, extra: &[&str]) -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let ids: Vec<u64> = (1..=n).collect();
        let mut links = BTreeMap::new();
        for &i in &ids {
            for &j in &ids {
                if i != j {
                    links.insert((i, j), Proxy::start()?);
                }
            }
        }
        let mut replicas = BTreeMap::new();
        for &i in &ids {
            replicas.insert(
                i,
                Replica {
                    id: i,
                    proc: None,
                    addr: None,
                    data_dir: dir.path().join(format!("replica-{i}")),
                    client: Proxy::start()?,
                    extra: extra.iter().map(|s| s.to_string()).collect(),
                },
            );
        }
        let mut cluster = Cluster {
            replicas,
            links,
            _dir: dir,
            paused: Vec::new(),
        };
        for &i in &ids {
            cluster.launch(i, &[])?;
        }
        Ok(cluster)
    }

    /// `--peers` as replica `i` sees them: itself at its client address,
    /// every other replica through the link proxy.
    fn peers_for(&self, i: u64) -> String {
        self.replicas
            .keys()
            .map(|&j| {
                let addr = if j == i {
                    self.replicas[&i].client.addr
                } else {
                    self.links[&(i, j)].addr
                };
                format!("{j}={addr}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    fn launch(&mut self, i: u64, more: &[&str]) -> Result<()> {
        let peers = self.peers_for(i);
        // Replicas show peer:<id> certificates from the test's CA, and the
        // proxies pass TLS through untouched.
        let pki = TestPki::open(self._dir.path())?;
        let r = self.replicas.get_mut(&i).expect("known replica");
        tls::trust(&r.client.addr.to_string(), &pki.ca_cert());
        let mut args: Vec<std::ffi::OsString> = ["--listen", "127.0.0.1:0", "--data-dir"]
            .map(Into::into)
            .to_vec();
        args.push(r.data_dir.clone().into());
        args.extend(pki.serve_args(i)?);
        let id = i.to_string();
        args.extend(
            [
                "--id",
                &id,
                "--peers",
                &peers,
                "--node-lost-timeout",
                "30s",
                "--heartbeat-interval",
                "200ms",
            ]
            .map(Into::into),
        );
        args.extend(r.extra.iter().map(Into::into));
        args.extend(more.iter().map(Into::into));
        let (proc, addr) = serve_replica(i, args)?;
        r.proc = Some(proc);
        r.addr = Some(addr);
        r.client.set_target(addr);
        for ((_, to), proxy) in &self.links {
            if *to == i {
                proxy.set_target(addr);
            }
        }
        Ok(())
    }

    pub fn ids(&self) -> Vec<u64> {
        self.replicas.keys().copied().collect()
    }

    /// The client address of replica `i` (`http://...`).
    pub fn endpoint(&self, i: u64) -> String {
        format!("http://{}", self.replicas[&i].client.addr)
    }

    /// A gRPC channel to replica `i` (through its client proxy) over TLS,
    /// trusting the test's CA.
    pub async fn channel(&self, i: u64) -> Result<tonic::transport::Channel> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
        let ca = TestPki::open(self._dir.path())?.ca_cert();
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
        let addr = self.replicas[&i].client.addr;
        Ok(Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(tls)?
            .connect()
            .await?)
    }

    /// Every replica's client address, comma-separated.
    pub fn endpoints(&self) -> String {
        self.ids()
            .into_iter()
            .map(|i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn kill9(&mut self, i: u64) {
        let r = self.replicas.get_mut(&i).expect("known replica");
        if let Some(mut p) = r.proc.take() {
            p.kill9();
        }
        self.paused.retain(|p| *p != i);
    }

    /// Starts replica `i` again on its data directory (a new OS port; the
    /// proxies follow it).
    pub fn restart(&mut self, i: u64) -> Result<()> {
        self.kill9(i);
        self.launch(i, &[])
    }

    /// Makes replica `i`'s raft driver panic (a test-only failpoint) and
    /// waits for its process to exit; how it exited.
    pub fn panic_driver(&mut self, i: u64, timeout: Duration) -> Result<std::process::ExitStatus> {
        let r = self.replicas.get_mut(&i).expect("known replica");
        std::fs::create_dir_all(&r.data_dir)?;
        std::fs::write(
            r.data_dir
                .join(edupool_scheduler::raft::failpoints::DRIVER_PANIC),
            b"",
        )?;
        let mut proc = r
            .proc
            .take()
            .ok_or_else(|| anyhow!("replica {i} is not running"))?;
        proc.wait_exit(timeout)
    }

    pub fn pause(&mut self, i: u64) -> Result<()> {
        self.signal(i, nix::sys::signal::Signal::SIGSTOP)?;
        self.paused.push(i);
        Ok(())
    }

    pub fn resume(&mut self, i: u64) -> Result<()> {
        self.signal(i, nix::sys::signal::Signal::SIGCONT)?;
        self.paused.retain(|p| *p != i);
        Ok(())
    }

    fn signal(&self, i: u64, sig: nix::sys::signal::Signal) -> Result<()> {
        let pid = self.replicas[&i]
            .proc
            .as_ref()
            .map(Proc::pid)
            .ok_or_else(|| anyhow!("replica {i} is not running"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)?;
        Ok(())
    }

    /// Cuts every link between the two sides, both directions.
    pub fn partition(&self, side: &[u64]) {
        for ((from, to), proxy) in &self.links {
            if side.contains(from) != side.contains(to) {
                proxy.cut();
            }
        }
    }

    /// As `partition`, but as a black hole (see `Proxy::black_hole`): the
    /// connections across the cut stay open and dead.
    pub fn black_hole(&self, side: &[u64]) {
        for ((from, to), proxy) in &self.links {
            if side.contains(from) != side.contains(to) {
                proxy.black_hole();
            }
        }
    }

    pub fn heal(&self) {
        for proxy in self.links.values() {
            proxy.heal();
        }
    }

    /// Heals every link and resumes every paused replica.
    pub fn heal_all(&mut self) -> Result<()> {
        self.heal();
        for i in self.paused.clone() {
            self.resume(i)?;
        }
        Ok(())
    }

    /// Runs `edupoolctl --output json <args>` against `endpoints`.
    pub fn ctl_at(endpoints: &str, token: &str, args: &[&str]) -> Output {
        let mut ctl = Command::new(bin("edupoolctl"));
        ctl.args(["--endpoint", endpoints, "--output", "json"]);
        if let Some(ca) = tls::ca_for(endpoints) {
            ctl.arg("--ca-cert").arg(ca);
        }
        ctl.args(args)
            .env("EDUPOOL_TOKEN", token)
            .output()
            .expect("edupoolctl runs")
    }

    /// `ctl_at` that must succeed; its stdout as JSON.
    pub fn ctl_json(endpoints: &str, token: &str, args: &[&str]) -> Result<serde_json::Value> {
        let out = Self::ctl_at(endpoints, token, args);
        if !out.status.success() {
            bail!(
                "edupoolctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `cluster status` as replica `i` sees it.
    pub fn status(&self, i: u64) -> Result<serde_json::Value> {
        Self::ctl_json(
            &self.endpoint(i),
            ADMIN_TOKEN,
            &["--stale-ok", "cluster", "status"],
        )
    }

    /// The replica that leads, as a majority of the running ones agree.
    pub fn leader(&self, timeout: Duration) -> Result<u64> {
        eventually("a leader", timeout, || {
            let mut votes = BTreeMap::<u64, usize>::new();
            for i in self.running() {
                if let Ok(s) = self.status(i) {
                    if let Some(l) = s["leader_id"].as_u64() {
                        *votes.entry(l).or_default() += 1;
                    }
                }
            }
            let quorum = self.replicas.len() / 2 + 1;
            votes
                .into_iter()
                .find(|(l, n)| *n >= quorum && self.running().contains(l))
                .map(|(l, _)| l)
        })
    }

    /// Replicas with a live (maybe paused) process.
    pub fn running(&self) -> Vec<u64> {
        self.replicas
            .values()
            .filter(|r| r.proc.is_some())
            .map(|r| r.id)
            .collect()
    }

    /// Waits until every running replica has applied the same index with
    /// the same state hash; returns the hash.
    pub fn converged(&self, timeout: Duration) -> Result<String> {
        let last = std::cell::RefCell::new(vec![]);
        eventually("replicas to converge", timeout, || {
            let views: Vec<(u64, u64, String)> = self
                .running()
                .into_iter()
                .filter_map(|i| self.status(i).ok().map(|s| (i, s)))
                .map(|(i, s)| {
                    (
                        i,
                        s["applied_index"].as_u64().unwrap_or(0),
                        s["state_hash"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            *last.borrow_mut() = views.clone();
            let first = views.first()?.clone();
            let same = views.iter().all(|v| (v.1, &v.2) == (first.1, &first.2));
            (views.len() == self.running().len() && same).then_some(first.2)
        })
        .with_context(|| {
            format!(
                "last seen (replica, applied index, state hash): {:?}",
                last.borrow()
            )
        })
    }

    /// Waits until the cluster at `endpoints` lists `n` nodes.
    pub fn wait_for_nodes(endpoints: &str, n: usize, timeout: Duration) -> Result<()> {
        eventually(&format!("{n} nodes registered"), timeout, || {
            let v = Cluster::ctl_json(endpoints, ADMIN_TOKEN, &["node", "list"]).ok()?;
            (v.as_array()?.len() == n).then_some(())
        })
    }

    /// Starts an agent with simulated GPUs that knows every replica.
    pub fn agent(&self, node: &str, gpus: &str, work_dir: &Path) -> Result<Proc> {
        simulated_agent(&self.endpoints(), node, gpus, work_dir, "error")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Resume paused replicas so SIGKILL reaps them at once.
        for i in self.paused.clone() {
            let _ = self.resume(i);
        }
    }
}
