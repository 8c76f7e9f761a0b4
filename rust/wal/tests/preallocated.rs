//! Preallocated segments (`WalOptions::preallocate`, the default): a segment is full-size zeros
//! before it becomes active, so appends never change the file size; a closed segment is cut to
//! its records; the zeros after the last segment's records are a clean end and the segment is
//! continued after a restart; a torn record before the zeros is zeroed, not truncated; damage
//! followed by a valid record is still corruption; stale `.prep` files never replay; a roll with
//! no prepared file ready falls back to a growing segment.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use nodedb_wal::{
    Lsn, Wal, WalError, WalOptions, FRAME_HEADER_BYTES, SEGMENT_BYTES_MIN, SEGMENT_HEADER_BYTES,
};

/// Bound on waiting for the background preparation of a small segment (takes ~1 ms).
const PREPARED_WAIT_MAX: Duration = Duration::from_secs(20);
/// Bound on appends while waiting for a roll.
const APPENDS_TO_ROLL_MAX: u64 = 10_000;

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// End of the records of a segment, walking frame lengths from the header until the file ends
/// or an all-zero frame header (independent of the crate's scan).
fn records_end(bytes: &[u8]) -> usize {
    let mut at = SEGMENT_HEADER_BYTES;
    while at + FRAME_HEADER_BYTES <= bytes.len()
        && bytes[at..at + FRAME_HEADER_BYTES].iter().any(|b| *b != 0)
    {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        at += FRAME_HEADER_BYTES + len;
    }
    at
}

fn entry(i: u64) -> Rec {
    Rec::entry(1 + i % 3, i, &[(i % 250) as u8 + 1; 100])
}

/// Appends single entries (synced) until the WAL rolls; returns the entries appended.
fn append_until_roll(wal: &mut Wal, next_index: &mut u64) -> Vec<Rec> {
    let mut out = Vec::new();
    for _ in 0..APPENDS_TO_ROLL_MAX {
        let rec = entry(*next_index);
        *next_index += 1;
        let rolled = wal.append(&[rec.as_ref()]).unwrap().rolled;
        wal.sync().unwrap();
        out.push(rec);
        if rolled {
            return out;
        }
    }
    panic!("no roll after {APPENDS_TO_ROLL_MAX} appends");
}

fn entries_of(recovered: &nodedb_wal::Recovered) -> Vec<Rec> {
    owned(recovered)
        .into_iter()
        .filter(|r| r.kind == KIND_ENTRIES)
        .collect()
}

#[test]
fn appends_into_a_preallocated_segment_keep_the_file_size_and_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes = 64 * 1024;
    let (mut wal, _) = open(dir.path(), small_segments(segment_bytes));
    let path = segment_files(dir.path())[0].clone();
    let before = std::fs::metadata(&path).unwrap();
    assert_eq!(
        before.len(),
        segment_bytes,
        "full-size before the first append"
    );
    for i in 1..=200 {
        let out = wal.append(&[entry(i).as_ref()]).unwrap();
        assert!(!out.rolled);
        wal.sync().unwrap();
        let now = std::fs::metadata(&path).unwrap();
        assert_eq!(now.len(), segment_bytes, "size changed after append {i}");
        assert_eq!(
            now.blocks(),
            before.blocks(),
            "blocks allocated by append {i}"
        );
    }
    let stats = wal.preallocation_stats();
    assert_eq!((stats.segments_prepared, stats.rolls_fallback), (1, 0));
    assert_eq!(stats.prepare_failures, 0, "{:?}", stats.last_failure);
}

#[test]
fn rolls_use_prepared_files_and_closed_segments_end_at_their_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes = 8 * 1024;
    let (mut wal, _) = open(dir.path(), small_segments(segment_bytes));
    let mut next = 1;
    let mut written = Vec::new();
    for round in 0..5 {
        assert!(
            wal.wait_for_prepared_segment(PREPARED_WAIT_MAX),
            "round {round}: {:?}",
            wal.preallocation_stats()
        );
        written.extend(append_until_roll(&mut wal, &mut next));
    }
    let stats = wal.preallocation_stats();
    assert_eq!((stats.segments_prepared, stats.rolls_fallback), (6, 0));
    let active_seq = wal.active_segment_seq();
    drop(wal);
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 6);
    for path in &files[..5] {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(
            records_end(&bytes),
            bytes.len(),
            "{} must end at its last record",
            path.display()
        );
        assert!(bytes.len() as u64 <= segment_bytes);
    }
    assert_eq!(file_len(&files[5]), segment_bytes, "active stays full-size");
    let (wal, recovered) = open(dir.path(), small_segments(segment_bytes));
    assert_eq!(entries_of(&recovered), written);
    assert_eq!(recovered.report.torn_tail, None);
    assert_eq!(
        wal.active_segment_seq(),
        active_seq,
        "the last segment continues"
    );
    assert_eq!(wal.segment_count(), 6);
}

