//! The runner against real processes. Every wait is a poll or a channel
//! receive with a deadline; nothing sleeps a fixed time.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;

/// The longest any test waits for something that should happen quickly.
const DEADLINE: Duration = Duration::from_secs(20);

fn runner(work_dir: &Path) -> (Runner, JobEvents) {
    Runner::new(RunnerConfig::new(work_dir))
}

fn job(job_id: &str, script: &str) -> StartRequest {
    StartRequest {
        job_id: job_id.to_owned(),
        tenant: "uni-a".to_owned(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        gpu_uuids: vec!["GPU-aaaa".into(), "GPU-bbbb".into()],
        walltime: None,
        grace_period: Some(Duration::from_secs(1)),
        attempt: 1,
        ..Default::default()
    }
}

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The next report of `job_id` that shows it exited.
async fn exit_of(events: &mut JobEvents, job_id: &str) -> (JobReport, JobExit) {
    within(&format!("the exit of {job_id}"), async {
        loop {
            let report = events.recv().await.expect("the runner is alive");
            if report.job_id == job_id {
                if let Some(exit) = report.exit().cloned() {
                    return (report, exit);
                }
            }
        }
    })
    .await
}

/// Waits until every job of `job_ids` has reported its exit, in whatever
/// order they end (waiting for one at a time would drop the other's exit).
async fn exits_of(events: &mut JobEvents, job_ids: &[&str]) {
    let mut left: Vec<&str> = job_ids.to_vec();
    within(&format!("the exits of {job_ids:?}"), async {
        while !left.is_empty() {
            let report = events.recv().await.expect("the runner is alive");
            if report.exit().is_some() {
                left.retain(|id| *id != report.job_id);
            }
        }
    })
    .await
}

async fn wait_for_file(path: &Path) {
    within(&format!("{}", path.display()), async {
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

#[tokio::test]
async fn reports_the_exit_code_and_gives_the_job_its_gpus() {
    let dir = tempfile::tempdir().unwrap();
    let (runner, mut events) = runner(dir.path());
    let mut request = job(
        "job-1",
        r#"echo "$CUDA_VISIBLE_DEVICES"; echo "$EDUPOOL_JOB_ID $EDUPOOL_ATTEMPT"; pwd; echo oops >&2; exit 3"#,
    );
    request.attempt = 2;
    assert_eq!(runner.start(request), StartOutcome::Started);

    let started = within("the start report", events.recv()).await.unwrap();
    assert_eq!(started.job_id, "job-1");
    assert!(started.is_running() && started.started_at.is_some());

    let (report, exit) = exit_of(&mut events, "job-1").await;
    assert_eq!(exit.outcome, ExitOutcome::Code(3));
    assert_eq!(exit.reason, "exited with code 3");
    assert_eq!(report.started_at, started.started_at);
    assert!(exit.finished_at >= report.started_at.unwrap());

    let job_dir = runner.job_dir("job-1").unwrap();
    let stdout = read(job_dir.join("stdout.log"));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..2], ["GPU-aaaa,GPU-bbbb", "job-1 2"]);
    assert_eq!(
        Path::new(lines[2]).canonicalize().unwrap(),
        job_dir.canonicalize().unwrap()
    );
    assert_eq!(read(job_dir.join("stderr.log")), "oops\n");
}

#[tokio::test]
async fn stop_sends_sigterm_first_and_a_job_that_handles_it_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (runner, mut events) = runner(dir.path());
    let mut request = job(
        "graceful",
        "trap 'echo term > got-sigterm; exit 0' TERM; touch ready; while :; do sleep 0.05; done",
    );
    request.grace_period = Some(Duration::from_secs(30));
    runner.start(request);
    let job_dir = runner.job_dir("graceful").unwrap();
    wait_for_file(&job_dir.join("ready")).await;

    let stopped_at = Instant::now();
    assert_eq!(
        runner.stop("graceful", None, "cancelled"),
        StopOutcome::Stopping
    );
    let (_, exit) = exit_of(&mut events, "graceful").await;
    assert_eq!(exit.outcome, ExitOutcome::Code(0));
    assert_eq!(exit.reason, "cancelled");
    assert_eq!(read(job_dir.join("got-sigterm")), "term\n");
    assert!(
        stopped_at.elapsed() < Duration::from_secs(30),
        "the job was killed at the end of its grace period"
    );
}

#[tokio::test]
async fn a_job_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let (runner, mut events) = runner(dir.path());
    runner.start(job(
        "stubborn",
        "trap '' TERM; touch ready; while :; do sleep 0.05; done",
    ));
    wait_for_file(&runner.job_dir("stubborn").unwrap().join("ready")).await;

    let grace = Duration::from_millis(700);
    let stopped_at = Instant::now();
    runner.stop("stubborn", Some(grace), "cancelled");
    let (_, exit) = exit_of(&mut events, "stubborn").await;
    assert_eq!(exit.outcome, ExitOutcome::Signal(9));
    assert_eq!(exit.reason, "cancelled");
    assert!(
        stopped_at.elapsed() >= grace,
        "killed before the grace period ended"
    );
}

