//! Snapshots of the state machine: a versioned envelope around the serde
//! encoding of `State`, the peers' addresses and the log position. The same
//! bytes are what raft ships to a lagging replica and what an operator
//! keeps as a backup file.

use std::path::Path;

use raft::prelude::Snapshot;
use serde::{Deserialize, Serialize};

use super::storage::{Peers, RaftStore, StorageError};
use crate::state::State;

/// The envelope's format; a replica refuses formats it does not know.
pub const SNAPSHOT_FORMAT: u32 = 1;

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
        serde_json::to_vec(self).expect("the state always serializes")
    }

    /// Encodes into `w`; fails only when `w` refuses the bytes.
    pub fn encode_to(&self, w: impl std::io::Write) -> Result<(), serde_json::Error> {
        serde_json::to_writer(w, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<SnapshotEnvelope, StorageError> {
        let env: SnapshotEnvelope = serde_json::from_slice(bytes)
            .map_err(|e| StorageError::Corrupt(format!("undecodable snapshot: {e}")))?;
        if env.v != SNAPSHOT_FORMAT {
            return Err(StorageError::Corrupt(format!(
                "snapshot format {} is not known to this version (knows {SNAPSHOT_FORMAT})",
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
    let (mut state, start) = match store.snapshot_info() {
        (0, _, _) => (State::default(), 0),
        _ => {
            let env = SnapshotEnvelope::decode(&store.snapshot_data().data)?;
            (env.state, env.index)
        }
    };
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
            let _ = super::driver::apply_entry(&mut state, entry);
            each(entry.index, &state);
        }
    }
    Ok(state)
}
