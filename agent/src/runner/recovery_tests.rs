//! Durable job records and what a restarted runner does with them, against
//! real processes. Waits are polls with a deadline.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::Instant;

use super::journal::{DurableRecord, Journal};
use super::leftovers::{boot_id, stat};
use super::*;

const DEADLINE: Duration = Duration::from_secs(20);

fn runner(work_dir: &Path) -> (Runner, JobEvents) {
    Runner::new(RunnerConfig::new(work_dir))
}

/// A process group that outlives its parent agent, as one left by a
/// crashed agent: a shell leader and two children, all ignoring SIGTERM.
fn orphan_group() -> Child {
    Command::new("sh")
        .args(["-c", "trap '' TERM; sleep 1000 & sleep 1000 & wait"])
        .process_group(0)
        .spawn()
        .expect("sh runs")
}

/// Live (not zombie) processes of group `pgid`.
fn live_members(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|s| s.pgid == pgid && s.state != 'Z'))
        .collect()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn record_of(job_id: &str, child: &Child, start_ticks: u64) -> DurableRecord {
    DurableRecord {
        job_id: job_id.to_owned(),
        attempt: 1,
        pid: i32::try_from(child.id()).unwrap(),
        start_ticks,
        boot_id: boot_id().unwrap(),
        gpus: 1,
        grace_period_ms: 200,
        started_at_ms: journal::unix_ms(SystemTime::now()),
        exit: None,
        container: None,
    }
}

#[tokio::test]
async fn a_restarted_runner_stops_what_its_predecessor_left_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut orphan = orphan_group();
    let pgid = i32::try_from(orphan.id()).unwrap();
    wait_until("the group's three processes", || {
        live_members(pgid).len() == 3
    });
    let start_ticks = stat(pgid).unwrap().start_ticks;
    Journal::new(dir.path())
        .write(&record_of("job-7", &orphan, start_ticks))
        .unwrap();

    let (runner, _events) = runner(dir.path());
    assert_eq!(runner.recover().await.unwrap(), 1);
    // Gone before `recover` returns, so before any hello: the SIGTERM was
    // ignored and the SIGKILL after the grace period did it.
    assert_eq!(live_members(pgid), Vec::<i32>::new());
    let _ = orphan.wait();

    let report = runner.report("job-7").expect("held");
    let exit = report.exit().expect("held as exited");
    assert_eq!(exit.reason, RESTART_REASON);
    assert_eq!(exit.outcome, ExitOutcome::Unknown);
    // A second restart before the scheduler forgets it reports the same.
    let on_disk = Journal::new(dir.path()).load().unwrap();
    assert_eq!(
        on_disk[0].exit.as_ref().map(|e| e.to_exit().reason),
        Some(RESTART_REASON.to_owned())
    );

    assert_eq!(runner.forget("job-7"), ForgetOutcome::Forgotten);
    assert!(Journal::new(dir.path()).load().unwrap().is_empty());
}

#[tokio::test]
async fn a_reused_pid_is_never_signalled() {
    let dir = tempfile::tempdir().unwrap();
    let mut stranger = orphan_group();
    let pid = i32::try_from(stranger.id()).unwrap();
    wait_until("the stranger's processes", || live_members(pid).len() == 3);
    let start_ticks = stat(pid).unwrap().start_ticks;
    // The record names this pid, but a process that started earlier: the
    // job's group died out and the pid went to someone else.
    let record = record_of("job-8", &stranger, start_ticks.saturating_sub(1));
    Journal::new(dir.path()).write(&record).unwrap();

    let (runner, _events) = runner(dir.path());
    assert_eq!(runner.recover().await.unwrap(), 1);
    assert_eq!(live_members(pid).len(), 3, "the stranger was left alone");
    assert_eq!(
        runner
            .report("job-8")
            .and_then(|r| r.exit().map(|e| e.reason.clone())),
        Some(RESTART_REASON.to_owned())
    );
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = stranger.wait();
}

#[tokio::test]
async fn the_record_is_on_disk_before_the_start_is_reported_and_keeps_the_exit() {
    let dir = tempfile::tempdir().unwrap();
    let (runner, mut events) = runner(dir.path());
    let request = StartRequest {
        job_id: "job-9".into(),
        tenant: "uni-a".into(),
        command: vec!["sh".into(), "-c".into(), "read x; exit 3".into()],
        env: BTreeMap::new(),
        gpu_uuids: vec!["GPU-aaaa".into()],
        walltime: None,
        grace_period: Some(Duration::from_secs(1)),
        attempt: 2,
        ..Default::default()
    };
    assert_eq!(runner.start(request), StartOutcome::Started);
    let started = events.try_recv().expect("the start is reported");
    assert!(started.is_running());
    let records = Journal::new(dir.path()).load().unwrap();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(
        (record.job_id.as_str(), record.attempt, record.exit.as_ref()),
        ("job-9", 2, None)
    );
    assert_eq!(
        stat(record.pid).map(|s| (s.pgid, s.start_ticks)),
        Some((record.pid, record.start_ticks))
    );

    // stdin is /dev/null, so `read` fails at once and the job exits 3.
    let exit = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(exit) = events.recv().await.and_then(|r| r.exit().cloned()) {
                return exit;
            }
        }
    })
    .await
    .expect("the job exits");
    assert_eq!(exit.outcome, ExitOutcome::Code(3));

    // An agent that restarts now reports the real exit, not a stop.
    let (again, _events) = super::Runner::new(RunnerConfig::new(dir.path()));
    assert_eq!(again.recover().await.unwrap(), 1);
    let held = again.report("job-9").expect("held");
    assert_eq!(held.exit().map(|e| e.outcome), Some(ExitOutcome::Code(3)));
    assert_eq!(held.exit().map(|e| e.reason.clone()), Some(exit.reason));
}