#[tokio::test]
async fn a_second_stop_order_can_shorten_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let (runner, mut events) = runner(dir.path());
    runner.start(job(
        "stubborn",
        "trap '' TERM; touch ready; while :; do sleep 0.05; done",
    ));
    wait_for_file(&runner.job_dir("stubborn").unwrap().join("ready")).await;

    runner.stop("stubborn", Some(Duration::from_secs(600)), "preempted");
    runner.stop("stubborn", Some(Duration::ZERO), "cancelled");
    let (_, exit) = exit_of(&mut events, "stubborn").await;
    assert_eq!(exit.outcome, ExitOutcome::Signal(9));
    assert_eq!(exit.reason, "preempted", "the first reason is kept");
}

#[tokio::test]
async fn the_walltime_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let (runner, mut events) = runner(dir.path());
    let mut request = job("long", "sleep 30");
    request.walltime = Some(Duration::from_millis(300));
    let started = Instant::now();
    runner.start(request);
    let (_, exit) = exit_of(&mut events, "long").await;
    assert_eq!(exit.outcome, ExitOutcome::Signal(15));
    assert_eq!(exit.reason, "walltime exceeded");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_job_that_cannot_start_is_reported_as_exited_without_a_code() {
    let dir = tempfile::tempdir().unwrap();
    let (runner, mut events) = runner(dir.path());
    let not_executable = dir.path().join("not-executable");
    std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();

    let cases = [
        (
            "missing",
            vec!["/nonexistent/edupool-no-such-program".to_owned()],
            "failed to start: /nonexistent/edupool-no-such-program: No such file or directory",
        ),
        (
            "no-x-bit",
            vec![not_executable.display().to_string()],
            "Permission denied",
        ),
        ("empty", vec![], "failed to start: the command is empty"),
        (
            "../escape",
            vec!["true".to_owned()],
            "failed to start: invalid job id \"../escape\"",
        ),
    ];
    for (job_id, command, reason) in cases {
        let mut request = job(job_id, "");
        request.command = command;
        assert_eq!(
            runner.start(request),
            StartOutcome::FailedToStart,
            "{job_id}"
        );
        let (report, exit) = exit_of(&mut events, job_id).await;
        assert_eq!(exit.outcome, ExitOutcome::Unknown, "{job_id}");
        assert_eq!(report.started_at, None, "{job_id}");
        assert!(
            exit.reason.starts_with("failed to start: "),
            "{}",
            exit.reason
        );
        assert!(
            exit.reason.contains(reason),
            "{:?} lacks {reason:?}",
            exit.reason
        );
    }
    assert!(!dir.path().join("escape").exists());
    assert_eq!(
        runner.reports().len(),
        4,
        "failed starts are held until forgotten"
    );
}

