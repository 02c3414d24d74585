//! A replica cut off from its peers and then reconnected must learn the
//! leader again quickly: clients that reach it meanwhile are turned away.
//! The cut is a black hole (`Cluster::black_hole`): the connections open
//! when it starts stay open and never carry another byte, as after a
//! partition that dropped packets rather than closing connections.

use std::time::{Duration, Instant};

use anyhow::Result;
use edupool_tests::cluster::Cluster;
use edupool_tests::eventually;

const WAIT: Duration = Duration::from_secs(30);
/// How long the partition lasts once the replica has lost the leader.
const CUT: Duration = Duration::from_secs(3);
/// Generous: the election timeout is 0.5 to 1 s, and each poll starts an
/// `edupoolctl` process. Links that kept their dead connections never
/// rejoined at all.
const REJOIN_BOUND: Duration = Duration::from_millis(2500);

fn leader_seen_by(c: &Cluster, i: u64) -> Option<u64> {
    c.status(i).ok()?["leader_id"].as_u64()
}

#[test]
fn a_replica_back_from_a_partition_names_the_leader_within_an_election_timeout() -> Result<()> {
    let c = Cluster::start(3, &[])?;
    let leader = c.leader(WAIT)?;
    let f = *c.ids().iter().find(|i| **i != leader).expect("a follower");
    c.black_hole(&[f]);
    eventually("the cut-off replica to lose the leader", WAIT, || {
        leader_seen_by(&c, f).is_none().then_some(())
    })?;
    // Long enough for every backoff on the cut links to reach its cap.
    std::thread::sleep(CUT);
    c.heal();
    let healed = Instant::now();
    let seen = eventually("the rejoined replica to name the leader", WAIT, || {
        leader_seen_by(&c, f)
    })?;
    let took = healed.elapsed();
    eprintln!("replica {f} named leader {seen} {took:?} after the partition healed");
    assert_eq!(seen, leader, "the majority kept its leader");
    assert!(
        took < REJOIN_BOUND,
        "replica {f} took {took:?} to name the leader after the partition healed"
    );
    Ok(())
}
