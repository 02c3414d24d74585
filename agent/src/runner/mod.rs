//! Runs jobs as processes on this node and keeps a record of each.
//!
//! [`Runner::start`] spawns a job's command in its own process group, in
//! `<work_dir>/jobs/<job_id>/` with its output in `stdout.log` and
//! `stderr.log` there, and hands the process to a supervisor task that waits
//! for it, enforces the walltime and carries out stop orders (SIGTERM to the
//! group, SIGKILL after the grace period).
//!
//! The runner holds one record per job from its start until the scheduler has
//! durably recorded the exit and says [`Runner::forget`]; every change of a
//! record is sent as a [`JobReport`] on the [`JobEvents`] channel, and
//! [`Runner::reports`] lists all records, so an exit that happened while the
//! scheduler was unreachable is still reported when it comes back.
//!
//! When the runner is given an energy source, each exit carries the job's
//! [`JobUsage`]: its GPU time and the energy its GPUs used while it ran,
//! from the GPUs' energy counters read at its start and at its exit.
//!
//! Every job started also has a durable record on disk (see `journal`),
//! written before its start is reported and removed when it is forgotten.
//! [`Runner::recover`], run before the agent reports anything, stops the
//! jobs a previous agent left running (see `leftovers`) and holds them as
//! exited with [`RESTART_REASON`], so no GPU is reported free while a
//! process of an earlier job still holds it.
//!
//! Jobs with an image run as containers through an OCI runtime (see
//! [`container`]); jobs without one run as host processes only when the
//! runner allows host jobs, and are refused otherwise.
//!
//! All records live behind one mutex that is never held across an await.

pub mod container;
mod isolation;
mod journal;
mod leftovers;
mod logs;
mod process;
mod recovery;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::inventory::GpuInventory;
use container::{ContainerDriver, ContainerRecord, JobCgroup};
use journal::{DurableExit, DurableRecord, Journal};

pub use isolation::{resolve_job_user, JobUser, JobUserError};
pub use logs::{LogChunk, LogError, LogStream, DEFAULT_LOG_CHUNK, MAX_LOG_CHUNK};

/// How long reading the energy counters at a job's start or exit may take.
pub const ENERGY_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The grace period used when neither the start nor the stop order gives one.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);

/// Variables of the agent's own environment that jobs inherit. Everything
/// else, credentials included, stays with the agent.
pub const INHERITED_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];

/// `PATH` for jobs when the agent itself has none.
const FALLBACK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The exit reason of a job that a previous agent left running and the
/// restarted agent stopped before it reported its GPUs.
pub const RESTART_REASON: &str = edupool_proto::AGENT_RESTART_REASON;

/// The longest job id the runner accepts.
pub const MAX_JOB_ID_LEN: usize = 128;

/// How the runner is set up.
#[derive(Clone)]
pub struct RunnerConfig {
    /// Job directories are created under `<work_dir>/jobs/`.
    pub work_dir: PathBuf,
    /// The grace period for jobs whose start order gives none.
    pub default_grace_period: Duration,
    /// Where the energy counters of jobs' GPUs are read; `None` reports
    /// GPU time only.
    pub energy: Option<Arc<dyn GpuInventory>>,
    /// Who jobs run as (see [`resolve_job_user`]).
    pub job_user: JobUser,
    /// Runs jobs with an image; `None`: such jobs fail to start.
    pub containers: Option<Arc<ContainerDriver>>,
    /// Run jobs without an image as host processes; when false they fail
    /// to start.
    pub allow_host_jobs: bool,
}

impl fmt::Debug for RunnerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunnerConfig")
            .field("work_dir", &self.work_dir)
            .field("default_grace_period", &self.default_grace_period)
            .field("energy", &self.energy.as_ref().map(|e| e.backend()))
            .field("job_user", &self.job_user)
            .field("containers", &self.containers)
            .field("allow_host_jobs", &self.allow_host_jobs)
            .finish()
    }
}

impl RunnerConfig {
    /// A runner working in `work_dir` with the default grace period that
    /// runs host jobs and has no container runtime.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        RunnerConfig {
            work_dir: work_dir.into(),
            default_grace_period: DEFAULT_GRACE_PERIOD,
            energy: None,
            job_user: JobUser::Agent,
            containers: None,
            allow_host_jobs: true,
        }
    }
}

