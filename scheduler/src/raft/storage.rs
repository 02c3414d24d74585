//! Durable raft storage: the log, hard state and configuration in redb.
//!
//! Reads are served from an in-memory copy (`MemStorage`), which raft-rs
//! reads through its `Storage` trait; every write goes to redb first, in one
//! transaction per `Ready`, committed with fsync before raft is told the
//! entries are persisted.

use std::path::Path;

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage};
use redb::{Database, ReadableTable, TableDefinition};
use thiserror::Error;

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const HARD_STATE: &str = "hard_state";
const CONF_STATE: &str = "conf_state";

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("cannot open the raft store at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("raft store I/O failed: {0}")]
    Io(String),
    #[error("raft store is corrupt: {0}")]
    Corrupt(String),
}

macro_rules! io_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self {
                StorageError::Io(e.to_string())
            }
        }
    )*};
}
io_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

#[derive(Clone)]
pub struct RaftStore {
    db: std::sync::Arc<Database>,
    mem: MemStorage,
}

impl RaftStore {
    /// Opens (or creates) the store. A new store is bootstrapped with
    /// `voters` as its first configuration.
    pub fn open(path: &Path, voters: &[u64]) -> Result<Self, StorageError> {
        let db = Database::create(path).map_err(|source| StorageError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let txn = db.begin_write()?;
        txn.open_table(ENTRIES)?;
        txn.open_table(META)?;
        txn.commit()?;
        let store = RaftStore {
            db: std::sync::Arc::new(db),
            mem: MemStorage::new(),
        };
        store.load(voters)?;
        Ok(store)
    }

    fn load(&self, voters: &[u64]) -> Result<(), StorageError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let conf = match meta.get(CONF_STATE)? {
            Some(v) => decode::<ConfState>(v.value())?,
            None => ConfState::from((voters.to_vec(), vec![])),
        };
        let hard = match meta.get(HARD_STATE)? {
            Some(v) => decode::<HardState>(v.value())?,
            None => HardState::default(),
        };
        let table = txn.open_table(ENTRIES)?;
        let mut entries = Vec::new();
        for row in table.iter()? {
            let (_, v) = row?;
            entries.push(decode::<Entry>(v.value())?);
        }
        let mut core = self.mem.wl();
        core.set_conf_state(conf.clone());
        core.set_hardstate(hard);
        core.append(&entries)
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        drop(core);
        if meta.get(CONF_STATE)?.is_none() {
            self.write(|meta, _| put(meta, CONF_STATE, &conf))?;
        }
        Ok(())
    }

    /// Appends entries (replacing any conflicting suffix) and, if given,
    /// the new hard state, durably, in one transaction.
    pub fn persist(&self, entries: &[Entry], hard: Option<&HardState>) -> Result<(), StorageError> {
        if entries.is_empty() && hard.is_none() {
            return Ok(());
        }
        self.write(|meta, table| {
            if let Some(first) = entries.first() {
                table.retain_in(first.index.., |_, _| false)?;
                for e in entries {
                    table.insert(e.index, e.write_to_bytes().map_err(corrupt)?.as_slice())?;
                }
            }
            if let Some(hs) = hard {
                put(meta, HARD_STATE, hs)?;
            }
            Ok(())
        })?;
        let mut core = self.mem.wl();
        core.append(entries)
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        if let Some(hs) = hard {
            core.set_hardstate(hs.clone());
        }
        Ok(())
    }

    /// Records a new commit index (from a `LightReady`).
    pub fn set_commit(&self, commit: u64) -> Result<(), StorageError> {
        let mut hs = self.mem.rl().hard_state().clone();
        hs.set_commit(commit);
        self.persist(&[], Some(&hs))
    }

    pub fn hard_state(&self) -> HardState {
        self.mem.rl().hard_state().clone()
    }

    fn write(
        &self,
        f: impl FnOnce(
            &mut redb::Table<&str, &[u8]>,
            &mut redb::Table<u64, &[u8]>,
        ) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let mut table = txn.open_table(ENTRIES)?;
            f(&mut meta, &mut table)?;
        }
        txn.commit()?;
        Ok(())
    }
}

fn put(
    meta: &mut redb::Table<&str, &[u8]>,
    key: &str,
    msg: &impl protobuf::Message,
) -> Result<(), StorageError> {
    meta.insert(key, msg.write_to_bytes().map_err(corrupt)?.as_slice())?;
    Ok(())
}

fn decode<M: protobuf::Message>(bytes: &[u8]) -> Result<M, StorageError> {
    M::parse_from_bytes(bytes).map_err(corrupt)
}

fn corrupt(e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(e.to_string())
}

impl Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.mem.snapshot(request_index, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn entries_and_hard_state_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        {
            let s = RaftStore::open(&path, &[1]).unwrap();
            let hs = HardState {
                term: 2,
                vote: 1,
                ..Default::default()
            };
            s.persist(&[entry(1, 1, b"a"), entry(2, 2, b"b")], Some(&hs))
                .unwrap();
            // A conflicting suffix replaces what was there.
            s.persist(&[entry(2, 3, b"c")], None).unwrap();
            s.set_commit(2).unwrap();
        }
        let s = RaftStore::open(&path, &[9]).unwrap();
        assert_eq!(s.last_index().unwrap(), 2);
        assert_eq!(s.term(2).unwrap(), 3);
        let got = s
            .entries(1, 3, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(&got[1].data[..], b"c");
        let st = s.initial_state().unwrap();
        assert_eq!(st.hard_state.term, 2);
        assert_eq!(st.hard_state.commit, 2);
        assert_eq!(st.conf_state.voters, vec![1], "bootstrap config kept");
    }
}
