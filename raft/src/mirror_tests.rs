//! The planner's copy of the state (`Mirror`) stays equal to the
//! driver's through a stream of applied batches, across the ways it
//! misses entries (a skipped index, a cut feed, a full feed), and a
//! write commits while a reader holds the copy.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use edupool_core::planner;
use edupool_core::state::tests_support::{node, spec, tenant};
use edupool_core::state::{Command, Indexed, JobClass};
use raft::prelude::{Entry, EntryType};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::feed::Feed;
use crate::machine::{apply_entry, LogEntry, Machine};
use crate::mirror::Mirror;
use crate::replica::hash;
use crate::{Replica, ReplicaConfig};

/// A log entry at `index` holding `cmd`.
fn entry(index: u64, cmd: Command) -> Entry {
    let mut e = Entry {
        index,
        term: 1,
        data: LogEntry::encode(cmd, 1_000 + index as i64).into(),
        ..Default::default()
    };
    e.set_entry_type(EntryType::EntryNormal);
    e
}

/// What the driver does with a batch: applies it under the write lock,
/// then hands it to the feed.
struct Driver {
    source: Arc<RwLock<Machine>>,
    feed: Feed,
}

impl Driver {
    fn new() -> Driver {
        let mut state = Indexed::default();
        tenant(&mut state, "zju");
        for n in 0..4 {
            node(&mut state, &format!("n{n}"), 8);
        }
        Driver {
            source: Arc::new(RwLock::new(Machine { state, applied: 0 })),
            feed: Feed::default(),
        }
    }

    fn mirror(&self, capacity: usize) -> Mirror {
        Mirror::start(self.source.clone(), self.feed.clone(), capacity)
    }

    /// Applies `cmds` as the next entries; hands them on unless `hide`.
    fn apply(&self, cmds: Vec<Command>, hide: bool) {
        let mut m = self.source.write().unwrap();
        let first = m.applied + 1;
        let entries: Vec<Entry> = (first..).zip(cmds).map(|(i, cmd)| entry(i, cmd)).collect();
        for e in &entries {
            let _ = apply_entry(&mut m.state, e);
            m.applied = e.index;
        }
        drop(m);
        if !hide {
            self.feed.publish(entries);
        }
    }

    /// Submissions, then what the planner decides on the driver's state:
    /// placements that change free capacity, holdings and queues.
    fn round(&self, jobs: u32) {
        let submits = (0..jobs)
            .map(|i| Command::SubmitJob {
                tenant: "zju".into(),
                spec: spec(1 + i % 3, JobClass::Training),
            })
            .collect();
        self.apply(submits, false);
        let decisions = {
            let m = self.source.read().unwrap();
            planner::plan(&m.state, 10_000, &planner::Policy::default())
        };
        assert!(!decisions.is_empty(), "the round places something");
        self.apply(
            decisions.into_iter().map(|d| d.into_command()).collect(),
            false,
        );
    }

    fn assert_mirrored(&self, mirror: &Mirror) {
        let m = self.source.read().unwrap();
        assert_eq!(mirror.applied(), m.applied);
        assert_eq!(mirror.state().state(), m.state.state());
        assert_eq!(mirror.state_hash(), (m.applied, hash(m.state.state())));
        // The copy's indexes are what the planner reads: exact too.
        assert_eq!(mirror.state().free_capacity(), m.state.free_capacity());
        assert_eq!(mirror.state().holdings(), m.state.holdings());
    }
}

#[test]
fn the_copy_equals_the_driver_state_through_a_stream_of_batches() {
    let driver = Driver::new();
    let mut mirror = driver.mirror(64);
    // Indexes built on both sides before the stream, so that they are
    // kept exact entry by entry rather than built afresh.
    let _ = mirror.state().free_capacity();
    let _ = driver.source.read().unwrap().state.free_capacity();
    for _ in 0..4 {
        driver.round(5);
        let caught = mirror.catch_up();
        assert_eq!(caught.resynced, 0);
        driver.assert_mirrored(&mirror);
    }
    assert!(mirror.state().state().placed_jobs().count() > 0);
}

