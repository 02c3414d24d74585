//! Leader-only loops that close the gap between the log and the world:
//!
//! - effect delivery: orders produced by applied commands go to agents;
//! - planning: the pure planner's decisions are proposed as commands. It
//!   plans on its own copy of the state (`Mirror`), kept current from the
//!   entries the driver applies, so a round holds no lock and the driver
//!   never waits for it; the copy lives only while this replica leads;
//! - liveness: nodes whose agents are gone become down, then lost.
//!
//! Followers run none of these; a new leader starts them afresh, and the
//! agent session handler re-derives every order from the log on reconnect,
//! so nothing depends on an effect having been delivered before.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edupool_proto::v1 as pb;
use edupool_proto::v1::scheduler_message::Msg as Down;
use prometheus::{Histogram, IntCounter};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::planner;
use crate::raft::{Mirror, Replica};
use crate::sessions::Sessions;
use crate::state::{Command, Effect, JobId, JobState, Millis, NodeStatus, State};

#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// How often the planner runs when nothing else wakes it.
    pub plan_interval: Duration,
    /// A node whose agent is gone this long is lost and its jobs requeued.
    pub node_lost_timeout: Duration,
    /// A session silent this long is treated as gone.
    pub session_timeout: Duration,
    /// The planner's per-round budgets.
    pub policy: planner::Policy,
    /// Where each planning round's duration is observed.
    pub planner_round: Histogram,
    /// Counts the planner's copy of the state taken afresh.
    pub view_resyncs: IntCounter,
}

pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// The order that starts a placed job's task on `node`. A gang's tasks
/// learn their place in it from the task fields and environment.
pub fn start_message(s: &State, id: JobId, node: &str) -> Option<pb::SchedulerMessage> {
    let j = s
        .job(id)
        .filter(|j| j.state == JobState::Assigned && j.gpu_fault.is_none())?;
    let index = j.tasks.iter().position(|t| t.node == node)?;
    let task = &j.tasks[index];
    if task.started || task.finished {
        return None;
    }
    let nodes: Vec<String> = j.nodes().map(String::from).collect();
    let mut env = j.spec.env.clone();
    // The agent gets secret values like any other: only reads mask them.
    env.extend(j.spec.secret_env.0.clone());
    env.insert("EDUPOOL_TASK_INDEX".into(), index.to_string());
    env.insert("EDUPOOL_TASK_COUNT".into(), nodes.len().to_string());
    env.insert("EDUPOOL_TASK_NODES".into(), nodes.join(","));
    Some(pb::SchedulerMessage {
        msg: Some(Down::Start(pb::StartJob {
            job_id: id.to_string(),
            tenant: j.tenant.clone(),
            command: j.spec.command.clone(),
            env: env.into_iter().collect(),
            gpu_uuids: task.gpus.clone(),
            walltime_seconds: j.spec.walltime_secs,
            grace_period_seconds: j.spec.grace_period_secs,
            attempt: j.attempt,
            task_index: index as u32,
            task_count: nodes.len() as u32,
            task_nodes: nodes,
            image: j.spec.image.clone().unwrap_or_default(),
            data_level: u32::from(j.spec.constraints.data_level),
            // A tenant is never removed, so a placed job's is there; 0
            // (no offset) would only follow a broken state.
            tenant_uid_offset: s.tenant(&j.tenant).map_or(0, |t| t.uid_offset),
            // The node's limits for the task (0 = none, an old entry).
            cpu_millicores: j.spec.cpu_millicores,
            memory_bytes: j.spec.memory_bytes,
        })),
    })
}

/// The order that stops a job being cancelled or preempted, one whose GPU
/// failed, or the rest of a gang one of whose tasks failed.
pub fn stop_message(s: &State, id: JobId) -> Option<pb::SchedulerMessage> {
    let j = s.job(id).filter(|j| {
        matches!(j.state, JobState::Cancelling | JobState::Preempting)
            || j.ending.is_some()
            || (j.gpu_fault.is_some() && j.state.is_placed())
    })?;
    let reason = match (&j.gpu_fault, j.state) {
        (Some(fault), JobState::Assigned | JobState::Running) => fault.clone(),
        _ => j.reason.clone(),
    };
    Some(pb::SchedulerMessage {
        msg: Some(Down::Stop(pb::StopJob {
            job_id: id.to_string(),
            grace_period_seconds: j.spec.grace_period_secs,
            reason,
        })),
    })
}

