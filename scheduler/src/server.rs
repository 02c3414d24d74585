//! `run(config, shutdown)`: one scheduler replica with its gRPC services.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use edupool_proto::v1::admin_service_server::AdminServiceServer;
use edupool_proto::v1::agent_service_server::AgentServiceServer;
use edupool_proto::v1::cluster_service_server::ClusterServiceServer;
use edupool_proto::v1::job_service_server::JobServiceServer;
use edupool_proto::v1::raft_service_server::RaftServiceServer;
use edupool_proto::v1::usage_service_server::UsageServiceServer;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::interceptor::InterceptedService;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::api::admin::Admin;
use crate::api::agents::Agents;
use crate::api::changes::ChangeLog;
use crate::api::cluster::Cluster;
use crate::api::convert::JobLimits;
use crate::api::jobs::Jobs;
use crate::api::streams::StreamLimits;
use crate::api::usage::Usage;
use crate::api::Auth;
use crate::control::{self, ControlConfig};
use crate::raft::{DriverEnd, Peers, Replica, ReplicaConfig, StorageError, MAX_RAFT_MESSAGE_BYTES};
use crate::sessions::Sessions;
use crate::tls::TlsConfig;

/// Largest request the server decodes; job specs are far smaller.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub admin_token: String,
    pub agent_token: String,
    pub node_lost_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub limits: JobLimits,
    /// Where to serve Prometheus metrics (`/metrics`); off when `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// TLS on the listener and to raft peers; plaintext when `None`, which
    /// only `dev` mode and in-process tests use (`serve` refuses it).
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The replicated log stopped on its own: the process should exit
    /// with an error so that its supervisor restarts it.
    #[error("the replica stopped: {0}")]
    Replication(String),
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), ServerError> {
        let bad = |m: &str| Err(ServerError::Config(m.to_string()));
        if self.admin_token.len() < 16 {
            return bad("the admin token must be at least 16 characters");
        }
        if self.agent_token.len() < 16 {
            return bad("the agent token must be at least 16 characters");
        }
        if self.admin_token == self.agent_token {
            return bad("the admin and agent tokens must differ");
        }
        if !(self.limits.rate.per_second > 0.0 && self.limits.rate.burst > 0) {
            return bad("the request rate limit and its burst must be above zero");
        }
        if self.limits.max_pending_per_tenant == 0 {
            return bad("the pending-jobs limit per tenant must be at least 1");
        }
        if self.heartbeat_interval.is_zero() {
            return bad("the heartbeat interval must be above zero");
        }
        if self.node_lost_timeout < self.heartbeat_interval * 3 {
            return bad("the node-lost timeout must be at least three heartbeat intervals");
        }
        Ok(())
    }
}

/// How this replica takes part in the replica set. The default is a
/// single-replica cluster, as `dev` runs.
///
/// Raft peers and clients share the one listener: the address a replica is
/// known by in `peers` is also the address clients are sent to when it
/// leads, and an operator opens one port per replica.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// This replica's id (1 and up), unique in the cluster.
    pub id: u64,
    /// Every replica of the initial cluster, this one included, and the
    /// address it serves on. Empty: a single-replica cluster.
    pub peers: Peers,
    /// Start empty and wait to be added with `cluster add-member`.
    pub join: bool,
    /// Write this backup into the (empty) data directory first, as a
    /// single-replica cluster.
    pub restore_from: Option<PathBuf>,
    /// The raft clock: elections after 10 to 20 ticks, heartbeats every 2.
    pub raft_tick: Duration,
    /// Snapshot and compact the log after this many applied entries (see
    /// `snapshot_log_ratio`).
    pub snapshot_entries: u64,
    /// Before `snapshot_entries` makes a snapshot due, wait until the log
    /// holds this many times the last snapshot's size in bytes (0: entries
    /// alone decide).
    pub snapshot_log_ratio: f64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            id: 1,
            peers: Peers::new(),
            join: false,
            restore_from: None,
            raft_tick: Duration::from_millis(50),
            snapshot_entries: 100_000,
            snapshot_log_ratio: 1.0,
        }
    }
}

