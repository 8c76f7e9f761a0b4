//! Compaction deletes only what every group is done with, never the only copy of a group's
//! state (hard state, conf state), and never leaves a gap. Method: roll many small segments,
//! compact with floors, restart, and check what replay yields.

mod common;

use std::collections::HashMap;

use common::*;
use nodedb_wal::{Lsn, Wal, KIND_FORGET_GROUP};

fn hard_state(group_id: u64, term: u64) -> Rec {
    Rec {
        group_id,
        kind: KIND_HARD_STATE,
        index: 0,
        payload: format!("term={term}").into_bytes(),
    }
}

/// Latest record of `kind` for `group_id` in replay order: what the engine would restore.
fn latest(records: &[Rec], group_id: u64, kind: u8) -> Option<Rec> {
    records
        .iter()
        .rev()
        .find(|r| r.group_id == group_id && r.kind == kind)
        .cloned()
}

/// Group 1 writes its hard state once, then only group 2 writes entries for many segments.
fn idle_group_log(dir: &std::path::Path) -> Wal {
    idle_group_log_with(dir, small_segments(4096))
}

fn idle_group_log_with(dir: &std::path::Path, options: nodedb_wal::WalOptions) -> Wal {
    let (mut wal, _) = open(dir, options);
    append_all(
        &mut wal,
        &[
            hard_state(1, 5),
            Rec {
                kind: KIND_CONF_STATE,
                ..hard_state(1, 0)
            },
        ],
    );
    append_all(&mut wal, &[Rec::entry(1, 1, b"g1-entry")]);
    for i in 1..=200 {
        let out = wal
            .append(&[Rec::entry(2, i, &[1u8; 100]).as_ref()])
            .unwrap();
        assert!(out.last_lsn.0 > 0);
    }
    wal.sync().unwrap();
    assert!(wal.segment_count() >= 5, "{} segments", wal.segment_count());
    wal
}

#[test]
fn hard_state_of_an_idle_group_survives_compaction_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = idle_group_log(dir.path());
    let before = wal.segment_count();
    let floors = HashMap::from([(1, 1), (2, 150)]);
    let out = wal.compact(&floors).unwrap();
    assert!(out.segments_deleted >= 3, "{out:?}");
    assert_eq!(wal.segment_count(), before - out.segments_deleted);
    drop(wal);
    let (_, recovered) = open(dir.path(), small_segments(4096));
    let records = owned(&recovered);
    assert_eq!(latest(&records, 1, KIND_HARD_STATE), Some(hard_state(1, 5)));
    assert!(latest(&records, 1, KIND_CONF_STATE).is_some());
    // Every entry of group 2 above its floor is still there, in order.
    let g2: Vec<u64> = records
        .iter()
        .filter(|r| r.group_id == 2 && r.kind == KIND_ENTRIES)
        .map(|r| r.index)
        .collect();
    assert!(g2.first().is_some_and(|first| *first <= 151));
    assert!(g2.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(g2.last(), Some(&200));
}

#[test]
fn compacting_everything_then_restarting_twice_keeps_the_latest_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = idle_group_log(dir.path());
    append_all(&mut wal, &[hard_state(1, 6)]); // newer hard state in the active segment
    wal.compact(&HashMap::from([(1, u64::MAX), (2, u64::MAX)]))
        .unwrap();
    assert_eq!(wal.segment_count(), 1, "only the active segment is left");
    drop(wal);
    for round in 0..2 {
        let (mut wal, recovered) = open(dir.path(), small_segments(4096));
        let records = owned(&recovered);
        assert_eq!(
            latest(&records, 1, KIND_HARD_STATE),
            Some(hard_state(1, 6)),
            "round {round}"
        );
        // Compacting right after a restart: the carried copies are synced before deletion.
        wal.compact(&HashMap::from([(1, u64::MAX), (2, u64::MAX)]))
            .unwrap();
    }
    let (_, recovered) = open(dir.path(), small_segments(4096));
    assert_eq!(
        latest(&owned(&recovered), 1, KIND_HARD_STATE),
        Some(hard_state(1, 6))
    );
}

#[test]
fn a_group_without_a_floor_keeps_its_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = idle_group_log(dir.path());
    // Group 1 has an entry in the first segment and no floor: nothing may go.
    let out = wal.compact(&HashMap::from([(2, u64::MAX)])).unwrap();
    assert_eq!(out.segments_deleted, 0);
    // Deletion stops at the first needed segment even if later ones are obsolete.
    let out = wal
        .compact(&HashMap::from([(1, 0), (2, u64::MAX)]))
        .unwrap();
    assert_eq!(out.segments_deleted, 0);
}

