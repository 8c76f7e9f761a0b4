//! One writer per log directory: an exclusive `flock(2)` on `dir/LOCK`, held for the `Wal`'s
//! lifetime. Two writers would interleave segments and corrupt the log; the kernel drops the
//! lock when the process dies (kill -9 included), so a crash never leaves a stale lock.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::WalError;

/// How long a held lock is retried before `Locked`. A process that closes its log and reopens
/// it can find the lock still held by a child another thread just forked: the child shares the
/// lock's open file description from fork until its exec closes it (close-on-exec), which is
/// short. A second writer holds the lock for its whole life and is still refused.
const INHERITED_LOCK_WAIT: Duration = Duration::from_millis(500);

/// Name of the lock file inside the log directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// Holds the lock until dropped (closing the file releases it).
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

pub(crate) fn lock_dir(dir: &Path) -> Result<DirLock, WalError> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| WalError::io("open lock file", &path, e))?;
    let deadline = Instant::now() + INHERITED_LOCK_WAIT;
    loop {
        // SAFETY: flock takes a valid, open descriptor owned by `file` and no pointers.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(DirLock { _file: file });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(WalError::io("flock", &path, err));
        }
        if Instant::now() >= deadline {
            return Err(WalError::Locked { path });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
