//! A real write failure: the child runs with RLIMIT_FSIZE below the segment size, so a write
//! fails with EFBIG partway through a record. Goal: the failing call returns an I/O error naming
//! the segment, every later call is refused as poisoned (no retry may pretend the data is safe),
//! and a normal open afterwards recovers every acknowledged record, cutting the partial tail.
//! Run twice: growing segments, and preallocation on (preparing a full-size segment then fails
//! at the limit too, at open and in the background: the WAL must fall back to growing segments
//! instead of failing to open, and the write failure then behaves the same).

use std::process::Command;

use nodedb_wal::{Wal, WalOptions};

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
/// Below the child's 64 KiB segment size, so the failure hits the first segment's tail. The
/// child's frames are all multiples of 4 bytes (128 and 36) after a 32-byte header, so a limit
/// of 1 mod 4 always cuts a frame: the write stops mid-record.
const FSIZE_LIMIT_BYTES: u64 = 40_001;

#[test]
fn failed_write_poisons_and_recovery_keeps_every_acknowledged_record() {
    failed_write_case(false);
}

#[test]
fn failed_write_with_preallocation_falls_back_then_poisons_and_recovers() {
    failed_write_case(true);
}

fn failed_write_case(preallocate: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wal_crash_child"));
    child
        .arg(dir.path())
        .arg("--fsize-limit-bytes")
        .arg(FSIZE_LIMIT_BYTES.to_string());
    if preallocate {
        child.arg("--preallocate");
    }
    let out = child.output().unwrap();
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    let error = lines
        .iter()
        .find(|l| l.starts_with("error "))
        .expect("the write limit was hit");
    assert!(
        error.contains("I/O error during write") && error.contains(".wal"),
        "{error}"
    );
    let after = lines.iter().find(|l| l.starts_with("after ")).unwrap();
    assert!(after.contains("poisoned"), "{after}");
    let acks: Vec<(u64, u64, u64)> = lines
        .iter()
        .filter(|l| l.starts_with("synced "))
        .map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap())
                .collect();
            (f[0], f[1], f[2])
        })
        .collect();
    assert!(
        acks.len() > 10,
        "only {} batches before the limit",
        acks.len()
    );

    let options = WalOptions {
        segment_bytes_max: 64 * 1024,
        sticky_kinds: vec![KIND_HARD_STATE],
        ..WalOptions::default()
    };
    let (_wal, recovered) = Wal::open(dir.path(), options).unwrap();
    let torn = recovered
        .report
        .torn_tail
        .as_ref()
        .expect("the partial write is a torn tail");
    assert!(torn.offset_bytes < FSIZE_LIMIT_BYTES);
    assert_eq!(torn.offset_bytes + torn.discarded_bytes, FSIZE_LIMIT_BYTES);
    for (lsn, group_id, index) in acks {
        let r = &recovered.records[(lsn - 1) as usize];
        assert_eq!(
            (r.lsn.0, r.group_id, r.kind, r.index),
            (lsn, group_id, KIND_ENTRY, index)
        );
    }
}
