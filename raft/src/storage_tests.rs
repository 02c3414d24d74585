//! Tests of the durable raft storage.

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

#[test]
fn compaction_and_snapshots_bound_the_log_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    {
        let s = RaftStore::open(&path, &[1]).unwrap();
        let entries: Vec<_> = (1..=10).map(|i| entry(i, 1, b"x")).collect();
        s.persist(&entries, None).unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 8;
        snap.mut_metadata().term = 1;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2];
        snap.data = b"state".to_vec().into();
        assert!(s.save_snapshot(&snap, 6).unwrap());
        assert_eq!(s.first_index().unwrap(), 7);
        assert_eq!(s.term(6).unwrap(), 1, "the base keeps its term");
        assert!(s
            .entries(5, 8, None, GetEntriesContext::empty(false))
            .is_err());
    }
    let s = RaftStore::open(&path, &[1]).unwrap();
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (7, 10));
    assert_eq!(s.snapshot(0, 2).unwrap().data.as_ref(), b"state");
    // A replica the snapshot does not know would refuse it: raft is
    // told to wait, and the driver is asked for a fresh one.
    assert!(s.snapshot(0, 3).is_err());
    assert!(s.take_snapshot_wanted());
    assert_eq!(s.log_len(), 4);
    assert_eq!(s.log_bytes(), 4, "one byte of data in each kept entry");

    // A snapshot from the leader replaces the whole log.
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 20;
    snap.mut_metadata().term = 3;
    snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    s.apply_snapshot(&snap, &Peers::from([(2, "b:1".to_string())]))
        .unwrap();
    drop(s);
    let s = RaftStore::open(&path, &[1]).unwrap();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (21, 20)
    );
    assert_eq!(s.term(20).unwrap(), 3);
    assert_eq!(s.hard_state().commit, 20);
    assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
    assert_eq!(s.peers()[&2], "b:1");
}

fn snapshot_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with(SNAPSHOT_FILE_PREFIX)
        })
        .count()
}

#[test]
fn files_left_by_a_crash_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    let s = RaftStore::open(&path, &[1]).unwrap();
    let entries: Vec<_> = (1..=5).map(|i| entry(i, 1, b"x")).collect();
    s.persist(&entries, None).unwrap();
    assert!(s.save_snapshot(&snapshot_at(4, b"four"), 4).unwrap());
    drop(s);
    // One written but never named, one half written.
    let orphan = format!("{SNAPSHOT_FILE_PREFIX}00000000000000000005-00.bin");
    std::fs::write(dir.path().join(orphan), b"five").unwrap();
    let partial = format!("{SNAPSHOT_FILE_PREFIX}00000000000000000005-01.tmp");
    std::fs::write(dir.path().join(partial), b"fi").unwrap();
    std::fs::write(dir.path().join("operator-notes.txt"), b"kept").unwrap();
    let s = RaftStore::open(&path, &[1]).unwrap();
    assert_eq!(s.snapshot_data().data.as_ref(), b"four");
    assert_eq!(snapshot_files(dir.path()), 1);
    assert!(dir.path().join("operator-notes.txt").exists());
}

fn snapshot_at(index: u64, data: &[u8]) -> Snapshot {
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = index;
    snap.mut_metadata().term = 1;
    snap.mut_metadata().mut_conf_state().voters = vec![1];
    snap.data = data.to_vec().into();
    snap
}

#[test]
fn a_snapshot_older_than_the_latest_is_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    let s = RaftStore::open(&path, &[1]).unwrap();
    let entries: Vec<_> = (1..=30).map(|i| entry(i, 1, b"x")).collect();
    s.persist(&entries, None).unwrap();
    assert!(s.save_snapshot(&snapshot_at(10, b"ten"), 8).unwrap());
    // One encoded in the background meanwhile, at an older index, and
    // one at the same index, change nothing.
    assert!(!s.save_snapshot(&snapshot_at(6, b"six"), 6).unwrap());
    assert!(!s.save_snapshot(&snapshot_at(10, b"again"), 10).unwrap());
    assert_eq!(s.snapshot_info().0, 10);
    assert_eq!(s.first_index().unwrap(), 9);
    // Entries appended after the snapshot's index stay in the log.
    s.persist(&[entry(31, 1, b"y")], None).unwrap();
    assert!(s.save_snapshot(&snapshot_at(20, b"twenty"), 20).unwrap());
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (21, 31)
    );
    // Only the latest one's file is kept, and it is read back on open.
    assert_eq!(snapshot_files(dir.path()), 1);
    drop(s);
    let s = RaftStore::open(&path, &[1]).unwrap();
    assert_eq!(s.snapshot_data().data.as_ref(), b"twenty");
    assert_eq!(s.snapshot_info(), (20, 1, 6));

    // The leader's snapshot, installed while a local one was encoded,
    // wins over it.
    s.apply_snapshot(&snapshot_at(40, b"leader"), &Peers::new())
        .unwrap();
    assert!(!s.save_snapshot(&snapshot_at(25, b"local"), 25).unwrap());
    assert_eq!(snapshot_files(dir.path()), 0, "the installed one is inline");
    drop(s);
    let s = RaftStore::open(&path, &[1]).unwrap();
    assert_eq!(s.snapshot_data().data.as_ref(), b"leader");
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (41, 40)
    );
}

