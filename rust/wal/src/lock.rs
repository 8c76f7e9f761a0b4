//! One writer per log directory: an exclusive `flock(2)` on `dir/LOCK`, held for the `Wal`'s
//! lifetime. Two writers would interleave segments and corrupt the log; the kernel drops the
//! lock when the process dies (kill -9 included), so a crash never leaves a stale lock.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::WalError;

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
    // SAFETY: flock takes a valid, open descriptor owned by `file` and no pointers.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(WalError::Locked { path });
        }
        return Err(WalError::io("flock", &path, err));
    }
    Ok(DirLock { _file: file })
}