#[test]
fn restart_after_a_clean_stop_continues_the_segment_and_keeps_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_segments(64 * 1024);
    let (mut wal, _) = open(dir.path(), opts.clone());
    let first: Vec<Rec> = (1..=10).map(entry).collect();
    append_all(&mut wal, &first);
    let hard_state = Rec {
        group_id: 1,
        kind: KIND_HARD_STATE,
        index: 0,
        payload: b"term 7".to_vec(),
    };
    append_all(&mut wal, std::slice::from_ref(&hard_state));
    assert_eq!(wal.sync().unwrap(), Lsn(11));
    drop(wal);
    let path = segment_files(dir.path())[0].clone();

    let (mut wal, recovered) = open(dir.path(), opts.clone());
    assert_eq!(entries_of(&recovered), first);
    assert_eq!(recovered.report.torn_tail, None);
    assert_eq!((wal.segment_count(), wal.active_segment_seq()), (1, 0));
    assert_eq!(file_len(&path), 64 * 1024, "preallocation kept");
    assert_eq!(
        wal.preallocation_stats().segments_prepared,
        0,
        "nothing new"
    );
    let second: Vec<Rec> = (11..=20).map(entry).collect();
    append_all(&mut wal, &second);
    let synced = wal.sync().unwrap();
    drop(wal);

    let (_wal, recovered) = open(dir.path(), opts);
    let mut all = first.clone();
    all.extend(second);
    assert_eq!(entries_of(&recovered), all);
    let lsns: Vec<u64> = recovered.records.iter().map(|r| r.lsn.0).collect();
    assert_eq!(lsns, (1..=synced.0).collect::<Vec<_>>());
    let latest_hs = recovered
        .records
        .iter()
        .rev()
        .find(|r| r.kind == KIND_HARD_STATE)
        .unwrap();
    assert_eq!(latest_hs.payload, b"term 7");
    assert_eq!(file_len(&path), 64 * 1024);
    assert_eq!(segment_files(dir.path()).len(), 1);
}

#[test]
fn torn_record_before_the_zeros_is_zeroed_and_appends_continue() {
    let segment_bytes = 64 * 1024;
    let opts = small_segments(segment_bytes);
    let recs: Vec<Rec> = (1..=6).map(entry).collect();
    let src = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(src.path(), opts.clone());
    append_all(&mut wal, &recs);
    wal.sync().unwrap();
    drop(wal);
    let files = image(src.path());
    let (name, bytes) = files[0].clone();
    let last_start = frame_starts(&recs)[5];
    let last_end = records_end(&bytes);
    assert_eq!(last_end, last_start + FRAME_HEADER_BYTES + 100);
    for cut in [
        last_start + 1,
        last_start + 9,
        last_start + 40,
        last_end - 1,
    ] {
        let mut torn = bytes.clone();
        torn[cut..last_end].fill(0); // the write stopped at `cut`
        let dir = restore(&[(name.clone(), torn)]);
        let path = dir.path().join(&name);
        let (mut wal, recovered) = open(dir.path(), opts.clone());
        assert_eq!(owned(&recovered), &recs[..5], "cut {cut}");
        let report = recovered.report.torn_tail.expect("torn tail reported");
        assert_eq!(report.offset_bytes, last_start as u64, "cut {cut}");
        assert!(
            (1..=(cut - last_start) as u64).contains(&report.discarded_bytes),
            "cut {cut}: {report:?}"
        );
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len() as u64, segment_bytes, "still preallocated");
        assert!(
            on_disk[last_start..].iter().all(|b| *b == 0),
            "torn bytes zeroed"
        );

        let more = vec![entry(100), entry(101)];
        append_all(&mut wal, &more);
        assert_eq!(wal.sync().unwrap(), Lsn(7));
        drop(wal);
        let (_wal, again) = open(dir.path(), opts.clone());
        let mut expected = recs[..5].to_vec();
        expected.extend(more);
        assert_eq!(owned(&again), expected, "cut {cut}");
        assert_eq!(again.report.torn_tail, None, "cut {cut}: repaired durably");
        assert_eq!(file_len(&path), segment_bytes);
    }
}

