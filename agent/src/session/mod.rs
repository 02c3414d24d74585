//! The session with the scheduler: one `AgentService.Session` stream at a
//! time, reopened whenever it ends.
//!
//! Every session starts with an `AgentHello` that carries the inventory,
//! the images the node can run and whether it runs jobs without one, and
//! the report of every job the runner holds. Then the agent forwards the
//! runner's reports as they happen, sends a heartbeat every interval the
//! scheduler's `Welcome` asks for, and carries out the scheduler's orders.
//! When the stream ends or fails, the agent tries the next endpoint after a
//! backoff delay; jobs keep running in the meantime, and whatever happened
//! to them is in the next hello.
//!
//! What the agent expects of the scheduler:
//!
//! - It authenticates the agent by the `authorization: Bearer <token>`
//!   metadata, and refuses the call (e.g. `UNAUTHENTICATED`) rather than
//!   opening a session it will not serve. The agent retries refused calls
//!   with backoff like any other failure.
//! - The first message it receives is `AgentHello`. Its `jobs` list is the
//!   truth about this node: every job the agent holds, running or exited and
//!   not yet forgotten. A job the scheduler placed here that is missing from
//!   it is not running here (e.g. the agent restarted).
//! - It sends `Welcome` early; `heartbeat_interval_ms` 0 means 2 s, and
//!   anything below 100 ms is raised to 100 ms. Orders sent before the
//!   welcome are carried out all the same.
//! - `StartJob` is idempotent by `job_id`: repeating it for a held job
//!   starts nothing and only re-sends that job's current `JobReport`.
//!   `walltime_seconds` 0 means no limit and `grace_period_seconds` 0 the
//!   agent's default; the scheduler resolves pool defaults before sending.
//!   `job_id` must be 1 to 128 letters, digits, `-`, `_` or `.`, since it
//!   names the job's directory; any other id is reported as
//!   `failed to start: invalid job id ...`.
//! - Reports may repeat (after a reconnect, or a repeated start) but never
//!   go back in time within one session: after the hello, every report of a
//!   job is at least as new as the one before. A job can go straight from
//!   unreported to exited (it failed to start, or ended quickly).
//! - An exit is reported with `has_exit_code` and `exit_code`, or with
//!   `signal`, or with neither (it never started; the reason then begins
//!   with `failed to start: `). `reason` says why: `exited with code N`,
//!   `killed by signal SIGSEGV`, `walltime exceeded`, the stop order's
//!   reason, or `agent shutting down`. A job that a crashed agent left
//!   running, and the restarted agent stopped before its first hello, is
//!   reported with neither and the reason `stopped: the node agent
//!   restarted` ([`RESTART_REASON`](crate::runner::RESTART_REASON)): the
//!   node lost the run, the job did not fail.
//! - `StopJob` with `grace_period_seconds` 0 uses the grace period the job
//!   was started with; an empty reason becomes `stopped by the scheduler`.
//!   Stopping a job that is not held, or has exited, does nothing.
//! - `ForgetJob` is sent once the exit is durably recorded; until then
//!   every hello repeats the exit. Forgetting a running job does nothing.
//! - `LogRequest` is answered with a `LogChunk` of the same `request_id`,
//!   possibly after later messages; `max_bytes` 0 means 64 KiB, and at most
//!   1 MiB is returned. Logs stay readable after the job is forgotten.
//! - Only the leader replica holds sessions. A follower refuses with
//!   `UNAVAILABLE` and the leader's `host:port` in `x-edupool-leader`; the
//!   agent goes there at once (a few hops at most, then the usual backoff
//!   over its endpoint list), with the same TLS settings (CA, client
//!   certificate, `https://`) as its configured endpoints.
//! - The hello's GPUs carry the agent's health judgement (`healthy`,
//!   `health_reason`); every later change is a `GpuHealth` message (for a
//!   GPU in MIG mode, one per instance). Changes made while no session was
//!   open are sent after the next hello, in order.
//! - An exit report carries the run's `gpu_seconds` and `energy_joules`
//!   (0 when the GPUs have no energy counter).
//! - After every telemetry round the agent sends a `TelemetrySummary`; the
//!   scheduler keeps only the latest.
//! - When the agent shuts down it stops its jobs, reports their exits, then
//!   closes its side of the stream; the scheduler is expected to end its
//!   side in turn.

mod backoff;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edupool_proto::v1::agent_service_client::AgentServiceClient;
use edupool_proto::v1::{self, agent_message, scheduler_message, AgentMessage, SchedulerMessage};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Endpoint;
use tonic::Streaming;
use tracing::{debug, info, warn};

