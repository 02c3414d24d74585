//! A checker in the spirit of Jepsen: clients submit and cancel jobs on a
//! three-replica cluster while faults are injected — leader kill, follower
//! kill, a paused follower, minority and majority partitions, a leader
//! whose raft driver panics (the process must exit non-zero and is
//! restarted), and a replica that comes back so far behind that it must
//! install a snapshot.
//! Afterwards:
//!
//! - every submission answered OK exists exactly once (and no submission
//!   exists twice, answered or not);
//! - every cancel answered OK took effect;
//! - no GPU was ever held by two jobs at once, checked after every entry
//!   of the committed log replayed from each replica's store;
//! - all replicas' state machines are identical (same hash at the same
//!   index, and the same state replayed from each store).
//!
//! "A replica restarted from an old snapshot" is played as a replica that
//! stays down until the leader has compacted the log past it, so it must
//! restart from its own old snapshot and install the leader's. Putting an
//! old copy of a data directory back under a running cluster is not
//! played: it rolls back a raft vote, which raft does not tolerate and
//! docs/operations.md forbids (old copies are restored as a new cluster).
//!
//! Faults are injected through the harness in `edupool_tests::cluster`
//! (loopback proxies per directed link; see its docs for why not network
//! namespaces).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use edupool_scheduler::raft::replay_data_dir;
use edupool_scheduler::state::{State, WHOLE_GPU};
use edupool_tests::cluster::Cluster;
use edupool_tests::load::{run_client, History};
use edupool_tests::{eventually, ADMIN_TOKEN};

const WAIT: Duration = Duration::from_secs(60);
/// How long each fault lasts while the load runs.
const FAULT: Duration = Duration::from_secs(3);

/// Keeps the load running through a fault of fixed length.
fn during_fault() {
    std::thread::sleep(FAULT);
}

/// No GPU over-committed (whole GPUs held by one job, fractions summing to
/// at most one GPU), and node and job records agree.
fn check_gpus(index: u64, s: &State) -> Result<()> {
    let mut used: BTreeMap<&str, (u32, Vec<u64>)> = BTreeMap::new();
    for j in s.jobs().filter(|j| j.state.is_placed()) {
        for g in j.gpu_uuids() {
            let e = used.entry(g).or_default();
            e.0 += j.spec.milli_per_gpu();
            e.1.push(j.id.0);
            if e.0 > WHOLE_GPU {
                bail!(
                    "at log index {index}: GPU {g} over-committed by jobs {:?}",
                    e.1
                );
            }
        }
    }
    for n in s.nodes() {
        for g in &n.gpus {
            for job in g.holders.keys() {
                let held = used
                    .get(g.info.uuid.as_str())
                    .is_some_and(|(_, jobs)| jobs.contains(&job.0));
                if !held {
                    bail!(
                        "at log index {index}: GPU {} says job {} but that job does not hold it",
                        g.info.uuid,
                        job.0
                    );
                }
            }
        }
    }
    Ok(())
}

fn follower_of(c: &Cluster, leader: u64) -> u64 {
    *c.ids().iter().find(|i| **i != leader).expect("a follower")
}