fn segment_tables(s: &RaftStore) -> Vec<u64> {
    let txn = s.db.begin_read().unwrap();
    segments(txn.list_tables().unwrap().map(|t| t.name().to_string()))
}

#[test]
fn the_log_spans_segments_and_compaction_drops_whole_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    let n = 3 * SEGMENT;
    {
        let s = RaftStore::open(&path, &[1]).unwrap();
        let entries: Vec<_> = (1..=n).map(|i| entry(i, 1, b"x")).collect();
        s.persist(&entries, None).unwrap();
        assert_eq!(segment_tables(&s), vec![0, 1, 2, 3]);
        // A conflicting suffix from inside segment 1 replaces segment
        // 1's tail and everything after it.
        let at = SEGMENT + 10;
        s.persist(&[entry(at, 2, b"y"), entry(at + 1, 2, b"z")], None)
            .unwrap();
        assert_eq!(s.last_index().unwrap(), at + 1);
        assert_eq!(segment_tables(&s), vec![0, 1]);
        // Compacting into segment 1 drops segment 0 only; the entries
        // of segment 1 up to the base stay on disk but not in the log.
        assert!(s
            .save_snapshot(&snapshot_at(SEGMENT + 5, b"s"), SEGMENT + 5)
            .unwrap());
        assert_eq!(segment_tables(&s), vec![1]);
    }
    let s = RaftStore::open(&path, &[1]).unwrap();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (SEGMENT + 6, SEGMENT + 11)
    );
    assert_eq!(s.term(SEGMENT + 10).unwrap(), 2);
    assert_eq!(s.log_len(), 6);
}

/// The deletion of compacted segments is not synced: one lost in a
/// crash leaves a segment wholly below the base, which the reopened
/// store never reads and the next compaction deletes.
#[test]
fn a_compacted_segment_left_by_a_crash_is_ignored_then_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    {
        let s = RaftStore::open(&path, &[1]).unwrap();
        let entries: Vec<_> = (1..=2 * SEGMENT).map(|i| entry(i, 1, b"x")).collect();
        s.persist(&entries, None).unwrap();
        assert!(s
            .save_snapshot(&snapshot_at(SEGMENT + 5, b"s"), SEGMENT + 5)
            .unwrap());
        assert_eq!(segment_tables(&s), vec![1, 2]);
        // Segment 0 as a lost deletion would leave it.
        let txn = s.db.begin_write().unwrap();
        {
            let name = segment_name(0);
            let mut t = txn.open_table(segment_table(&name)).unwrap();
            let stale = entry(3, 1, b"stale").write_to_bytes().unwrap();
            t.insert(3, stale.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let s = RaftStore::open(&path, &[1]).unwrap();
    assert_eq!(segment_tables(&s), vec![0, 1, 2]);
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (SEGMENT + 6, 2 * SEGMENT)
    );
    assert!(s
        .save_snapshot(&snapshot_at(2 * SEGMENT, b"t"), 2 * SEGMENT)
        .unwrap());
    assert_eq!(segment_tables(&s), vec![2]);
}

#[test]
fn a_store_with_the_single_entries_table_of_before_is_moved_into_segments() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            put(&mut meta, CONF_STATE, &ConfState::from((vec![1], vec![]))).unwrap();
            put_json(&mut meta, LOG_BASE, &(2u64, 1u64)).unwrap();
            let mut old = txn.open_table(LEGACY_ENTRIES).unwrap();
            for i in 3..=SEGMENT + 1 {
                let e = entry(i, 1, b"x");
                old.insert(i, e.write_to_bytes().unwrap().as_slice())
                    .unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let s = RaftStore::open(&path, &[7]).unwrap();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (3, SEGMENT + 1)
    );
    assert_eq!(s.conf_state().voters, vec![1]);
    assert_eq!(segment_tables(&s), vec![0, 1]);
    let txn = s.db.begin_read().unwrap();
    assert!(!txn
        .list_tables()
        .unwrap()
        .any(|t| t.name() == "raft_entries"));
}
