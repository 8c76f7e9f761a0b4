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

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::WalError;

const PREP_SUFFIX: &str = ".wal.prep";

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

/// Creates `dir/{seq}.wal.prep` and fills it with `len_bytes` zeros, `chunk_bytes` per write,
/// each write followed by an fdatasync. `keep_going` is asked before every chunk; on `false`
/// the file is deleted and `Ok(None)` returned. On error the partial file is left behind (it
/// is deleted at the next open).
pub(crate) fn prepare_file(
    dir: &Path,
    seq: u64,
    len_bytes: u64,
    chunk_bytes: usize,
    mut keep_going: impl FnMut() -> bool,
) -> Result<Option<Prepared>, WalError> {
    let path = dir.join(prep_file_name(seq));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| WalError::io("create prep file", &path, e))?;
    let zeros = vec![0u8; chunk_bytes];
    let mut at = 0u64;
    while at < len_bytes {
        if !keep_going() {
            drop(file);
            fs::remove_file(&path).map_err(|e| WalError::io("remove prep file", &path, e))?;
            return Ok(None);
        }
        let n = zeros.len().min((len_bytes - at) as usize);
        file.write_all_at(&zeros[..n], at)
            .map_err(|e| WalError::io("zero-fill prep file", &path, e))?;
        file.sync_data()
            .map_err(|e| WalError::io("fsync prep file", &path, e))?;
        at += n as u64;
    }
    Ok(Some(Prepared {
        seq,
        path,
        file,
        len_bytes,
    }))
}

/// Counters of the preparation, for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PreallocationStats {
    /// Segments that started from a prepared (zero-filled) file, at roll or at open.
    pub segments_prepared: u64,
    /// Rolls that found no prepared file ready and started a growing segment instead.
    pub rolls_fallback: u64,
    /// Background preparations that failed (e.g. disk full); each leads to one fallback roll.
    pub prepare_failures: u64,
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
    /// Starts the worker thread; it idles until [`Preparer::want`].
    pub fn start(dir: &Path, len_bytes: u64, chunk_bytes: usize) -> Result<Preparer, WalError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                wanted: None,
                ready: None,
                failed: None,
                failures: 0,
                last_failure: None,
                shutdown: false,
            }),
            wake: Condvar::new(),
        });
        let worker_shared = Arc::clone(&shared);
        let worker_dir = dir.to_path_buf();
        let worker = std::thread::Builder::new()
            .name("wal-prealloc".to_string())
            .spawn(move || run_worker(&worker_shared, &worker_dir, len_bytes, chunk_bytes))
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

    /// The prepared file for `seq` if it is ready now; never waits.
    pub fn take(&self, seq: u64) -> Option<Prepared> {
        let mut state = self.shared.lock();
        match &state.ready {
            Some(ready) if ready.seq == seq => state.ready.take(),
            _ => None,
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

fn run_worker(shared: &Shared, dir: &Path, len_bytes: u64, chunk_bytes: usize) {
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
        let still_wanted = || {
            let state = shared.lock();
            !state.shutdown && state.wanted == Some(seq)
        };
        let result = prepare_file(dir, seq, len_bytes, chunk_bytes, still_wanted);
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
