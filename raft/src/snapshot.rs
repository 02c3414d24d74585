//! Snapshots of the state machine: a versioned envelope around the serde
//! encoding of `State`, the peers' addresses and the log position. The same
//! bytes are what raft ships to a lagging replica and what an operator
//! keeps as a backup file.

use std::path::Path;

use raft::prelude::Snapshot;
use serde::{Deserialize, Serialize};

use crate::storage::{Peers, RaftStore, StorageError};
use edupool_core::state::{Indexed, State};

/// The envelope's format; a replica refuses formats it does not know.
/// Format 1 is the envelope in JSON; format 2 the same envelope in
/// MessagePack with field names (a quarter smaller, and at 10,000 nodes a
/// third faster to encode: JSON spent much of its time escaping strings
/// and printing numbers); format 3 holds the ledger's runs as one table
/// of positional rows with each string once (`state::run_table`); format
/// 4 also holds the jobs and the nodes as positional records
/// (`state::packed`); format 5, written since, holds fair-share usage as
/// integer GPU-milliseconds instead of a float (`state::usage`; a float
/// read from an older format is rounded to the nearest). All five are
/// read. Field names are kept elsewhere so that fields added later with
/// a default still read.
pub const SNAPSHOT_FORMAT: u32 = 5;

/// The JSON format, still read (snapshots and backups written before).
const JSON_FORMAT: u32 = 1;

/// The MessagePack formats this version reads.
const MESSAGEPACK_FORMATS: [u32; 4] = [2, 3, 4, SNAPSHOT_FORMAT];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotEnvelope {
    pub v: u32,
    /// The last log entry folded into `state`.
    pub index: u64,
    pub term: u64,
    pub peers: Peers,
    pub state: State,
}

impl SnapshotEnvelope {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_to(&mut out)
            .expect("the state always serializes into memory");
        out
    }

    /// Encodes into `w` in this version's format; fails only when `w`
    /// refuses the bytes.
    pub fn encode_to(&self, w: impl std::io::Write) -> Result<(), rmp_serde::encode::Error> {
        let mut ser = rmp_serde::Serializer::new(w).with_struct_map();
        self.serialize(&mut ser)
    }

    pub fn decode(bytes: &[u8]) -> Result<SnapshotEnvelope, StorageError> {
        // A JSON envelope is an object; a MessagePack one is a map, whose
        // first byte is never `{`.
        let (env, formats): (Result<SnapshotEnvelope, String>, &[u32]) = match bytes.first() {
            Some(b'{') => (
                serde_json::from_slice(bytes).map_err(|e| e.to_string()),
                &[JSON_FORMAT],
            ),
            _ => (
                rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
                &MESSAGEPACK_FORMATS,
            ),
        };
        let env = env.map_err(|e| StorageError::Corrupt(format!("undecodable snapshot: {e}")))?;
        if !formats.contains(&env.v) {
            let [first, .., last] = MESSAGEPACK_FORMATS;
            return Err(StorageError::Corrupt(format!(
                "snapshot format {} is not known to this version (knows {JSON_FORMAT} in JSON, {first} to {last} in MessagePack)",
                env.v
            )));
        }
        Ok(env)
    }
}

/// Writes a backup (a snapshot envelope) into a fresh data directory as
/// the snapshot of a one-replica cluster whose only voter is `id`, serving
/// at `address`. Grow it afterwards with `edupoolctl cluster add-member`.
pub fn restore_backup(
    data_dir: &Path,
    id: u64,
    address: &str,
    backup: &[u8],
) -> Result<u64, StorageError> {
    let mut env = SnapshotEnvelope::decode(backup)?;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| StorageError::Io(format!("{}: {e}", data_dir.display())))?;
    let store = RaftStore::open(&data_dir.join("raft.redb"), &[id])?;
    if !store.is_fresh() {
        return Err(StorageError::Corrupt(format!(
            "{} already holds a raft log; restore only into an empty data directory",
            data_dir.display()
        )));
    }
    env.peers = Peers::from([(id, address.to_string())]);
    let mut snap = Snapshot::default();
    let meta = snap.mut_metadata();
    meta.index = env.index;
    meta.term = env.term;
    meta.mut_conf_state().voters = vec![id];
    snap.data = env.encode().into();
    store.apply_snapshot(&snap, &env.peers)?;
    Ok(env.index)
}

/// Replays a (stopped) replica's data directory: its snapshot, then every
/// committed entry, calling `each(index, state)` after each one. For
/// offline checks of the committed history; returns the final state.
pub fn replay_data_dir(
    data_dir: &Path,
    mut each: impl FnMut(u64, &State),
) -> Result<State, StorageError> {
    use raft::Storage as _;
    let store = RaftStore::open(&data_dir.join("raft.redb"), &[])?;
    let (state, start) = match store.snapshot_info() {
        (0, _, _) => (State::default(), 0),
        _ => {
            let env = SnapshotEnvelope::decode(&store.snapshot_data().data)?;
            (env.state, env.index)
        }
    };
    // No index is built here, so keeping them costs nothing.
    let mut state = Indexed::new(state);
    each(start, &state);
    let commit = store.hard_state().commit;
    if commit > start {
        let entries = store
            .entries(
                start + 1,
                commit + 1,
                None,
                raft::GetEntriesContext::empty(false),
            )
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        for entry in &entries {
            let _ = crate::machine::apply_entry(&mut state, entry);
            each(entry.index, &state);
        }
    }
    Ok(state.into_state())
}

