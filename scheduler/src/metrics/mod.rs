//! Prometheus metrics of a scheduler replica, served on a listener of its
//! own (`--metrics-listen`).
//!
//! - `pool`: gauges of the pool (GPUs, nodes, tenants), computed from the
//!   replicated `State` at scrape time by one function.
//! - `edge`: counters and histograms updated where things happen.
//! - `grpc`: the tower layer that counts API calls by method and code.
//! - `audit`: what the replicated audit trail dropped, at scrape time.
//! - `jobs`: the observer that turns applied effects into job metrics.
//! - `http`: the `/metrics` HTTP listener.
//!
//! Names follow Prometheus conventions (base units, `_total`, `_seconds`,
//! `_bytes`); no label ever carries a job id. docs/monitoring.md lists
//! every metric with the dashboards and alerts built on them.

mod audit;
mod budget;
mod edge;
mod grpc;
pub mod http;
mod jobs;
pub mod pool;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use prometheus::proto::MetricFamily;
use prometheus::{Encoder, Gauge, GaugeVec, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use edge::{edge, Edge};
pub use grpc::{ApiMetrics, ApiMetricsLayer};

use crate::control::now_millis;
use crate::raft::Replica;
use crate::sessions::Sessions;

/// Everything one scrape reads.
pub struct Scrape {
    registry: Registry,
    replica: Replica,
    sessions: Sessions,
    data_dir: PathBuf,
}

impl Scrape {
    pub fn new(replica: Replica, sessions: Sessions, data_dir: PathBuf) -> Scrape {
        let registry = Registry::new();
        edge()
            .register(&registry)
            .expect("edge metrics have distinct names");
        Scrape {
            registry,
            replica,
            sessions,
            data_dir,
        }
    }

    /// The current metrics in Prometheus text format.
    pub fn render(&self) -> prometheus::Result<String> {
        let mut families = self.registry.gather();
        // The pool gauges walk every GPU and node: at 10,000 nodes, in a
        // debug build, 660 ms against 60 ms to copy the state (jobs and
        // nodes are shared behind `Arc`s). So the driver's lock is held
        // only for the copy. The indexes the tenant gauges read are built
        // first, on the state itself, so the copy carries them and the
        // driver keeps them exact from then on, as when they were built
        // under the lock.
        let copy = self.replica.read(|s| {
            let _ = (s.contributed(), s.holdings());
            s.clone()
        });
        families.extend(pool::families(&copy, now_millis()));
        families.extend(self.replica_families());
        // A pool without nodes or tenants yet has empty families, which
        // the text format cannot carry.
        families.retain(|f| !f.get_metric().is_empty());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = vec![];
        TextEncoder::new().encode(&families, &mut out)?;
        Ok(String::from_utf8(out).expect("the text format is UTF-8"))
    }

    /// Gauges of this replica: raft leadership, connected agents, the log's
    /// size and the room left for it. Commit and applied index and the
    /// snapshot, from the replica's raft status.
    fn replica_families(&self) -> Vec<MetricFamily> {
        let lead = *self.replica.leadership().borrow();
        let mut out = vec![];
        let mut one = |name: &str, help: &str, value: f64| {
            let g = Gauge::with_opts(Opts::new(name, help)).expect("valid metric");
            g.set(value);
            out.extend(prometheus::core::Collector::collect(&g));
        };
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        one(
            "edupool_raft_term",
            "The raft term this replica is in.",
            lead.term as f64,
        );
        one(
            "edupool_raft_is_leader",
            "1 if this replica leads the raft group.",
            flag(lead.is_leader),
        );
        one(
            "edupool_raft_has_leader",
            "1 if this replica knows a leader.",
            flag(lead.leader_id.is_some()),
        );
        let status = self.replica.status();
        one(
            "edupool_raft_commit_index",
            "The highest log index this replica knows to be committed.",
            status.commit as f64,
        );
        one(
            "edupool_raft_applied_index",
            "The highest log index this replica has applied to its state.",
            status.applied as f64,
        );
        one(
            "edupool_raft_last_index",
            "The last index of this replica's log.",
            status.last_index as f64,
        );
        one(
            "edupool_raft_snapshot_size_bytes",
            "Size of this replica's latest snapshot of the state.",
            status.snapshot_bytes as f64,
        );
        one(
            "edupool_raft_log_entries",
            "Entries kept in the log behind the latest snapshot.",
            status.log_entries as f64,
        );
        one(
            "edupool_agents_connected",
            "Agents with an open session on this replica (agents connect to the leader).",
            self.sessions.connected() as f64,
        );
        if let Some(bytes) = file_size(&self.data_dir.join("raft.redb")) {
            one(
                "edupool_raft_log_size_bytes",
                "Size of the replicated log's store on disk.",
                bytes as f64,
            );
        }
        if let Some((free, size)) = disk_space(&self.data_dir) {
            one(
                "edupool_data_dir_free_bytes",
                "Bytes free to unprivileged users on the filesystem holding the log.",
                free as f64,
            );
            one(
                "edupool_data_dir_size_bytes",
                "Size of the filesystem holding the log.",
                size as f64,
            );
        }
        let info = GaugeVec::new(
            Opts::new(
                "edupool_build_info",
                "1, labelled with the scheduler's version.",
            ),
            &["version"],
        )
        .expect("valid metric");
        info.with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        out.extend(prometheus::core::Collector::collect(&info));
        out
    }
}

fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

/// (free to unprivileged users, total) bytes of the filesystem at `path`.
fn disk_space(path: &Path) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let unit = s.fragment_size() as u64;
    Some((s.blocks_available() as u64 * unit, s.blocks() as u64 * unit))
}

/// Starts serving `/metrics` on `listener` and the job observer, as tasks
/// on `tasks` that end with `stop`.
pub fn start(
    listener: TcpListener,
    replica: &Replica,
    sessions: &Sessions,
    data_dir: &Path,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) {
    let scrape = Arc::new(Scrape::new(
        replica.clone(),
        sessions.clone(),
        data_dir.to_path_buf(),
    ));
    tasks.spawn(http::serve(listener, scrape, tasks.clone(), stop.clone()));
    tasks.spawn(jobs::run(replica.clone(), stop.clone()));
}