/// Runs the leader loops whenever this replica leads, until shutdown.
pub async fn run(
    replica: Replica,
    sessions: Sessions,
    config: ControlConfig,
    shutdown: CancellationToken,
) {
    let mut leadership = replica.leadership();
    loop {
        let leading = leadership.borrow_and_update().is_leader;
        if leading {
            tracing::info!("leading: planning and talking to agents");
            let term = shutdown.child_token();
            let work = lead(&replica, &sessions, &config, &term);
            let closed = tokio::select! {
                _ = work => false,
                _ = shutdown.cancelled() => return,
                r = leadership.changed() => r.is_err(),
            };
            term.cancel();
            if closed {
                // The raft driver is gone: no leadership will ever change
                // again, so stop rather than lead (or spin) forever.
                return;
            }
        } else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = leadership.changed() => if r.is_err() { return },
            }
        }
    }
}

async fn lead(
    replica: &Replica,
    sessions: &Sessions,
    config: &ControlConfig,
    stop: &CancellationToken,
) {
    let mut applied = replica.subscribe();
    let mut plan_tick = tokio::time::interval(config.plan_interval);
    let mut liveness_tick = tokio::time::interval(Duration::from_millis(500));
    let mut absent_since: HashMap<String, Instant> = HashMap::new();
    let mut replan = true;
    // The planner's copy of the state: here between rounds, kept current
    // as entries apply; inside the round while one runs.
    let mut mirror: Option<Mirror> = Some(replica.mirror());
    // The round whose decisions are being committed. It runs beside this
    // loop, which keeps delivering effects meanwhile (a loop waiting on
    // its own proposals would fall behind the effect stream); the next
    // round starts only once its decisions are applied.
    let mut round: Option<AbortOnDropHandle<(Mirror, bool)>> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = applied.recv() => match r {
                Ok(effects) => {
                    replan |= deliver(replica, sessions, &effects);
                    if replan && round.is_none() {
                        // Idle and something changed: plan now rather
                        // than at the next tick. While a round commits,
                        // what arrives waits for it and is batched.
                        plan_tick.reset_immediately();
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "effect stream lagged; resending orders from the log");
                    resend_orders(replica, sessions);
                    replan = true;
                }
                Err(RecvError::Closed) => return,
            },
            caught = async { mirror.as_mut().expect("the copy at hand").follow().await }, if mirror.is_some() => {
                config.view_resyncs.inc_by(caught.resynced.into());
            }
            _ = plan_tick.tick(), if round.is_none() => {
                if replan {
                    replan = false;
                    let (replica, config) = (replica.clone(), config.clone());
                    // A round that failed took its copy with it: copy again.
                    let view = mirror.take().unwrap_or_else(|| replica.mirror());
                    round = Some(AbortOnDropHandle::new(tokio::spawn(async move {
                        plan_round(&replica, view, &config).await
                    })));
                }
            }
            done = async { round.as_mut().expect("a round in flight").await }, if round.is_some() => {
                round = None;
                let full = match done {
                    Ok((view, full)) => {
                        mirror = Some(view);
                        full
                    }
                    Err(_) => true,
                };
                if full || replan {
                    // The round stopped at its budget, or work arrived
                    // while its decisions were committing: plan again
                    // without idling a tick. The commit wait batches
                    // what arrives meanwhile, as the tick would.
                    replan = true;
                    plan_tick.reset_immediately();
                }
            }
            _ = liveness_tick.tick() => {
                check_liveness(replica, sessions, config, &mut absent_since).await;
                // A node that came back may have room now.
                replan = true;
            }
        }
    }
}

/// Re-derives from the log the orders that missed effects may have
/// carried: the start of every placed task not yet started, and the stop
/// of every job being stopped. An agent ignores an order for a job it
/// already holds, so a repeat is harmless.
fn resend_orders(replica: &Replica, sessions: &Sessions) {
    let orders: Vec<(String, pb::SchedulerMessage)> = replica.read(|s| {
        let mut orders = Vec::new();
        for j in s.live_jobs() {
            for t in j.tasks.iter().filter(|t| !t.finished) {
                let order = match j.state {
                    JobState::Assigned if !t.started => start_message(s, j.id, &t.node),
                    _ => stop_message(s, j.id),
                };
                orders.extend(order.map(|m| (t.node.clone(), m)));
            }
        }
        orders
    });
    for (node, m) in orders {
        sessions.send(&node, m);
    }
}

