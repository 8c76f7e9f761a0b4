//! Preallocated segments: files filled with real zero bytes up to the segment size before they
//! become active, so appends overwrite written blocks and a sync never changes the file size
//! (an `fdatasync` that must also write the inode costs ~50 us more on ext4; `fallocate` does
//! not help: unwritten extents need a metadata update on first write).
//!
//! The next segment is prepared by a background thread owned by the `Wal` ([`Preparer`]), under
//! a name `list_segments` ignores (`{seq:016x}.wal.prep`): zero-filled in chunks, each chunk
//! fdatasynced on its own so the foreground syncs never queue behind a 64 MiB flush. The `Wal`
//! takes it at roll time if it is ready and falls back to a growing segment if not (never
//! waits). Leftover `.prep` files (a crash or a drop during preparation) hold only zeros and are
//! deleted at open; they are never replayed.
//!
//! Free space first: a preparation that would leave less than the reserve
//! (`WalOptions::free_space_reserve`) on the filesystem is skipped (counted), so the zero fill
//! never takes the last free bytes the log's own appends need; a preparation that fails anyway
//! (another process filled the disk meanwhile) deletes its partial file at once.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::WalError;
use crate::space::{fs_space, leave_threshold_bytes};

const PREP_SUFFIX: &str = ".wal.prep";
/// Background pacing: idle time after each chunk, as a multiple of the time the chunk took.
const PAUSE_PER_BUSY: u32 = 1;
/// Cap on one pause (a sick disk must not stretch a preparation without bound).
const PAUSE_MAX: Duration = Duration::from_millis(50);

/// Name of the file segment `seq` is prepared under.
pub(crate) fn prep_file_name(seq: u64) -> String {
    format!("{seq:016x}{PREP_SUFFIX}")
}

/// Deletes every `*.wal.prep` file in `dir`; returns how many. They hold only zeros (nothing is
/// written into a prepared file before it is linked as a segment). Anything else by that name
/// (a directory) is not ours and is left alone; preparing that seq then fails and the roll
/// falls back to a growing segment.
pub(crate) fn remove_leftover_prep_files(dir: &Path) -> Result<usize, WalError> {
    let entries = fs::read_dir(dir).map_err(|e| WalError::io("read_dir", dir, e))?;
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| WalError::io("read_dir", dir, e))?;
        let is_prep = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(PREP_SUFFIX))
            && entry.file_type().is_ok_and(|t| t.is_file());
        if is_prep {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| WalError::io("remove prep file", &path, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// A zero-filled, synced file of the full segment size, not yet a segment.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub seq: u64,
    pub path: PathBuf,
    pub file: File,
    pub len_bytes: u64,
}

/// When the zeros of a preparation are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pacing {
    /// fdatasync after every chunk: in the background, a foreground `sync` then queues behind
    /// at most one chunk's flush instead of the whole segment's.
    SyncEachChunk,
    /// One fdatasync at the end: fastest when nothing else is waiting (the first segment,
    /// prepared inside `open`).
    SyncAtEnd,
}

/// Creates `dir/{seq}.wal.prep` and fills it with `len_bytes` zeros, `chunk_bytes` per write,
/// synced as `pacing` says. `keep_going` is asked before every chunk, with how long the previous
/// chunk took (zero before the first; it may pause to pace the fill); on `false` the file is
/// deleted and `Ok(None)` returned. On an error after the file was created, the partial file is
/// deleted (it holds only zeros, but on a full disk those zeros are the space the log's appends
/// need; if even the delete fails, the next open deletes it).
pub(crate) fn prepare_file(
    dir: &Path,
    seq: u64,
    len_bytes: u64,
    chunk_bytes: usize,
    pacing: Pacing,
    keep_going: impl FnMut(Duration) -> bool,
) -> Result<Option<Prepared>, WalError> {
    let path = dir.join(prep_file_name(seq));
    // create_new: never reopen (and zero) an existing file: that name may still be linked to
    // a segment being activated.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| WalError::io("create prep file", &path, e))?;
    let filled = fill(&file, &path, len_bytes, chunk_bytes, pacing, keep_going);
    match filled {
        Ok(true) => Ok(Some(Prepared {
            seq,
            path,
            file,
            len_bytes,
        })),
        Ok(false) => {
            drop(file);
            fs::remove_file(&path).map_err(|e| WalError::io("remove prep file", &path, e))?;
            Ok(None)
        }
        Err(e) => {
            drop(file);
            let _ignored = fs::remove_file(&path);
            Err(e)
        }
    }
}

