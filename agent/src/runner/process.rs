//! Spawning a job's process and supervising it until it exits.

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

use super::container::{self, ContainerError, ContainerRecord, JobCgroup, Resources};
use super::isolation::{create_job_dir, JobUser};
use super::journal::DurableRecord;
use super::logs::{STDERR_LOG, STDOUT_LOG};
use super::{
    validate_job_id, ExitOutcome, Inner, InvalidJobId, JobExit, JobUsage, Runner, StartRequest,
    StopOrder,
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
    #[error("this node runs only jobs with an image (its agent does not allow host jobs: --allow-host-jobs)")]
    HostJobsNotAllowed,
    #[error("image {image:?} needs a container runtime, and this node's agent has none")]
    NoRuntime { image: String },
    #[error(transparent)]
    Container(#[from] ContainerError),
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
    /// The container of a job with an image.
    container: Option<ContainerRecord>,
}

impl Spawned {
    pub(super) fn pid(&self) -> i32 {
        self.pgid.as_raw()
    }

    pub(super) fn container(&self) -> Option<&ContainerRecord> {
        self.container.as_ref()
    }
}

/// Spawns the job: a container when it names an image, otherwise a host
/// process (if the runner allows those). Blocking, but only for a few
/// directories and files and a fork: short enough to run on the caller's
/// thread.
///
/// The environment is the agent's `PATH`, `HOME` and `LANG` (`base_env`;
/// `HOME` is the job user's own when the job runs as another user; a
/// container has its own `PATH` and `HOME=/work`), then the job's own
/// variables, then `CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES`
/// (only the assigned GPUs), `EDUPOOL_JOB_ID` and `EDUPOOL_ATTEMPT`, which
/// the job cannot override. Nothing else of the agent's environment (its
/// token, its key and certificate paths) reaches the job.
pub(super) fn spawn(inner: &Inner, request: &StartRequest) -> Result<Spawned, SpawnError> {
    validate_job_id(&request.job_id)?;
    if request.command.is_empty() {
        return Err(SpawnError::EmptyCommand);
    }
    for (name, value) in &request.env {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(SpawnError::InvalidEnvName(name.clone()));
        }
        if value.contains('\0') {
            return Err(SpawnError::InvalidEnvValue(name.clone()));
        }
    }
    match &request.image {
        Some(image) => {
            let Some(driver) = &inner.containers else {
                return Err(SpawnError::NoRuntime {
                    image: image.clone(),
                });
            };
            spawn_container(inner, driver, image, request)
        }
        None if inner.allow_host_jobs => spawn_host(inner, request),
        None => Err(SpawnError::HostJobsNotAllowed),
    }
}

/// The variables the runner sets after the job's own.
fn fixed_env(request: &StartRequest) -> Vec<(String, String)> {
    let gpus = request.gpu_uuids.join(",");
    // For container runtimes; "void" exposes no GPU at all.
    let nvidia = if gpus.is_empty() {
        "void".to_owned()
    } else {
        gpus.clone()
    };
    vec![
        ("CUDA_VISIBLE_DEVICES".to_owned(), gpus),
        ("NVIDIA_VISIBLE_DEVICES".to_owned(), nvidia),
        ("EDUPOOL_JOB_ID".to_owned(), request.job_id.clone()),
        ("EDUPOOL_ATTEMPT".to_owned(), request.attempt.to_string()),
    ]
}

/// The job's directory and its two log files.
fn job_dir_and_logs(
    jobs_dir: &Path,
    request: &StartRequest,
    user: &JobUser,
) -> Result<(PathBuf, File, File), SpawnError> {
    let dir = jobs_dir.join(&request.job_id);
    create_job_dir(jobs_dir, &dir, user).map_err(|source| SpawnError::JobDir {
        path: dir.clone(),
        source,
    })?;
    let stdout = create_log(&dir.join(STDOUT_LOG))?;
    let stderr = create_log(&dir.join(STDERR_LOG))?;
    Ok((dir, stdout, stderr))
}

fn spawn_host(inner: &Inner, request: &StartRequest) -> Result<Spawned, SpawnError> {
    let user = &inner.job_user;
    let (program, args) = request
        .command
        .split_first()
        .ok_or(SpawnError::EmptyCommand)?;
    let (dir, stdout, stderr) = job_dir_and_logs(&inner.jobs_dir, request, user)?;
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(&dir)
        .env_clear()
        .envs(inner.base_env.iter().map(|(k, v)| (k, v)));
    if let JobUser::User { uid, gid, home, .. } = user {
        // std drops the supplementary groups when root switches user.
        command.uid(*uid).gid(*gid).env("HOME", home);
    }
    command.envs(&request.env).envs(fixed_env(request));
    launch(command, program, stdout, stderr, None)
}

