//! Durable raft storage: the log, hard state, configuration, the latest
//! snapshot and the peers' addresses, in redb.
//!
//! Reads are served from an in-memory copy of the uncompacted log, which
//! raft-rs reads through its `Storage` trait; every write goes to redb
//! first, in one transaction committed with fsync, before the in-memory
//! copy changes and before raft is told the write happened.
//!
//! The log starts after a "base" (index, term): the last entry folded into
//! a snapshot or dropped by compaction. Entries after it are kept; entries
//! up to it are gone from memory and disk, so both stay bounded.
//!
//! Every write (its redb transaction and the in-memory change after it)
//! runs under one writer lock, so a snapshot saved from a background
//! thread never interleaves with the driver's appends or with a snapshot
//! installed from the leader.
//!
//! The log's entries are kept in tables of [`SEGMENT`] consecutive
//! indexes each (`raft_entries_<n>`): compaction deletes whole tables,
//! where deleting entries one by one cost a busy leader a fifth of its
//! CPU. Entries up to the base left in the segment that holds the first
//! kept entry are skipped on open and go with their segment.
//!
//! A snapshot taken locally keeps its data in a file of its own beside
//! `raft.redb` (`raft-snapshot-<index>-<nonce>.bin`, the envelope's bytes,
//! so also a valid backup), written and synced before the store names it
//! in a small transaction: redb allows one write transaction at a time,
//! and writing tens of MiB inside one would hold the driver's appends for
//! as long. A snapshot installed from the leader, or at bootstrap and
//! restore, is kept inline. Files no longer named are removed; any left
//! by a crash are removed on open.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};
use redb::{Database, ReadableTable as _, TableDefinition, TableHandle as _};
use thiserror::Error;

/// Consecutive log indexes kept in one table.
const SEGMENT: u64 = 4096;
const SEGMENT_PREFIX: &str = "raft_entries_";
/// The single table of entries of stores written before segments.
const LEGACY_ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const HARD_STATE: &str = "hard_state";
const CONF_STATE: &str = "conf_state";
const SNAPSHOT: &str = "snapshot";
const LOG_BASE: &str = "log_base";
const PEERS: &str = "peers";
/// The file holding the latest snapshot's data, when it is not inline.
const SNAPSHOT_FILE: &str = "snapshot_file";
const SNAPSHOT_FILE_PREFIX: &str = "raft-snapshot-";

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

/// Replica id -> the address it serves on.
pub type Peers = BTreeMap<u64, String>;

/// A snapshot's data written to its file, for [`RaftStore::adopt_snapshot`].
pub struct SnapshotFile(String);

/// What [`RaftStore::adopt_snapshot`] did.
#[derive(Default)]
pub struct Adopted {
    /// False: a snapshot as new was stored meanwhile; nothing changed.
    pub saved: bool,
    /// The log entries the snapshot replaced, to be freed.
    pub compacted: Vec<Entry>,
}

#[derive(Default)]
struct Core {
    hard: HardState,
    conf: ConfState,
    snapshot: Snapshot,
    /// (index, term) of the entry just before `entries`.
    base: (u64, u64),
    entries: Vec<Entry>,
    /// Payload bytes of `entries`, for compaction by size.
    bytes: u64,
    peers: Peers,
}

impl Core {
    fn first_index(&self) -> u64 {
        self.base.0 + 1
    }

    fn last_index(&self) -> u64 {
        self.entries.last().map_or(self.base.0, |e| e.index)
    }
}

#[derive(Clone)]
pub struct RaftStore {
    db: Arc<Database>,
    core: Arc<RwLock<Core>>,
    /// Held across each write's transaction and in-memory update.
    writer: Arc<parking_lot::Mutex<()>>,
    /// The directory of `raft.redb`, where snapshot files live.
    dir: Arc<PathBuf>,
    /// Raft asked for a snapshot the latest one cannot serve.
    snapshot_wanted: Arc<std::sync::atomic::AtomicBool>,
}

/// How much of a snapshot file is written between two syncs.
const SNAPSHOT_SYNC_BYTES: usize = 4 << 20;

impl RaftStore {
    /// Opens (or creates) the store. A new store is bootstrapped with
    /// `voters` as its first configuration (none for a replica that joins
    /// a running cluster) and `peers` as the known addresses.
    pub fn open(path: &Path, voters: &[u64]) -> Result<Self, StorageError> {
        Self::open_with_peers(path, voters, &Peers::new())
    }