impl ReplicationConfig {
    pub fn validate(&self) -> Result<(), ServerError> {
        let bad = |m: String| Err(ServerError::Config(m));
        if self.id == 0 {
            return bad("replica ids start at 1".into());
        }
        if !self.peers.is_empty() && !self.peers.contains_key(&self.id) {
            return bad(format!(
                "--peers does not name this replica (--id {}); list every replica, this one included",
                self.id
            ));
        }
        if self.join && self.restore_from.is_some() {
            return bad("--join and --restore-from exclude each other: a restored replica starts a new cluster".into());
        }
        if self.restore_from.is_some() && self.peers.len() > 1 {
            return bad("a restore starts a single-replica cluster: give only this replica in --peers, then add the others with `edupoolctl cluster add-member`".into());
        }
        if self.raft_tick.is_zero() {
            return bad("the raft tick must be above zero".into());
        }
        if self.snapshot_entries == 0 {
            return bad("the snapshot interval must be at least one entry".into());
        }
        if !(self.snapshot_log_ratio.is_finite() && self.snapshot_log_ratio >= 0.0) {
            return bad(format!(
                "--snapshot-log-ratio must be a number of 0 or more, not {}",
                self.snapshot_log_ratio
            ));
        }
        Ok(())
    }
}

impl ReplicationConfig {
    /// Whether this replica starts as one of several (or joins some).
    fn several(&self) -> bool {
        self.join || self.peers.len() > 1
    }
}

/// Raft traffic is authenticated by peer certificates only, so replicas
/// never talk plaintext: anyone reaching the port could append entries.
fn plaintext_replicas() -> ServerError {
    ServerError::Config(
        "replicas exchange raft messages only over TLS, each showing its peer:<id> certificate: a scheduler without TLS runs as a single replica (`edupool-sim dev`); give --ca-cert, --cert and --key to run several".into(),
    )
}

/// A replica whose listener is bound (so its address is known) but which
/// is not serving yet.
pub struct Bound {
    config: ServerConfig,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    replication: ReplicationConfig,
}

impl Bound {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(crate::metrics::http::local_addr)
    }

    /// Makes this replica part of a replica set (see `ReplicationConfig`).
    pub fn with_replication(mut self, replication: ReplicationConfig) -> Result<Self, ServerError> {
        replication.validate()?;
        if self.config.tls.is_none() && replication.several() {
            return Err(plaintext_replicas());
        }
        self.replication = replication;
        Ok(self)
    }
}

pub async fn bind(config: ServerConfig) -> Result<Bound, ServerError> {
    config.validate()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let metrics = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?,
        ),
        None => None,
    };
    Ok(Bound {
        config,
        listener,
        metrics,
        replication: ReplicationConfig::default(),
    })
}