/// Writes the container's bundle, makes its cgroup, and starts the
/// runtime in it. The job's directory belongs to the tenant's uid.
fn spawn_container(
    inner: &Inner,
    driver: &container::ContainerDriver,
    image: &str,
    request: &StartRequest,
) -> Result<Spawned, SpawnError> {
    let uid = driver.tenant_uid(request.tenant_uid_offset)?;
    // Refuse a missing image before anything is made for the job.
    driver.images.rootfs(image).map_err(ContainerError::from)?;
    let tenant = JobUser::User {
        name: format!("uid {uid}"),
        uid,
        gid: uid,
        home: PathBuf::from(container::spec::CONTAINER_WORK_DIR),
    };
    let (dir, stdout, stderr) = job_dir_and_logs(&inner.jobs_dir, request, &tenant)?;
    let env = request
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain(fixed_env(request))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let resources = Resources {
        cpu_millicores: request.cpu_millicores,
        memory_bytes: request.memory_bytes,
        data_level: request.data_level,
        tenant_uid_offset: request.tenant_uid_offset,
    };
    let prepared = driver.prepare(
        &inner.work_dir,
        &request.job_id,
        &dir,
        image,
        &request.command,
        env,
        &request.gpu_uuids,
        resources,
    )?;
    let mut command = Command::new(&prepared.program);
    command
        .args(&prepared.args)
        .current_dir(&inner.work_dir)
        .env_clear()
        .envs(
            inner
                .base_env
                .iter()
                .filter(|(k, _)| k == "PATH")
                .map(|(k, v)| (k, v)),
        );
    let program = prepared.program.to_string_lossy().into_owned();
    let record = prepared.record;
    match launch(command, &program, stdout, stderr, Some(record.clone())) {
        Ok(spawned) => Ok(spawned),
        Err(err) => {
            container::stop_and_remove(&record, None);
            Err(err)
        }
    }
}

/// Spawns `command` with the job's logs as its output, in its own process
/// group.
fn launch(
    mut command: Command,
    program: &str,
    stdout: File,
    stderr: File,
    container: Option<ContainerRecord>,
) -> Result<Spawned, SpawnError> {
    command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // Its own process group, so that signals reach everything the job
        // forks and none of the agent's terminal signals reach the job.
        .process_group(0)
        // The supervisor's guard kills the whole group instead.
        .kill_on_drop(false);
    let spawn_error = |source| SpawnError::Spawn {
        program: program.to_owned(),
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
        container,
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
    /// A container job's container, removed after the exit.
    pub(super) container: Option<ContainerRecord>,
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
        let Spawned {
            mut child, pgid, ..
        } = spawned;
        let cgroup = self.container.as_ref().map(|c| c.cgroup.clone());
        let group = GroupGuard::new(pgid, self.job_id.clone(), cgroup);
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
        let oom_kills = self.remove_container().await;
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
            Ok(status) => match (outcome_of(status), &self.container) {
                (ExitOutcome::Code(code), Some(_)) => match container::job_status(code) {
                    Ok(outcome) => (outcome, None),
                    Err(why) => (
                        ExitOutcome::Unknown,
                        Some(format!("failed to start: {why}")),
                    ),
                },
                (outcome, _) => (outcome, None),
            },
            Err(err) => {
                self.runner.count_error();
                let why = format!("could not collect the exit status: {err}");
                (ExitOutcome::Unknown, Some(why))
            }
        };
        let memory_limit = self.container.as_ref().map_or(0, |c| c.memory_bytes);
        let reason = match (stopping, collect_error) {
            (Some(stop), _) => stop.reason,
            (None, Some(why)) => why,
            // The job's own code or signal stays in `outcome`.
            (None, None) if oom_kills > 0 => container::oom_reason(memory_limit),
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

    /// After a container job's main process has exited: reads how many of
    /// its processes the memory limit killed, then kills what is left in
    /// its cgroup and removes container, bundle and cgroup (off the async
    /// threads). 0 for host jobs.
    async fn remove_container(&self) -> u64 {
        let Some(record) = self.container.clone() else {
            return 0;
        };
        let removed = tokio::task::spawn_blocking(move || {
            let oom_kills = record.cgroup.oom_kills();
            container::stop_and_remove(&record, None);
            oom_kills
        });
        match removed.await {
            Ok(oom_kills) => oom_kills,
            Err(err) => {
                warn!(job = %self.job_id, %err, "removing the container did not finish");
                0
            }
        }
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
    /// A container job's cgroup: every process of the job, whatever
    /// process group it made, is signalled through it.
    cgroup: Option<JobCgroup>,
    armed: bool,
}

impl GroupGuard {
    fn new(pgid: Pid, job_id: String, cgroup: Option<JobCgroup>) -> Self {
        GroupGuard {
            pgid,
            job_id,
            cgroup,
            armed: true,
        }
    }

    /// Sends `signal` to every process of the group (and of the cgroup of
    /// a container job); true if any was there.
    fn signal(&self, signal: Signal) -> bool {
        match &self.cgroup {
            // The runtime (the group's leader) stays until the container's
            // main process has gone; only SIGKILL is for it too.
            Some(cgroup) => {
                let spare = (signal != Signal::SIGKILL).then_some(self.pgid.as_raw());
                cgroup.signal_except(signal, spare)
            }
            None => self.signal_group(signal),
        }
    }

    fn signal_group(&self, signal: Signal) -> bool {
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
        if self.signal_group(Signal::SIGKILL) {
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