#[tokio::test]
async fn forget_drops_exited_records_only() {
    let dir = tempfile::tempdir().unwrap();
    let (runner, mut events) = runner(dir.path());
    runner.start(job("done", "exit 0"));
    runner.start(job("running", "sleep 30"));
    exit_of(&mut events, "done").await;

    let held: Vec<(String, bool)> = runner
        .reports()
        .into_iter()
        .map(|r| (r.job_id.clone(), r.is_running()))
        .collect();
    assert_eq!(held, [("done".into(), false), ("running".into(), true)]);

    assert_eq!(runner.forget("running"), ForgetOutcome::StillRunning);
    assert_eq!(runner.forget("done"), ForgetOutcome::Forgotten);
    assert_eq!(runner.forget("done"), ForgetOutcome::Unknown);
    assert_eq!(runner.report("done"), None);
    assert_eq!(runner.reports().len(), 1);

    // Logs outlive the record.
    let chunk = runner
        .read_log("done", LogStream::Stdout, 0, 0)
        .await
        .unwrap();
    assert!(chunk.data.is_empty() && chunk.eof);

    runner.stop("running", Some(Duration::ZERO), "cancelled");
    exit_of(&mut events, "running").await;
    assert_eq!(runner.forget("running"), ForgetOutcome::Forgotten);
    assert!(runner.reports().is_empty());
}

#[tokio::test]
async fn the_agents_environment_does_not_leak_into_jobs() {
    // Edition 2021: setting the variable is safe, and std serialises it with
    // every other environment access in this process.
    std::env::set_var("EDUPOOL_TOKEN", "agent-secret-1");
    std::env::set_var("EDUPOOL_AGENT_TOKEN", "agent-secret-2");
    let dir = tempfile::tempdir().unwrap();
    let (runner, mut events) = runner(dir.path());
    let mut request = job("env", "env");
    request.env = BTreeMap::from([
        ("MY_SETTING".to_owned(), "42".to_owned()),
        ("CUDA_VISIBLE_DEVICES".to_owned(), "all".to_owned()),
    ]);
    runner.start(request);
    exit_of(&mut events, "env").await;

    let env = read(runner.job_dir("env").unwrap().join("stdout.log"));
    let vars: BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    assert!(!env.contains("agent-secret"), "{env}");
    assert!(!vars.contains_key("EDUPOOL_TOKEN") && !vars.contains_key("EDUPOOL_AGENT_TOKEN"));
    assert_eq!(vars.get("MY_SETTING"), Some(&"42"));
    assert_eq!(vars.get("CUDA_VISIBLE_DEVICES"), Some(&"GPU-aaaa,GPU-bbbb"));
    assert_eq!(vars.get("EDUPOOL_JOB_ID"), Some(&"env"));
    assert_eq!(vars.get("EDUPOOL_ATTEMPT"), Some(&"1"));
    assert_eq!(
        vars.get("PATH").copied(),
        Some(
            std::env::var("PATH")
                .unwrap_or(FALLBACK_PATH.into())
                .as_str()
        )
    );
}

