//! A replica end to end on a real store: restarts, snapshots taken in
//! the background beside proposals, the log bounded by size.

use std::sync::Arc;
use std::time::Duration;

use edupool_core::state::{Command, JobClass, JobId, JobSpec, OnNodeLost, Outcome, Rejection};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::snapshotter::{self, BeforeSave};
use crate::{ProposeError, RaftStatus, RaftStore, Replica, ReplicaConfig};

fn config(dir: &std::path::Path) -> ReplicaConfig {
    let mut c = ReplicaConfig::single(1, dir.to_path_buf(), Duration::from_millis(20));
    c.snapshot_entries = 2;
    c.snapshot_log_ratio = 0.0;
    c.keep_entries = 1;
    c
}

async fn start(dir: &std::path::Path) -> (Replica, CancellationToken, TaskTracker) {
    start_configured(config(dir))
}

fn start_configured(c: ReplicaConfig) -> (Replica, CancellationToken, TaskTracker) {
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let r = Replica::start(c, stop.clone(), &tracker).unwrap();
    (r, stop, tracker)
}

#[tokio::test]
async fn a_log_over_its_size_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.snapshot_entries = 1_000_000;
    c.snapshot_bytes = 300;
    let (r, stop, tracker) = start_configured(c);
    for i in 0..20 {
        r.propose(Command::CreateTenant {
            name: format!("t{i}"),
            token_hash: format!("h{i}"),
        })
        .await
        .unwrap();
    }
    // Snapshots were taken and the log stays short.
    let mut status = r.watch_status();
    let settled = status.wait_for(|s| s.snapshot_index > 10 && s.log_entries < 5);
    tokio::time::timeout(Duration::from_secs(10), settled)
        .await
        .expect("the log is compacted by size")
        .unwrap();
    stop.cancel();
    tracker.close();
    tracker.wait().await;
}

#[tokio::test]
async fn a_snapshot_waits_for_a_log_as_large_as_the_last_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.snapshot_log_ratio = 1.0;
    // The log kept behind a snapshot counts too; keep none, so the
    // large entry leaves the log with the snapshot that holds it.
    c.keep_entries = 0;
    let (r, stop, tracker) = start_configured(c);
    let tenant = |name: String, hash_len: usize| Command::CreateTenant {
        name,
        token_hash: "h".repeat(hash_len),
    };
    // No snapshot yet: two entries make the first one due, and it
    // holds the large tenant.
    r.propose(tenant("big".into(), 20_000)).await.unwrap();
    r.propose(tenant("t0".into(), 8)).await.unwrap();
    status_until(&r, |s| {
        s.snapshot_bytes > 20_000 && s.snapshot_in_flight.is_none()
    })
    .await;
    let first = r.status();
    // Far more than two small entries: the log stays well below the
    // snapshot's size, so none is due.
    for i in 1..=30 {
        r.propose(tenant(format!("t{i}"), 8)).await.unwrap();
    }
    let after = r.status();
    assert_eq!(after.snapshot_index, first.snapshot_index, "{after:?}");
    assert_eq!(after.snapshot_in_flight, None, "{after:?}");
    assert!(after.log_entries >= 30, "{after:?}");
    // An entry that brings the log to the snapshot's size makes it due.
    r.propose(tenant("big2".into(), 25_000)).await.unwrap();
    let last = r.status().applied;
    status_until(&r, |s| s.snapshot_index >= last && s.log_entries <= 2).await;
    stop.cancel();
    tracker.close();
    tracker.wait().await;
}

#[tokio::test]
async fn committed_commands_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (r, stop, tracker) = start(dir.path()).await;
    let out = r
        .propose(Command::CreateTenant {
            name: "zju".into(),
            token_hash: "h".into(),
        })
        .await
        .unwrap();
    assert_eq!(out, Outcome::Tenant("zju".into()));
    let err = r
        .propose(Command::CreateTenant {
            name: "zju".into(),
            token_hash: "h2".into(),
        })
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ProposeError::Rejected(Rejection::TenantExists(_))
    ));
    r.propose(Command::NodeConnected {
        node: "n1".into(),
        gpus: vec![],
        agent_version: "t".into(),
        images: vec![],
        allows_host_jobs: true,
        cpu_millicores: 0,
        memory_bytes: 0,
    })
    .await
    .unwrap();
    r.read_barrier().await.unwrap();
    let before = r.read(|s| s.state().clone());
    let hash = r.state_hash();
    // Snapshots were taken on the way (every 2 entries), so the restart
    // below starts from one and replays the rest of the log.
    assert!(r.status().snapshot_index > 0);
    stop.cancel();
    tracker.close();
    tracker.wait().await;

    let (r, stop, tracker) = start(dir.path()).await;
    // The log is replayed before the replica can be read.
    assert_eq!(r.read(|s| s.state().clone()), before);
    assert_eq!(r.state_hash(), hash);
    // And the replica keeps accepting writes after the replay.
    let spec = JobSpec {
        name: String::new(),
        command: vec!["true".into()],
        env: Default::default(),
        gpus: 0,
        nodes: 1,
        class: JobClass::Batch,
        walltime_secs: 1,
        grace_period_secs: 1,
        on_node_lost: OnNodeLost::Requeue,
        max_retries: 0,
        priority: 0,
        gpu_fraction: 0,
        constraints: Default::default(),
        requeue_on_preempt: true,
        secret_env: Default::default(),
        image: None,
        cpu_millicores: 0,
        memory_bytes: 0,
    };
    let out = r
        .propose(Command::SubmitJob {
            tenant: "zju".into(),
            spec,
        })
        .await
        .unwrap();
    assert_eq!(out, Outcome::Job(JobId(1)));
    let env = r.snapshot_now().await.unwrap();
    assert_eq!(env.state, r.read(|s| s.state().clone()));
    stop.cancel();
    tracker.close();
    tracker.wait().await;
}