    pub fn open_with_peers(
        path: &Path,
        voters: &[u64],
        peers: &Peers,
    ) -> Result<Self, StorageError> {
        let db = Database::create(path).map_err(|source| StorageError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let txn = db.begin_write()?;
        txn.open_table(META)?;
        migrate_legacy_entries(&txn)?;
        txn.commit()?;
        let store = RaftStore {
            db: Arc::new(db),
            core: Arc::new(RwLock::new(Core::default())),
            writer: Arc::default(),
            dir: Arc::new(path.parent().unwrap_or(Path::new(".")).to_path_buf()),
            snapshot_wanted: Arc::default(),
        };
        store.load(voters, peers)?;
        Ok(store)
    }

    /// Whether nothing was ever written (a fresh data directory).
    pub fn is_fresh(&self) -> bool {
        let c = self.rl();
        c.last_index() == 0 && c.hard.term == 0 && c.snapshot.get_metadata().index == 0
    }

    fn load(&self, voters: &[u64], peers: &Peers) -> Result<(), StorageError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let fresh = meta.get(CONF_STATE)?.is_none();
        let mut core = Core {
            conf: match meta.get(CONF_STATE)? {
                Some(v) => decode::<ConfState>(v.value())?,
                None => ConfState::from((voters.to_vec(), vec![])),
            },
            hard: match meta.get(HARD_STATE)? {
                Some(v) => decode::<HardState>(v.value())?,
                None => HardState::default(),
            },
            snapshot: match meta.get(SNAPSHOT)? {
                Some(v) => decode::<Snapshot>(v.value())?,
                None => Snapshot::default(),
            },
            base: match meta.get(LOG_BASE)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(corrupt)?,
                None => (0, 0),
            },
            peers: match meta.get(PEERS)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(corrupt)?,
                None => peers.clone(),
            },
            entries: Vec::new(),
            bytes: 0,
        };
        let file = match meta.get(SNAPSHOT_FILE)? {
            Some(v) => Some(String::from_utf8(v.value().to_vec()).map_err(corrupt)?),
            None => None,
        };
        if let Some(name) = &file {
            let path = self.dir.join(name);
            let data = std::fs::read(&path).map_err(|e| {
                StorageError::Corrupt(format!("snapshot file {}: {e}", path.display()))
            })?;
            core.snapshot.data = data.into();
        }
        self.remove_snapshot_files(|name| Some(name) != file.as_deref());
        for seg in segments(txn.list_tables()?.map(|t| t.name().to_string())) {
            let table = txn.open_table(segment_table(&segment_name(seg)))?;
            for row in table.range(core.base.0 + 1..)? {
                let (_, v) = row?;
                let e = decode::<Entry>(v.value())?;
                if e.index != core.last_index() + 1 {
                    return Err(StorageError::Corrupt(format!(
                        "log gap: entry {} after {}",
                        e.index,
                        core.last_index()
                    )));
                }
                core.bytes += entry_bytes(&e);
                core.entries.push(e);
            }
        }
        let (conf, peers) = (core.conf.clone(), core.peers.clone());
        *self.core.write().expect("store lock") = core;
        drop((meta, txn));
        if fresh {
            self.write(|_, meta| {
                put(meta, CONF_STATE, &conf)?;
                put_json(meta, PEERS, &peers)
            })?;
        }
        Ok(())
    }

    fn rl(&self) -> std::sync::RwLockReadGuard<'_, Core> {
        self.core.read().expect("store lock poisoned")
    }

    fn wl(&self) -> std::sync::RwLockWriteGuard<'_, Core> {
        self.core.write().expect("store lock poisoned")
    }

    fn writer(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.writer.lock()
    }

    /// Appends entries (replacing any conflicting suffix) and, if given,
    /// the new hard state, durably, in one transaction.
    pub fn persist(&self, entries: &[Entry], hard: Option<&HardState>) -> Result<(), StorageError> {
        if entries.is_empty() && hard.is_none() {
            return Ok(());
        }
        let _writer = self.writer();
        let last = self.rl().last_index();
        if let Some(first) = entries.first() {
            let c = self.rl();
            if first.index <= c.base.0 || first.index > c.last_index() + 1 {
                return Err(StorageError::Corrupt(format!(
                    "append at {} outside the log ({}..={})",
                    first.index,
                    c.base.0 + 1,
                    c.last_index()
                )));
            }
        }
        self.write(|txn, meta| {
            append(txn, entries, last)?;
            if let Some(hs) = hard {
                put(meta, HARD_STATE, hs)?;
            }
            Ok(())
        })?;
        let mut core = self.wl();
        if let Some(first) = entries.first() {
            let keep = (first.index - core.base.0 - 1) as usize;
            let dropped: u64 = core.entries[keep.min(core.entries.len())..]
                .iter()
                .map(entry_bytes)
                .sum();
            core.entries.truncate(keep);
            core.entries.extend_from_slice(entries);
            core.bytes = core.bytes - dropped + entries.iter().map(entry_bytes).sum::<u64>();
        }
        if let Some(hs) = hard {
            core.hard = hs.clone();
        }
        Ok(())
    }

    /// Records a new commit index (from a `LightReady`), without an fsync
    /// of its own: the entries it covers are durable already, the next
    /// durable write takes it to disk, and one lost in a crash costs
    /// nothing but replay (a replica learns the commit index again from
    /// the leader, and a leader commits all its log with its first entry
    /// of a new term). Only the start reads it, to apply what it covers
    /// before serving. A second fsync for every batch cost a busy leader
    /// about a twentieth of its CPU and a disk round trip of latency.
    pub fn set_commit(&self, commit: u64) -> Result<(), StorageError> {
        let _writer = self.writer();
        let mut hs = self.hard_state();
        if hs.commit >= commit {
            return Ok(());
        }
        hs.set_commit(commit);
        self.write_with(redb::Durability::None, |_, meta| put(meta, HARD_STATE, &hs))?;
        self.wl().hard = hs;
        Ok(())
    }

    pub fn hard_state(&self) -> HardState {
        self.rl().hard.clone()
    }

    pub fn conf_state(&self) -> ConfState {
        self.rl().conf.clone()
    }

    /// Records the configuration after an applied membership change, with
    /// the peers' addresses as they now are.
    pub fn set_conf_state(&self, conf: &ConfState, peers: &Peers) -> Result<(), StorageError> {
        let _writer = self.writer();
        self.write(|_, meta| {
            put(meta, CONF_STATE, conf)?;
            put_json(meta, PEERS, peers)
        })?;
        let mut core = self.wl();
        core.conf = conf.clone();
        core.peers = peers.clone();
        Ok(())
    }

    pub fn peers(&self) -> Peers {
        self.rl().peers.clone()
    }

    /// (index, term, size in bytes) of the latest snapshot.
    pub fn snapshot_info(&self) -> (u64, u64, u64) {
        let c = self.rl();
        let m = c.snapshot.get_metadata();
        (m.index, m.term, c.snapshot.data.len() as u64)
    }

    pub fn snapshot_data(&self) -> Snapshot {
        self.rl().snapshot.clone()
    }

    /// Whether raft asked for a newer snapshot than the latest (and clears it).
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted
            .swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    /// Payload bytes held in the log (memory and disk alike).
    pub fn log_bytes(&self) -> u64 {
        self.rl().bytes
    }

    /// Number of entries held in the log (memory and disk alike).
    pub fn log_len(&self) -> usize {
        self.rl().entries.len()
    }

    /// Installs a snapshot received from the leader: it replaces the whole
    /// log and configuration.
    pub fn apply_snapshot(&self, snap: &Snapshot, peers: &Peers) -> Result<(), StorageError> {
        let _writer = self.writer();
        let meta = snap.get_metadata();
        let base = (meta.index, meta.term);
        let mut hard = self.hard_state();
        hard.term = hard.term.max(meta.term);
        hard.commit = hard.commit.max(meta.index);
        let conf = meta.get_conf_state().clone();
        let mut replaced = None;
        self.write(|txn, m| {
            drop_segments(txn, |_| true)?;
            replaced = m.remove(SNAPSHOT_FILE)?.map(|v| v.value().to_vec());
            put(m, SNAPSHOT, snap)?;
            put(m, HARD_STATE, &hard)?;
            put(m, CONF_STATE, &conf)?;
            put_json(m, LOG_BASE, &base)?;
            put_json(m, PEERS, peers)
        })?;
        let mut core = self.wl();
        core.snapshot = snap.clone();
        core.hard = hard;
        core.conf = conf;
        core.base = base;
        core.entries.clear();
        core.bytes = 0;
        core.peers = peers.clone();
        drop(core);
        self.remove_replaced(replaced);
        Ok(())
    }

    /// Keeps `snap` (taken locally at an applied index) as the latest
    /// snapshot and drops the log up to `compact_to` (at most the
    /// snapshot's index): its data goes to a file of its own first, then
    /// one small transaction names it and compacts. A snapshot that is not newer
    /// than the latest one (a leader's snapshot was installed while this
    /// one was being encoded) is not kept: returns `false` and changes
    /// nothing.
    pub fn save_snapshot(&self, snap: &Snapshot, compact_to: u64) -> Result<bool, StorageError> {
        let Some(file) = self.write_snapshot(snap)? else {
            return Ok(false);
        };
        Ok(self.adopt_snapshot(snap, file, compact_to)?.saved)
    }

    /// The first step of [`Self::save_snapshot`]: writes the snapshot's
    /// data to a new file of its own, unless it is not newer than the
    /// latest. Takes no lock, so it may run at a low priority while the
    /// driver appends; a file never adopted is removed at the next open.
    pub fn write_snapshot(&self, snap: &Snapshot) -> Result<Option<SnapshotFile>, StorageError> {
        if snap.get_metadata().index <= self.snapshot_info().0 {
            return Ok(None);
        }
        Ok(Some(SnapshotFile(self.write_snapshot_file(snap)?)))
    }

    /// The second step: names the written snapshot as the latest (unless
    /// a newer one was stored meanwhile) and compacts the log up to
    /// `compact_to`. The compacted entries are handed back for the caller
    /// to free where it likes: freeing a few hundred thousand entries
    /// takes a tenth of a second of CPU.
    pub fn adopt_snapshot(
        &self,
        snap: &Snapshot,
        file: SnapshotFile,
        compact_to: u64,
    ) -> Result<Adopted, StorageError> {
        let SnapshotFile(file) = file;
        let index = snap.get_metadata().index;
        let _writer = self.writer();
        let compact_to = compact_to.min(index);
        let base = {
            let c = self.rl();
            if index <= c.snapshot.get_metadata().index {
                drop(c);
                let _ = std::fs::remove_file(self.dir.join(&file));
                return Ok(Adopted::default());
            }
            if compact_to <= c.base.0 {
                c.base
            } else {
                // Entries up to a local snapshot's index were applied, so
                // they are committed and still in the log.
                let at = (compact_to - c.base.0 - 1) as usize;
                (compact_to, c.entries[at].term)
            }
        };
        let mut named = Snapshot::default();
        named.set_metadata(snap.get_metadata().clone());
        let mut replaced = None;
        // Naming the snapshot and moving the log's base is the one durable
        // step: entries at or below the base are never read again (`load`
        // starts after it), so the segments holding only such entries are
        // deleted afterwards, see `drop_compacted`.
        self.write(|_, m| {
            replaced = m.remove(SNAPSHOT_FILE)?.map(|v| v.value().to_vec());
            put(m, SNAPSHOT, &named)?;
            m.insert(SNAPSHOT_FILE, file.as_bytes())?;
            put_json(m, LOG_BASE, &base)
        })?;
        // The compacted entries are cut off under the locks and freed
        // after them: freeing them inside took tens of milliseconds of
        // every append and read.
        let compacted = {
            let mut core = self.wl();
            let drop_n = (base.0 - core.base.0) as usize;
            let kept = core.entries.split_off(drop_n);
            core.base = base;
            core.snapshot = snap.clone();
            std::mem::replace(&mut core.entries, kept)
        };
        drop(_writer);
        let dropped: u64 = compacted.iter().map(entry_bytes).sum();
        self.wl().bytes -= dropped;
        self.remove_replaced(replaced);
        self.drop_compacted(base.0)?;
        Ok(Adopted {
            saved: true,
            compacted,
        })
    }

    /// Deletes the segments that hold only entries at or below `base`,
    /// one transaction each, taking the writer lock for each alone.
    /// Deleting them all in the snapshot's transaction (two dozen tables
    /// of 4,096 entries at the default cadence) held every append for
    /// tens of milliseconds. The deletions need no sync of their own: one
    /// lost in a crash leaves a segment below the base, never read, and
    /// deleted with the next compaction.
    fn drop_compacted(&self, base: u64) -> Result<(), StorageError> {
        // A segment goes once every index it can hold is compacted.
        let gone = |seg: u64| (seg + 1) * SEGMENT <= base + 1;
        let listed = {
            let txn = self.db.begin_read()?;
            let names: Vec<String> = txn.list_tables()?.map(|t| t.name().to_string()).collect();
            segments(names.into_iter())
        };
        for seg in listed {
            if !gone(seg) {
                break;
            }
            let writer = self.writer();
            self.write_with(redb::Durability::None, |txn, _| {
                txn.delete_table(segment_table(&segment_name(seg)))?;
                Ok(())
            })?;
            // Straight to an append waiting for the lock, if any: a plain
            // unlock lets this loop take it again at once, and the
            // driver's appends waited for every deletion in turn.
            parking_lot::MutexGuard::unlock_fair(writer);
        }
        Ok(())
    }

    /// Writes a snapshot's data to a new file of its own, synced, under a
    /// name no other snapshot has; returns the name.
    fn write_snapshot_file(&self, snap: &Snapshot) -> Result<String, StorageError> {
        let name = format!(
            "{SNAPSHOT_FILE_PREFIX}{:020}-{:016x}.bin",
            snap.get_metadata().index,
            rand::random::<u64>()
        );
        let path = self.dir.join(&name);
        let tmp = path.with_extension("tmp");
        let io = |e: std::io::Error| StorageError::Io(format!("{}: {e}", tmp.display()));
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        // Synced as it is written, a few MiB at a time: one flush of the
        // whole file (tens of MiB) queues ahead of the log's own syncs on
        // the same disk and holds every commit up for as long (the way
        // RocksDB's `bytes_per_sync` spreads a large file's writeback).
        for chunk in snap.data.chunks(SNAPSHOT_SYNC_BYTES) {
            f.write_all(chunk).map_err(io)?;
            f.sync_data().map_err(io)?;
        }
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io)?;
        // The rename itself must be durable before the store names it.
        std::fs::File::open(self.dir.as_path())
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(name)
    }

    /// Removes the snapshot file a write just stopped naming.
    fn remove_replaced(&self, replaced: Option<Vec<u8>>) {
        if let Some(name) = replaced.and_then(|n| String::from_utf8(n).ok()) {
            if let Err(e) = std::fs::remove_file(self.dir.join(&name)) {
                tracing::warn!("cannot remove the old snapshot file {name}: {e}");
            }
        }
    }

    /// Removes snapshot files (and unfinished ones) that `stale` picks.
    fn remove_snapshot_files(&self, stale: impl Fn(&str) -> bool) {
        let Ok(dir) = std::fs::read_dir(self.dir.as_path()) else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(SNAPSHOT_FILE_PREFIX) && stale(name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn write(
        &self,
        f: impl FnOnce(
            &redb::WriteTransaction,
            &mut redb::Table<&str, &[u8]>,
        ) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        self.write_with(redb::Durability::Immediate, f)
    }

    fn write_with(
        &self,
        durability: redb::Durability,
        f: impl FnOnce(
            &redb::WriteTransaction,
            &mut redb::Table<&str, &[u8]>,
        ) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability);
        {
            let mut meta = txn.open_table(META)?;
            f(&txn, &mut meta)?;
        }
        txn.commit()?;
        Ok(())
    }
}

