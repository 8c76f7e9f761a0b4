//! Damage anywhere but the torn tail must stop the node with an error naming the file and the
//! byte offset, and must change nothing on disk (a human decides what to do).

mod common;

use common::*;
use nodedb_wal::{Wal, WalError, FRAME_HEADER_BYTES};

/// Three segments of entries: small segments force rolls.
fn three_segments() -> (tempfile::TempDir, Vec<Rec>) {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), small_segments(4096));
    let recs: Vec<Rec> = (1..=90).map(|i| Rec::entry(1, i, &[7u8; 100])).collect();
    for rec in &recs {
        append_all(&mut wal, std::slice::from_ref(rec));
    }
    wal.sync().unwrap();
    drop(wal);
    assert!(segment_files(dir.path()).len() >= 3);
    (dir, recs)
}

fn open_err(dir: &std::path::Path) -> (std::path::PathBuf, u64, String) {
    match Wal::open(dir, small_segments(4096)) {
        Err(WalError::Corrupt {
            path,
            offset_bytes,
            reason,
        }) => (path, offset_bytes, reason),
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("opened a corrupt log"),
    }
}

#[test]
fn flipped_byte_in_the_middle_of_the_last_segment_names_file_and_offset() {
    let recs = vec![
        Rec::entry(1, 1, b"one"),
        Rec::entry(1, 2, b"two"),
        Rec::entry(1, 3, b"three"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), options());
    append_all(&mut wal, &recs);
    wal.sync().unwrap();
    drop(wal);
    let files = image(dir.path());
    let (name, mut bytes) = files[0].clone();
    let second = frame_starts(&recs)[1];
    bytes[second + FRAME_HEADER_BYTES + 1] ^= 0x40;
    let broken = restore(&[(name.clone(), bytes.clone())]);
    let (path, offset, reason) = match Wal::open(broken.path(), options()) {
        Err(WalError::Corrupt {
            path,
            offset_bytes,
            reason,
        }) => (path, offset_bytes, reason),
        other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
    };
    assert_eq!(path.file_name().unwrap().to_str().unwrap(), name);
    assert_eq!(offset, second as u64);
    assert!(reason.contains("crc"), "{reason}");
    let message = WalError::Corrupt {
        path,
        offset_bytes: offset,
        reason,
    }
    .to_string();
    assert!(
        message.contains(&name) && message.contains(&second.to_string()),
        "{message}"
    );
    // Nothing was repaired or created.
    assert_eq!(image(broken.path()), vec![(name, bytes)]);
}

#[test]
fn flipped_byte_in_an_earlier_segment_is_corrupt_even_at_its_end() {
    let (dir, _) = three_segments();
    let first = segment_files(dir.path())[0].clone();
    let mut bytes = std::fs::read(&first).unwrap();
    let at = bytes.len() - 1;
    bytes[at] ^= 0x01;
    std::fs::write(&first, &bytes).unwrap();
    let (path, offset, _) = open_err(dir.path());
    assert_eq!(path, first);
    assert!(offset < at as u64 && offset > 0);
}

#[test]
fn truncated_earlier_segment_is_corrupt() {
    let (dir, _) = three_segments();
    let second = segment_files(dir.path())[1].clone();
    let len = std::fs::metadata(&second).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&second)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let (path, _, reason) = open_err(dir.path());
    assert_eq!(path, second);
    assert!(reason.contains("cut short"), "{reason}");
}

#[test]
fn bad_header_in_an_earlier_segment_is_corrupt_at_offset_zero() {
    let (dir, _) = three_segments();
    let second = segment_files(dir.path())[1].clone();
    let mut bytes = std::fs::read(&second).unwrap();
    bytes[2] ^= 0xFF; // magic
    std::fs::write(&second, &bytes).unwrap();
    let (path, offset, reason) = open_err(dir.path());
    assert_eq!((path, offset), (second, 0));
    assert!(reason.contains("magic"), "{reason}");
}

#[test]
fn missing_segment_in_the_sequence_is_corrupt() {
    let (dir, _) = three_segments();
    let files = segment_files(dir.path());
    std::fs::remove_file(&files[1]).unwrap();
    let (path, offset, reason) = open_err(dir.path());
    assert_eq!((path, offset), (files[2].clone(), 0));
    assert!(reason.contains("missing"), "{reason}");
}

#[test]
fn segment_copied_under_another_name_is_corrupt() {
    // A log whose last segment is preallocated (zeros after its records; every roll waits for
    // the prepared file so the layout does not depend on the background thread's timing): once
    // a file follows it, that zero tail is found first, and it is corrupt too (a closed segment
    // ends at its last record). Named with file and offset like any damage.
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), small_segments(4096));
    for i in 1..=90 {
        assert!(wal.wait_for_prepared_segment(std::time::Duration::from_secs(20)));
        append_all(&mut wal, &[Rec::entry(1, i, &[7u8; 100])]);
    }
    wal.sync().unwrap();
    drop(wal);
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    let copy = dir
        .path()
        .join(nodedb_wal::segment_file_name(files.len() as u64));
    std::fs::copy(&files[0], &copy).unwrap();
    let (path, offset, reason) = open_err(dir.path());
    let last = files.last().unwrap();
    assert_eq!(path, *last);
    let records_end = std::fs::read(last)
        .unwrap()
        .iter()
        .rposition(|b| *b != 0)
        .unwrap() as u64
        + 1;
    assert_eq!(offset, records_end, "{reason}");
    std::fs::remove_file(&copy).unwrap();
    // With growing segments the copy's own header is the first damage.
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(
        dir.path(),
        nodedb_wal::WalOptions {
            preallocate: false,
            ..small_segments(4096)
        },
    );
    for i in 1..=90 {
        append_all(&mut wal, &[Rec::entry(1, i, &[7u8; 100])]);
    }
    wal.sync().unwrap();
    drop(wal);
    let files = segment_files(dir.path());
    let next_seq = files.len() as u64; // seqs start at 0 in a fresh log
    let copy = dir.path().join(nodedb_wal::segment_file_name(next_seq));
    std::fs::copy(&files[0], &copy).unwrap();
    let (path, offset, reason) = open_err(dir.path());
    assert_eq!((path, offset), (copy.clone(), 0));
    assert!(reason.contains("file name"), "{reason}");
    // A copy beyond a gap is reported as the gap.
    std::fs::rename(&copy, dir.path().join(nodedb_wal::segment_file_name(1000))).unwrap();
    let (_, _, reason) = open_err(dir.path());
    assert!(reason.contains("missing"), "{reason}");
}

#[test]
fn broken_lsn_chain_between_segments_is_corrupt() {
    let (dir, _) = three_segments();
    let second = segment_files(dir.path())[1].clone();
    let mut bytes = std::fs::read(&second).unwrap();
    // A well-formed header (valid crc) that starts 5 LSNs too late: records went missing.
    let first_lsn = u64::from_le_bytes(bytes[20..28].try_into().unwrap());
    bytes[20..28].copy_from_slice(&(first_lsn + 5).to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&second, &bytes).unwrap();
    let (path, offset, reason) = open_err(dir.path());
    assert_eq!((path, offset), (second, 0));
    assert!(reason.contains("previous one ended"), "{reason}");
}
