//! `AgentService`: one bidirectional session per node.
//!
//! The agent opens with `AgentHello` (inventory and every job it holds);
//! the handler records the node, reconciles the agent's jobs with what the
//! log says should run there, then turns the agent's reports into commands
//! and forwards log answers. Orders go down through `Sessions`.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use edupool_proto::v1 as pb;
use edupool_proto::v1::agent_message::Msg as Up;
use edupool_proto::v1::agent_service_server::AgentService;
use edupool_proto::v1::scheduler_message::Msg as Down;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::convert::{self, reported_reason, truncate};
use super::{status, Auth, Rpc};
use crate::control::{now_millis, start_message, stop_message};
use crate::raft::Replica;
use crate::sessions::{Hello, Sessions};
use crate::state::{Command, Host, JobId, JobState};

#[derive(Clone)]
pub struct Agents {
    pub replica: Replica,
    pub auth: Auth,
    pub sessions: Sessions,
    pub heartbeat: Duration,
    pub scheduler_id: String,
    pub tasks: tokio_util::task::TaskTracker,
    /// With TLS: a session needs the client certificate of its node.
    pub require_node_cert: bool,
}

/// GPUs of one telemetry summary that are kept (an inventory has at most 64).
const MAX_TELEMETRY_GPUS: usize = 64;

