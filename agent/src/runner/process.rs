//! Spawning a job's process and supervising it until it exits.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use super::isolation::{create_job_dir, JobUser};
use super::journal::DurableRecord;
use super::logs::{STDERR_LOG, STDOUT_LOG};
use super::{
    validate_job_id, ExitOutcome, InvalidJobId, JobExit, JobUsage, Runner, StartRequest, StopOrder,
};

/// Why a job's process could not be spawned; becomes the exit reason
/// `failed to start: <this error and its sources>`.
#[derive(Debug, thiserror::Error)]
pub(super) enum SpawnError {
    #[error(transparent)]
    InvalidJobId(#[from] InvalidJobId),
    #[error("the command is empty")]
    EmptyCommand,
    #[error("invalid environment variable name {0:?}")]
    InvalidEnvName(String),
    #[error("the value of environment variable {0} contains a NUL byte")]
    InvalidEnvValue(String),
    #[error("cannot create the job directory {}", path.display())]
    JobDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the log file {}", path.display())]
    LogFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
}

/// A process that was just spawned, leader of its own process group.
pub(super) struct Spawned {
    child: Child,
    pgid: Pid,
}

impl Spawned {
    pub(super) fn pid(&self) -> i32 {
        self.pgid.as_raw()
    }
}

/// Spawns the job's command. Blocking, but only for a directory, two files
/// and a fork: short enough to run on the caller's thread.
///
/// The environment is the agent's `PATH`, `HOME` and `LANG` (`base_env`;
/// `HOME` is the job user's own when the job runs as another user), then
/// the job's own variables, then `CUDA_VISIBLE_DEVICES` and
/// `NVIDIA_VISIBLE_DEVICES` (only the assigned GPUs), `EDUPOOL_JOB_ID` and
/// `EDUPOOL_ATTEMPT`, which the job cannot override. Nothing else of the
/// agent's environment (its token, its key and certificate paths) reaches
/// the job.
pub(super) fn spawn(
    jobs_dir: &Path,
    base_env: &[(OsString, OsString)],
    user: &JobUser,
    request: &StartRequest,
) -> Result<Spawned, SpawnError> {
    validate_job_id(&request.job_id)?;
    let (program, args) = request
        .command
        .split_first()
        .ok_or(SpawnError::EmptyCommand)?;
    for (name, value) in &request.env {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(SpawnError::InvalidEnvName(name.clone()));
        }
        if value.contains('\0') {
            return Err(SpawnError::InvalidEnvValue(name.clone()));
        }
    }

    let dir = jobs_dir.join(&request.job_id);
    create_job_dir(jobs_dir, &dir, user).map_err(|source| SpawnError::JobDir {
        path: dir.clone(),
        source,
    })?;
    let stdout = create_log(&dir.join(STDOUT_LOG))?;
    let stderr = create_log(&dir.join(STDERR_LOG))?;

    let gpus = request.gpu_uuids.join(",");
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(&dir)
        .env_clear()
        .envs(base_env.iter().map(|(k, v)| (k, v)));
    if let JobUser::User { uid, gid, home, .. } = user {
        // std drops the supplementary groups when root switches user.
        command.uid(*uid).gid(*gid).env("HOME", home);
    }
    command
        .envs(&request.env)
        .env("CUDA_VISIBLE_DEVICES", &gpus)
        // For container runtimes; "void" exposes no GPU at all.
        .env(
            "NVIDIA_VISIBLE_DEVICES",
            if gpus.is_empty() { "void" } else { &gpus },
        )
        .env("EDUPOOL_JOB_ID", &request.job_id)
        .env("EDUPOOL_ATTEMPT", request.attempt.to_string())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // Its own process group, so that signals reach everything the job
        // forks and none of the agent's terminal signals reach the job.
        .process_group(0)
        // The supervisor's guard kills the whole group instead.
        .kill_on_drop(false);
    let spawn_error = |source| SpawnError::Spawn {
        program: program.clone(),
        source,
    };
    let child = command.spawn().map_err(spawn_error)?;
    let pid = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .ok_or_else(|| spawn_error(io::Error::other("the process has no pid")))?;
    Ok(Spawned {
        child,
        pgid: Pid::from_raw(pid),
    })
}

fn create_log(path: &Path) -> Result<File, SpawnError> {
    File::create(path).map_err(|source| SpawnError::LogFile {
        path: path.to_owned(),
        source,
    })
}

/// Waits for one job's process, enforces its walltime and carries out stop
/// orders, then records the exit with the runner.
pub(super) struct Supervisor {
    pub(super) runner: Runner,
    pub(super) job_id: String,
    pub(super) gpu_uuids: Vec<String>,
    /// When the process was spawned: GPU time counts from here.
    pub(super) spawned_at: Instant,
    pub(super) walltime: Option<Duration>,
    pub(super) grace_period: Duration,
    pub(super) orders: mpsc::UnboundedReceiver<StopOrder>,
    /// The job's durable record; its exit is added before it is reported.
    pub(super) durable: Option<DurableRecord>,
}