fn segment_name(seg: u64) -> String {
    format!("{SEGMENT_PREFIX}{seg:016}")
}

fn segment_table(name: &str) -> TableDefinition<'_, u64, &'static [u8]> {
    TableDefinition::new(name)
}

/// The segment numbers among table names, in order.
fn segments(names: impl Iterator<Item = String>) -> Vec<u64> {
    let mut segs: Vec<u64> = names
        .filter_map(|n| n.strip_prefix(SEGMENT_PREFIX)?.parse().ok())
        .collect();
    segs.sort_unstable();
    segs
}

/// Writes entries after `last` (the log's last index before), replacing
/// a conflicting suffix from the first entry's index on.
fn append(txn: &redb::WriteTransaction, entries: &[Entry], last: u64) -> Result<(), StorageError> {
    let Some(first) = entries.first().map(|e| e.index) else {
        return Ok(());
    };
    if first <= last {
        let name = segment_name(first / SEGMENT);
        txn.open_table(segment_table(&name))?
            .retain_in(first.., |_, _| false)?;
        drop_segments(txn, |seg| seg > first / SEGMENT)?;
    }
    for chunk in entries.chunk_by(|a, b| a.index / SEGMENT == b.index / SEGMENT) {
        let name = segment_name(chunk[0].index / SEGMENT);
        let mut table = txn.open_table(segment_table(&name))?;
        for e in chunk {
            table.insert(e.index, e.write_to_bytes().map_err(corrupt)?.as_slice())?;
        }
    }
    Ok(())
}

