//! Free space on the device holding the log: what the background preparation checks before it
//! zero-fills a segment, and what [`crate::Wal::space`] reports to the engine (its NO_SPACE
//! state). One `statvfs(2)` per question: no caching, no thread.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Free space where the log lives, against the reserve it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceStatus {
    /// Bytes an unprivileged writer may still allocate on the log's filesystem (`f_bavail`).
    pub available_bytes: u64,
    /// Bytes the log keeps free: preparation skips a segment that would leave less, and the
    /// engine refuses writes below it (see `WalOptions::free_space_reserve`).
    pub reserve_bytes: u64,
}

/// Smallest margin above the reserve before writes resume: a tiny (or zero) reserve still
/// needs room for a few rounds of records after a real ENOSPC.
pub const LEAVE_MARGIN_MIN_BYTES: u64 = 1 << 20;

/// Free bytes needed to leave NO_SPACE (the engine's state, `nodedb_multiraft::no_space`): the
/// reserve plus a quarter of it (at least [`LEAVE_MARGIN_MIN_BYTES`]). With the defaults
/// (reserve 128 MiB) writes resume at 160 MiB free: a few segments of progress before the
/// reserve is reached again. A segment is prepared only if this much stays free after it, so
/// the log's own zero fill never takes a node back to the edge of NO_SPACE.
pub fn leave_threshold_bytes(reserve_bytes: u64) -> u64 {
    reserve_bytes.saturating_add((reserve_bytes / 4).max(LEAVE_MARGIN_MIN_BYTES))
}

impl SpaceStatus {
    /// Is the free space below the reserve?
    pub fn below_reserve(&self) -> bool {
        self.available_bytes < self.reserve_bytes
    }
}

/// Sizes of the filesystem holding a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FsSpace {
    pub available_bytes: u64,
    pub total_bytes: u64,
}

/// `statvfs(2)` of the filesystem holding `path`.
pub(crate) fn fs_space(path: &Path) -> io::Result<FsSpace> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut out = MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call and `out` points to
    // writable memory of the struct's size; statvfs writes nothing else.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), out.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct (and it was zeroed before anyway).
    let st = unsafe { out.assume_init() };
    // Field widths differ between targets (u32 on some 32-bit ones); all fit in u64.
    #[allow(clippy::unnecessary_cast)]
    let (fragment, available, blocks) =
        (st.f_frsize as u64, st.f_bavail as u64, st.f_blocks as u64);
    Ok(FsSpace {
        available_bytes: available.saturating_mul(fragment),
        total_bytes: blocks.saturating_mul(fragment),
    })
}

/// The default reserve: two segments, or a tenth of the filesystem if that is less. Two
/// segments keep room for the active segment to fill and the next one to start after
/// preparation stops; on a small disk (a 20 MiB volume and 64 MiB segments) a fixed two
/// segments would be more than the disk, so a tenth of it is kept instead.
pub(crate) fn default_reserve_bytes(segment_bytes_max: u64, fs_total_bytes: u64) -> u64 {
    segment_bytes_max.saturating_mul(2).min(fs_total_bytes / 10)
}

/// Is this the filesystem saying it is full (`ENOSPC`, or the user's quota `EDQUOT`)? Both
/// leave nothing written that counts and clear up once space is freed.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_reserve_is_two_segments_or_a_tenth() {
        let mib = 1024 * 1024;
        assert_eq!(default_reserve_bytes(64 * mib, 100_000 * mib), 128 * mib);
        assert_eq!(default_reserve_bytes(64 * mib, 20 * mib), 2 * mib);
        assert_eq!(default_reserve_bytes(u64::MAX, 0), 0);
    }

    #[test]
    fn statvfs_of_a_real_dir_and_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let space = fs_space(dir.path()).unwrap();
        assert!(space.total_bytes > 0 && space.available_bytes <= space.total_bytes);
        assert!(fs_space(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn enospc_and_edquot_are_no_space_other_errors_are_not() {
        assert!(is_no_space(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_no_space(&io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(!is_no_space(&io::Error::from_raw_os_error(libc::EIO)));
        assert!(!is_no_space(&io::Error::from_raw_os_error(libc::EFBIG)));
        assert!(!is_no_space(&io::Error::other("x")));
    }
}