type Orders = Pin<Box<dyn Stream<Item = Result<pb::SchedulerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Agents {
    type SessionStream = Orders;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Orders>, Status> {
        self.auth.authorize(&req, Rpc::AgentSession).await?;
        if !self.replica.leadership().borrow().is_leader {
            return Err(status(self.replica.not_leader()));
        }
        let identity = crate::tls::client_identity(&req);
        let mut inbound = req.into_inner();
        let hello = match inbound.next().await {
            Some(Ok(pb::AgentMessage {
                msg: Some(Up::Hello(h)),
            })) => h,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(Status::invalid_argument(
                    "an agent session must start with AgentHello",
                ))
            }
        };
        if self.require_node_cert {
            crate::tls::check_node(identity.as_ref(), &hello.node_name)?;
        }
        let software =
            convert::software(&hello).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let gpus = convert::inventory(&hello.node_name, hello.gpus)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let node = hello.node_name;
        let (tx, rx) = mpsc::channel(1024);
        let _ = tx.try_send(pb::SchedulerMessage {
            msg: Some(Down::Welcome(pb::Welcome {
                scheduler_id: self.scheduler_id.clone(),
                heartbeat_interval_ms: self.heartbeat.as_millis() as u64,
            })),
        });
        let agent_version = truncate(&hello.agent_version);
        let host = Host {
            cpu_millicores: hello.cpu_millicores,
            memory_bytes: hello.memory_bytes,
        };
        let inventory = Hello {
            gpus: gpus.clone(),
            agent_version: agent_version.clone(),
            software: software.clone(),
            host,
        };
        let session = self.sessions.open(&node, inventory, tx, now_millis());
        self.replica
            .propose(Command::NodeConnected {
                node: node.clone(),
                gpus,
                agent_version,
                images: software.images,
                allows_host_jobs: software.allows_host_jobs,
                cpu_millicores: host.cpu_millicores,
                memory_bytes: host.memory_bytes,
            })
            .await
            .map_err(|e| {
                self.sessions.close(&node, session);
                status(e)
            })?;
        tracing::info!(node, session, jobs = hello.jobs.len(), "agent connected");
        let me = self.clone();
        self.tasks.spawn(async move {
            me.reconcile(&node, hello.jobs).await;
            me.serve(&node, session, inbound).await;
            if me.sessions.close(&node, session) {
                tracing::info!(node, session, "agent disconnected");
                if let Err(e) = me
                    .replica
                    .propose(Command::NodeDisconnected { node: node.clone() })
                    .await
                {
                    tracing::warn!(node, "could not record the disconnect: {e}");
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }
}

impl Agents {
    /// Closes the gap between what the agent holds and what the log says
    /// should run on its node.
    async fn reconcile(&self, node: &str, reports: Vec<pb::JobReport>) {
        let mut held: BTreeMap<JobId, pb::JobReport> = BTreeMap::new();
        for r in reports {
            match r.job_id.parse::<JobId>() {
                Ok(id) => {
                    held.insert(id, r);
                }
                Err(e) => tracing::warn!(node, "agent holds a job with a bad id: {e}"),
            }
        }
        for (id, report) in &held {
            self.on_report(node, *id, report.clone()).await;
        }
        // (job, state, whether its task here started, whether it is
        // stopping: another task ended, or one of its GPUs failed)
        let placed: Vec<(JobId, JobState, bool, bool)> = self.replica.read(|s| {
            s.jobs_on(node)
                .map(|j| {
                    let started = j.tasks.iter().any(|t| t.node == node && t.started);
                    let stopping = j.ending.is_some() || j.gpu_fault.is_some();
                    (j.id, j.state, started, stopping)
                })
                .collect()
        });
        for (id, state, started, stopping) in placed {
            let report = held.get(&id);
            match (state, report) {
                (JobState::Assigned, None) if !started => {
                    if let Some(m) = self.replica.read(|s| start_message(s, id, node)) {
                        self.sessions.send(node, m);
                    } else {
                        // Its GPU failed before it started: nothing to stop.
                        self.propose(Command::JobVanished {
                            node: node.to_string(),
                            job: id,
                            reason: format!("a GPU of the job on {node} failed before it started"),
                        })
                        .await;
                    }
                }
                (_, None) => {
                    self.propose(Command::JobVanished {
                        node: node.to_string(),
                        job: id,
                        reason: format!("the agent on {node} no longer has the job"),
                    })
                    .await;
                }
                (JobState::Cancelling | JobState::Preempting, Some(r)) if r.running => {
                    if let Some(m) = self.replica.read(|s| stop_message(s, id)) {
                        self.sessions.send(node, m);
                    }
                }
                (_, Some(r)) if r.running && stopping => {
                    if let Some(m) = self.replica.read(|s| stop_message(s, id)) {
                        self.sessions.send(node, m);
                    }
                }
                _ => {}
            }
        }
    }

    async fn serve(&self, node: &str, session: u64, mut inbound: Streaming<pb::AgentMessage>) {
        // Only the leader holds sessions: a replica that stops leading (a
        // newer leader elsewhere, or cut off from its quorum) ends them, so
        // agents move to the leader and the new leader never sees a node
        // as gone while its agent talks to a deposed one.
        let mut leadership = self.replica.leadership();
        loop {
            let next = tokio::select! {
                m = inbound.next() => m,
                _ = leadership.wait_for(|l| !l.is_leader) => {
                    tracing::info!(node, "no longer leading: ending the agent session");
                    return;
                }
            };
            let msg = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::info!(node, "agent session ended: {}", e.message());
                    return;
                }
                None => return,
            };
            self.sessions.touch(node, session, now_millis());
            match msg.msg {
                Some(Up::Job(r)) => match r.job_id.parse::<JobId>() {
                    Ok(id) => self.on_report(node, id, r).await,
                    Err(e) => tracing::warn!(node, "bad job report: {e}"),
                },
                Some(Up::Log(chunk)) => self.sessions.log_answer(chunk),
                Some(Up::Heartbeat(_)) => {}
                Some(Up::Telemetry(summary)) => {
                    let mut gpus = summary.gpus;
                    gpus.truncate(MAX_TELEMETRY_GPUS);
                    self.sessions.set_telemetry(node, session, gpus);
                }
                Some(Up::GpuHealth(h)) => {
                    tracing::info!(
                        node,
                        gpu = h.gpu_uuid,
                        healthy = h.healthy,
                        reason = h.reason,
                        "agent reports a GPU health change"
                    );
                    self.sessions.set_gpu_health(
                        node,
                        session,
                        &h.gpu_uuid,
                        h.healthy,
                        &truncate(&h.reason),
                    );
                    self.propose(Command::GpuHealthChanged {
                        node: node.to_string(),
                        gpu: truncate(&h.gpu_uuid),
                        healthy: h.healthy,
                        reason: truncate(&h.reason),
                        cleared_by: None,
                    })
                    .await;
                }
                Some(Up::Hello(_)) | None => {
                    tracing::warn!(node, "unexpected message in an open session");
                }
            }
        }
    }

    async fn on_report(&self, node: &str, id: JobId, r: pb::JobReport) {
        let placed_here = self.replica.read(|s| {
            s.job(id)
                .is_some_and(|j| j.state.is_placed() && j.runs_on(node))
        });
        if r.running {
            if placed_here {
                self.propose(Command::JobStarted {
                    node: node.to_string(),
                    job: id,
                    started_at: r.started_at_ms,
                })
                .await;
            } else {
                // Running where the log did not put it (it was requeued
                // while the node was away, or cancelled): stop it.
                self.sessions.send(
                    node,
                    pb::SchedulerMessage {
                        msg: Some(Down::Stop(pb::StopJob {
                            job_id: id.to_string(),
                            grace_period_seconds: 10,
                            reason: "the job is no longer assigned to this node".into(),
                        })),
                    },
                );
            }
            return;
        }
        if is_restart_stop(&r) {
            self.agent_restarted(node, id).await;
            return;
        }
        let reason = if r.reason.is_empty() && !r.has_exit_code && r.signal != 0 {
            format!("killed by signal {}", r.signal)
        } else {
            reported_reason(&r.reason)
        };
        self.propose(Command::JobExited {
            node: node.to_string(),
            job: id,
            exit_code: r.has_exit_code.then_some(r.exit_code),
            reason,
            finished_at: r.finished_at_ms,
            usage: convert::usage(&r),
        })
        .await;
    }

    /// A run the agent lost track of when it crashed, and stopped when it
    /// came back before it reported its GPUs: the node lost the run, the
    /// job did not fail, so the node-loss rules (requeue or lost) apply as
    /// for a vanished job, and the run is in the ledger under this reason.
    /// The agent may drop its record at once: whichever leader reads its
    /// next hello, a job missing from it has vanished just the same.
    async fn agent_restarted(&self, node: &str, id: JobId) {
        self.propose(Command::JobVanished {
            node: node.to_string(),
            job: id,
            reason: format!(
                "the agent on {node} restarted and stopped the run before reporting its GPUs free"
            ),
        })
        .await;
        self.sessions.send(
            node,
            pb::SchedulerMessage {
                msg: Some(Down::Forget(pb::ForgetJob {
                    job_id: id.to_string(),
                })),
            },
        );
    }

    /// Queues what an agent reported for the log without waiting for it
    /// to commit: the session goes on reading (heartbeats included) while
    /// it commits, so a slow commit under load is never taken for a
    /// silent agent. Reports of one session reach the log in the order
    /// they came; one lost with a leader that failed before committing it
    /// is reported again when the agent reconnects (`reconcile`).
    async fn propose(&self, cmd: Command) {
        let result = self.replica.enqueue(cmd.clone()).await;
        self.tasks.spawn(async move {
            match result.await {
                Ok(Err(e)) => tracing::debug!(?cmd, "agent report not applied: {e}"),
                Err(_) => tracing::debug!(?cmd, "agent report not applied: the replica stopped"),
                Ok(Ok(_)) => {}
            }
        });
    }
}

/// An exit the agent reports for a run it stopped after a restart: no exit
/// code, no signal, and the agent's fixed reason.
fn is_restart_stop(r: &pb::JobReport) -> bool {
    !r.running
        && !r.has_exit_code
        && r.signal == 0
        && r.reason == edupool_proto::AGENT_RESTART_REASON
}