#[cfg(test)]
mod tests {
    use super::*;
    use edupool_core::state::tests_support::{
        apply_ok, audited_submit, exit_ok, node, submit, tenant, uuid,
    };
    use edupool_core::state::{Command, JobClass, JobId, Millis, TaskPlacement};

    /// A state with a tenant, a node, a finished job (its ledger line and
    /// audit record) and a queued one.
    fn state() -> State {
        let mut s = State::default();
        tenant(&mut s, "zju");
        node(&mut s, "n1", 2);
        let job = audited_submit(&mut s, 1);
        let tasks = vec![TaskPlacement {
            node: "n1".into(),
            gpus: vec![uuid("n1", 0)],
        }];
        let capacity = Default::default();
        apply_ok(
            &mut s,
            Command::PlaceJob {
                job,
                tasks,
                capacity,
            },
        );
        let (node, started_at) = ("n1".to_string(), 1_000);
        apply_ok(
            &mut s,
            Command::JobStarted {
                node,
                job,
                started_at,
            },
        );
        exit_ok(&mut s, "n1", job, 61_000);
        audited_submit(&mut s, 1);
        s
    }

    /// Runs `job` on `node`'s GPUs `gpus` from `from` until it exits at
    /// `until`, charging its tenant's fair-share usage.
    fn run(s: &mut State, job: JobId, node: &str, gpus: &[u32], from: Millis, until: Millis) {
        let tasks = vec![TaskPlacement {
            node: node.into(),
            gpus: gpus.iter().map(|&i| uuid(node, i)).collect(),
        }];
        let capacity = Default::default();
        apply_ok(
            s,
            Command::PlaceJob {
                job,
                tasks,
                capacity,
            },
        );
        let started = Command::JobStarted {
            node: node.into(),
            job,
            started_at: from,
        };
        apply_ok(s, started);
        exit_ok(s, node, job, until);
    }

    /// Three tenants, two of them with decayed fair-share usage (training
    /// and batch work, charged at times that leave a fraction of a
    /// half-life), one with none.
    fn usage_state() -> State {
        let mut s = State::default();
        for t in ["zju", "hdu", "sjtu"] {
            tenant(&mut s, t);
        }
        node(&mut s, "n1", 4);
        let a = submit(&mut s, "zju", 2, JobClass::Training);
        run(&mut s, a, "n1", &[0, 1], 1_000, 3_601_000);
        let b = submit(&mut s, "hdu", 1, JobClass::Batch);
        run(&mut s, b, "n1", &[2], 2_000, 5_402_000);
        let c = submit(&mut s, "zju", 1, JobClass::Batch);
        run(&mut s, c, "n1", &[3], 3_700_000, 9_000_017);
        s
    }

    fn usage_envelope(v: u32) -> SnapshotEnvelope {
        SnapshotEnvelope {
            state: usage_state(),
            ..envelope(v)
        }
    }

    fn envelope(v: u32) -> SnapshotEnvelope {
        SnapshotEnvelope {
            v,
            index: 7,
            term: 2,
            peers: Peers::from([(1, "127.0.0.1:7070".to_string())]),
            state: state(),
        }
    }

    #[test]
    fn a_snapshot_is_written_in_messagepack_and_reads_back_the_same() {
        let env = envelope(SNAPSHOT_FORMAT);
        let bytes = env.encode();
        assert_ne!(bytes.first(), Some(&b'{'));
        let back = SnapshotEnvelope::decode(&bytes).unwrap();
        assert_eq!((back.v, back.index, back.term), (5, 7, 2));
        assert_eq!(back.peers, env.peers);
        assert_eq!(back.state, env.state);
    }

    /// Snapshots of `envelope()` as each format was first written: format 1
    /// (JSON), format 2 (MessagePack, the ledger's runs as records) and
    /// format 3 (the runs as a table, jobs and nodes with field names).
    const FORMAT_1: &[u8] = include_bytes!("fixtures/snapshot-format-1.json");
    const FORMAT_2: &[u8] = include_bytes!("fixtures/snapshot-format-2.msgpack");
    const FORMAT_3: &[u8] = include_bytes!("fixtures/snapshot-format-3.msgpack");
    /// Format 4: jobs and nodes as positional records, usage as a float.
    const FORMAT_4: &[u8] = include_bytes!("fixtures/snapshot-format-4.msgpack");
    /// This version's format as it was first written: a job or node
    /// struct whose fields moved (see `state::packed`) no longer reads it.
    const FORMAT_5: &[u8] = include_bytes!("fixtures/snapshot-format-5.msgpack");
    /// `usage_envelope()` as format 4 wrote it (float GPU-seconds) and as
    /// format 5 first wrote it.
    const USAGE_FORMAT_4: &[u8] = include_bytes!("fixtures/snapshot-format-4-usage.msgpack");
    const USAGE_FORMAT_5: &[u8] = include_bytes!("fixtures/snapshot-format-5-usage.msgpack");