#[tokio::test]
async fn a_repeated_start_order_is_a_no_op_that_reports_again() {
    let dir = tempfile::tempdir().unwrap();
    let (runner, mut events) = runner(dir.path());
    runner.start(job("once", "echo started; exec sleep 30"));
    let first = within("the start report", events.recv()).await.unwrap();
    let log = runner.job_dir("once").unwrap().join("stdout.log");
    within("the job's output", async {
        while read(&log) != "started\n" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    assert_eq!(
        runner.start(job("once", "exit 9")),
        StartOutcome::AlreadyHeld
    );
    let again = within("the repeated report", events.recv()).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(read(&log), "started\n", "the log was not truncated");
    assert_eq!(runner.reports().len(), 1);

    runner.stop("once", Some(Duration::ZERO), "cancelled");
    let (_, exit) = exit_of(&mut events, "once").await;
    assert_eq!(exit.outcome, ExitOutcome::Signal(15));
    // Exited and not forgotten: still held, still a no-op.
    assert_eq!(
        runner.start(job("once", "exit 9")),
        StartOutcome::AlreadyHeld
    );
    assert_eq!(
        within("the repeated exit", events.recv())
            .await
            .unwrap()
            .exit(),
        Some(&exit)
    );
}

#[tokio::test]
async fn stop_of_unknown_or_exited_jobs_does_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (runner, mut events) = runner(dir.path());
    assert_eq!(runner.stop("nope", None, "cancelled"), StopOutcome::Unknown);
    runner.start(job("quick", "exit 0"));
    exit_of(&mut events, "quick").await;
    assert_eq!(
        runner.stop("quick", None, "cancelled"),
        StopOutcome::AlreadyExited
    );
}

#[tokio::test]
async fn processes_left_behind_by_a_job_are_killed_when_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let (runner, mut events) = runner(dir.path());
    runner.start(job("leaver", "sleep 30 & echo $! > bg.pid; exit 0"));
    let (_, exit) = exit_of(&mut events, "leaver").await;
    assert_eq!(exit.outcome, ExitOutcome::Code(0));
    let pid = read(runner.job_dir("leaver").unwrap().join("bg.pid"));
    let stat = format!("/proc/{}/stat", pid.trim());
    within("the background process to die", async {
        // Gone, or a zombie waiting for whoever adopted it.
        while std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z ")) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn logs_are_read_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let (runner, mut events) = runner(dir.path());
    runner.start(job("logs", "printf abcdefghij"));
    exit_of(&mut events, "logs").await;

    let read = |offset, max| runner.read_log("logs", LogStream::Stdout, offset, max);
    let chunk = read(0, 4).await.unwrap();
    assert_eq!(
        (chunk.data.as_slice(), chunk.next_offset, chunk.eof),
        (&b"abcd"[..], 4, false)
    );
    let chunk = read(4, 0).await.unwrap();
    assert_eq!(
        (chunk.data.as_slice(), chunk.next_offset, chunk.eof),
        (&b"efghij"[..], 10, true)
    );
    let chunk = read(10, 4).await.unwrap();
    assert_eq!(
        (chunk.data.as_slice(), chunk.next_offset, chunk.eof),
        (&b""[..], 10, true)
    );
    let chunk = read(99, 4).await.unwrap();
    assert_eq!(
        (chunk.data.len(), chunk.next_offset, chunk.eof),
        (0, 99, true)
    );

    let stderr = runner
        .read_log("logs", LogStream::Stderr, 0, 0)
        .await
        .unwrap();
    assert!(stderr.data.is_empty() && stderr.eof);

    let err = runner
        .read_log("other", LogStream::Stdout, 0, 0)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no stdout log for job other on this node");
    let err = runner
        .read_log("..", LogStream::Stdout, 0, 0)
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::InvalidJobId(_)), "{err}");
}

#[tokio::test]
async fn shutdown_stops_every_job_and_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (runner, mut events) = runner(dir.path());
    runner.start(job("a", "exec sleep 30"));
    runner.start(job(
        "b",
        "trap '' TERM; touch ready; while :; do sleep 0.05; done",
    ));
    wait_for_file(&runner.job_dir("b").unwrap().join("ready")).await;

    within("the shutdown", runner.shutdown("agent shutting down")).await;
    let reports = runner.reports();
    let exits: Vec<(&str, ExitOutcome, &str)> = reports
        .iter()
        .map(|r| {
            let exit = r.exit().expect("exited");
            (r.job_id.as_str(), exit.outcome, exit.reason.as_str())
        })
        .collect();
    assert_eq!(
        exits,
        [
            ("a", ExitOutcome::Signal(15), "agent shutting down"),
            ("b", ExitOutcome::Signal(9), "agent shutting down"),
        ]
    );
    assert_eq!(runner.start(job("c", "exit 0")), StartOutcome::ShuttingDown);
    // Both exits were sent as reports too.
    exits_of(&mut events, &["a", "b"]).await;
}