#[test]
fn a_valid_frame_after_damage_in_the_zero_region_refuses_to_open() {
    let opts = small_segments(64 * 1024);
    let recs: Vec<Rec> = (1..=3).map(entry).collect();
    let src = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(src.path(), opts.clone());
    append_all(&mut wal, &recs);
    wal.sync().unwrap();
    drop(wal);
    let (name, bytes) = image(src.path())[0].clone();
    let end = records_end(&bytes);
    let starts = frame_starts(&recs);
    let second_frame = bytes[starts[1]..starts[2]].to_vec(); // valid in this segment
    let late_at = end + 1000;
    for garbage in [false, true] {
        let mut damaged = bytes.clone();
        if garbage {
            damaged[end..end + 10].fill(0xEE);
        }
        damaged[late_at..late_at + second_frame.len()].copy_from_slice(&second_frame);
        let dir = restore(&[(name.clone(), damaged.clone())]);
        match Wal::open(dir.path(), opts.clone()) {
            Err(WalError::Corrupt {
                path,
                offset_bytes,
                reason,
            }) => {
                assert_eq!(path.file_name().unwrap().to_str().unwrap(), name);
                assert_eq!(offset_bytes, end as u64, "garbage {garbage}: {reason}");
                assert!(
                    reason.contains(&format!("valid record at offset {late_at}")),
                    "{reason}"
                );
            }
            Err(other) => panic!("expected Corrupt, got {other}"),
            Ok(_) => panic!("garbage {garbage}: opened a corrupt log"),
        }
        assert_eq!(
            image(dir.path()),
            vec![(name.clone(), damaged)],
            "untouched"
        );
    }
}

#[test]
fn stale_prep_files_at_open_are_removed_and_never_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_segments(64 * 1024);
    let recs: Vec<Rec> = (1..=4).map(entry).collect();
    let (mut wal, _) = open(dir.path(), opts.clone());
    append_all(&mut wal, &recs);
    wal.sync().unwrap();
    drop(wal);
    // A segment-looking file and a half-filled one, under seqs the preparer will not use soon.
    let segment = segment_files(dir.path())[0].clone();
    let stale: Vec<PathBuf> = [7u64, 0x10]
        .iter()
        .map(|seq| dir.path().join(format!("{seq:016x}.wal.prep")))
        .collect();
    std::fs::copy(&segment, &stale[0]).unwrap();
    std::fs::write(&stale[1], vec![0u8; 5000]).unwrap();
    let (_wal, recovered) = open(dir.path(), opts);
    assert_eq!(owned(&recovered), recs);
    for path in &stale {
        assert!(!path.exists(), "{} left behind", path.display());
    }
}

#[test]
fn roll_falls_back_to_a_growing_segment_when_no_prepared_file_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes = 8 * 1024;
    // A directory where segment 1's prepared file would go: its preparation fails (a
    // directory is not ours, open leaves it alone), so the roll to segment 1 cannot find a
    // prepared file ready.
    let blocker = dir.path().join(format!("{:016x}.wal.prep", 1));
    std::fs::create_dir(&blocker).unwrap();
    let (mut wal, _) = open(dir.path(), small_segments(segment_bytes));
    assert!(!wal.wait_for_prepared_segment(PREPARED_WAIT_MAX));
    let stats = wal.preallocation_stats();
    assert_eq!(stats.prepare_failures, 1);
    assert!(stats.last_failure.is_some_and(|m| m.contains(".wal.prep")));

    let mut next = 1;
    let mut written = append_until_roll(&mut wal, &mut next);
    assert_eq!(wal.active_segment_seq(), 1);
    assert_eq!(wal.preallocation_stats().rolls_fallback, 1);
    let tail: Vec<Rec> = (next..next + 5).map(entry).collect();
    next += 5;
    append_all(&mut wal, &tail);
    written.extend(tail);
    wal.sync().unwrap();
    let growing = segment_files(dir.path())[1].clone();
    let bytes = std::fs::read(&growing).unwrap();
    assert_eq!(
        records_end(&bytes),
        bytes.len(),
        "segment 1 grows by appending"
    );
    assert!((bytes.len() as u64) < segment_bytes);

    // The next one is prepared again and used.
    assert!(wal.wait_for_prepared_segment(PREPARED_WAIT_MAX));
    written.extend(append_until_roll(&mut wal, &mut next));
    assert_eq!(wal.active_segment_seq(), 2);
    let stats = wal.preallocation_stats();
    assert_eq!((stats.segments_prepared, stats.rolls_fallback), (2, 1));
    assert_eq!(file_len(&segment_files(dir.path())[2]), segment_bytes);
    drop(wal);

    let (_wal, recovered) = open(dir.path(), small_segments(segment_bytes));
    assert_eq!(entries_of(&recovered), written);
    assert!(
        blocker.is_dir(),
        "open leaves a directory it did not create alone"
    );
}

