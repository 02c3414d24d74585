//! How a replica is set up: its id, store, timings, snapshot policy,
//! peers, TLS to them and where its metrics go.

use std::path::PathBuf;
use std::time::Duration;

use crate::metrics::RaftMetrics;
use crate::storage::Peers;

#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    pub id: u64,
    pub data_dir: PathBuf,
    pub tick: Duration,
    /// Every replica of the initial cluster (this one included) and its
    /// address. Empty or only this one: a single-replica cluster.
    pub peers: Peers,
    /// Start with no configuration and wait to be added by the leader
    /// (`cluster add-member`), instead of bootstrapping from `peers`.
    pub join: bool,
    /// Ticks without a leader before an election (randomized up to twice).
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Take a snapshot (and compact the log) after this many applied
    /// entries, once the log is large enough for `snapshot_log_ratio`.
    pub snapshot_entries: u64,
    /// The log must hold this many times the last snapshot's size in bytes
    /// (but never more than half of `snapshot_bytes`) before
    /// `snapshot_entries` makes a snapshot due; 0: entries alone decide.
    /// A large state is then encoded no more often than a log of its own
    /// size is written, so snapshot cost stays in proportion to the work
    /// (LogCabin's `snapshotRatio` rule).
    pub snapshot_log_ratio: f64,
    /// Entries kept behind a snapshot, so a briefly lagging follower catches
    /// up from the log instead of a whole snapshot.
    pub keep_entries: u64,
    /// Also snapshot (keeping no entries) once the log holds this many
    /// payload bytes, so a few huge entries cannot fill memory and disk.
    pub snapshot_bytes: u64,
    /// TLS to the peers (with this replica's `peer:<id>` certificate);
    /// when set, inbound raft traffic must show a peer certificate too.
    pub peer_tls: Option<tonic::transport::ClientTlsConfig>,
    /// Where proposal and snapshot timings go (registered by the caller).
    pub metrics: RaftMetrics,
}

impl ReplicaConfig {
    /// A single-replica cluster with the default timings.
    pub fn single(id: u64, data_dir: PathBuf, tick: Duration) -> ReplicaConfig {
        ReplicaConfig {
            id,
            data_dir,
            tick,
            peers: Peers::new(),
            join: false,
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_entries: 100_000,
            snapshot_log_ratio: 1.0,
            keep_entries: 10_000,
            snapshot_bytes: 256 * 1024 * 1024,
            peer_tls: None,
            metrics: RaftMetrics::new(),
        }
    }

    pub(crate) fn voters(&self) -> Vec<u64> {
        if self.join {
            vec![]
        } else if self.peers.is_empty() {
            vec![self.id]
        } else {
            self.peers.keys().copied().collect()
        }
    }
}