/// Waits (up to a generous deadline) until the published status
/// satisfies `ok`.
async fn status_until(r: &Replica, ok: impl Fn(&RaftStatus) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = r.status();
        if ok(&status) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never got there: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A hook that holds each snapshot between encoding and saving until
/// the test lets it go, and tells the test which index it holds.
fn held_snapshots() -> (
    BeforeSave,
    mpsc::UnboundedReceiver<u64>,
    std::sync::mpsc::Sender<()>,
) {
    let (entered_tx, entered) = mpsc::unbounded_channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = std::sync::Mutex::new(released);
    let hook: BeforeSave = Arc::new(move |index| {
        let _ = entered_tx.send(index);
        let _ = released.lock().unwrap().recv();
    });
    (hook, entered, release)
}

/// A replica whose snapshots are held before their save (taken only
/// on request), holding five tenants.
async fn held_replica(
    dir: &std::path::Path,
) -> (
    Replica,
    mpsc::UnboundedReceiver<u64>,
    std::sync::mpsc::Sender<()>,
    CancellationToken,
    TaskTracker,
) {
    let mut c = config(dir);
    c.snapshot_entries = 1_000_000;
    let (hook, entered, release) = held_snapshots();
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let r = Replica::start_with(c, Some(hook), stop.clone(), &tracker).unwrap();
    for i in 0..5 {
        r.propose(tenant(i)).await.unwrap();
    }
    (r, entered, release, stop, tracker)
}

fn tenant(i: usize) -> Command {
    Command::CreateTenant {
        name: format!("t{i}"),
        token_hash: format!("h{i}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_commit_while_a_snapshot_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (r, mut entered, release, stop, tracker) = held_replica(dir.path()).await;
    let before = r.status().snapshot_index;
    let taking = tokio::spawn({
        let r = r.clone();
        async move { r.snapshot_now().await }
    });
    let index = entered.recv().await.unwrap();
    // The status is published by the driver's loop: wait for it.
    status_until(&r, |s| s.snapshot_in_flight == Some(index)).await;

    // The snapshot is held before its save, and the driver goes on:
    // proposals commit, are applied, and a second request waits.
    for i in 5..25 {
        r.propose(tenant(i)).await.unwrap();
    }
    r.read_barrier().await.unwrap();
    assert_eq!(r.read(|s| s.tenants().count()), 25);
    assert!(!taking.is_finished());
    assert_eq!(r.status().snapshot_index, before);
    let second = tokio::spawn({
        let r = r.clone();
        async move { r.snapshot_now().await }
    });

    release.send(()).unwrap();
    let env = taking.await.unwrap().unwrap();
    assert_eq!(env.index, index);
    assert_eq!(env.state.tenants().count(), 5);
    // The second snapshot starts after the first is saved and covers
    // what was applied meanwhile.
    let later = entered.recv().await.unwrap();
    assert!(later >= index + 20, "{later} after {index}");
    release.send(()).unwrap();
    let env = second.await.unwrap().unwrap();
    assert_eq!(env.state.tenants().count(), 25);
    status_until(&r, |s| {
        s.snapshot_index == later && s.snapshot_in_flight.is_none()
    })
    .await;

    // A restart from the background snapshot (and the log after it)
    // restores exactly the state.
    r.propose(tenant(25)).await.unwrap();
    let state = r.read(|s| s.state().clone());
    let hash = r.state_hash();
    drop(release);
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    let (r, stop, tracker) = start(dir.path()).await;
    assert_eq!(r.read(|s| s.state().clone()), state);
    assert_eq!(r.state_hash(), hash);
    stop.cancel();
    tracker.close();
    tracker.wait().await;
}

/// Encoding a snapshot yields the CPU to the threads that serve: it
/// runs on a thread of its own at a lower priority, and the driver's
/// threads keep theirs.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_written_at_a_lower_priority() {
    let nice = || rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let hook: BeforeSave = Arc::new(move |_| {
        let name = std::thread::current().name().map(String::from);
        let _ = seen_tx.send((name, nice()));
    });
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let r = Replica::start_with(config(dir.path()), Some(hook), stop.clone(), &tracker).unwrap();
    let ours = nice();
    r.propose(tenant(0)).await.unwrap();
    r.snapshot_now().await.unwrap();
    let (name, theirs) = seen.recv().await.unwrap();
    assert_eq!(name.as_deref(), Some("edupool-snapshot"));
    assert_eq!(theirs, (ours + snapshotter::SNAPSHOT_NICE).min(19));
    assert_eq!(nice(), ours);
    stop.cancel();
    tracker.close();
    tracker.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_snapshot_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (r, mut entered, release, stop, tracker) = held_replica(dir.path()).await;
    let before = r.status().snapshot_index;
    let state = r.read(|s| s.state().clone());
    let taking = tokio::spawn({
        let r = r.clone();
        async move { r.snapshot_now().await }
    });
    entered.recv().await.unwrap();
    stop.cancel();
    release.send(()).unwrap();
    tracker.close();
    tracker.wait().await;
    assert!(matches!(taking.await.unwrap(), Err(ProposeError::Stopped)));

    let store = RaftStore::open(&dir.path().join("raft.redb"), &[]).unwrap();
    assert_eq!(store.snapshot_info().0, before, "nothing was saved");
    drop(store);
    let (r, stop, tracker) = start(dir.path()).await;
    assert_eq!(r.read(|s| s.state().clone()), state);
    stop.cancel();
    tracker.close();
    tracker.wait().await;
}