/// An order to start a job.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartRequest {
    /// The scheduler's id of the job; also the name of its directory, so
    /// only letters, digits, `-`, `_` and `.` are accepted.
    pub job_id: String,
    /// The tenant that owns the job, for logs.
    pub tenant: String,
    /// The argv; `command[0]` is run directly, without a shell, and looked up
    /// in the job's `PATH` when it has no `/`.
    pub command: Vec<String>,
    /// The job's own environment variables.
    pub env: BTreeMap<String, String>,
    /// The GPUs the job may use, as `CUDA_VISIBLE_DEVICES`.
    pub gpu_uuids: Vec<String>,
    /// Stop the job (reason `walltime exceeded`) after this long; `None`
    /// means no limit.
    pub walltime: Option<Duration>,
    /// SIGTERM to SIGKILL when the job is stopped; `None` means the runner's
    /// default.
    pub grace_period: Option<Duration>,
    /// 1 on the first run, +1 per requeue; given to the job as `EDUPOOL_ATTEMPT`.
    pub attempt: u32,
    /// The image the job runs in (a container); `None`: a host process.
    pub image: Option<String>,
    /// The container's CPU limit, thousandths of a CPU; 0: none.
    pub cpu_millicores: u64,
    /// The container's memory limit, bytes; 0: none.
    pub memory_bytes: u64,
    /// The job's data level; from 2 on its container has no network.
    pub data_level: u32,
    /// Its tenant's uid offset: the container runs as the tenant base
    /// plus this.
    pub tenant_uid_offset: u32,
}

/// What the runner knows of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReport {
    /// The job's id.
    pub job_id: String,
    /// When the process was spawned; `None` if it never was.
    pub started_at: Option<SystemTime>,
    /// Running or exited.
    pub state: JobState,
}

impl JobReport {
    /// True while the process runs.
    pub fn is_running(&self) -> bool {
        matches!(self.state, JobState::Running)
    }

    /// The exit, once there is one.
    pub fn exit(&self) -> Option<&JobExit> {
        match &self.state {
            JobState::Running => None,
            JobState::Exited(exit) => Some(exit),
        }
    }
}

/// Whether a job's process is still there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// The process runs (it may be stopping).
    Running,
    /// The process is gone, or never started.
    Exited(JobExit),
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobExit {
    /// Exit code, signal, or neither.
    pub outcome: ExitOutcome,
    /// Why, for people: `exited with code 3`, `killed by signal SIGSEGV`,
    /// `walltime exceeded`, the stop order's reason (e.g. `cancelled`), or
    /// `failed to start: <error>`.
    pub reason: String,
    /// When the runner saw the exit.
    pub finished_at: SystemTime,
    /// What the run used; `None` when it never started.
    pub usage: Option<JobUsage>,
}

/// What one run of a job used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobUsage {
    /// How long it ran times the number of its GPUs.
    pub gpu_time: Duration,
    /// Energy its GPUs used from its start to its exit, millijoules; `None`
    /// when the GPUs have no energy counter (or it was reset meanwhile).
    pub energy_millijoules: Option<u64>,
}

/// The process's end as the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitOutcome {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it (e.g. 15 for SIGTERM, 9 for SIGKILL).
    Signal(i32),
    /// There is no exit status: the process never started (the reason says
    /// `failed to start: ...`), or its status could not be collected.
    Unknown,
}

impl fmt::Display for ExitOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitOutcome::Code(code) => write!(f, "exited with code {code}"),
            ExitOutcome::Signal(sig) => match Signal::try_from(sig) {
                Ok(signal) => write!(f, "killed by signal {signal}"),
                Err(_) => write!(f, "killed by signal {sig}"),
            },
            ExitOutcome::Unknown => f.write_str("exit status unknown"),
        }
    }
}

/// What [`Runner::start`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    /// The process was spawned.
    Started,
    /// The process could not be spawned; the job is recorded as exited with
    /// reason `failed to start: ...`.
    FailedToStart,
    /// The job was already held (running or exited and not forgotten);
    /// nothing was started and its current report was sent again.
    AlreadyHeld,
    /// The runner is shutting down and starts nothing more.
    ShuttingDown,
}