/// Serves until `shutdown` is cancelled, then stops every task it started.
pub async fn serve(bound: Bound, shutdown: CancellationToken) -> Result<(), ServerError> {
    let local = bound.local_addr();
    let Bound {
        config,
        listener,
        metrics,
        replication: rep,
    } = bound;
    if let Some(file) = &rep.restore_from {
        let backup = std::fs::read(file)
            .map_err(|e| ServerError::Config(format!("cannot read {}: {e}", file.display())))?;
        let address = rep.peers.get(&rep.id).cloned().unwrap_or(local.to_string());
        let index = crate::raft::restore_backup(&config.data_dir, rep.id, &address, &backup)?;
        tracing::info!(index, file = %file.display(), "restored a backup as a single-replica cluster");
    }
    let tasks = TaskTracker::new();
    let stop = shutdown.child_token();
    let replica = Replica::start(
        ReplicaConfig {
            peers: rep.peers.clone(),
            join: rep.join,
            snapshot_entries: rep.snapshot_entries,
            snapshot_log_ratio: rep.snapshot_log_ratio,
            keep_entries: (rep.snapshot_entries / 10).max(1),
            peer_tls: config.tls.as_ref().map(TlsConfig::peer_client),
            metrics: crate::metrics::edge().raft.clone(),
            ..ReplicaConfig::single(rep.id, config.data_dir.clone(), rep.raft_tick)
        },
        stop.clone(),
        &tasks,
    )?;
    let members = replica.status().members.len();
    if config.tls.is_none() && members > 1 {
        stop.cancel();
        tasks.close();
        tasks.wait().await;
        return Err(plaintext_replicas());
    }
    // A single-replica pool (no --peers, no --join, alone in its store)
    // serves no RaftService at all: nobody may speak raft to it.
    let serves_raft = config.tls.is_some() && (!rep.peers.is_empty() || rep.join || members > 1);
    if !serves_raft {
        replica.set_standalone();
    }
    if rep.peers.len() <= 1 && !rep.join {
        // Peers reach this replica through the listener served below, so
        // only a single voter (which elects itself) may wait here.
        wait_for_leader(&replica, Duration::from_secs(10)).await;
    }
    let sessions = Sessions::default();
    if let Some(listener) = metrics {
        crate::metrics::start(
            listener,
            &replica,
            &sessions,
            &config.data_dir,
            &tasks,
            &stop,
        );
    }
    let auth = Auth::with_rate_limit(
        &config.admin_token,
        &config.agent_token,
        replica.clone(),
        config.limits.rate,
    );
    tasks.spawn(control::run(
        replica.clone(),
        sessions.clone(),
        ControlConfig {
            // A round runs only when something changed; this is how long
            // new work may wait for one (and how much a round batches).
            plan_interval: Duration::from_millis(20),
            node_lost_timeout: config.node_lost_timeout,
            session_timeout: config.heartbeat_interval * 3,
            policy: Default::default(),
            planner_round: crate::metrics::edge().planner_round.clone(),
            view_resyncs: crate::metrics::edge().planner_view_resyncs.clone(),
        },
        stop.clone(),
    ));

    let jobs = Jobs {
        replica: replica.clone(),
        auth: auth.clone(),
        sessions: sessions.clone(),
        limits: config.limits.clone(),
        tasks: tasks.clone(),
        changes: ChangeLog::start(&replica, &tasks, stop.clone()),
        streams: StreamLimits::default(),
    };
    let admin = Admin {
        replica: replica.clone(),
        auth: auth.clone(),
        sessions: sessions.clone(),
    };
    let cluster = Cluster {
        replica: replica.clone(),
        auth: auth.clone(),
    };
    let usage = Usage {
        replica: replica.clone(),
        auth: auth.clone(),
    };
    let raft_server = replica.raft_server();
    let agents = Agents {
        replica: replica.clone(),
        auth,
        sessions,
        heartbeat: config.heartbeat_interval,
        scheduler_id: rep.id.to_string(),
        tasks: tasks.clone(),
        require_node_cert: config.tls.is_some(),
    };

    let health = serving_reporter().await;
    let health_service = HealthServer::new(HealthService::from_health_reporter(health.clone()));
    tasks.spawn(not_serving_at(stop.clone(), health));
    // Both reflection versions: v1alpha is what older tools still speak
    // (grpcio-reflection's client, grpcurl before 1.8.8, Postman).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(edupool_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServerError::Config(format!("reflection: {e}")))?;
    let reflection = reflection()
        .build_v1()
        .map_err(|e| ServerError::Config(format!("reflection: {e}")))?;

    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), tls = config.tls.is_some(), "serving");
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls.server())?;
    }
    let result = builder
        .layer(crate::metrics::ApiMetricsLayer)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(JobServiceServer::new(jobs).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(AdminServiceServer::new(admin).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(AgentServiceServer::new(agents).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(
            ClusterServiceServer::new(cluster).max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(UsageServiceServer::new(usage).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_optional_service(serves_raft.then(|| {
            InterceptedService::new(
                RaftServiceServer::new(raft_server)
                    .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
                crate::raft::peer_only,
            )
        }))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled())
        .await;
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    if let Some(DriverEnd::Failed(why)) = replica.ended() {
        return Err(ServerError::Replication(why));
    }
    Ok(result?)
}

/// Turns health to NOT_SERVING once the replica stops, whether shut down
/// or failed, so that probes stop sending traffic while it drains.
async fn not_serving_at(stop: CancellationToken, health: HealthReporter) {
    use tonic_health::ServingStatus::NotServing;
    stop.cancelled().await;
    health.set_service_status("", NotServing).await;
    health.set_not_serving::<JobServiceServer<Jobs>>().await;
    health.set_not_serving::<AdminServiceServer<Admin>>().await;
    health.set_not_serving::<AgentServiceServer<Agents>>().await;
    health
        .set_not_serving::<ClusterServiceServer<Cluster>>()
        .await;
    health.set_not_serving::<UsageServiceServer<Usage>>().await;
}

/// Waits until some replica leads (at once for a single voter), so the
/// first callers are not told to look elsewhere. Serving starts anyway
/// after `timeout`: followers answer with the leader's address.
async fn wait_for_leader(replica: &Replica, timeout: Duration) {
    let mut leadership = replica.leadership();
    let known = leadership.wait_for(|l| l.leader_id.is_some());
    if tokio::time::timeout(timeout, known).await.is_err() {
        tracing::warn!("no raft leader after {timeout:?}; serving anyway");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(config: ReplicationConfig) -> String {
        match config.validate() {
            Err(ServerError::Config(m)) => m,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn replicas_without_tls_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            admin_token: "admin-token-0123456789".into(),
            agent_token: "agent-token-0123456789".into(),
            node_lost_timeout: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(2),
            limits: JobLimits::default(),
            metrics_listen: None,
            tls: None,
        };
        let peers: Peers = [(1, "127.0.0.1:7001"), (2, "127.0.0.1:7002")]
            .into_iter()
            .map(|(id, a)| (id, a.to_string()))
            .collect();
        let several = ReplicationConfig {
            peers,
            ..Default::default()
        };
        let joining = ReplicationConfig {
            join: true,
            ..Default::default()
        };
        for rep in [several, joining] {
            let bound = bind(config.clone()).await.unwrap();
            match bound.with_replication(rep) {
                Err(ServerError::Config(m)) => assert!(
                    m.starts_with("replicas exchange raft messages only over TLS"),
                    "{m}"
                ),
                _ => panic!("plaintext replicas must be refused"),
            }
        }
        // One replica alone may run plaintext (dev mode).
        let alone = bind(config).await.unwrap();
        assert!(alone.with_replication(ReplicationConfig::default()).is_ok());
    }

    #[test]
    fn snapshot_settings_out_of_range_are_refused() {
        assert!(ReplicationConfig::default().validate().is_ok());
        let zero = ReplicationConfig {
            snapshot_entries: 0,
            ..Default::default()
        };
        assert_eq!(
            refusal(zero),
            "the snapshot interval must be at least one entry"
        );
        for ratio in [-1.0, f64::NAN, f64::INFINITY] {
            let bad = ReplicationConfig {
                snapshot_log_ratio: ratio,
                ..Default::default()
            };
            assert!(
                refusal(bad).starts_with("--snapshot-log-ratio must be a number of 0 or more"),
                "{ratio}"
            );
        }
        let by_entries = ReplicationConfig {
            snapshot_log_ratio: 0.0,
            ..Default::default()
        };
        assert!(by_entries.validate().is_ok());
    }
}

/// The health reporter with every service a client calls marked serving
/// (the raft transport is between replicas and not reported).
async fn serving_reporter() -> HealthReporter {
    let health = HealthReporter::new();
    health.set_serving::<JobServiceServer<Jobs>>().await;
    health.set_serving::<AdminServiceServer<Admin>>().await;
    health.set_serving::<AgentServiceServer<Agents>>().await;
    health.set_serving::<ClusterServiceServer<Cluster>>().await;
    health.set_serving::<UsageServiceServer<Usage>>().await;
    health
}

#[cfg(test)]
mod health_tests {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_server::Health;
    use tonic_health::pb::HealthCheckRequest;

    use super::*;

    #[tokio::test]
    async fn every_client_service_reports_serving() {
        let health = HealthService::from_health_reporter(serving_reporter().await);
        for service in [
            "edupool.v1.JobService",
            "edupool.v1.AdminService",
            "edupool.v1.AgentService",
            "edupool.v1.ClusterService",
            "edupool.v1.UsageService",
        ] {
            let reply = health
                .check(tonic::Request::new(HealthCheckRequest {
                    service: service.into(),
                }))
                .await
                .unwrap_or_else(|e| panic!("{service}: {e}"));
            assert_eq!(
                reply.into_inner().status,
                ServingStatus::Serving as i32,
                "{service}"
            );
        }
    }
}