pub(crate) use backoff::Backoff;

use crate::config::Connector;
use crate::convert;
use crate::error_chain;
use crate::health::{HealthBoard, HealthChanges};
use crate::images::ImageStore;
use crate::inventory::{mig_units, schedulable_units, GpuInventory};
use crate::runner::{ForgetOutcome, JobEvents, Runner, StartOutcome, StopOutcome};
use crate::telemetry::TelemetryFeed;

/// The heartbeat interval until a `Welcome` sets another.
pub(crate) const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);
/// The shortest heartbeat interval the agent agrees to.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// How long the scheduler may take to answer the session call.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages waiting to be sent to the scheduler.
const OUTBOUND_CAPACITY: usize = 1024;
/// How long a message may wait for room in the outbound queue before the
/// session is given up as stalled.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing session waits for the scheduler to end its side, so
/// that the last reports are delivered.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a scheduler that stays unreachable is logged as a warning.
const FAILURE_WARN_INTERVAL: Duration = Duration::from_secs(30);
/// The reason given to a stop order that has none.
const DEFAULT_STOP_REASON: &str = "stopped by the scheduler";
/// Metadata a follower puts on its refusal: the leader's `host:port`.
const LEADER_METADATA: &str = "x-edupool-leader";
/// Leader hints followed in a row before the usual backoff applies again.
const MAX_LEADER_HOPS: u32 = 3;