/// Zero-fills `file` up to `len_bytes`; false when `keep_going` stopped it.
fn fill(
    file: &File,
    path: &Path,
    len_bytes: u64,
    chunk_bytes: usize,
    pacing: Pacing,
    mut keep_going: impl FnMut(Duration) -> bool,
) -> Result<bool, WalError> {
    let zeros = vec![0u8; chunk_bytes];
    let mut at = 0u64;
    let mut chunk_took = Duration::ZERO;
    while at < len_bytes {
        if !keep_going(chunk_took) {
            return Ok(false);
        }
        let chunk_started = Instant::now();
        let n = zeros.len().min((len_bytes - at) as usize);
        file.write_all_at(&zeros[..n], at)
            .map_err(|e| WalError::io("zero-fill prep file", path, e))?;
        at += n as u64;
        if pacing == Pacing::SyncEachChunk || at == len_bytes {
            file.sync_data()
                .map_err(|e| WalError::io("fsync prep file", path, e))?;
        }
        chunk_took = chunk_started.elapsed();
    }
    Ok(true)
}

/// Counters of the preparation, for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PreallocationStats {
    /// Segments that started from a prepared (zero-filled) file, at roll or at open.
    pub segments_prepared: u64,
    /// Rolls that found no prepared file ready and started a growing segment instead.
    pub rolls_fallback: u64,
    /// Rolls after a segment whose syncs averaged more than `PREALLOCATE_BYTES_PER_SYNC_MAX`
    /// bytes: no further segment is prepared until a segment of smaller syncs closes.
    pub rolls_dense: u64,
    /// Background preparations that failed (e.g. disk full); each leads to one fallback roll.
    pub prepare_failures: u64,
    /// Preparations not started because the zero fill would have left less free space than
    /// the reserve (`WalOptions::free_space_reserve`); each leads to one fallback roll.
    pub prepare_skipped_low_space: u64,
    /// The last background error (a failed preparation or a failed delete of an unused
    /// prepared file), if any.
    pub last_failure: Option<String>,
}

