//! The durable record of every job the runner started, so that an agent
//! that crashed and restarted never loses track of a job's processes.
//!
//! One file per job, `<work_dir>/records/<job_id>.json`, owned by the agent
//! and out of reach of jobs (their own directories are theirs to write, so
//! a job could forge a record there). It is written and fsynced after the
//! job's process is spawned and before its start is reported, and again
//! when the job exits; it is removed when the scheduler forgets the job.
//! A record holds what is needed to find the process group again safely:
//! the leader's pid (the group id), its start time in clock ticks since
//! boot from `/proc/<pid>/stat` and the kernel's boot id, so that a reused
//! pid, or a pid from before a reboot, is never signalled.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::container::ContainerRecord;
use super::{ExitOutcome, JobExit, JobUsage};

/// The folder of the records under the work directory.
pub(super) const RECORDS_DIR: &str = "records";

/// What the runner keeps on disk of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DurableRecord {
    pub(super) job_id: String,
    pub(super) attempt: u32,
    /// The leader's pid, which is also the process group's id.
    pub(super) pid: i32,
    /// Field 22 of the leader's `/proc/<pid>/stat`.
    pub(super) start_ticks: u64,
    /// `/proc/sys/kernel/random/boot_id` when the job started.
    pub(super) boot_id: String,
    pub(super) gpus: u32,
    pub(super) grace_period_ms: u64,
    pub(super) started_at_ms: u64,
    /// Set once the job has exited.
    #[serde(default)]
    pub(super) exit: Option<DurableExit>,
    /// A container job's container (its cgroup holds all its processes).
    #[serde(default)]
    pub(super) container: Option<ContainerRecord>,
}

/// A job's exit as recorded on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DurableExit {
    code: Option<i32>,
    signal: Option<i32>,
    reason: String,
    finished_at_ms: u64,
    gpu_time_ms: Option<u64>,
    energy_millijoules: Option<u64>,
}

impl DurableExit {
    pub(super) fn of(exit: &JobExit) -> DurableExit {
        let (code, signal) = match exit.outcome {
            ExitOutcome::Code(c) => (Some(c), None),
            ExitOutcome::Signal(s) => (None, Some(s)),
            ExitOutcome::Unknown => (None, None),
        };
        DurableExit {
            code,
            signal,
            reason: exit.reason.clone(),
            finished_at_ms: unix_ms(exit.finished_at),
            gpu_time_ms: exit
                .usage
                .map(|u| u64::try_from(u.gpu_time.as_millis()).unwrap_or(u64::MAX)),
            energy_millijoules: exit.usage.and_then(|u| u.energy_millijoules),
        }
    }

    pub(super) fn to_exit(&self) -> JobExit {
        JobExit {
            outcome: match (self.code, self.signal) {
                (Some(c), _) => ExitOutcome::Code(c),
                (None, Some(s)) => ExitOutcome::Signal(s),
                (None, None) => ExitOutcome::Unknown,
            },
            reason: self.reason.clone(),
            finished_at: from_unix_ms(self.finished_at_ms),
            usage: self.gpu_time_ms.map(|ms| JobUsage {
                gpu_time: Duration::from_millis(ms),
                energy_millijoules: self.energy_millijoules,
            }),
        }
    }
}

/// The folder of records; every write is fsynced, and so is the folder.
#[derive(Debug, Clone)]
pub(super) struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub(super) fn new(work_dir: &Path) -> Journal {
        Journal {
            dir: work_dir.join(RECORDS_DIR),
        }
    }

    fn path(&self, job_id: &str) -> PathBuf {
        self.dir.join(format!("{job_id}.json"))
    }

    /// Writes `record` durably: a temporary file, fsynced, renamed over
    /// the old one, then the folder fsynced.
    pub(super) fn write(&self, record: &DurableRecord) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let text = serde_json::to_vec(record).map_err(io::Error::other)?;
        let tmp = self.dir.join(format!(".{}.json.tmp", record.job_id));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&text)?;
        file.sync_all()?;
        fs::rename(&tmp, self.path(&record.job_id))?;
        File::open(&self.dir)?.sync_all()
    }

    /// Drops the record of a job the scheduler has forgotten.
    pub(super) fn remove(&self, job_id: &str) {
        match fs::remove_file(self.path(job_id)) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => warn!(job = %job_id, %err, "cannot remove the job's record"),
        }
    }

    /// Every record on disk; files that cannot be read are left alone
    /// and named in a warning.
    pub(super) fn load(&self) -> io::Result<Vec<DurableRecord>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(err) => return Err(err),
        };
        let mut records = vec![];
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let parsed = fs::read(&path).and_then(|bytes| {
                serde_json::from_slice::<DurableRecord>(&bytes).map_err(io::Error::other)
            });
            match parsed {
                Ok(record) => records.push(record),
                Err(err) => {
                    warn!(path = %path.display(), %err, "ignoring an unreadable job record")
                }
            }
        }
        records.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        Ok(records)
    }
}

pub(super) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(super) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}