/// Deletes the segments `gone` picks, each as a whole table.
fn drop_segments(
    txn: &redb::WriteTransaction,
    gone: impl Fn(u64) -> bool,
) -> Result<(), StorageError> {
    let names = txn.list_tables()?.map(|t| t.name().to_string());
    for seg in segments(names).into_iter().filter(|s| gone(*s)) {
        txn.delete_table(segment_table(&segment_name(seg)))?;
    }
    Ok(())
}

/// Moves the entries of a store written before segments into segments.
fn migrate_legacy_entries(txn: &redb::WriteTransaction) -> Result<(), StorageError> {
    let exists = txn
        .list_tables()?
        .any(|t| t.name() == LEGACY_ENTRIES.name());
    if !exists {
        return Ok(());
    }
    let mut entries = Vec::new();
    for row in txn.open_table(LEGACY_ENTRIES)?.iter()? {
        let (_, v) = row?;
        entries.push(decode::<Entry>(v.value())?);
    }
    append(txn, &entries, 0)?;
    txn.delete_table(LEGACY_ENTRIES)?;
    Ok(())
}

fn put(
    meta: &mut redb::Table<&str, &[u8]>,
    key: &str,
    msg: &impl protobuf::Message,
) -> Result<(), StorageError> {
    meta.insert(key, msg.write_to_bytes().map_err(corrupt)?.as_slice())?;
    Ok(())
}