/// Sends each order to its node; true if something freed or queued work.
fn deliver(replica: &Replica, sessions: &Sessions, effects: &[Effect]) -> bool {
    let mut replan = false;
    for e in effects {
        match e {
            Effect::StartJob { node, job } => {
                if let Some(m) = replica.read(|s| start_message(s, *job, node)) {
                    sessions.send(node, m);
                }
            }
            Effect::StopJob {
                node,
                job,
                grace_secs,
                reason,
            } => {
                sessions.send(
                    node,
                    pb::SchedulerMessage {
                        msg: Some(Down::Stop(pb::StopJob {
                            job_id: job.to_string(),
                            grace_period_seconds: *grace_secs,
                            reason: reason.clone(),
                        })),
                    },
                );
            }
            Effect::ForgetJob { node, job } => {
                sessions.send(
                    node,
                    pb::SchedulerMessage {
                        msg: Some(Down::Forget(pb::ForgetJob {
                            job_id: job.to_string(),
                        })),
                    },
                );
            }
            Effect::JobChanged(_) => replan = true,
        }
    }
    replan
}

/// One planning round on `view`, brought up to date first; returns the
/// copy and whether another round may place more. Preempted jobs free
/// their GPUs only after their grace period, so a round that preempted is
/// followed by more rounds as they exit. The previous round's decisions
/// were answered only after the feed had them, so the copy holds them.
async fn plan_round(replica: &Replica, mut view: Mirror, config: &ControlConfig) -> (Mirror, bool) {
    let policy = &config.policy;
    let caught = view.catch_up();
    config.view_resyncs.inc_by(caught.resynced.into());
    let now = now_millis();
    let timer = config.planner_round.start_timer();
    let decisions = planner::plan(view.state(), now, policy);
    timer.observe_duration();
    let full = decisions.len() >= policy.max_decisions;
    // All of a round's decisions go to the log at once, in the planner's
    // order, so they share fsyncs and replication round trips.
    let commands = decisions.into_iter().map(|d| d.into_command()).collect();
    for result in replica.propose_all(commands).await {
        if let Err(e) = result {
            // A stale decision (the job was cancelled meanwhile) is
            // rejected by the state machine; the next round re-plans.
            tracing::debug!("planner decision not applied: {e}");
        }
    }
    (view, full)
}

async fn check_liveness(
    replica: &Replica,
    sessions: &Sessions,
    config: &ControlConfig,
    absent_since: &mut HashMap<String, Instant>,
) {
    for (node, session) in sessions.silent_for(config.session_timeout) {
        tracing::warn!(node, "agent session silent too long; closing it");
        sessions.close(&node, session);
    }
    let nodes: Vec<(String, NodeStatus)> =
        replica.read(|s| s.nodes().map(|n| (n.name.clone(), n.status)).collect());
    let mut commands = vec![];
    for (node, status) in nodes {
        if sessions.is_connected(&node) {
            absent_since.remove(&node);
            // A disconnect committed after the agent came back. The
            // inventory is copied only then: this runs every half second
            // over every node.
            if status != NodeStatus::Ready {
                if let Some(hello) = sessions.hello(&node) {
                    commands.push(Command::NodeConnected {
                        node,
                        gpus: hello.gpus,
                        agent_version: hello.agent_version,
                        images: hello.software.images,
                        allows_host_jobs: hello.software.allows_host_jobs,
                        cpu_millicores: hello.host.cpu_millicores,
                        memory_bytes: hello.host.memory_bytes,
                    });
                }
            }
            continue;
        }
        let since = *absent_since
            .entry(node.clone())
            .or_insert_with(Instant::now);
        match status {
            NodeStatus::Ready => commands.push(Command::NodeDisconnected { node }),
            NodeStatus::Down if since.elapsed() >= config.node_lost_timeout => {
                tracing::warn!(node, "agent gone longer than the timeout; node lost");
                commands.push(Command::NodeLost { node });
            }
            _ => {}
        }
    }
    // Tenants without a uid offset: created by an earlier version, or
    // whose creation's assignment did not commit.
    if replica.read(|s| s.uid_offsets_missing()) {
        commands.push(Command::AssignUidOffsets);
    }
    // The job mix counts from one entry on every replica (see `Mix`).
    if replica.read(|s| !s.mix().is_counting()) {
        commands.push(Command::StartMixTally);
    }
    for cmd in commands {
        if let Err(e) = replica.propose(cmd).await {
            tracing::warn!("liveness change not applied: {e}");
        }
    }
}