#[test]
fn turning_preallocation_off_cuts_the_zero_tail_before_closing_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let on = small_segments(64 * 1024);
    let off = WalOptions {
        preallocate: false,
        ..on.clone()
    };
    let recs: Vec<Rec> = (1..=4).map(entry).collect();
    let (mut wal, _) = open(dir.path(), on.clone());
    append_all(&mut wal, &recs);
    wal.sync().unwrap();
    drop(wal);
    let first = segment_files(dir.path())[0].clone();

    let (mut wal, recovered) = open(dir.path(), off);
    assert_eq!(owned(&recovered), recs);
    let torn = recovered
        .report
        .torn_tail
        .expect("the zero tail is reported as cut");
    assert_eq!(torn.reason, "zero fill after the last record");
    let bytes = std::fs::read(&first).unwrap();
    assert_eq!(
        records_end(&bytes),
        bytes.len(),
        "closed at its last record"
    );
    assert_eq!(wal.active_segment_seq(), 1);
    let more = vec![entry(50)];
    append_all(&mut wal, &more);
    wal.sync().unwrap();
    drop(wal);

    let (_wal, recovered) = open(dir.path(), on);
    let mut expected = recs;
    expected.extend(more);
    assert_eq!(owned(&recovered), expected);
    assert_eq!(recovered.report.torn_tail, None);
}

#[test]
fn smallest_segments_preallocate_too() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        preallocate_chunk_bytes: 4096,
        ..small_segments(SEGMENT_BYTES_MIN)
    };
    let (mut wal, _) = open(dir.path(), opts.clone());
    let mut next = 1;
    let mut written = Vec::new();
    for _ in 0..3 {
        assert!(wal.wait_for_prepared_segment(PREPARED_WAIT_MAX));
        written.extend(append_until_roll(&mut wal, &mut next));
    }
    drop(wal);
    let (_wal, recovered) = open(dir.path(), opts);
    assert_eq!(entries_of(&recovered), written);
}

/// Appends `payload_bytes` records, one sync each, until the WAL rolls.
fn sync_until_roll(wal: &mut Wal, next_index: &mut u64, payload_bytes: usize) {
    for _ in 0..APPENDS_TO_ROLL_MAX {
        let rec = Rec::entry(1, *next_index, &vec![7u8; payload_bytes]);
        *next_index += 1;
        let rolled = wal.append(&[rec.as_ref()]).unwrap().rolled;
        wal.sync().unwrap();
        if rolled {
            return;
        }
    }
    panic!("no roll after {APPENDS_TO_ROLL_MAX} appends");
}

#[test]
fn large_syncs_pause_preparation_until_a_segment_of_small_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), small_segments(1 << 20));
    let large = usize::try_from(nodedb_wal::PREALLOCATE_BYTES_PER_SYNC_MAX).unwrap() * 2;
    let mut next = 1;
    assert!(wal.wait_for_prepared_segment(PREPARED_WAIT_MAX));
    sync_until_roll(&mut wal, &mut next, large);
    let after_dense = wal.preallocation_stats();
    assert_eq!(after_dense.rolls_dense, 1, "{after_dense:?}");
    // The segment now active was already prepared (its zeros are written: used), but nothing
    // further is prepared while its syncs are small: the next roll grows, without counting a
    // fallback (none was asked for).
    sync_until_roll(&mut wal, &mut next, 100);
    let paused = wal.preallocation_stats();
    assert_eq!(paused.segments_prepared, after_dense.segments_prepared);
    assert_eq!((paused.rolls_dense, paused.rolls_fallback), (1, 0));
    // That segment's syncs were small: preparation resumed, and the next roll uses it.
    assert!(wal.wait_for_prepared_segment(PREPARED_WAIT_MAX));
    sync_until_roll(&mut wal, &mut next, 100);
    let resumed = wal.preallocation_stats();
    assert_eq!(resumed.segments_prepared, paused.segments_prepared + 1);
    assert_eq!(
        (resumed.rolls_dense, resumed.rolls_fallback),
        (1, 0),
        "{resumed:?}"
    );
}

#[test]
fn a_segment_continued_after_restart_judges_only_its_new_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let small = 8 * 1024; // below PREALLOCATE_BYTES_PER_SYNC_MAX per sync
    let segment_bytes: u64 = 1 << 20;
    let mut next = 1;
    {
        let (mut wal, _) = open(dir.path(), small_segments(segment_bytes));
        // Fill most of the first (preallocated) segment with small syncs, without rolling.
        while next <= 100 {
            let rec = Rec::entry(1, next, &vec![7u8; small]);
            next += 1;
            assert!(!wal.append(&[rec.as_ref()]).unwrap().rolled);
            wal.sync().unwrap();
        }
    }
    // Restart: the segment is continued. A few more small syncs, then the roll: the bytes
    // written before the restart must not count against these syncs.
    let (mut wal, _) = open(dir.path(), small_segments(segment_bytes));
    sync_until_roll(&mut wal, &mut next, small);
    assert_eq!(wal.preallocation_stats().rolls_dense, 0);
}
