//! Tenants' uid offsets: given by `AssignUidOffsets` in creation order,
//! distinct, never reused, kept by snapshots, and the same on a replica
//! that loads a snapshot from before offsets and on one that replays the
//! log.

use super::*;

fn offsets(s: &State) -> Vec<(String, u32)> {
    s.tenants()
        .map(|t| (t.name.clone(), t.uid_offset))
        .collect()
}

fn create(s: &mut State, name: &str, at: Millis) {
    s.apply(
        Command::CreateTenant {
            name: name.into(),
            token_hash: format!("hash-of-{name}"),
        },
        at,
    )
    .unwrap();
}

fn assign(s: &mut State) {
    s.apply(Command::AssignUidOffsets, 9_000).unwrap();
}

/// A state as a snapshot holds it (MessagePack with field names, as
/// `raft::snapshot` writes it), read back.
fn restored(s: &State) -> State {
    let mut bytes = vec![];
    let mut ser = rmp_serde::Serializer::new(&mut bytes).with_struct_map();
    serde::Serialize::serialize(s, &mut ser).unwrap();
    rmp_serde::from_slice(&bytes).unwrap()
}

fn pairs(v: &[(&str, u32)]) -> Vec<(String, u32)> {
    v.iter().map(|(n, o)| (n.to_string(), *o)).collect()
}

#[test]
fn offsets_follow_creation_and_survive_a_snapshot() {
    let mut s = State::default();
    create(&mut s, "zju", 1_000);
    assert!(s.uid_offsets_missing());
    assign(&mut s);
    assert!(!s.uid_offsets_missing());
    create(&mut s, "hdu", 2_000);
    create(&mut s, "ahu", 2_000);
    assign(&mut s);
    // Same millisecond: by name.
    let want = pairs(&[("ahu", 2), ("hdu", 3), ("zju", 1)]);
    assert_eq!(offsets(&s), want);
    // Assigning again changes nothing.
    assign(&mut s);
    assert_eq!(offsets(&s), want);
    let back = restored(&s);
    assert_eq!(offsets(&back), want);
    let json: State = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(offsets(&json), want);
    // After a restore the next tenant gets a fresh offset, never a used one.
    let mut back = back;
    create(&mut back, "ustc", 5_000);
    assign(&mut back);
    assert_eq!(back.tenant("ustc").unwrap().uid_offset, 4);
}

#[test]
fn a_snapshot_from_before_offsets_and_a_replay_of_its_log_agree() {
    // The log of a pool from before offsets: tenants created, one of them
    // in the same millisecond as another, none assigned.
    let mut replayed = State::default();
    create(&mut replayed, "zju", 1_000);
    create(&mut replayed, "sjtu", 1_000);
    create(&mut replayed, "hdu", 500);
    // A replica loads the snapshot of that state, as an earlier version
    // wrote it (no uid_offset field).
    let mut json = serde_json::to_value(&replayed).unwrap();
    for t in json["tenants"].as_object_mut().unwrap().values_mut() {
        t.as_object_mut().unwrap().remove("uid_offset");
    }
    let mut loaded: State = serde_json::from_value(json).unwrap();
    assert!(loaded.uid_offsets_missing());
    assert_eq!(loaded, replayed);
    // The leader's AssignUidOffsets reaches both at the same entry.
    assign(&mut replayed);
    assign(&mut loaded);
    assert_eq!(loaded, replayed);
    assert_eq!(
        offsets(&loaded),
        pairs(&[("hdu", 1), ("sjtu", 2), ("zju", 3)])
    );
}
