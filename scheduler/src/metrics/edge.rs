//! Counters and histograms updated where things happen: the gRPC layer,
//! the raft proposal path, the planner loop, the agent sessions and the
//! job observer.
//!
//! They are process-wide (one set per scheduler process) and registered
//! once. The scheduler's own edges name them (`edge().api_requests`); the
//! replicated log and the control loop are handed theirs at start
//! (`edge().raft`, `edge().planner_round`, `edge().planner_view_resyncs`),
//! so no code below the metrics calls up into them.

use std::sync::LazyLock;

use edupool_raft::RaftMetrics;
use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts,
};

pub struct Edge {
    /// gRPC calls by service, method and final status code.
    pub api_requests: IntCounterVec,
    /// gRPC call duration by service and method, until the response ends
    /// (for streams, the whole stream).
    pub api_duration: HistogramVec,
    /// Job state changes by from-state, to-state and priority class.
    pub job_transitions: IntCounterVec,
    /// Time a job waited between (re)entering the queue and its placement.
    pub queue_delay: HistogramVec,
    /// Time between a job's placement and its agent reporting it running.
    pub placement_latency: Histogram,
    /// Wall time of one planning call (the pure planner over the state).
    pub planner_round: Histogram,
    /// Times the planner's copy of the state was taken afresh from the
    /// driver's because it missed applied entries.
    pub planner_view_resyncs: IntCounter,
    /// Agent sessions opened (a reconnecting agent opens a new one).
    pub agent_sessions_opened: IntCounter,
    /// Jobs ordered to stop so a tenant below its guarantee gets GPUs, by
    /// the victim's priority class.
    pub preemptions: IntCounterVec,
    /// Time from the first preemption for a job to its placement, for
    /// placements that needed borrowed GPUs reclaimed.
    pub reclaim_latency: Histogram,
    /// The replicated log's proposal and snapshot timings, handed to the
    /// replica at start.
    pub raft: RaftMetrics,
}

static EDGE: LazyLock<Edge> = LazyLock::new(Edge::new);

/// The process-wide edge metrics.
pub fn edge() -> &'static Edge {
    &EDGE
}

/// Buckets from 10 ms to about 1.5 days, for waits measured in seconds
/// to hours (queueing).
fn wait_buckets() -> Vec<f64> {
    exponential_buckets(0.01, 3.0, 14).expect("valid buckets")
}

/// Buckets from 0.5 ms to about 16 s, for control-plane latencies.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.0005, 2.0, 16).expect("valid buckets")
}

impl Edge {
    fn new() -> Edge {
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric")
        };
        Edge {
            api_requests: counter_vec(
                "edupool_api_requests_total",
                "gRPC calls served, by service, method and status code.",
                &["service", "method", "code"],
            ),
            api_duration: HistogramVec::new(
                HistogramOpts::new(
                    "edupool_api_request_duration_seconds",
                    "Duration of gRPC calls until their response ends, by service and method.",
                )
                .buckets(latency_buckets()),
                &["service", "method"],
            )
            .expect("valid metric"),
            job_transitions: counter_vec(
                "edupool_job_transitions_total",
                "Job state changes seen by the leader, by from-state, to-state and priority class.",
                &["from", "to", "priority"],
            ),
            queue_delay: HistogramVec::new(
                HistogramOpts::new(
                    "edupool_job_queue_delay_seconds",
                    "Time jobs waited in the queue before placement, by priority class.",
                )
                .buckets(wait_buckets()),
                &["priority"],
            )
            .expect("valid metric"),
            placement_latency: histogram(
                "edupool_job_placement_latency_seconds",
                "Time from a job's placement to its agent reporting it running.",
                latency_buckets(),
            ),
            planner_round: histogram(
                "edupool_planner_round_duration_seconds",
                "Duration of one planning round: the planner computing its decisions over the state.",
                latency_buckets(),
            ),
            planner_view_resyncs: IntCounter::new(
                "edupool_planner_view_resyncs_total",
                "Times the leader's planner copied the applied state afresh because its copy missed entries (its feed was full, or a snapshot was installed).",
            )
            .expect("valid metric"),
            agent_sessions_opened: IntCounter::new(
                "edupool_agent_sessions_opened_total",
                "Agent sessions opened on this replica.",
            )
            .expect("valid metric"),
            preemptions: counter_vec(
                "edupool_preemptions_total",
                "Jobs preempted to return borrowed GPUs to a tenant below its guarantee, by the victim's priority class.",
                &["priority"],
            ),
            reclaim_latency: histogram(
                "edupool_reclaim_latency_seconds",
                "Time from the first preemption for a job within its tenant's guarantee to its placement.",
                wait_buckets(),
            ),
            raft: RaftMetrics::new(),
        }
    }

    /// Registers every edge metric in `registry`.
    pub fn register(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.api_requests.clone()))?;
        registry.register(Box::new(self.api_duration.clone()))?;
        registry.register(Box::new(self.job_transitions.clone()))?;
        registry.register(Box::new(self.queue_delay.clone()))?;
        registry.register(Box::new(self.placement_latency.clone()))?;
        registry.register(Box::new(self.planner_round.clone()))?;
        registry.register(Box::new(self.planner_view_resyncs.clone()))?;
        registry.register(Box::new(self.agent_sessions_opened.clone()))?;
        registry.register(Box::new(self.preemptions.clone()))?;
        registry.register(Box::new(self.reclaim_latency.clone()))?;
        self.raft.register(registry)?;
        Ok(())
    }
}
