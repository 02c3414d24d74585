//! Finding and stopping the processes of a job that a previous agent
//! started, from its durable record and `/proc`.
//!
//! A job runs in its own process group, whose id is its leader's pid. The
//! group is taken to be the job's only when it is safe: the same boot, and
//! either the leader is still there with the start time on record, or the
//! leader is gone and the group's members started no earlier than it did
//! (a pid that is some live group's id is never handed to a new process,
//! so such members are the job's own). A leader pid that now belongs to a
//! process with another start time means the job's group died out and the
//! pid was reused: nothing is signalled.

use std::fs;
use std::io;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tracing::{info, warn};

/// How often `/proc` is looked at while waiting for a group to go.
const POLL: Duration = Duration::from_millis(50);
/// How often a group that will not die is named in a warning.
const STUCK_WARNING: Duration = Duration::from_secs(30);

/// The fields of `/proc/<pid>/stat` the runner needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProcStat {
    /// `Z` for a zombie, which holds no GPU any more.
    pub(super) state: char,
    pub(super) pgid: i32,
    /// Clock ticks after boot at which the process started.
    pub(super) start_ticks: u64,
}

/// Parses `/proc/<pid>/stat`; the command name may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub(super) fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (3), ppid (4), pgrp (5), ..., starttime (22).
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgid: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// The stat of process `pid`, `None` when it is gone.
pub(super) fn stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// This boot's id.
pub(super) fn boot_id() -> io::Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_owned())
}

/// A process group as a record describes it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Group {
    pub(super) pgid: i32,
    pub(super) start_ticks: u64,
}

impl Group {
    /// Whether the leader's pid now names another process (the group died
    /// out and the pid was reused).
    fn reused(&self) -> bool {
        stat(self.pgid).is_some_and(|s| s.start_ticks != self.start_ticks)
    }

    /// The live (not zombie) processes of the group.
    fn members(&self) -> Vec<i32> {
        let Ok(entries) = fs::read_dir("/proc") else {
            return vec![];
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                stat(*pid).is_some_and(|s| {
                    s.pgid == self.pgid && s.state != 'Z' && s.start_ticks >= self.start_ticks
                })
            })
            .collect()
    }

    /// True while a process of the job is alive.
    pub(super) fn alive(&self) -> bool {
        !self.reused() && !self.members().is_empty()
    }

    fn signal(&self, signal: Signal) {
        match killpg(Pid::from_raw(self.pgid), signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(err) => {
                warn!(pgid = self.pgid, %signal, %err, "cannot signal a job's process group")
            }
        }
    }

    /// Stops what is left of the group: SIGTERM, SIGKILL once `grace` has
    /// passed, and returns only when no process of it is alive (a process
    /// the kernel cannot kill keeps the agent waiting, and its GPUs
    /// unreported, with a warning every 30 s). Blocking. Returns whether
    /// anything was there to stop.
    pub(super) fn stop(&self, job_id: &str, grace: Duration) -> bool {
        if !self.alive() {
            return false;
        }
        info!(job = %job_id, pgid = self.pgid, ?grace,
            "stopping a job left running by the previous agent; SIGTERM to its process group");
        self.signal(Signal::SIGTERM);
        let kill_at = Instant::now().checked_add(grace);
        let mut killed = false;
        let mut warned = Instant::now();
        while self.alive() {
            if !killed && kill_at.is_none_or(|at| Instant::now() >= at) {
                warn!(job = %job_id, pgid = self.pgid, "grace period over; SIGKILL to the process group");
                self.signal(Signal::SIGKILL);
                killed = true;
            }
            if warned.elapsed() >= STUCK_WARNING {
                warn!(job = %job_id, pgid = self.pgid, members = ?self.members(),
                    "processes of a job left by the previous agent do not die; its GPUs stay unreported");
                warned = Instant::now();
            }
            std::thread::sleep(POLL);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_end_of_the_name() {
        let line = "4242 (a (weird) name) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                pgid: 4240,
                start_ticks: 987654
            })
        );
        assert_eq!(parse_stat("12 (short) S 1"), None);
    }

    #[test]
    fn this_process_is_found_and_a_reused_pid_is_not_ours() {
        let me = i32::try_from(std::process::id()).unwrap();
        let mine = stat(me).expect("this process has a stat");
        assert!(mine.state != 'Z');
        let group = Group {
            pgid: me,
            start_ticks: mine.start_ticks,
        };
        assert!(!group.reused());
        // The same pid with another start time: the pid was reused.
        let other = Group {
            pgid: me,
            start_ticks: mine.start_ticks + 1,
        };
        assert!(other.reused() && !other.alive());
        assert!(!boot_id().unwrap().is_empty());
    }
}
