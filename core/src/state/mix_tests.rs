//! The job mix is the same on every replica: it counts from the entry
//! `StartMixTally`, so a replica that loads a snapshot written before the
//! tally existed and one that replays the log from further back agree.

use super::tests_support::{node, spec, submit};
use super::*;

fn create(s: &mut State, name: &str) {
    s.apply(
        Command::CreateTenant {
            name: name.into(),
            token_hash: format!("hash-of-{name}"),
        },
        1_000,
    )
    .unwrap();
}

#[test]
fn a_snapshot_from_before_the_mix_and_a_replay_of_its_log_agree() {
    // The log of a pool from before the tally: submissions, no start.
    let mut replayed = State::default();
    create(&mut replayed, "zju");
    node(&mut replayed, "n1", 8);
    for gpus in [1, 1, 2] {
        submit(&mut replayed, "zju", gpus, JobClass::Batch);
    }
    assert!(replayed.mix().is_empty() && !replayed.mix().is_counting());
    // A replica loads the snapshot of that state as an earlier version
    // wrote it (no mix at all).
    let mut json = serde_json::to_value(&replayed).unwrap();
    json.as_object_mut().unwrap().remove("mix");
    let mut loaded: State = serde_json::from_value(json).unwrap();
    assert_eq!(loaded, replayed);
    // The leader's StartMixTally reaches both at the same entry; what
    // follows is counted alike.
    for s in [&mut replayed, &mut loaded] {
        s.apply(Command::StartMixTally, 2_000).unwrap();
        s.apply(Command::StartMixTally, 2_000).unwrap();
        submit(s, "zju", 4, JobClass::Batch);
    }
    assert_eq!(loaded, replayed);
    assert_eq!(
        loaded.mix().kinds(),
        &[(JobKind::of(&spec(4, JobClass::Batch)), 1)]
    );
}
