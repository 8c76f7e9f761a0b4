//! A crash tears at most the unsynced tail of the last segment. Goal: every way of tearing it
//! (cut header, cut record at any byte, bad crc at the end, zero fill) opens with exactly the
//! fully written records, repairs the file, and later opens and appends behave normally.
//! These reason about the exact bytes of a growing segment (`preallocate: false`); the
//! preallocated layout (zeros after the records) is covered in `preallocated.rs`.

mod common;

use common::*;
use nodedb_wal::{Lsn, SEGMENT_HEADER_BYTES};

fn written_log(recs: &[Rec]) -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), growing());
    append_all(&mut wal, recs);
    wal.sync().unwrap();
    drop(wal);
    let files = image(dir.path());
    assert_eq!(files.len(), 1, "one segment expected");
    files
}

fn sample(n: u64) -> Vec<Rec> {
    (1..=n)
        .map(|i| Rec::entry(1 + i % 4, i, &vec![i as u8; 10 + i as usize]))
        .collect()
}

#[test]
fn cut_at_every_byte_of_the_last_record_keeps_exactly_the_whole_records() {
    let recs = sample(6);
    let files = written_log(&recs);
    let (name, bytes) = &files[0];
    let last_start = *frame_starts(&recs).last().unwrap();
    assert_eq!(bytes.len(), last_start + 28 + recs[5].payload.len());
    for cut in last_start..=bytes.len() {
        let dir = restore(&[(name.clone(), bytes[..cut].to_vec())]);
        let (_wal, recovered) = open(dir.path(), growing());
        let expected = if cut == bytes.len() {
            &recs[..]
        } else {
            &recs[..5]
        };
        assert_eq!(owned(&recovered), expected, "cut at {cut}");
        let torn = recovered.report.torn_tail.as_ref();
        if cut == bytes.len() || cut == last_start {
            assert!(torn.is_none(), "cut at {cut}: nothing torn");
        } else {
            let torn = torn.expect("torn tail reported");
            assert_eq!(
                (torn.offset_bytes, torn.discarded_bytes),
                (last_start as u64, (cut - last_start) as u64)
            );
        }
    }
}

#[test]
fn cut_at_every_byte_of_the_header_leaves_an_empty_log() {
    let files = written_log(&sample(1));
    let (name, bytes) = &files[0];
    for cut in 0..SEGMENT_HEADER_BYTES {
        let dir = restore(&[(name.clone(), bytes[..cut].to_vec())]);
        let (mut wal, recovered) = open(dir.path(), growing());
        assert!(recovered.records.is_empty(), "cut at {cut}");
        append_all(&mut wal, &[Rec::entry(1, 1, b"after")]);
        assert_eq!(
            wal.sync().unwrap(),
            Lsn(1),
            "lsns restart at 1 in an empty log"
        );
    }
}

#[test]
fn bad_crc_or_zero_fill_at_the_very_end_is_a_torn_tail() {
    let recs = sample(5);
    let files = written_log(&recs);
    let (name, bytes) = &files[0];
    let mut flipped = bytes.clone();
    *flipped.last_mut().unwrap() ^= 0x01; // last payload byte of the last record
    let mut zero_filled = bytes.clone();
    zero_filled.extend_from_slice(&vec![0u8; 1 << 20]);
    for (what, image_bytes, expected) in [
        ("flip", flipped, &recs[..4]),
        ("zeros", zero_filled, &recs[..]),
    ] {
        let dir = restore(&[(name.clone(), image_bytes)]);
        let (_wal, recovered) = open(dir.path(), growing());
        assert_eq!(owned(&recovered), expected, "{what}");
        assert!(recovered.report.torn_tail.is_some(), "{what}");
    }
}

#[test]
fn after_truncation_reopen_sees_the_same_records_and_appends_continue() {
    let recs = sample(6);
    let files = written_log(&recs);
    let (name, bytes) = &files[0];
    let cut = bytes.len() - 7;
    let dir = restore(&[(name.clone(), bytes[..cut].to_vec())]);
    let (wal, first) = open(dir.path(), growing());
    assert_eq!(owned(&first), &recs[..5]);
    drop(wal);
    let (mut wal2, second) = open(dir.path(), growing());
    assert_eq!(
        second.records, first.records,
        "second open sees the same records"
    );
    assert!(
        second.report.torn_tail.is_none(),
        "the tail was repaired durably"
    );
    let more = vec![Rec::entry(9, 100, b"new-1"), Rec::entry(9, 101, b"new-2")];
    append_all(&mut wal2, &more);
    assert_eq!(wal2.sync().unwrap(), Lsn(7));
    drop(wal2);
    let (_wal3, third) = open(dir.path(), growing());
    let mut expected = recs[..5].to_vec();
    expected.extend(more);
    assert_eq!(owned(&third), expected);
    let lsns: Vec<u64> = third.records.iter().map(|r| r.lsn.0).collect();
    assert_eq!(lsns, (1..=7).collect::<Vec<_>>());
}