/// What the worker and the `Wal` share.
struct State {
    /// The seq the `Wal` will roll to next; `None` until the first `want`.
    wanted: Option<u64>,
    ready: Option<Prepared>,
    /// A seq whose preparation failed: not retried until a new seq is wanted.
    failed: Option<u64>,
    failures: u64,
    skipped_low_space: u64,
    last_failure: Option<String>,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    /// A worker panic while holding the lock leaves plain data behind; keep using it.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The background preparer: one thread, at most one prepared file ready at a time.
pub(crate) struct Preparer {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

impl Preparer {
    /// Starts the worker thread; it idles until [`Preparer::want`]. A preparation is skipped
    /// when the filesystem would have less than the reserve and its margin free after it
    /// ([`leaves_too_little_free`]).
    pub fn start(
        dir: &Path,
        len_bytes: u64,
        chunk_bytes: usize,
        reserve_bytes: u64,
    ) -> Result<Preparer, WalError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                wanted: None,
                ready: None,
                failed: None,
                failures: 0,
                skipped_low_space: 0,
                last_failure: None,
                shutdown: false,
            }),
            wake: Condvar::new(),
        });
        let worker_shared = Arc::clone(&shared);
        let worker_dir = dir.to_path_buf();
        let worker = std::thread::Builder::new()
            .name("wal-prealloc".to_string())
            .spawn(move || {
                let job = Job {
                    dir: &worker_dir,
                    len_bytes,
                    chunk_bytes,
                    reserve_bytes,
                };
                run_worker(&worker_shared, &job)
            })
            .map_err(|e| WalError::io("spawn preallocation thread", dir, e))?;
        Ok(Preparer {
            shared,
            worker: Some(worker),
        })
    }

    /// Asks for segment `seq` to be prepared next; a preparation of another seq stops at its
    /// next chunk and its file is deleted.
    pub fn want(&self, seq: u64) {
        let stale = {
            let mut state = self.shared.lock();
            state.wanted = Some(seq);
            match &state.ready {
                Some(ready) if ready.seq != seq => state.ready.take(),
                _ => None,
            }
        };
        self.shared.wake.notify_all();
        if let Some(stale) = stale {
            if let Err(e) = discard(stale) {
                self.shared.lock().last_failure = Some(e.to_string());
            }
        }
    }

    /// The prepared file for `seq` if it is ready now (never waits), and asks for `seq + 1`
    /// next (or, `want_next` false, for nothing: the worker idles), in the same critical
    /// section: the worker must never start preparing `seq` again once its file was handed out
    /// (it would zero the new segment under the `.prep` name).
    pub fn take(&self, seq: u64, want_next: bool) -> Option<Prepared> {
        let ready = {
            let mut state = self.shared.lock();
            state.wanted = want_next.then_some(seq + 1);
            state.ready.take()
        };
        self.shared.wake.notify_all();
        match ready {
            Some(ready) if ready.seq == seq => Some(ready),
            Some(stale) => {
                if let Err(e) = discard(stale) {
                    self.shared.lock().last_failure = Some(e.to_string());
                }
                None
            }
            None => None,
        }
    }

    /// Gives its disk space back: deletes the prepared file if one is ready and stops a
    /// preparation under way; the segment wanted now is not prepared again (the next roll
    /// asks for the one after it, if the space allows then). True if a file was deleted.
    pub fn release(&self) -> bool {
        let ready = {
            let mut state = self.shared.lock();
            state.failed = state.wanted;
            state.wanted = None; // a fill under way stops at its next chunk
            state.ready.take()
        };
        self.shared.wake.notify_all();
        let Some(ready) = ready else {
            return false;
        };
        match discard(ready) {
            Ok(()) => true,
            Err(e) => {
                self.shared.lock().last_failure = Some(e.to_string());
                false
            }
        }
    }

    /// Waits until the prepared file for `seq` is ready (true) or its preparation failed or
    /// `timeout` passed (false).
    pub fn wait_ready(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if state.ready.as_ref().is_some_and(|r| r.seq == seq) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if state.failed == Some(seq) || state.shutdown || left.is_zero() {
                return false;
            }
            state = match self.shared.wake.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Failed preparations so far and the last background error.
    pub fn failures(&self) -> (u64, Option<String>) {
        let state = self.shared.lock();
        (state.failures, state.last_failure.clone())
    }

    /// Preparations skipped so far because they would have left less than the reserve free.
    pub fn skipped_low_space(&self) -> u64 {
        self.shared.lock().skipped_low_space
    }
}

impl Drop for Preparer {
    /// Stops the worker (it finishes at most one chunk) and deletes an unused prepared file.
    fn drop(&mut self) {
        let ready = {
            let mut state = self.shared.lock();
            state.shutdown = true;
            state.ready.take()
        };
        self.shared.wake.notify_all();
        if let Some(worker) = self.worker.take() {
            // A panicked worker has nothing left to clean up; the next open deletes its file.
            let _joined = worker.join();
        }
        if let Some(ready) = ready {
            // Nobody is left to report to; a file that could not be deleted holds only zeros
            // and the next open deletes it.
            let _ignored = discard(ready);
        }
    }
}