/// With growing segments every open starts a fresh segment, so a restart closes the segment
/// holding the forget record (and group 1's carried state before it) and compaction drops it.
/// With preallocation the restart continues that segment: it goes once it has rolled.
#[test]
fn forgotten_group_releases_its_segments_and_stops_being_carried() {
    for preallocate in [false, true] {
        let options = nodedb_wal::WalOptions {
            preallocate,
            ..small_segments(4096)
        };
        let dir = tempfile::tempdir().unwrap();
        let mut wal = idle_group_log_with(dir.path(), options.clone());
        let lsn = wal.forget_group(1).unwrap();
        assert_eq!(wal.last_lsn(), lsn);
        let out = wal.compact(&HashMap::from([(2, u64::MAX)])).unwrap();
        assert!(out.segments_deleted >= 4, "{out:?}");
        drop(wal);
        let (mut wal, recovered) = open(dir.path(), options.clone());
        let records = owned(&recovered);
        let last_of_1 = records.iter().rev().find(|r| r.group_id == 1).unwrap();
        assert_eq!(
            last_of_1.kind, KIND_FORGET_GROUP,
            "nothing of group 1 after its forget record"
        );
        if preallocate {
            let mut rolled = false;
            for i in 1000..2000 {
                let out = wal
                    .append(&[Rec::entry(2, i, &[1u8; 100]).as_ref()])
                    .unwrap();
                if out.rolled {
                    rolled = true;
                    break;
                }
            }
            assert!(rolled, "no roll within 1000 appends");
        }
        wal.compact(&HashMap::from([(2, u64::MAX)])).unwrap();
        drop(wal);
        let (_, recovered) = open(dir.path(), options);
        assert!(
            owned(&recovered)
                .iter()
                .all(|r| r.group_id != 1 || r.kind == KIND_FORGET_GROUP),
            "preallocate {preallocate}"
        );
    }
}

#[test]
fn rolls_report_and_the_sticky_state_is_rewritten_into_each_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), small_segments(4096));
    append_all(&mut wal, &[hard_state(3, 1)]);
    let mut rolls = 0;
    for i in 1..=100 {
        let out = wal
            .append(&[Rec::entry(3, i, &[0u8; 100]).as_ref()])
            .unwrap();
        rolls += usize::from(out.rolled);
    }
    wal.sync().unwrap();
    assert_eq!(rolls + 1, wal.segment_count());
    drop(wal);
    for path in segment_files(dir.path()) {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes.len() as u64 <= 4096 + 128,
            "{} is {} bytes",
            path.display(),
            bytes.len()
        );
        // Each segment's first record is the group's hard state.
        let first_kind = bytes[nodedb_wal::SEGMENT_HEADER_BYTES + 24];
        assert_eq!(first_kind, KIND_HARD_STATE, "{}", path.display());
    }
}

#[test]
fn a_record_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), small_segments(4096));
    let big = Rec::entry(1, 2, &vec![9u8; 10_000]);
    append_all(
        &mut wal,
        &[
            Rec::entry(1, 1, b"small"),
            big.clone(),
            Rec::entry(1, 3, b"after"),
        ],
    );
    assert_eq!(wal.sync().unwrap(), Lsn(3));
    drop(wal);
    let (_, recovered) = open(dir.path(), small_segments(4096));
    assert_eq!(owned(&recovered)[1], big);
    assert_eq!(owned(&recovered).len(), 3);
}

#[test]
fn rewritten_state_records_keep_their_original_order_across_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), small_segments(4096));
    // Conf state (kind 3) written before the hard state (kind 2) of the same group, and a
    // second group's hard state in between: the rewrite must not sort by kind or group.
    let conf = Rec {
        kind: KIND_CONF_STATE,
        ..hard_state(5, 0)
    };
    append_all(
        &mut wal,
        &[conf.clone(), hard_state(9, 1), hard_state(5, 2)],
    );
    for i in 1..=60 {
        append_all(&mut wal, &[Rec::entry(7, i, &[0u8; 100])]);
    }
    wal.sync().unwrap();
    wal.compact(&HashMap::from([(7, u64::MAX)])).unwrap();
    drop(wal);
    let (_, recovered) = open(dir.path(), small_segments(4096));
    let state: Vec<Rec> = owned(&recovered)
        .into_iter()
        .filter(|r| r.kind != KIND_ENTRIES)
        .collect();
    assert!(state.len() >= 3);
    assert_eq!(&state[..3], &[conf, hard_state(9, 1), hard_state(5, 2)]);
}
