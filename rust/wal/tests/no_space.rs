//! A full disk, for real: the log lives on a small tmpfs that another file fills. Claims:
//! - ENOSPC from a write (sync) or from creating the next segment (roll) returns
//!   `WalError::NoSpace` naming the log directory and does NOT poison: the buffered records
//!   are kept, a later `sync()` retries them from the same file offset, and once space is freed
//!   they land with their LSNs (consecutive, nothing lost, nothing doubled);
//! - a roll that ran out of space leaves no partial segment file behind;
//! - preparation of the next segment is skipped (counted) when it would leave less than the
//!   reserve, and `Wal::space()` reports the reserve;
//! - after a reopen every acknowledged record replays at its LSN.
//!
//! Mounting needs root (CAP_SYS_ADMIN); without it each test says so and passes vacuously.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use nodedb_wal::{Lsn, Wal, WalError, WalOptions, SEGMENT_BYTES_MIN};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Bound on appends before the disk is full (each test's disk holds far fewer records).
const APPENDS_MAX: u64 = 100_000;

/// A tmpfs of `size_bytes` mounted on a fresh temporary directory; unmounted on drop.
/// Holds `SERIAL` while it lives: these tests run one at a time.
struct Tmpfs {
    dir: tempfile::TempDir,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// Run in parallel (the harness's default), a test here saw the space of the file it had just
/// deleted stay in use (statvfs: 0 bytes available, about one run in three); one at a time they
/// passed every run before and after the harness changes. Why is not understood yet, so the
/// mounts are serialized rather than the assertion weakened.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Tmpfs {
    /// `None` (after saying why) when this process may not mount.
    fn mount(size_bytes: u64) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions and touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: mounting a tmpfs needs root; run as root to test a full disk");
            return None;
        }
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        if !status.success() {
            eprintln!("SKIPPED: mount -t tmpfs failed ({status}); no CAP_SYS_ADMIN here?");
            return None;
        }
        Some(Tmpfs {
            dir,
            _serial: serial,
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Another process's file: written until the disk has `leave_bytes` or less free (0: full).
fn fill(mount: &Path, wal: &Wal, leave_bytes: u64) -> PathBuf {
    let path = mount.join("filler");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let chunk = vec![0xABu8; 4096];
    loop {
        let available = wal.space().unwrap().available_bytes;
        if available <= leave_bytes {
            break;
        }
        let n = chunk.len().min((available - leave_bytes) as usize);
        match file.write_all(&chunk[..n]) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filler: {e}"),
        }
    }
    file.sync_all().unwrap();
    path
}

fn free(filler: &Path) {
    std::fs::remove_file(filler).unwrap();
}

fn rec(i: u64, bytes: usize) -> Rec {
    Rec::entry(1 + i % 3, i, &vec![(i % 250) as u8 + 1; bytes])
}

fn assert_no_space(err: &WalError, wal_dir: &Path) {
    match err {
        WalError::NoSpace { dir, .. } => assert_eq!(dir, wal_dir),
        other => panic!("expected NoSpace, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("no space left on the device holding")
            && text.contains(&wal_dir.display().to_string()),
        "{text}"
    );
}

/// Every record of `expected` replays at LSN first_lsn + position.
fn assert_replayed(dir: &Path, options: WalOptions, expected: &[(Lsn, Rec)]) {
    let (_wal, recovered) = Wal::open(dir, options).unwrap();
    let got = owned(&recovered);
    for (lsn, want) in expected {
        let at = recovered
            .records
            .iter()
            .position(|r| r.lsn == *lsn)
            .unwrap_or_else(|| panic!("{lsn} missing after reopen"));
        assert_eq!(&got[at], want, "{lsn}");
    }
    for pair in recovered.records.windows(2) {
        assert_eq!(pair[1].lsn.0, pair[0].lsn.0 + 1, "lsns consecutive");
    }
}

/// Appends one record per call and syncs until a `sync` (or `append`) fails; returns every
/// appended (lsn, record) — the last one unacknowledged if `sync` failed — and the error.
fn append_until_no_space(
    wal: &mut Wal,
    next: &mut u64,
    bytes: usize,
) -> (Vec<(Lsn, Rec)>, WalError) {
    let mut acked = Vec::new();
    for _ in 0..APPENDS_MAX {
        let r = rec(*next, bytes);
        let lsn = match wal.append(&[r.as_ref()]) {
            Ok(out) => out.last_lsn,
            Err(e) => return (acked, e),
        };
        *next += 1;
        match wal.sync() {
            Ok(synced) => {
                assert!(synced >= lsn);
                acked.push((lsn, r));
            }
            Err(e) => {
                // Not acknowledged, but appended: it must land once space is freed.
                acked.push((lsn, r));
                return (acked, e);
            }
        }
    }
    panic!("the disk never filled after {APPENDS_MAX} appends");
}

#[test]
fn a_failed_write_keeps_the_records_and_a_later_sync_lands_them() {
    let Some(fs) = Tmpfs::mount(2 * MIB) else {
        return;
    };
    let dir = fs.path().join("raft");
    let options = WalOptions {
        segment_bytes_max: MIB, // one segment: the failure is a write, not a roll
        write_buffer_bytes: 4096,
        preallocate: false,
        free_space_reserve: Some(0),
        ..options()
    };
    let (mut wal, _) = Wal::open(&dir, options.clone()).unwrap();
    let filler = fill(fs.path(), &wal, 0);
    let mut next = 1;
    let (appended, err) = append_until_no_space(&mut wal, &mut next, 1000);
    assert_no_space(&err, &dir);
    let unsynced_lsn = appended.last().unwrap().0;
    assert!(
        wal.synced_lsn() < unsynced_lsn,
        "the failed sync acknowledged nothing"
    );
    // Not poisoned: the retry fails the same way, more appends are buffered.
    assert_no_space(&wal.sync().unwrap_err(), &dir);
    let mut all = appended;
    for _ in 0..3 {
        let r = rec(next, 1000);
        next += 1;
        let out = wal.append(&[r.as_ref()]).unwrap();
        all.push((out.last_lsn, r));
    }
    assert_no_space(&wal.sync().unwrap_err(), &dir);
    free(&filler);
    let synced = wal.sync().unwrap();
    assert_eq!(synced, all.last().unwrap().0);
    // LSNs stayed consecutive through the failures.
    for pair in all.windows(2) {
        assert_eq!(pair[1].0 .0, pair[0].0 .0 + 1);
    }
    drop(wal);
    assert_replayed(&dir, options, &all);
}

#[test]
fn a_roll_without_space_removes_the_new_segment_and_rolls_again_later() {
    let Some(fs) = Tmpfs::mount(MIB) else {
        return;
    };
    let dir = fs.path().join("raft");
    let options = WalOptions {
        segment_bytes_max: SEGMENT_BYTES_MIN,
        write_buffer_bytes: 4096,
        preallocate: false,
        free_space_reserve: Some(0),
        ..options()
    };
    let (mut wal, _) = Wal::open(&dir, options.clone()).unwrap();
    let first = rec(1, 2100);
    let first_lsn = wal.append(&[first.as_ref()]).unwrap().last_lsn;
    wal.sync().unwrap();
    let segments_before = segment_files(&dir);
    let filler = fill(fs.path(), &wal, 0);
    // 2100 more bytes do not fit in the 4 KiB segment: the append rolls, and the new
    // segment's header needs a page the disk no longer has.
    let second = rec(2, 2100);
    let err = wal.append(&[second.as_ref()]).unwrap_err();
    assert_no_space(&err, &dir);
    assert_eq!(
        wal.last_lsn(),
        first_lsn,
        "nothing of the batch was appended"
    );
    assert_eq!(
        segment_files(&dir),
        segments_before,
        "no partial segment left"
    );
    assert_no_space(&wal.append(&[second.as_ref()]).unwrap_err(), &dir);
    assert_eq!(
        wal.sync().unwrap(),
        first_lsn,
        "not poisoned: a sync of nothing new"
    );
    free(&filler);
    let out = wal.append(&[second.as_ref()]).unwrap();
    assert!(out.rolled);
    assert_eq!(wal.sync().unwrap(), out.last_lsn);
    assert_eq!(segment_files(&dir).len(), segments_before.len() + 1);
    drop(wal);
    assert_replayed(&dir, options, &[(first_lsn, first), (out.last_lsn, second)]);
}

#[test]
fn preparation_keeps_the_reserve_and_the_log_survives_the_disk_filling_up() {
    let Some(fs) = Tmpfs::mount(8 * MIB) else {
        return;
    };
    let dir = fs.path().join("raft");
    let segment = 256 * KIB;
    let options = WalOptions {
        segment_bytes_max: segment,
        write_buffer_bytes: 4096,
        ..options() // preallocation on, default reserve
    };
    let (mut wal, _) = Wal::open(&dir, options.clone()).unwrap();
    // Default reserve: two segments (512 KiB) or 10 % of 8 MiB (819 KiB): two segments.
    assert_eq!(wal.reserve_bytes(), 2 * segment);
    assert_eq!(wal.space().unwrap().reserve_bytes, 2 * segment);
    assert!(wal.wait_for_prepared_segment(Duration::from_secs(20)));
    // Leave less than a segment plus the reserve: the next preparation must not start.
    let filler = fill(fs.path(), &wal, segment + segment / 2);
    let space = wal.space().unwrap();
    assert!(space.below_reserve(), "{space:?}");
    let mut next = 1;
    let (acked, err) = append_until_no_space(&mut wal, &mut next, 1000);
    assert_no_space(&err, &dir);
    // The background preparer decides on its own thread after a roll: wait (bounded) for it.
    let decided_by = std::time::Instant::now() + Duration::from_secs(10);
    while wal.preallocation_stats().prepare_skipped_low_space == 0
        && std::time::Instant::now() < decided_by
    {
        std::thread::sleep(Duration::from_millis(5)); // the preparer has no event to await
    }
    let stats = wal.preallocation_stats();
    assert!(
        stats.prepare_skipped_low_space >= 1 && stats.rolls_fallback >= 1,
        "{stats:?}"
    );
    assert_eq!(
        prep_files(&dir),
        0,
        "no preparation holds space on a full disk"
    );
    free(&filler);
    // Writes resume where they stopped and go on across more rolls.
    let mut all = acked;
    assert_eq!(wal.sync().unwrap(), all.last().unwrap().0);
    for _ in 0..1000 {
        let r = rec(next, 1000);
        next += 1;
        let out = wal.append(&[r.as_ref()]).unwrap();
        all.push((out.last_lsn, r));
        wal.sync().unwrap();
    }
    drop(wal);
    assert_replayed(&dir, options, &all);
}

#[test]
fn an_explicit_reserve_skips_preparation_on_any_disk() {
    // No mount needed: a reserve larger than any disk makes every preparation a skip.
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        segment_bytes_max: 64 * KIB,
        free_space_reserve: Some(u64::MAX / 4),
        ..options()
    };
    let (mut wal, _) = Wal::open(dir.path(), options).unwrap();
    assert!(wal.space().unwrap().below_reserve());
    assert!(!wal.wait_for_prepared_segment(Duration::from_secs(20)));
    for next in 1..=2000 {
        let r = rec(next, 100);
        wal.append(&[r.as_ref()]).unwrap();
        wal.sync().unwrap();
    }
    let stats = wal.preallocation_stats();
    assert_eq!(stats.segments_prepared, 0, "{stats:?}");
    assert!(stats.prepare_skipped_low_space >= 2, "{stats:?}");
    assert_eq!(stats.prepare_failures, 0, "{stats:?}");
}