/// Deletes an unused prepared file. A failure is reported but harmless: a leftover `.prep`
/// file holds only zeros, is never replayed, and is deleted at the next open.
fn discard(prepared: Prepared) -> Result<(), WalError> {
    drop(prepared.file);
    fs::remove_file(&prepared.path).map_err(|e| WalError::io("remove prep file", &prepared.path, e))
}

/// Would zero-filling `len_bytes` more leave less free on the filesystem holding `dir` than
/// the reserve with the margin NO_SPACE is left at (`leave_threshold_bytes`)? With the bare
/// reserve a node on a small volume, out of NO_SPACE after a restart, was put back at its edge
/// by its own next segment within 5 s, and into it by the next snapshot (operator probe,
/// session 31). Not knowing (statvfs failed) is not a reason to skip: the fill then fails or
/// succeeds on its own.
pub(crate) fn leaves_too_little_free(dir: &Path, len_bytes: u64, reserve_bytes: u64) -> bool {
    let keep = leave_threshold_bytes(reserve_bytes);
    fs_space(dir).is_ok_and(|s| s.available_bytes < len_bytes.saturating_add(keep))
}

/// What the worker prepares: segment-sized files in `dir`.
struct Job<'a> {
    dir: &'a Path,
    len_bytes: u64,
    chunk_bytes: usize,
    reserve_bytes: u64,
}

