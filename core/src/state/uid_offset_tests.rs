//! Tenants' uid offsets: assigned at creation, distinct, kept by
//! snapshots, and given to the tenants of a snapshot that predates them
//! in the order they were created.

use super::tests_support::*;
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

/// A state as a snapshot holds it (MessagePack with field names, as
/// `raft::snapshot` writes it), read back.
fn restored(s: &State) -> State {
    let mut bytes = vec![];
    let mut ser = rmp_serde::Serializer::new(&mut bytes).with_struct_map();
    serde::Serialize::serialize(s, &mut ser).unwrap();
    rmp_serde::from_slice(&bytes).unwrap()
}

#[test]
fn each_tenant_gets_the_next_offset_when_created_and_keeps_it() {
    let mut s = State::default();
    create(&mut s, "zju", 1_000);
    create(&mut s, "hdu", 2_000);
    create(&mut s, "sjtu", 3_000);
    let want = vec![
        ("hdu".to_string(), 2),
        ("sjtu".to_string(), 3),
        ("zju".to_string(), 1),
    ];
    assert_eq!(offsets(&s), want);
    // Taken again: refused, and the offsets stay as they were.
    assert!(s
        .apply(
            Command::CreateTenant {
                name: "zju".into(),
                token_hash: "other".into(),
            },
            4_000,
        )
        .is_err());
    let back = restored(&s);
    assert_eq!(offsets(&back), want);
    let json: State = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(offsets(&json), want);
    // After a restore the next tenant still gets a fresh offset.
    let mut back = back;
    create(&mut back, "ustc", 5_000);
    assert_eq!(back.tenant("ustc").unwrap().uid_offset, 4);
}

#[test]
fn tenants_of_a_snapshot_from_before_offsets_get_them_in_creation_order() {
    let mut s = State::default();
    create(&mut s, "zju", 1_000);
    create(&mut s, "hdu", 2_000);
    create(&mut s, "ahu", 2_000);
    // As a snapshot written before offsets existed holds them.
    let mut json = serde_json::to_value(&s).unwrap();
    for t in json["tenants"].as_object_mut().unwrap().values_mut() {
        t.as_object_mut().unwrap().remove("uid_offset");
    }
    let old: State = serde_json::from_value(json).unwrap();
    // Creation time first (the order replaying their creation gives),
    // then name for tenants created in the same millisecond: every
    // replica loading the snapshot agrees.
    assert_eq!(
        offsets(&old),
        vec![
            ("ahu".to_string(), 2),
            ("hdu".to_string(), 3),
            ("zju".to_string(), 1),
        ]
    );
    let distinct: std::collections::BTreeSet<u32> =
        old.tenants().map(|t| t.uid_offset).collect();
    assert_eq!(distinct.len(), 3);
    let mut old = old;
    tenant(&mut old, "ustc");
    assert_eq!(old.tenant("ustc").unwrap().uid_offset, 4);
}