#[test]
fn a_copy_that_misses_entries_copies_the_driver_state_afresh() {
    let driver = Driver::new();
    let mut mirror = driver.mirror(64);
    driver.round(3);
    // Entries the feed never carried: the next batch starts past them.
    driver.apply(
        vec![Command::CreateTenant {
            name: "hidden".into(),
            token_hash: "h".into(),
        }],
        true,
    );
    driver.round(3);
    let caught = mirror.catch_up();
    assert_eq!(caught.resynced, 1, "{caught:?}");
    driver.assert_mirrored(&mirror);
    assert!(mirror.state().tenant("hidden").is_some());

    // A snapshot replaced the driver's state: the feed is cut.
    driver.apply(
        vec![Command::CreateTenant {
            name: "snap".into(),
            token_hash: "h".into(),
        }],
        true,
    );
    driver.feed.cut();
    let caught = mirror.catch_up();
    assert_eq!(caught.resynced, 1, "{caught:?}");
    driver.assert_mirrored(&mirror);
    // And it goes on from the fresh copy.
    driver.round(2);
    assert_eq!(mirror.catch_up().resynced, 0);
    driver.assert_mirrored(&mirror);
}

#[test]
fn a_copy_whose_feed_is_full_is_dropped_and_copies_afresh() {
    let driver = Driver::new();
    let mut mirror = driver.mirror(2);
    // Four batches into a feed of two: the driver never waits; it drops
    // the copy from the feed instead.
    driver.round(2);
    driver.round(2);
    let caught = mirror.catch_up();
    assert_eq!(caught.resynced, 1, "{caught:?}");
    driver.assert_mirrored(&mirror);
    driver.round(2);
    let caught = mirror.catch_up();
    assert_eq!(caught.resynced, 0, "{caught:?}");
    assert!(caught.applied > 2, "{caught:?}");
    driver.assert_mirrored(&mirror);
}

fn single(dir: &std::path::Path) -> (Replica, CancellationToken, TaskTracker) {
    let c = ReplicaConfig::single(1, dir.to_path_buf(), Duration::from_millis(20));
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let r = Replica::start(c, stop.clone(), &tracker).unwrap();
    (r, stop, tracker)
}

async fn propose_tenant(r: &Replica, name: &str) {
    r.propose(Command::CreateTenant {
        name: name.into(),
        token_hash: format!("h-{name}"),
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_replica_copy_matches_its_state_hash_at_the_same_index() {
    let dir = tempfile::tempdir().unwrap();
    let (r, stop, tracker) = single(dir.path());
    propose_tenant(&r, "first").await;
    let mut mirror = r.mirror();
    for i in 0..10 {
        propose_tenant(&r, &format!("t{i}")).await;
    }
    // A proposer is answered only after its entry reached the feed.
    assert_eq!(mirror.catch_up().resynced, 0);
    assert_eq!(mirror.state_hash(), r.state_hash());
    assert!(mirror.state().tenant("t9").is_some());
    // A forced resync (as a snapshot installed from the leader would)
    // gives the same state again.
    r.cut_feed();
    propose_tenant(&r, "after").await;
    assert_eq!(mirror.catch_up().resynced, 1);
    assert_eq!(mirror.state_hash(), r.state_hash());
    // A small feed overflows under a burst, and the copy recovers.
    let mut small = r.mirror_with_capacity(1);
    for i in 0..5 {
        propose_tenant(&r, &format!("burst{i}")).await;
    }
    assert!(small.catch_up().resynced >= 1);
    assert_eq!(small.state_hash(), r.state_hash());
    stop.cancel();
    tracker.close();
    tracker.wait().await;
}

#[tokio::test]
async fn a_write_commits_while_a_reader_holds_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (r, stop, tracker) = single(dir.path());
    propose_tenant(&r, "first").await;
    let mirror = r.mirror();
    // A planning round in progress: it holds the copy for as long as it
    // plans. With the driver's read lock held instead, the write below
    // could never apply, and the proposal would never be answered.
    let reading = mirror.state();
    let committed = tokio::time::timeout(Duration::from_secs(60), propose_tenant(&r, "during"));
    committed
        .await
        .expect("the write was not blocked by the reader");
    assert!(r.read(|s| s.tenant("during").is_some()));
    // The reader still sees the state it started from.
    assert!(reading.tenant("during").is_none());
    stop.cancel();
    tracker.close();
    tracker.wait().await;
}