#[test]
fn acknowledged_work_survives_crashes_pauses_and_partitions() -> Result<()> {
    // By entries alone, so snapshots (and their installs) come often.
    let mut c = Cluster::start(
        3,
        &["--snapshot-entries", "200", "--snapshot-log-ratio", "0"],
    )?;
    let work = tempfile::tempdir()?;
    let mut agent = c.agent("n1", "4xA100-80GB", work.path())?;
    c.leader(WAIT)?;
    let all = c.endpoints();
    let tenant = Cluster::ctl_json(&all, ADMIN_TOKEN, &["tenant", "create", "zju"])?;
    let token = tenant["token"].as_str().expect("a token").to_string();
    Cluster::wait_for_nodes(&all, 1, WAIT)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|k| {
            rt.spawn(run_client(
                all.clone(),
                token.clone(),
                format!("c{k}"),
                stop.clone(),
            ))
        })
        .collect();

    // The nemesis.
    let leader = c.leader(WAIT)?;
    c.kill9(leader);
    during_fault();
    c.restart(leader)?;

    let leader = c.leader(WAIT)?;
    let f = follower_of(&c, leader);
    c.kill9(f);
    during_fault();
    c.restart(f)?;

    let leader = c.leader(WAIT)?;
    let f = follower_of(&c, leader);
    c.partition(&[f]); // a minority: the majority keeps serving
    during_fault();
    c.heal();

    let leader = c.leader(WAIT)?;
    c.partition(&[leader]); // the leader in the minority: it must step down
    during_fault();
    c.heal();

    let leader = c.leader(WAIT)?;
    let f = follower_of(&c, leader);
    c.pause(f)?;
    during_fault();
    c.resume(f)?;

    // The leader's raft driver panics: its process exits with an error
    // (as systemd would see it) and is restarted.
    let leader = c.leader(WAIT)?;
    let exit = c.panic_driver(leader, WAIT)?;
    assert!(
        !exit.success(),
        "a replica whose driver died exits non-zero: {exit}"
    );
    during_fault();
    c.restart(leader)?;

    // A replica down long enough that the log it missed is compacted away:
    // it comes back through a snapshot.
    let leader = c.leader(WAIT)?;
    let f = follower_of(&c, leader);
    let behind = c.status(f)?["applied_index"].as_u64().unwrap_or(0);
    c.kill9(f);
    eventually(
        "the leader to compact past the stopped replica",
        WAIT,
        || {
            let s = c.status(leader).ok()?;
            (s["snapshot_index"].as_u64()? > behind + 250).then_some(())
        },
    )?;
    c.restart(f)?;
    during_fault();

    stop.store(true, Ordering::SeqCst);
    let histories: Vec<History> = clients
        .into_iter()
        .map(|h| rt.block_on(h))
        .collect::<Result<_, _>>()?;
    c.heal_all()?;
    c.leader(WAIT)?;
    // Quiesce: without its agent the node goes down and nothing more is
    // placed, so the log stops growing and the replicas can be compared.
    agent.kill9();
    eventually("the node to be down", WAIT, || {
        let v = Cluster::ctl_json(&all, ADMIN_TOKEN, &["node", "list"]).ok()?;
        (v.as_array()?.first()?["status"].as_str()? == "down").then_some(())
    })?;
    c.converged(WAIT)?;
    let restarted = c.status(f)?;
    assert!(
        restarted["snapshot_index"].as_u64().unwrap_or(0) > behind,
        "the lagging replica caught up through a snapshot: {restarted}"
    );

    // Every OK'd submission exists exactly once; nothing exists twice.
    let jobs = Cluster::ctl_json(&all, ADMIN_TOKEN, &["job", "list"])?;
    let jobs = jobs.as_array().expect("a list");
    let mut by_name: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for j in jobs {
        by_name
            .entry(j["name"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push((
                j["id"].as_str().unwrap_or_default().to_string(),
                j["state"].as_str().unwrap_or_default().to_string(),
            ));
    }
    let mut acked = 0;
    let mut unknown = 0;
    for h in &histories {
        unknown += h.unknown.len();
        for (name, id) in &h.submitted {
            acked += 1;
            let found = by_name.get(name).map(Vec::as_slice).unwrap_or_default();
            assert_eq!(found.len(), 1, "OK'd submission {name} exists exactly once");
            assert_eq!(&found[0].0, id, "{name} kept the id it was given");
        }
        for id in &h.cancelled {
            let state = jobs
                .iter()
                .find(|j| j["id"].as_str() == Some(id))
                .and_then(|j| j["state"].as_str())
                .unwrap_or("missing");
            assert!(
                matches!(state, "cancelling" | "cancelled"),
                "OK'd cancel of {id} took effect: {state}"
            );
        }
    }
    for (name, found) in &by_name {
        assert!(found.len() <= 1, "{name} exists {} times", found.len());
    }
    assert!(
        acked > 50,
        "the load made progress through the faults ({acked} OK'd)"
    );
    eprintln!("{acked} submissions OK'd, {unknown} with unknown outcome");

    // Stop everything, then replay each replica's committed log.
    let dirs: Vec<_> = c.replicas.values().map(|r| r.data_dir.clone()).collect();
    for i in c.ids() {
        c.kill9(i);
    }
    let started = Instant::now();
    let mut finals = BTreeSet::new();
    for dir in dirs {
        let mut problem = None;
        let state = replay_data_dir(&dir, |index, s| {
            if problem.is_none() {
                problem = check_gpus(index, s).err();
            }
        })?;
        if let Some(p) = problem {
            return Err(p);
        }
        finals.insert(serde_json::to_string(&state)?);
    }
    assert_eq!(
        finals.len(),
        1,
        "every replica's store replays to the same state"
    );
    eprintln!("replayed and checked in {:?}", started.elapsed());
    Ok(())
}