#[tokio::test]
async fn a_snapshot_covers_the_reports_waiting_in_the_channel() {
    let dir = tempfile::tempdir().unwrap();
    let (runner, mut events) = runner(dir.path());
    runner.start(job("quick", "exit 0"));
    within("the exit to be recorded", async {
        while runner.report("quick").is_some_and(|r| r.is_running()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let snapshot = runner.snapshot(&mut events);
    assert_eq!(snapshot.len(), 1);
    assert!(!snapshot[0].is_running());
    assert_eq!(
        events.try_recv(),
        None,
        "the stale start report was dropped"
    );
}

#[test]
fn job_ids_must_be_safe_directory_names() {
    for good in ["j1", "job-0001", "a.b_c-D", "0123456789abcdef"] {
        validate_job_id(good).unwrap();
    }
    let long = "x".repeat(MAX_JOB_ID_LEN + 1);
    for bad in ["", ".", "..", "../x", "a/b", "a b", "ü", long.as_str()] {
        assert!(validate_job_id(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn exit_outcomes_read_well() {
    assert_eq!(ExitOutcome::Code(3).to_string(), "exited with code 3");
    assert_eq!(
        ExitOutcome::Signal(11).to_string(),
        "killed by signal SIGSEGV"
    );
    assert_eq!(ExitOutcome::Signal(200).to_string(), "killed by signal 200");
}

#[tokio::test]
async fn exits_carry_gpu_time_and_the_energy_of_the_jobs_gpus() {
    use crate::inventory::{simulated_gpu_uuid, SimulatedInventory};

    let dir = tempfile::tempdir().unwrap();
    let inventory = SimulatedInventory::parse("node-e", "2xA100-80GB").unwrap();
    // The fallback PATH, not the process's: another test sets variables
    // while this one runs, and reading the environment then is a race.
    let (runner, mut events) = Runner::with_base_env(
        RunnerConfig {
            energy: Some(Arc::new(inventory)),
            ..RunnerConfig::new(dir.path())
        },
        vec![],
    );
    let gpus = vec![
        simulated_gpu_uuid("node-e", 0),
        simulated_gpu_uuid("node-e", 1),
    ];
    let started = Instant::now();
    runner.start(StartRequest {
        gpu_uuids: gpus,
        ..job("metered", "sleep 0.3")
    });
    let (_, exit) = exit_of(&mut events, "metered").await;
    let ran = started.elapsed();
    assert_eq!(exit.outcome, ExitOutcome::Code(0), "{exit:?}");
    let usage = exit.usage.expect("a run that started has usage");
    // Two GPUs for about the 0.3 s of sleep (the clock starts just after
    // the spawn), at most the time we waited.
    assert!(usage.gpu_time >= Duration::from_millis(500), "{exit:?}");
    assert!(usage.gpu_time <= ran * 2, "{exit:?} after {ran:?}");
    // The counters are read once the job is under way and again after its
    // exit: some energy, never more than two A100s at full power for the
    // whole wait.
    let joules = usage.energy_millijoules.expect("an energy reading") as f64 / 1e3;
    assert!(joules > 0.0, "{joules} J");
    assert!(joules <= 2.0 * 400.0 * ran.as_secs_f64(), "{joules} J");

    // A GPU the source does not know gives GPU time without energy; a job
    // that never started has no usage.
    runner.start(StartRequest {
        gpu_uuids: vec!["GPU-unknown".into()],
        ..job("unmetered", "true")
    });
    let (_, exit) = exit_of(&mut events, "unmetered").await;
    assert_eq!(exit.usage.unwrap().energy_millijoules, None);
    runner.start(StartRequest {
        command: vec!["/nonexistent/program".into()],
        ..job("never", "")
    });
    let (_, exit) = exit_of(&mut events, "never").await;
    assert_eq!(exit.usage, None);
    assert_eq!(runner.errors(), 1);
}

#[tokio::test]
async fn each_job_gets_a_private_directory_of_its_own() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let (runner, mut events) = Runner::with_base_env(RunnerConfig::new(dir.path()), vec![]);
    runner.start(job("private-a", "pwd; touch mine"));
    runner.start(job("private-b", "pwd"));
    exits_of(&mut events, &["private-a", "private-b"]).await;
    for id in ["private-a", "private-b"] {
        let job_dir = runner.job_dir(id).unwrap();
        let meta = std::fs::metadata(&job_dir).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700, "{}", job_dir.display());
        assert_eq!(meta.uid(), nix::unistd::Uid::effective().as_raw());
        let pwd = read(job_dir.join("stdout.log"));
        assert_eq!(
            Path::new(pwd.trim()).canonicalize().unwrap(),
            job_dir.canonicalize().unwrap()
        );
    }
    assert!(runner.job_dir("private-a").unwrap().join("mine").exists());
    assert!(!runner.job_dir("private-b").unwrap().join("mine").exists());
}

#[tokio::test]
async fn jobs_see_only_their_gpus_and_none_of_the_agents_credentials() {
    std::env::set_var("EDUPOOL_CA_CERT", "/etc/edupool/ca.pem");
    std::env::set_var("EDUPOOL_KEY", "/etc/edupool/node-key.pem");
    let dir = tempfile::tempdir().unwrap();
    let (runner, mut events) = runner(dir.path());
    runner.start(job("gpus", "env"));
    runner.start(StartRequest {
        gpu_uuids: vec![],
        ..job("no-gpus", "env")
    });
    exits_of(&mut events, &["gpus", "no-gpus"]).await;
    let env = read(runner.job_dir("gpus").unwrap().join("stdout.log"));
    let vars: BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(vars.get("CUDA_VISIBLE_DEVICES"), Some(&"GPU-aaaa,GPU-bbbb"));
    assert_eq!(
        vars.get("NVIDIA_VISIBLE_DEVICES"),
        Some(&"GPU-aaaa,GPU-bbbb")
    );
    assert!(!env.contains("/etc/edupool"), "{env}");
    let names: Vec<&str> = vars.keys().copied().collect();
    for name in &names {
        assert!(
            !name.starts_with("EDUPOOL_") || ["EDUPOOL_JOB_ID", "EDUPOOL_ATTEMPT"].contains(name),
            "{name} reached the job"
        );
    }
    let env = read(runner.job_dir("no-gpus").unwrap().join("stdout.log"));
    assert!(env.lines().any(|l| l == "CUDA_VISIBLE_DEVICES="), "{env}");
    assert!(
        env.lines().any(|l| l == "NVIDIA_VISIBLE_DEVICES=void"),
        "{env}"
    );
}

#[tokio::test]
async fn a_root_agent_runs_jobs_as_the_run_as_user() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !nix::unistd::Uid::effective().is_root() {
        println!("SKIPPED: switching users needs a root test process");
        return;
    }
    let (user, _) = resolve_job_user(Some("nobody"), false).unwrap();
    let JobUser::User { uid, gid, .. } = user.clone() else {
        panic!("nobody is a user of its own: {user:?}");
    };
    let dir = tempfile::tempdir().unwrap();
    // The job user must be able to pass through the work directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let (runner, mut events) = Runner::with_base_env(
        RunnerConfig {
            job_user: user,
            ..RunnerConfig::new(dir.path())
        },
        vec![],
    );
    runner.start(job("as-nobody", "id -u; id -g; id -G; touch mine"));
    let (_, exit) = exit_of(&mut events, "as-nobody").await;
    assert_eq!(exit.outcome, ExitOutcome::Code(0), "{exit:?}");
    let job_dir = runner.job_dir("as-nobody").unwrap();
    let out = read(job_dir.join("stdout.log"));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], uid.to_string(), "{out}");
    assert_eq!(lines[1], gid.to_string(), "{out}");
    // No supplementary group of root's is kept.
    assert!(!lines[2].split(' ').any(|g| g == "0"), "{out}");
    let meta = std::fs::metadata(&job_dir).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (uid, 0o700));
    assert_eq!(std::fs::metadata(job_dir.join("mine")).unwrap().uid(), uid);
}
