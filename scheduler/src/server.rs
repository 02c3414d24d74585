//! `run(config, shutdown)`: one scheduler replica with its gRPC services.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use edupool_proto::v1::admin_service_server::AdminServiceServer;
use edupool_proto::v1::agent_service_server::AgentServiceServer;
use edupool_proto::v1::job_service_server::JobServiceServer;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::admin::Admin;
use crate::api::agents::Agents;
use crate::api::convert::JobLimits;
use crate::api::jobs::Jobs;
use crate::api::Auth;
use crate::control::{self, ControlConfig};
use crate::raft::{Replica, ReplicaConfig, StorageError};
use crate::sessions::Sessions;

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
        if self.heartbeat_interval.is_zero() {
            return bad("the heartbeat interval must be above zero");
        }
        if self.node_lost_timeout < self.heartbeat_interval * 3 {
            return bad("the node-lost timeout must be at least three heartbeat intervals");
        }
        Ok(())
    }
}

/// A replica whose listener is bound (so its address is known) but which
/// is not serving yet.
pub struct Bound {
    config: ServerConfig,
    listener: TcpListener,
}

impl Bound {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
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
    Ok(Bound { config, listener })
}

/// Serves until `shutdown` is cancelled, then stops every task it started.
pub async fn serve(bound: Bound, shutdown: CancellationToken) -> Result<(), ServerError> {
    let Bound { config, listener } = bound;
    let tasks = TaskTracker::new();
    let stop = shutdown.child_token();
    let replica = Replica::start(
        ReplicaConfig {
            id: 1,
            data_dir: config.data_dir.clone(),
            tick: Duration::from_millis(100),
        },
        stop.clone(),
        &tasks,
    )?;
    wait_for_leader(&replica, Duration::from_secs(10)).await;
    let sessions = Sessions::default();
    let auth = Auth::new(&config.admin_token, &config.agent_token, replica.clone());
    tasks.spawn(control::run(
        replica.clone(),
        sessions.clone(),
        ControlConfig {
            plan_interval: Duration::from_millis(100),
            node_lost_timeout: config.node_lost_timeout,
            session_timeout: config.heartbeat_interval * 3,
            policy: Default::default(),
        },
        stop.clone(),
    ));

    let jobs = Jobs {
        replica: replica.clone(),
        auth: auth.clone(),
        sessions: sessions.clone(),
        limits: config.limits.clone(),
        tasks: tasks.clone(),
    };
    let admin = Admin {
        replica: replica.clone(),
        auth: auth.clone(),
        sessions: sessions.clone(),
    };
    let agents = Agents {
        replica: replica.clone(),
        auth,
        sessions,
        heartbeat: config.heartbeat_interval,
        scheduler_id: "1".into(),
        tasks: tasks.clone(),
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<JobServiceServer<Jobs>>().await;
    health.set_serving::<AdminServiceServer<Admin>>().await;
    health.set_serving::<AgentServiceServer<Agents>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(edupool_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Config(format!("reflection: {e}")))?;

    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving");
    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(JobServiceServer::new(jobs).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(AdminServiceServer::new(admin).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(AgentServiceServer::new(agents).max_decoding_message_size(MAX_REQUEST_BYTES))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled())
        .await;
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(result?)
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