    /// The state's SHA-256 as `Replica::state_hash` computes it.
    fn digest(state: &State) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(serde_json::to_vec(state).unwrap()))
    }

    fn usage_of(state: &State) -> Vec<(String, u64, Millis)> {
        state
            .tenants()
            .map(|t| (t.name.clone(), t.usage.weighted_gpu_ms, t.usage.as_of))
            .collect()
    }

    #[test]
    fn snapshots_of_every_known_format_still_read() {
        let env = envelope(SNAPSHOT_FORMAT);
        assert!(!env.state.accounts().entries.is_empty());
        let formats = [
            (FORMAT_1, 1),
            (FORMAT_2, 2),
            (FORMAT_3, 3),
            (FORMAT_4, 4),
            (FORMAT_5, 5),
        ];
        for (bytes, v) in formats {
            let back = SnapshotEnvelope::decode(bytes).unwrap();
            assert_eq!((back.v, back.index, back.term), (v, 7, 2));
            assert_eq!(back.peers, env.peers);
            assert_eq!(
                back.state,
                as_older_formats_hold_it(&env.state),
                "format {v}"
            );
        }
    }

    /// The state as formats written before tenants had uid offsets and
    /// before the pool kept its recent job mix hold it: every offset 0
    /// (until the leader's `AssignUidOffsets`), and a mix that is not
    /// counting (until the leader's `StartMixTally`).
    fn as_older_formats_hold_it(state: &State) -> State {
        let mut json = serde_json::to_value(state).unwrap();
        for t in json["tenants"].as_object_mut().unwrap().values_mut() {
            t.as_object_mut().unwrap().remove("uid_offset");
        }
        json.as_object_mut().unwrap().remove("mix");
        serde_json::from_value(json).unwrap()
    }

    /// Float usage from format 4 (7,200 GPU-seconds decayed over 5,399 s
    /// of a week's half-life plus 3,975.01275 of batch work, as the float
    /// code left them: 11,130.59895092763) reads as the nearest
    /// GPU-millisecond, the same on every machine; the rest of the state
    /// is untouched.
    #[test]
    fn float_usage_from_format_4_reads_as_integer_gpu_milliseconds() {
        let back = SnapshotEnvelope::decode(USAGE_FORMAT_4).unwrap();
        assert_eq!(back.v, 4);
        let read = usage_of(&back.state);
        let want = [
            ("hdu".to_string(), 4_050_000, 5_402_000),
            ("sjtu".to_string(), 0, 0),
            ("zju".to_string(), 11_130_599, 9_000_017),
        ];
        assert_eq!(read, want);
        assert_eq!(digest(&back.state), FORMAT_4_USAGE_DIGEST);
        // The integer decay charges the same log within a GPU-millisecond.
        let fresh = usage_state();
        for ((name, was, _), (_, now, _)) in read.iter().zip(usage_of(&fresh)) {
            assert!(was.abs_diff(now) <= 1, "{name}: {was} read, {now} charged");
        }
        let back = SnapshotEnvelope::decode(USAGE_FORMAT_5).unwrap();
        let env = usage_envelope(SNAPSHOT_FORMAT);
        assert_eq!((back.v, back.index, back.term), (5, env.index, env.term));
        assert_eq!(back.state, as_older_formats_hold_it(&env.state));
    }

    /// `digest` of the state `USAGE_FORMAT_4` reads into (its tenants
    /// without uid offsets, its nodes allowing host jobs, no CPU or memory
    /// on its nodes or in its jobs' specs). The digest is of the state's
    /// JSON as this version writes it, so a field added to a record
    /// changes it although the format reads the same.
    const FORMAT_4_USAGE_DIGEST: &str =
        "dce8c379ab40b471bae04f45456d0f78054dd15bf66f37ee6e1ee8e57d8f04d5";

    #[test]
    fn a_format_that_does_not_match_its_encoding_is_refused() {
        let json_claiming_5 = serde_json::to_vec(&envelope(SNAPSHOT_FORMAT)).unwrap();
        let msgpack_claiming_1 = envelope(JSON_FORMAT).encode();
        let msgpack_claiming_6 = envelope(6).encode();
        for bytes in [json_claiming_5, msgpack_claiming_1, msgpack_claiming_6] {
            let err = SnapshotEnvelope::decode(&bytes).unwrap_err().to_string();
            assert!(err.contains("is not known to this version"), "{err}");
        }
        let err = SnapshotEnvelope::decode(b"\xc1 not a snapshot")
            .unwrap_err()
            .to_string();
        assert!(err.contains("undecodable snapshot"), "{err}");
    }
}