/// A stop in progress: SIGTERM sent, SIGKILL due at `kill_at`.
struct Stopping {
    reason: String,
    /// `None`: a grace period too long to represent; never SIGKILL.
    kill_at: Option<Instant>,
    killed: bool,
}

impl Supervisor {
    pub(super) async fn run(mut self, spawned: Spawned) {
        let Spawned { mut child, pgid } = spawned;
        let group = GroupGuard::new(pgid, self.job_id.clone());
        let energy_at_start = self.runner.read_energy(&self.gpu_uuids).await;
        let walltime_at = self.walltime.and_then(|w| Instant::now().checked_add(w));
        let mut stopping: Option<Stopping> = None;

        let status = loop {
            let kill_at = stopping
                .as_ref()
                .filter(|s| !s.killed)
                .and_then(|s| s.kill_at);
            tokio::select! {
                status = child.wait() => break status,
                Some(order) = self.orders.recv() => {
                    self.stop(&group, &mut stopping, order.reason, order.grace_period);
                }
                () = sleep_until(walltime_at), if stopping.is_none() => {
                    let grace = self.grace_period;
                    self.stop(&group, &mut stopping, "walltime exceeded".to_owned(), grace);
                }
                () = sleep_until(kill_at) => {
                    warn!(job = %self.job_id, "grace period over; SIGKILL to the process group");
                    group.signal(Signal::SIGKILL);
                    if let Some(s) = stopping.as_mut() {
                        s.killed = true;
                    }
                }
            }
        };
        group.kill_leftovers();
        let energy_at_exit = self.runner.read_energy(&self.gpu_uuids).await;
        let usage = JobUsage {
            gpu_time: u32::try_from(self.gpu_uuids.len())
                .ok()
                .and_then(|n| self.spawned_at.elapsed().checked_mul(n))
                .unwrap_or(Duration::MAX),
            energy_millijoules: match (energy_at_start, energy_at_exit) {
                (Some(start), Some(end)) if end >= start => Some(((end - start) * 1e3) as u64),
                _ => None,
            },
        };

        let (outcome, collect_error) = match status {
            Ok(status) => (outcome_of(status), None),
            Err(err) => {
                self.runner.count_error();
                (ExitOutcome::Unknown, Some(err))
            }
        };
        let reason = match (stopping, collect_error) {
            (Some(stop), _) => stop.reason,
            (None, Some(err)) => format!("could not collect the exit status: {err}"),
            (None, None) => outcome.to_string(),
        };
        info!(job = %self.job_id, %outcome, %reason, "job exited");
        let exit = JobExit {
            outcome,
            reason,
            finished_at: SystemTime::now(),
            usage: Some(usage),
        };
        if let Some(record) = self.durable.take() {
            self.runner.record_exit_durably(record, &exit).await;
        }
        self.runner.record_exit(&self.job_id, exit);
    }

    /// Begins a stop, or shortens the grace period of one under way.
    fn stop(
        &self,
        group: &GroupGuard,
        stopping: &mut Option<Stopping>,
        reason: String,
        grace_period: Duration,
    ) {
        let kill_at = Instant::now().checked_add(grace_period);
        match stopping {
            None => {
                let reason = if reason.is_empty() {
                    "stopped".to_owned()
                } else {
                    reason
                };
                info!(job = %self.job_id, %reason, grace_period = ?grace_period,
                    "stopping job; SIGTERM to the process group");
                group.signal(Signal::SIGTERM);
                *stopping = Some(Stopping {
                    reason,
                    kill_at,
                    killed: false,
                });
            }
            Some(stop) => {
                stop.kill_at = match (stop.kill_at, kill_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
    }
}

/// Sleeps until `at`; forever when there is no `at`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn outcome_of(status: ExitStatus) -> ExitOutcome {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitOutcome::Code(code),
        (None, Some(signal)) => ExitOutcome::Signal(signal),
        (None, None) => ExitOutcome::Unknown,
    }
}

/// Signals a job's process group, and kills it when dropped before
/// [`kill_leftovers`](GroupGuard::kill_leftovers): a supervisor that is torn
/// down (its runtime shutting down) leaves no job behind.
struct GroupGuard {
    pgid: Pid,
    job_id: String,
    armed: bool,
}

impl GroupGuard {
    fn new(pgid: Pid, job_id: String) -> Self {
        GroupGuard {
            pgid,
            job_id,
            armed: true,
        }
    }

    /// Sends `signal` to every process of the group; true if any was there.
    fn signal(&self, signal: Signal) -> bool {
        match killpg(self.pgid, signal) {
            Ok(()) => true,
            Err(Errno::ESRCH) => false,
            Err(err) => {
                warn!(job = %self.job_id, pgid = self.pgid.as_raw(), %signal, %err,
                    "cannot signal the job's process group");
                false
            }
        }
    }

    /// After the group's leader has exited: kills what it left behind (a
    /// job is over when its main process is). The group id stays reserved by
    /// the kernel while any member is alive, so this reaches only the job's
    /// own processes.
    fn kill_leftovers(mut self) {
        if self.signal(Signal::SIGKILL) {
            info!(job = %self.job_id, "killed processes the job left behind");
        }
        self.armed = false;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            self.signal(Signal::SIGKILL);
        }
    }
}
