//! What the replicated log reports: created by whoever serves the
//! metrics, registered there, and handed to the replica at start
//! (`ReplicaConfig::metrics`), so this crate calls nothing above it.

use prometheus::{exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter};

#[derive(Clone, Debug)]
pub struct RaftMetrics {
    /// Time from proposing a command to its being committed and applied.
    pub proposal_duration: Histogram,
    /// A snapshot's phases: `copy` (the state copied under its lock, on
    /// the raft driver), `encode` and `save` (in the background).
    pub snapshot_duration: HistogramVec,
    /// Committed entries `apply` refused as inconsistent (`refused`).
    pub apply_inconsistent: IntCounter,
}

/// Buckets from 0.5 ms to about 16 s, for control-plane latencies.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.0005, 2.0, 16).expect("valid buckets")
}

impl RaftMetrics {
    /// Fresh metrics, registered nowhere: register them to export them.
    pub fn new() -> RaftMetrics {
        RaftMetrics {
            proposal_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "edupool_raft_proposal_duration_seconds",
                    "Time from proposing a command to its being committed and applied.",
                )
                .buckets(latency_buckets()),
            )
            .expect("valid metric"),
            snapshot_duration: HistogramVec::new(
                HistogramOpts::new(
                    "edupool_raft_snapshot_duration_seconds",
                    "Time a snapshot took, by phase: copy (the state copied under its lock on the raft driver), encode and save (in the background).",
                )
                .buckets(latency_buckets()),
                &["phase"],
            )
            .expect("valid metric"),
            apply_inconsistent: IntCounter::new(
                "edupool_apply_inconsistent_total",
                "Committed log entries the state machine refused because it found its state inconsistent (a bug); each replica refuses them alike and changes nothing.",
            )
            .expect("valid metric"),
        }
    }

    /// Registers every raft metric in `registry`.
    pub fn register(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.proposal_duration.clone()))?;
        registry.register(Box::new(self.snapshot_duration.clone()))?;
        registry.register(Box::new(self.apply_inconsistent.clone()))?;
        Ok(())
    }
}

impl Default for RaftMetrics {
    fn default() -> RaftMetrics {
        RaftMetrics::new()
    }
}
