//! What a restarted runner does with the records a previous agent left:
//! stop what still runs (host jobs by process group, container jobs by
//! cgroup), remove containers no record names, and hold every recorded job
//! as exited until the scheduler forgets it.

use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::container::{self, ContainerRecord};
use super::journal::{self, DurableRecord};
use super::{
    leftovers, validate_job_id, ExitOutcome, JobExit, JobReport, JobState, JobUsage, Record,
    Runner, RESTART_REASON,
};

impl Runner {
    /// Run once, before the agent reports anything: stops every job a
    /// previous agent on this work directory left running (SIGTERM to its
    /// process group, SIGKILL after its grace period, then waits until
    /// none of its processes is alive) and holds it as exited with
    /// [`RESTART_REASON`]; jobs whose exit was already recorded are held
    /// with that exit. Returns how many jobs were held again this way.
    pub async fn recover(&self) -> std::io::Result<usize> {
        let journal = self.inner.journal.clone();
        let records = tokio::task::spawn_blocking(move || journal.load())
            .await
            .map_err(std::io::Error::other)??;
        let boot = leftovers::boot_id()?;
        let mut stopping = vec![];
        let mut count = 0;
        for record in records {
            if let Err(err) = validate_job_id(&record.job_id) {
                warn!(%err, "ignoring a job record with a bad id");
                continue;
            }
            count += 1;
            if let Some(exit) = &record.exit {
                let exit = exit.to_exit();
                if let Some(container) = record.container.clone() {
                    // Exited, but its container may not have been removed.
                    tokio::task::spawn_blocking(move || {
                        container::stop_and_remove(&container, None)
                    })
                    .await
                    .map_err(std::io::Error::other)?;
                }
                self.hold_exited(&record, exit);
                continue;
            }
            let same_boot = record.boot_id == boot;
            stopping.push(tokio::task::spawn_blocking(move || {
                let grace = Duration::from_millis(record.grace_period_ms);
                // A container's processes are all in its cgroup, whatever
                // process groups they made; it outlives a reboot's
                // processes only as an empty directory.
                if let Some(container) = &record.container {
                    let stopped = container::stop_and_remove(container, Some(grace));
                    return (record, stopped);
                }
                let group = leftovers::Group {
                    pgid: record.pid,
                    start_ticks: record.start_ticks,
                };
                // Processes of an earlier boot are gone with it.
                let stopped = same_boot && group.stop(&record.job_id, grace);
                (record, stopped)
            }));
        }
        for task in stopping {
            let (record, stopped) = task.await.map_err(std::io::Error::other)?;
            let finished_at = SystemTime::now();
            let ran = finished_at
                .duration_since(journal::from_unix_ms(record.started_at_ms))
                .unwrap_or_default();
            let exit = JobExit {
                outcome: ExitOutcome::Unknown,
                reason: RESTART_REASON.to_owned(),
                finished_at,
                usage: Some(JobUsage {
                    gpu_time: ran.checked_mul(record.gpus).unwrap_or(Duration::MAX),
                    energy_millijoules: None,
                }),
            };
            info!(job = %record.job_id, attempt = record.attempt, stopped,
                "job of the previous agent held as exited: {RESTART_REASON}");
            self.record_exit_durably(record.clone(), &exit).await;
            self.hold_exited(&record, exit);
        }
        self.remove_unrecorded_containers().await?;
        Ok(count)
    }

    /// Stops and removes containers of this work directory that no record
    /// names (an agent that crashed between making a job's cgroup and
    /// writing its record): nothing a previous agent started is leaked.
    async fn remove_unrecorded_containers(&self) -> std::io::Result<()> {
        let Some(driver) = self.inner.containers.clone() else {
            return Ok(());
        };
        let work_dir = self.inner.work_dir.clone();
        let known: Vec<String> = self.lock().jobs.keys().cloned().collect();
        tokio::task::spawn_blocking(move || {
            let agent = driver.agent_cgroup(&work_dir);
            let state_dir = work_dir.join("runtime");
            let mut names = driver.cgroups.children(&agent);
            if let Ok(entries) = std::fs::read_dir(&state_dir) {
                names.extend(entries.filter_map(|e| e.ok()?.file_name().into_string().ok()));
            }
            names.sort();
            names.dedup();
            for name in names {
                if known.contains(&name) || validate_job_id(&name).is_err() {
                    continue;
                }
                let record = ContainerRecord {
                    id: name.clone(),
                    runtime: driver.runtime.clone(),
                    state_dir: state_dir.clone(),
                    bundle: work_dir.join("bundles").join(&name),
                    cgroup: driver.cgroups.job(&agent.join(&name)),
                    memory_bytes: 0,
                };
                let stopped = container::stop_and_remove(&record, None);
                warn!(container = %name, stopped, "removed a container no job record names");
            }
        })
        .await
        .map_err(std::io::Error::other)
    }

    /// Holds a job of a previous agent as exited until it is forgotten.
    fn hold_exited(&self, record: &DurableRecord, exit: JobExit) {
        let report = JobReport {
            job_id: record.job_id.clone(),
            started_at: Some(journal::from_unix_ms(record.started_at_ms)),
            state: JobState::Exited(exit),
        };
        let mut state = self.lock();
        state.jobs.insert(
            record.job_id.clone(),
            Record {
                report: report.clone(),
                grace_period: Duration::from_millis(record.grace_period_ms),
                control: None,
                cgroup: None,
            },
        );
        state.emit(report);
    }
}