/// What [`Runner::stop`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// The job is being stopped; its exit will be reported.
    Stopping,
    /// The job has already exited.
    AlreadyExited,
    /// The runner holds no such job.
    Unknown,
}

/// What [`Runner::forget`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForgetOutcome {
    /// The exited job's record is gone.
    Forgotten,
    /// The job still runs; its record was kept.
    StillRunning,
    /// The runner holds no such job.
    Unknown,
}

/// A job id that cannot be used as a directory name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job id {job_id:?}: expected 1 to {max} letters, digits, '-', '_' or '.', and not '.' or '..'", max = MAX_JOB_ID_LEN)]
pub struct InvalidJobId {
    /// The id as given.
    pub job_id: String,
}

/// Checks that `job_id` is safe as one path component.
pub fn validate_job_id(job_id: &str) -> Result<(), InvalidJobId> {
    let ok = !job_id.is_empty()
        && job_id.len() <= MAX_JOB_ID_LEN
        && job_id != "."
        && job_id != ".."
        && job_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(InvalidJobId {
            job_id: job_id.to_owned(),
        })
    }
}

/// The receiving end of the runner's reports: one [`JobReport`] for every
/// start, exit, and repeated start order of a held job.
#[derive(Debug)]
pub struct JobEvents {
    rx: mpsc::UnboundedReceiver<JobReport>,
}

impl JobEvents {
    /// The next report; `None` once the runner and all its tasks are gone.
    pub async fn recv(&mut self) -> Option<JobReport> {
        self.rx.recv().await
    }

    /// The next report if one is waiting.
    pub fn try_recv(&mut self) -> Option<JobReport> {
        self.rx.try_recv().ok()
    }
}

/// The job runner; cheap to clone, all clones share the same jobs.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

impl fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("jobs_dir", &self.inner.jobs_dir)
            .finish_non_exhaustive()
    }
}

struct Inner {
    work_dir: PathBuf,
    jobs_dir: PathBuf,
    default_grace_period: Duration,
    energy: Option<Arc<dyn GpuInventory>>,
    job_user: JobUser,
    containers: Option<Arc<ContainerDriver>>,
    allow_host_jobs: bool,
    /// The durable records of started jobs.
    journal: Journal,
    /// Jobs that could not be started, or whose exit could not be collected.
    errors: AtomicU64,
    /// `PATH`, `HOME` and `LANG` of the agent, taken once at construction.
    base_env: Vec<(OsString, OsString)>,
    state: Mutex<State>,
    tracker: TaskTracker,
}

struct State {
    jobs: HashMap<String, Record>,
    events: mpsc::UnboundedSender<JobReport>,
    shutting_down: bool,
}

struct Record {
    report: JobReport,
    grace_period: Duration,
    /// Stop orders for the supervisor; `None` once the job has exited.
    control: Option<mpsc::UnboundedSender<StopOrder>>,
    /// A container job's cgroup while it runs.
    cgroup: Option<JobCgroup>,
}

/// An order to the supervisor of a running job.
#[derive(Debug)]
struct StopOrder {
    grace_period: Duration,
    reason: String,
}

impl State {
    /// Sends a report while the state lock is held, so reports leave in the
    /// order the records changed (see [`Runner::snapshot`]).
    fn emit(&self, report: JobReport) {
        // The receiver is gone only when the agent is going away.
        let _ = self.events.send(report);
    }
}

impl Runner {
    /// A runner with no jobs, and the channel its reports go to. Jobs
    /// inherit the agent's `PATH`, `HOME` and `LANG` as they are now.
    pub fn new(config: RunnerConfig) -> (Runner, JobEvents) {
        let base_env = INHERITED_ENV
            .iter()
            .filter_map(|name| std::env::var_os(name).map(|v| (OsString::from(name), v)))
            .collect();
        Self::with_base_env(config, base_env)
    }