fn run_worker(shared: &Shared, job: &Job<'_>) {
    let Job {
        dir,
        len_bytes,
        chunk_bytes,
        reserve_bytes,
    } = *job;
    loop {
        let seq = {
            let mut state = shared.lock();
            loop {
                if state.shutdown {
                    return;
                }
                let job = state.wanted.filter(|seq| {
                    state.ready.as_ref().map(|r| r.seq) != Some(*seq) && state.failed != Some(*seq)
                });
                if let Some(seq) = job {
                    break seq;
                }
                state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
        };
        if leaves_too_little_free(dir, len_bytes, reserve_bytes) {
            // The roll falls back to a growing segment; this seq is not tried again.
            let mut state = shared.lock();
            state.failed = Some(seq);
            state.skipped_low_space += 1;
            shared.wake.notify_all(); // wakes `wait_ready`
            continue;
        }
        // Pacing: after each chunk, leave the disk idle for as long as the chunk kept it busy
        // (woken early by a shutdown or a new `want`), so a foreground sync finds the disk
        // busy with a chunk at most half the time.
        let still_wanted = |chunk_took: Duration| {
            let pause = chunk_took.saturating_mul(PAUSE_PER_BUSY).min(PAUSE_MAX);
            let state = shared.lock();
            let wanted = |s: &mut State| !s.shutdown && s.wanted == Some(seq);
            let (mut state, _) = shared
                .wake
                .wait_timeout_while(state, pause, |s| wanted(s))
                .unwrap_or_else(|p| p.into_inner());
            wanted(&mut state)
        };
        let result = prepare_file(
            dir,
            seq,
            len_bytes,
            chunk_bytes,
            Pacing::SyncEachChunk,
            still_wanted,
        );
        let mut state = shared.lock();
        shared.wake.notify_all(); // wakes `wait_ready`
        match result {
            Ok(Some(prepared)) if !state.shutdown && state.wanted == Some(seq) => {
                if let Some(old) = state.ready.replace(prepared) {
                    if let Err(e) = discard(old) {
                        state.last_failure = Some(e.to_string());
                    }
                }
            }
            Ok(Some(unwanted)) => {
                if let Err(e) = discard(unwanted) {
                    state.last_failure = Some(e.to_string());
                }
            }
            Ok(None) => {}
            Err(e) => {
                // The roll falls back to a growing segment; counted in the stats.
                state.failed = Some(seq);
                state.failures += 1;
                state.last_failure = Some(e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment that would leave the reserve free, but not the margin NO_SPACE is left at, is
    /// not prepared (operator probe, session 31: the node went back to the edge of NO_SPACE).
    #[test]
    fn a_segment_is_prepared_only_if_the_leave_threshold_stays_free() {
        const MIB: u64 = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let available = fs_space(dir.path()).unwrap().available_bytes;
        let reserve = 64 * MIB; // leave threshold: 80 MiB
        assert!(available > 200 * MIB, "test needs some free space");
        let len = available - 72 * MIB; // leaves 72 MiB: above the reserve, below the threshold
        assert!(leaves_too_little_free(dir.path(), len, reserve));
        let len = available - 120 * MIB;
        assert!(!leaves_too_little_free(dir.path(), len, reserve));
    }

    const WAIT: Duration = Duration::from_secs(20);

    #[test]
    fn a_taken_file_is_never_prepared_again() {
        // Regression: `take` used to leave `wanted` at the taken seq, so the worker started
        // preparing it again and zeroed the file the WAL was turning into a segment.
        let dir = tempfile::tempdir().unwrap();
        let preparer = Preparer::start(dir.path(), 64 * 1024, 4096, 0).unwrap();
        preparer.want(1);
        assert!(preparer.wait_ready(1, WAIT));
        let taken = preparer.take(1, true).unwrap();
        taken.file.write_all_at(b"HEADER", 0).unwrap(); // still under the .prep name
        assert!(preparer.wait_ready(2, WAIT), "{:?}", preparer.failures());
        let mut head = [0u8; 6];
        taken.file.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(&head, b"HEADER");
        assert_eq!(preparer.failures(), (0, None));
        assert_eq!(std::fs::metadata(&taken.path).unwrap().len(), 64 * 1024);
    }

    /// A node entering NO_SPACE gives back its prepared segment, and it is not prepared again
    /// for that roll (operator probe, session 31: on a small volume that file held the node
    /// below its reserve for good).
    #[test]
    fn a_released_file_is_deleted_and_not_prepared_again() {
        let dir = tempfile::tempdir().unwrap();
        let preparer = Preparer::start(dir.path(), 64 * 1024, 4096, 0).unwrap();
        preparer.want(1);
        assert!(preparer.wait_ready(1, WAIT));
        assert!(dir.path().join(prep_file_name(1)).exists());
        assert!(preparer.release());
        assert!(
            !dir.path().join(prep_file_name(1)).exists(),
            "its space is back"
        );
        assert!(
            !preparer.wait_ready(1, Duration::from_millis(200)),
            "not prepared again"
        );
        assert!(!preparer.release(), "nothing left to give back");
        assert!(preparer.take(1, true).is_none(), "the roll grows a segment");
        assert!(
            preparer.wait_ready(2, WAIT),
            "the next one is prepared as usual"
        );
    }

    #[test]
    fn a_cancelled_preparation_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut chunks = 0;
        let out = prepare_file(
            dir.path(),
            3,
            64 * 1024,
            4096,
            Pacing::SyncEachChunk,
            |_| {
                chunks += 1;
                chunks < 5
            },
        )
        .unwrap();
        assert!(out.is_none());
        assert!(!dir.path().join(prep_file_name(3)).exists());
    }

    #[test]
    fn a_prepared_file_is_all_zeros_of_the_full_length() {
        let dir = tempfile::tempdir().unwrap();
        for pacing in [Pacing::SyncEachChunk, Pacing::SyncAtEnd] {
            let seq = pacing as u64;
            let prepared = prepare_file(dir.path(), seq, 10_000, 4096, pacing, |_| true)
                .unwrap()
                .unwrap();
            let bytes = std::fs::read(&prepared.path).unwrap();
            assert_eq!(bytes.len(), 10_000);
            assert!(bytes.iter().all(|b| *b == 0));
        }
    }

    #[test]
    fn an_existing_file_is_never_reused_or_zeroed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(prep_file_name(4));
        std::fs::write(&path, b"not ours to zero").unwrap();
        let err = prepare_file(dir.path(), 4, 8192, 4096, Pacing::SyncAtEnd, |_| true);
        assert!(matches!(err, Err(WalError::Io { .. })));
        assert_eq!(std::fs::read(&path).unwrap(), b"not ours to zero");
    }
}