/// Why a session could not be opened or ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot read the GPU inventory")]
    Inventory(#[source] crate::inventory::InventoryError),
    #[error("the GPU inventory query did not finish")]
    InventoryTask(#[source] tokio::task::JoinError),
    #[error("cannot connect")]
    Connect(#[source] tonic::transport::Error),
    #[error("the scheduler did not answer the session call within {0:?}")]
    NoAnswer(Duration),
    #[error("the scheduler refused the session ({code:?}): {message}")]
    Refused {
        code: tonic::Code,
        message: String,
        /// The leader's address, when a follower refused and named it.
        leader: Option<String>,
    },
    #[error("the session failed ({code:?}): {message}")]
    Stream { code: tonic::Code, message: String },
    #[error("the scheduler closed the session")]
    Closed,
    #[error("the scheduler took no message for {0:?}")]
    Stalled(Duration),
}

impl SessionError {
    fn refused(status: tonic::Status) -> Self {
        let leader = (status.code() == tonic::Code::Unavailable)
            .then(|| status.metadata().get(LEADER_METADATA))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .filter(|a| !a.is_empty())
            .map(str::to_owned);
        SessionError::Refused {
            code: status.code(),
            message: status.message().to_owned(),
            leader,
        }
    }

    /// Where a refusing follower says the leader is.
    fn leader_hint(&self) -> Option<&str> {
        match self {
            SessionError::Refused {
                leader: Some(a), ..
            } => Some(a),
            _ => None,
        }
    }

    fn stream(status: tonic::Status) -> Self {
        SessionError::Stream {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// The agent's side of the session, across reconnections.
/// What the metrics read of the sessions.
#[derive(Debug, Default)]
pub(crate) struct SessionStatus {
    /// True while a session is established (welcomed).
    pub(crate) connected: AtomicBool,
    /// Sessions established since the agent started: more than one means
    /// it reconnected (the scheduler restarted, a new leader, or the
    /// session was closed).
    pub(crate) established: AtomicU64,
}

pub(crate) struct Session {
    pub(crate) node_name: String,
    pub(crate) endpoints: Vec<(String, Endpoint)>,
    /// Builds the endpoint of a leader a follower names.
    pub(crate) connector: Connector,
    pub(crate) authorization: MetadataValue<Ascii>,
    pub(crate) inventory: Arc<dyn GpuInventory>,
    pub(crate) runner: Runner,
    pub(crate) tracker: TaskTracker,
    pub(crate) backoff: Backoff,
    /// GPU health as the agent judges it; overrides the inventory's.
    pub(crate) health: HealthBoard,
    /// Whether a session is established, and how many were.
    pub(crate) status: Arc<SessionStatus>,
    /// The image store, when the agent can run containers.
    pub(crate) images: Option<ImageStore>,
    /// Whether jobs without an image run here.
    pub(crate) allows_host_jobs: bool,
    /// The CPU and memory jobs may use here, reported in every hello.
    pub(crate) host: crate::host::HostResources,
}

/// State of one open session.
struct Open<'a> {
    endpoint: &'a str,
    outbound: mpsc::Sender<AgentMessage>,
    heartbeat: Interval,
    welcomed: bool,
}

impl Session {
    /// Keeps a session open until `stop` is cancelled. Reports that arrive
    /// while no session is open are dropped: the next hello has them all.
    /// Health changes wait for the next session: its hello has the board
    /// as it is, and the changes that follow it repeat what led there.
    pub(crate) async fn run(
        mut self,
        mut events: JobEvents,
        mut changes: HealthChanges,
        mut telemetry: TelemetryFeed,
        stop: CancellationToken,
    ) {
        let mut next = 0;
        // Failed attempts since the last session that worked, and when one
        // was last logged as a warning: a scheduler that stays away is
        // reported every FAILURE_WARN_INTERVAL, not on every attempt.
        let mut failures = 0u32;
        let mut last_warning: Option<Instant> = None;
        // A leader a follower named, tried next without waiting; hops are
        // bounded so two confused replicas cannot bounce the agent forever.
        let mut hinted: Option<(String, Endpoint)> = None;
        let mut hops = 0u32;
        loop {
            let (name, endpoint) = match hinted.take() {
                Some(h) => h,
                None => {
                    next += 1;
                    self.endpoints[(next - 1) % self.endpoints.len()].clone()
                }
            };
            let began = Instant::now();
            let mut welcomed = false;
            let result = self
                .serve(
                    &name,
                    &endpoint,
                    (&mut events, &mut changes, &mut telemetry),
                    &stop,
                    &mut welcomed,
                )
                .await;
            if let Some(leader) = result.as_ref().err().and_then(SessionError::leader_hint) {
                if hops < MAX_LEADER_HOPS {
                    if let Some(h) = self.leader_endpoint(leader) {
                        debug!(endpoint = %name, leader = %h.0, "following the leader");
                        hops += 1;
                        hinted = Some(h);
                        continue;
                    }
                }
            }
            hops = 0;
            match result {
                Ok(()) => return,
                Err(err) if welcomed => {
                    warn!(endpoint = %name, error = %error_chain(&err), "session with the scheduler lost");
                    failures = 0;
                    last_warning = None;
                    if began.elapsed() >= self.backoff.max() {
                        self.backoff.reset();
                    }
                }
                Err(err) => {
                    failures += 1;
                    if last_warning.is_none_or(|at| at.elapsed() >= FAILURE_WARN_INTERVAL) {
                        warn!(endpoint = %name, attempts = failures, error = %error_chain(&err),
                            "no session with the scheduler");
                        last_warning = Some(Instant::now());
                    } else {
                        debug!(endpoint = %name, attempts = failures, error = %error_chain(&err),
                            "no session with the scheduler");
                    }
                }
            }
            let delay = self.backoff.next_delay();
            let (next_name, _) = &self.endpoints[next % self.endpoints.len()];
            debug!(endpoint = %next_name, ?delay, "reconnecting");
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = &mut sleep => break,
                    Some(_) = events.recv() => {}
                }
            }
        }
    }

    /// The endpoint of a leader hint, reached with the same TLS settings
    /// (CA, client certificate, `https://`) as the configured endpoints.
    fn leader_endpoint(&self, leader: &str) -> Option<(String, Endpoint)> {
        self.connector.leader_endpoint(&self.endpoints, leader)
    }

    /// Opens one session and serves it. `Ok` when `stop` ended it.
    async fn serve(
        &self,
        name: &str,
        endpoint: &Endpoint,
        (events, changes, telemetry): (&mut JobEvents, &mut HealthChanges, &mut TelemetryFeed),
        stop: &CancellationToken,
        welcomed: &mut bool,
    ) -> Result<(), SessionError> {
        let inventory = Arc::clone(&self.inventory);
        let mut gpus =
            match until(stop, self.tracker.spawn_blocking(move || inventory.gpus())).await {
                None => return Ok(()),
                Some(joined) => joined
                    .map_err(SessionError::InventoryTask)?
                    .map_err(SessionError::Inventory)?,
            };
        self.health.overlay(&mut gpus);
        let units = mig_units(&gpus);
        let gpus = schedulable_units(&gpus);
        debug!(endpoint = %name, "connecting");
        let channel = match until(stop, endpoint.connect()).await {
            None => return Ok(()),
            Some(connected) => connected.map_err(SessionError::Connect)?,
        };

        let images = self.images.clone();
        let images = match until(
            stop,
            self.tracker.spawn_blocking(move || list_images(images)),
        )
        .await
        {
            None => return Ok(()),
            Some(listed) => listed.unwrap_or_default(),
        };
        let (outbound, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let jobs = self.runner.snapshot(events);
        let hello = v1::AgentHello {
            node_name: self.node_name.clone(),
            gpus: convert::gpus(&gpus),
            jobs: jobs.iter().map(convert::job_report).collect(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            images,
            allows_host_jobs: self.allows_host_jobs,
            cpu_millicores: self.host.cpu_millicores,
            memory_bytes: self.host.memory_bytes,
        };
        outbound
            .try_send(message(agent_message::Msg::Hello(hello)))
            .map_err(|_| SessionError::Closed)?;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        let mut client = AgentServiceClient::new(channel);
        let opening = tokio::time::timeout(OPEN_TIMEOUT, client.session(request));
        let mut inbound = match until(stop, opening).await {
            None => return Ok(()),
            Some(Err(_)) => return Err(SessionError::NoAnswer(OPEN_TIMEOUT)),
            Some(Ok(response)) => response.map_err(SessionError::refused)?.into_inner(),
        };
        info!(endpoint = %name, gpus = gpus.len(), jobs = jobs.len(),
            "session open; waiting for the scheduler's welcome");

        let mut open = Open {
            endpoint: name,
            outbound,
            heartbeat: heartbeat(DEFAULT_HEARTBEAT),
            welcomed: false,
        };
        let result = loop {
            self.status
                .connected
                .store(open.welcomed, Ordering::Relaxed);
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    self.close(open.outbound, inbound, events).await;
                    break Ok(());
                }
                received = inbound.message() => match received {
                    Ok(Some(message)) => self.handle(message, &mut open),
                    Ok(None) => break Err(SessionError::Closed),
                    Err(status) => break Err(SessionError::stream(status)),
                },
                Some(report) = events.recv() => {
                    let sent = send(&open.outbound, message(agent_message::Msg::Job(
                        convert::job_report(&report),
                    ))).await;
                    if let Err(err) = sent {
                        break Err(err);
                    }
                }
                Some(change) = changes.recv() => {
                    // The scheduler knows a GPU in MIG mode by its instances.
                    let at_ms = convert::unix_ms(std::time::SystemTime::now());
                    let targets = units
                        .get(&change.uuid)
                        .cloned()
                        .unwrap_or_else(|| vec![change.uuid.clone()]);
                    let mut sent = Ok(());
                    for gpu_uuid in targets {
                        let health = v1::GpuHealth {
                            gpu_uuid,
                            healthy: change.healthy,
                            reason: change.reason.clone(),
                            at_ms,
                        };
                        sent = send(&open.outbound, message(agent_message::Msg::GpuHealth(health))).await;
                        if sent.is_err() {
                            break;
                        }
                    }
                    if let Err(err) = sent {
                        break Err(err);
                    }
                }
                Ok(()) = telemetry.changed() => {
                    let summary = convert::telemetry(
                        &telemetry.borrow_and_update(),
                        std::time::SystemTime::now(),
                    );
                    let sent = send(&open.outbound, message(agent_message::Msg::Telemetry(summary))).await;
                    if let Err(err) = sent {
                        break Err(err);
                    }
                }
                _ = open.heartbeat.tick() => {
                    let at_ms = convert::unix_ms(std::time::SystemTime::now());
                    let sent = send(&open.outbound, message(agent_message::Msg::Heartbeat(
                        v1::Heartbeat { at_ms },
                    ))).await;
                    if let Err(err) = sent {
                        break Err(err);
                    }
                }
            }
        };
        self.status.connected.store(false, Ordering::Relaxed);
        *welcomed = open.welcomed;
        result
    }

    /// Carries out one order of the scheduler.
    fn handle(&self, message: SchedulerMessage, open: &mut Open<'_>) {
        use scheduler_message::Msg;
        match message.msg {
            Some(Msg::Welcome(welcome)) => {
                let period = match welcome.heartbeat_interval_ms {
                    0 => DEFAULT_HEARTBEAT,
                    ms => Duration::from_millis(ms).max(MIN_HEARTBEAT),
                };
                open.heartbeat = heartbeat(period);
                open.welcomed = true;
                self.status.established.fetch_add(1, Ordering::Relaxed);
                info!(endpoint = %open.endpoint, scheduler = %welcome.scheduler_id,
                    heartbeat = ?period, "session established");
            }
            Some(Msg::Start(start)) => {
                let request = convert::start_request(start);
                let job_id = request.job_id.clone();
                match self.runner.start(request) {
                    StartOutcome::Started | StartOutcome::FailedToStart => {}
                    StartOutcome::AlreadyHeld => {
                        debug!(job = %job_id, "repeated start order; job already held");
                    }
                    StartOutcome::ShuttingDown => {
                        warn!(job = %job_id, "start order ignored: the agent is shutting down");
                    }
                }
            }
            Some(Msg::Stop(order)) => {
                let grace = convert::nonzero_seconds(order.grace_period_seconds);
                let reason = if order.reason.is_empty() {
                    DEFAULT_STOP_REASON
                } else {
                    &order.reason
                };
                match self.runner.stop(&order.job_id, grace, reason) {
                    StopOutcome::Stopping => {}
                    StopOutcome::AlreadyExited => {
                        debug!(job = %order.job_id, "stop order for a job that has exited");
                    }
                    StopOutcome::Unknown => {
                        warn!(job = %order.job_id, "stop order for a job this node does not hold");
                    }
                }
            }
            Some(Msg::Forget(forget)) => match self.runner.forget(&forget.job_id) {
                ForgetOutcome::Forgotten | ForgetOutcome::Unknown => {}
                ForgetOutcome::StillRunning => {
                    warn!(job = %forget.job_id, "asked to forget a job that still runs; keeping it");
                }
            },
            Some(Msg::LogRequest(request)) => self.answer_log_request(request, &open.outbound),
            None => debug!("ignoring a scheduler message of a kind this agent does not know"),
        }
    }

    /// Reads the requested log on a task of its own, so that a slow disk
    /// does not hold up the session, and sends the chunk back.
    fn answer_log_request(&self, request: v1::LogRequest, outbound: &mpsc::Sender<AgentMessage>) {
        let runner = self.runner.clone();
        let outbound = outbound.clone();
        self.tracker.spawn(async move {
            let chunk = match convert::log_stream(request.stream) {
                Ok(stream) => runner
                    .read_log(&request.job_id, stream, request.offset, request.max_bytes)
                    .await
                    .map_err(|err| error_chain(&err)),
                Err(stream) => Err(format!("unknown log stream {stream}")),
            };
            let chunk = convert::log_chunk(request.request_id, chunk);
            // If the session is gone, so is the request: the scheduler asks again.
            let _ = send(&outbound, message(agent_message::Msg::Log(chunk))).await;
        });
    }

    /// Ends a session at shutdown: sends the reports still waiting (the
    /// exits of the jobs just stopped), closes the agent's side, and gives
    /// the scheduler a moment to take them and close its own.
    async fn close(
        &self,
        outbound: mpsc::Sender<AgentMessage>,
        mut inbound: Streaming<SchedulerMessage>,
        events: &mut JobEvents,
    ) {
        while let Some(report) = events.try_recv() {
            let job = message(agent_message::Msg::Job(convert::job_report(&report)));
            if send(&outbound, job).await.is_err() {
                break;
            }
        }
        drop(outbound);
        let drained = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Ok(Some(_)) = inbound.message().await {}
        })
        .await;
        if drained.is_err() {
            debug!("the scheduler did not close its side of the session in time");
        }
        info!("session closed");
    }
}

/// The images the hello reports: those in the store when the agent can
/// run containers, none otherwise (or when the store cannot be read).
fn list_images(store: Option<ImageStore>) -> Vec<String> {
    let Some(store) = store else {
        return vec![];
    };
    store.list().unwrap_or_else(|err| {
        warn!(error = %error_chain(&err), "reporting no images");
        vec![]
    })
}

fn message(msg: agent_message::Msg) -> AgentMessage {
    AgentMessage { msg: Some(msg) }
}

fn heartbeat(period: Duration) -> Interval {
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// Queues a message for the scheduler; fails when the session is gone or
/// has taken nothing for [`SEND_TIMEOUT`].
async fn send(
    outbound: &mpsc::Sender<AgentMessage>,
    message: AgentMessage,
) -> Result<(), SessionError> {
    match tokio::time::timeout(SEND_TIMEOUT, outbound.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(SessionError::Closed),
        Err(_) => Err(SessionError::Stalled(SEND_TIMEOUT)),
    }
}

/// `future`'s output, or `None` if `stop` is cancelled first.
async fn until<F: Future>(stop: &CancellationToken, future: F) -> Option<F::Output> {
    tokio::select! {
        () = stop.cancelled() => None,
        output = future => Some(output),
    }
}