fn put_json(
    meta: &mut redb::Table<&str, &[u8]>,
    key: &str,
    value: &impl serde::Serialize,
) -> Result<(), StorageError> {
    let bytes = serde_json::to_vec(value).map_err(corrupt)?;
    meta.insert(key, bytes.as_slice())?;
    Ok(())
}

fn decode<M: protobuf::Message>(bytes: &[u8]) -> Result<M, StorageError> {
    M::parse_from_bytes(bytes).map_err(corrupt)
}

fn corrupt(e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(e.to_string())
}

fn entry_bytes(e: &Entry) -> u64 {
    (e.data.len() + e.context.len()) as u64
}

fn store_err(e: raft::StorageError) -> raft::Error {
    raft::Error::Store(e)
}

impl Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let c = self.rl();
        Ok(RaftState::new(c.hard.clone(), c.conf.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let c = self.rl();
        if low < c.first_index() {
            return Err(store_err(raft::StorageError::Compacted));
        }
        if high > c.last_index() + 1 || low > high {
            return Err(store_err(raft::StorageError::Unavailable));
        }
        let lo = (low - c.base.0 - 1) as usize;
        let hi = (high - c.base.0 - 1) as usize;
        let mut entries = c.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let c = self.rl();
        if idx == c.base.0 {
            return Ok(c.base.1);
        }
        if idx < c.base.0 {
            return Err(store_err(raft::StorageError::Compacted));
        }
        if idx > c.last_index() {
            return Err(store_err(raft::StorageError::Unavailable));
        }
        Ok(c.entries[(idx - c.base.0 - 1) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.rl().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.rl().last_index())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let c = self.rl();
        let meta = c.snapshot.get_metadata();
        let conf = meta.get_conf_state();
        // A replica added after the snapshot was taken would refuse it (it
        // is not in its configuration): the driver takes a fresh one, and
        // raft asks again on its next heartbeat.
        let knows_to = conf.voters.contains(&to) || conf.learners.contains(&to);
        if meta.index == 0 || meta.index < request_index || !knows_to {
            self.snapshot_wanted
                .store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(store_err(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(c.snapshot.clone())
    }
}

#[cfg(test)]
#[path = "storage_tests.rs"]
mod tests;