    fn with_base_env(
        config: RunnerConfig,
        mut base_env: Vec<(OsString, OsString)>,
    ) -> (Runner, JobEvents) {
        if !base_env.iter().any(|(k, _)| k == "PATH") {
            base_env.push(("PATH".into(), FALLBACK_PATH.into()));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let runner = Runner {
            inner: Arc::new(Inner {
                work_dir: config.work_dir.clone(),
                jobs_dir: config.work_dir.join("jobs"),
                default_grace_period: config.default_grace_period,
                energy: config.energy,
                job_user: config.job_user,
                containers: config.containers,
                allow_host_jobs: config.allow_host_jobs,
                journal: Journal::new(&config.work_dir),
                errors: AtomicU64::new(0),
                base_env,
                state: Mutex::new(State {
                    jobs: HashMap::new(),
                    events: tx,
                    shutting_down: false,
                }),
                tracker: TaskTracker::new(),
            }),
        };
        (runner, JobEvents { rx })
    }

    /// `<work_dir>/jobs`, where job directories are created.
    pub fn jobs_dir(&self) -> &Path {
        &self.inner.jobs_dir
    }

    /// `<work_dir>/jobs/<job_id>`.
    pub fn job_dir(&self, job_id: &str) -> Result<PathBuf, InvalidJobId> {
        validate_job_id(job_id)?;
        Ok(self.inner.jobs_dir.join(job_id))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; if some did, the records
        // are still consistent, as every change is one assignment.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a job unless it is already held.
    ///
    /// Starting a held job (running, or exited and not forgotten) does
    /// nothing but report it again: the scheduler repeats start orders it is
    /// not sure arrived. A job whose process cannot be spawned is recorded
    /// as exited with [`ExitOutcome::Unknown`] and reason
    /// `failed to start: <error>`, and reported like any exit. A job started
    /// again after it was forgotten (requeued onto the same node) starts
    /// afresh, its log files truncated. Must be called within a tokio
    /// runtime.
    pub fn start(&self, request: StartRequest) -> StartOutcome {
        // The lock is held across the spawn so that a repeated start order
        // can never spawn the job twice or truncate a running job's logs.
        let mut state = self.lock();
        if state.shutting_down {
            warn!(job = %request.job_id, "not starting the job: the runner is shutting down");
            return StartOutcome::ShuttingDown;
        }
        if let Some(record) = state.jobs.get(&request.job_id) {
            debug!(job = %request.job_id, running = record.report.is_running(),
                "start order for a job already held; reporting it again");
            let report = record.report.clone();
            state.emit(report);
            return StartOutcome::AlreadyHeld;
        }
        let grace_period = request
            .grace_period
            .unwrap_or(self.inner.default_grace_period);
        let job_id = request.job_id.clone();
        let spawned = process::spawn(&self.inner, &request);
        match spawned {
            Ok(spawned) => {
                let spawned_at = tokio::time::Instant::now();
                let started_at = SystemTime::now();
                // Durable before the start is reported: a job whose record
                // cannot be written is stopped at once, as one that failed
                // to start (an agent that crashed would lose track of it).
                // Written here, under the lock, like the job's directory and
                // log files: one small file, and no start can overtake it.
                let container = spawned.container().cloned();
                let durable = self.write_record(
                    &request,
                    grace_period,
                    spawned.pid(),
                    started_at,
                    container.clone(),
                );
                let report = JobReport {
                    job_id: job_id.clone(),
                    started_at: Some(started_at),
                    state: JobState::Running,
                };
                let (control, orders) = mpsc::unbounded_channel();
                info!(job = %job_id, tenant = %request.tenant, attempt = request.attempt,
                    pid = spawned.pid(), gpus = ?request.gpu_uuids,
                    image = request.image.as_deref().unwrap_or("-"), "job started");
                let durable = match durable {
                    Ok(record) => Some(record),
                    Err(err) => {
                        self.count_error();
                        let reason =
                            format!("failed to start: cannot record the job durably: {err}");
                        warn!(job = %job_id, %reason, "stopping the job");
                        let _ = control.send(StopOrder {
                            grace_period: Duration::ZERO,
                            reason,
                        });
                        None
                    }
                };
                state.jobs.insert(
                    job_id.clone(),
                    Record {
                        report: report.clone(),
                        grace_period,
                        control: Some(control),
                        cgroup: container.as_ref().map(|c| c.cgroup.clone()),
                    },
                );
                state.emit(report);
                let supervisor = process::Supervisor {
                    runner: self.clone(),
                    job_id,
                    gpu_uuids: request.gpu_uuids.clone(),
                    spawned_at,
                    walltime: request.walltime,
                    grace_period,
                    orders,
                    durable,
                    container,
                };
                self.inner.tracker.spawn(supervisor.run(spawned));
                StartOutcome::Started
            }
            Err(err) => {
                self.count_error();
                let reason = format!("failed to start: {}", crate::error_chain(&err));
                warn!(job = %job_id, tenant = %request.tenant, %reason, "job did not start");
                let report = JobReport {
                    job_id: job_id.clone(),
                    started_at: None,
                    state: JobState::Exited(JobExit {
                        outcome: ExitOutcome::Unknown,
                        reason,
                        finished_at: SystemTime::now(),
                        usage: None,
                    }),
                };
                state.jobs.insert(
                    job_id,
                    Record {
                        report: report.clone(),
                        grace_period,
                        control: None,
                        cgroup: None,
                    },
                );
                state.emit(report);
                StartOutcome::FailedToStart
            }
        }
    }

    /// Stops a running job: SIGTERM to its process group now, SIGKILL to the
    /// group once `grace_period` (default: the job's own) has passed and the
    /// job is still there. `reason` becomes the exit's reason. A second stop
    /// order can shorten the grace period but keeps the first reason.
    pub fn stop(&self, job_id: &str, grace_period: Option<Duration>, reason: &str) -> StopOutcome {
        let state = self.lock();
        let Some(record) = state.jobs.get(job_id) else {
            return StopOutcome::Unknown;
        };
        let Some(control) = &record.control else {
            return StopOutcome::AlreadyExited;
        };
        let order = StopOrder {
            grace_period: grace_period.unwrap_or(record.grace_period),
            reason: reason.to_owned(),
        };
        match control.send(order) {
            Ok(()) => StopOutcome::Stopping,
            // The supervisor has seen the exit and is about to record it.
            Err(_) => StopOutcome::AlreadyExited,
        }
    }

    /// Drops the record of an exited job. A running job is kept: its exit
    /// has not been reported yet.
    pub fn forget(&self, job_id: &str) -> ForgetOutcome {
        let mut state = self.lock();
        match state.jobs.get(job_id) {
            None => ForgetOutcome::Unknown,
            Some(record) if record.report.is_running() => ForgetOutcome::StillRunning,
            Some(_) => {
                state.jobs.remove(job_id);
                drop(state);
                self.inner.journal.remove(job_id);
                debug!(job = %job_id, "job forgotten");
                ForgetOutcome::Forgotten
            }
        }
    }

    /// The report of one held job.
    pub fn report(&self, job_id: &str) -> Option<JobReport> {
        self.lock().jobs.get(job_id).map(|r| r.report.clone())
    }

    /// The CPU time a running container job has used so far, from its
    /// cgroup; `None` for host jobs and jobs that are not running.
    pub fn cpu_time(&self, job_id: &str) -> Option<Duration> {
        let cgroup = self.lock().jobs.get(job_id)?.cgroup.clone()?;
        cgroup.cpu_nanos().map(Duration::from_nanos)
    }

    /// Reports of every held job, running or exited, ordered by job id.
    pub fn reports(&self) -> Vec<JobReport> {
        Self::collect_reports(&self.lock())
    }

    /// Like [`reports`](Runner::reports), and at the same instant discards
    /// the reports waiting in `events`: the snapshot already covers them.
    /// A session that sends this snapshot and then whatever `events` yields
    /// never sends a report older than one it sent before. `events` must be
    /// the channel this runner was created with.
    pub fn snapshot(&self, events: &mut JobEvents) -> Vec<JobReport> {
        let state = self.lock();
        while events.try_recv().is_some() {}
        Self::collect_reports(&state)
    }

    fn collect_reports(state: &State) -> Vec<JobReport> {
        let mut reports: Vec<JobReport> = state.jobs.values().map(|r| r.report.clone()).collect();
        reports.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        reports
    }

    /// Reads up to `max_bytes` (0: [`DEFAULT_LOG_CHUNK`], at most
    /// [`MAX_LOG_CHUNK`]) of a job's log from byte `offset`. Logs stay
    /// readable after the job is forgotten.
    pub async fn read_log(
        &self,
        job_id: &str,
        stream: LogStream,
        offset: u64,
        max_bytes: u32,
    ) -> Result<LogChunk, LogError> {
        let dir = self.job_dir(job_id)?;
        logs::read_chunk(job_id, &dir, stream, offset, max_bytes).await
    }

    /// Stops every running job with its own grace period and `reason`,
    /// refuses further starts, and returns once every job has exited and
    /// its exit is recorded.
    pub async fn shutdown(&self, reason: &str) {
        {
            let mut state = self.lock();
            state.shutting_down = true;
            let mut stopping = 0;
            for record in state.jobs.values() {
                if let Some(control) = &record.control {
                    let order = StopOrder {
                        grace_period: record.grace_period,
                        reason: reason.to_owned(),
                    };
                    if control.send(order).is_ok() {
                        stopping += 1;
                    }
                }
            }
            if stopping > 0 {
                info!(jobs = stopping, "stopping all running jobs");
            }
        }
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        if let Some(driver) = self.inner.containers.clone() {
            // The agent's own cgroup folder, now empty; a node's other
            // agents keep theirs.
            let agent = driver.agent_cgroup(&self.inner.work_dir);
            let _ = tokio::task::spawn_blocking(move || driver.cgroups.job(&agent).remove()).await;
        }
    }

    /// Jobs that could not be started, or whose exit status could not be
    /// collected, since the runner was made.
    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    fn count_error(&self) {
        self.inner.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The summed energy counters of `gpus`, joules, read on a blocking
    /// thread; `None` without an energy source or a counter, or when the
    /// driver does not answer within [`ENERGY_READ_TIMEOUT`] (a wedged
    /// driver must not hold up a job's supervision).
    async fn read_energy(&self, gpus: &[String]) -> Option<f64> {
        let source = Arc::clone(self.inner.energy.as_ref()?);
        let gpus = gpus.to_vec();
        let read = tokio::task::spawn_blocking(move || source.energy_joules(&gpus));
        match tokio::time::timeout(ENERGY_READ_TIMEOUT, read).await {
            Ok(Ok(Ok(joules))) => joules,
            Ok(Ok(Err(err))) => {
                debug!(error = %err, "cannot read the GPUs' energy counters");
                None
            }
            Ok(Err(_)) => None,
            Err(_) => {
                warn!("the GPUs' energy counters did not answer in time");
                None
            }
        }
    }

    /// Writes the durable record of a job just spawned as `pid`.
    fn write_record(
        &self,
        request: &StartRequest,
        grace_period: Duration,
        pid: i32,
        started_at: SystemTime,
        container: Option<ContainerRecord>,
    ) -> std::io::Result<DurableRecord> {
        let stat = leftovers::stat(pid)
            .ok_or_else(|| std::io::Error::other(format!("no /proc/{pid}/stat")))?;
        let record = DurableRecord {
            job_id: request.job_id.clone(),
            attempt: request.attempt,
            pid,
            start_ticks: stat.start_ticks,
            boot_id: leftovers::boot_id()?,
            gpus: u32::try_from(request.gpu_uuids.len()).unwrap_or(u32::MAX),
            grace_period_ms: u64::try_from(grace_period.as_millis()).unwrap_or(u64::MAX),
            started_at_ms: journal::unix_ms(started_at),
            exit: None,
            container,
        };
        self.inner.journal.write(&record)?;
        Ok(record)
    }

    /// Adds the exit to a job's durable record, off the async threads, so
    /// an agent that restarts before the scheduler forgot the job still
    /// reports how it ended.
    async fn record_exit_durably(&self, mut record: DurableRecord, exit: &JobExit) {
        record.exit = Some(DurableExit::of(exit));
        let journal = self.inner.journal.clone();
        let job_id = record.job_id.clone();
        match tokio::task::spawn_blocking(move || journal.write(&record)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => warn!(job = %job_id, %err, "cannot record the job's exit durably"),
            Err(err) => warn!(job = %job_id, %err, "recording the job's exit did not finish"),
        }
    }

    /// Records the exit of a job; called once by its supervisor.
    fn record_exit(&self, job_id: &str, exit: JobExit) {
        let mut state = self.lock();
        let Some(record) = state.jobs.get_mut(job_id) else {
            // Unreachable: running jobs are never forgotten.
            warn!(job = %job_id, "exit of a job that has no record");
            return;
        };
        record.control = None;
        record.cgroup = None;
        record.report.state = JobState::Exited(exit);
        let report = record.report.clone();
        state.emit(report);
    }
}

#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod tests;
