//! Durable segmented log shared by every Raft group of a node (`data_dir/raft/`).
//!
//! # Contract (for the Multi-Raft engine)
//!
//! - **One log, many groups.** A record is `(group_id, kind, index, payload)`. `kind` is the
//!   engine's (entries, hard state, conf state, snapshot mark, ...; kinds
//!   `RESERVED_KIND_MIN..=255` are the WAL's own). `index` is the highest Raft index the record
//!   covers, 0 if none. The payload is opaque.
//! - **Append, then sync once.** [`Wal::append`] frames a batch into a buffer and returns the
//!   LSNs it assigned: consecutive within the batch, increasing from 1 across the log, never
//!   reused (rewritten sticky records take LSNs too, between batches). [`Wal::sync`]
//!   writes and fsyncs everything appended so far with ONE `fdatasync` and returns the durable
//!   LSN. **Durability point: a record is durable only once `sync()` returned `Ok(lsn)` with
//!   `lsn` ≥ its LSN.** The engine appends every group's Ready, calls `sync()` once, and only
//!   then sends persisted messages and acknowledges proposals.
//! - **Segments.** Files `{seq:016x}.wal`, rolled before a batch that would take the segment
//!   past `WalOptions::segment_bytes_max` (default 64 MiB); a batch never spans two segments
//!   (at most [`BATCH_BYTES_MAX`]). A closed segment has been cut to its last record and
//!   fsynced whole; segment creation and deletion fsync the directory.
//! - **Preallocation** (`WalOptions::preallocate`, default on). A segment is filled with real
//!   zero bytes up to `segment_bytes_max` before it becomes active, so appends overwrite
//!   written blocks and `sync` never changes the file size (no inode write in the fdatasync).
//!   The next segment is prepared by a background thread as `{seq:016x}.wal.prep` (never
//!   replayed; leftovers are deleted at open); a roll that finds it not ready starts a growing
//!   segment instead of waiting ([`Wal::preallocation_stats`]).
//! - **State is never lost to compaction.** Kinds listed in `WalOptions::sticky_kinds` (hard
//!   state, conf state, ...) are state: the WAL keeps the latest record of each
//!   (group, sticky kind) and rewrites it at the start of every new segment, so on replay the
//!   last record of a sticky kind for a group is its current value (earlier ones, including
//!   rewritten copies, are older or equal). The rewritten records keep their original relative
//!   order (by LSN), across groups and kinds. Sticky records never keep a segment alive.
//! - **Compaction.** [`Wal::compact`] takes the engine's per-group floors (index up to which
//!   the log is no longer needed, e.g. the snapshot index) and deletes the oldest closed
//!   segments in which every group's records are at or below its floor. A group absent from
//!   the floors keeps its segments. A removed group is released with [`Wal::forget_group`],
//!   which also appears on replay as a [`KIND_FORGET_GROUP`] record: drop everything earlier
//!   for that group. With preallocation a restart continues the last segment instead of
//!   closing it, so what it holds is released only once it has rolled.
//! - **Recovery.** [`Wal::open`] / [`Wal::open_with`] replay every segment in order. A torn tail
//!   of the last segment (cut header, cut record, bad crc at the end) is repaired and reported:
//!   zeroed when zeros follow it (a preallocated segment), else truncated. Zeros after the last
//!   segment's records are its clean end: with preallocation on, that segment stays active and
//!   appends continue over the zeros; with it off, the zeros are cut off and a fresh segment
//!   starts. Any other damage (a bad frame followed by a valid record, also inside the zeros;
//!   zeros or a bad header in an earlier segment; a missing segment) is [`WalError::Corrupt`]
//!   with file and byte offset, and the node must not start. What was replayed is fsynced
//!   before `open` returns (a killed process leaves unsynced writes in the page cache).
//! - **Free-space reserve** (`WalOptions::free_space_reserve`; default two segments or 10 % of
//!   the filesystem, whichever is less). Preparing a segment (background, or the first at open)
//!   is skipped when it would leave less free space than the reserve
//!   (`PreallocationStats::prepare_skipped_low_space`); a preparation that fails anyway deletes
//!   its partial file. [`Wal::space`] (one `statvfs`) reports `available_bytes` and
//!   `reserve_bytes`: the engine refuses writes while available < reserve.
//! - **A full disk does not poison.** `ENOSPC`/`EDQUOT` while writing the buffer out or
//!   creating the next segment returns [`WalError::NoSpace`] (naming the log dir): nothing of
//!   that write counts as written, the buffered records keep their LSNs, a partially created
//!   segment is removed (directory fsynced), and the next `sync()` writes the same bytes from
//!   the same file offset. From `append` it comes only from the roll, before the batch was
//!   taken (append it again); a full buffer that cannot be written during `append` is left to
//!   `sync()`. Once space is freed the same records land, LSNs consecutive.
//! - **Other failures poison.** After any other failed write, and after ANY failed fsync
//!   (ENOSPC/EIO included: the kernel may have dropped the dirty pages, "fsyncgate"), every
//!   call returns [`WalError::Poisoned`]; restart and let recovery read what reached the disk.
//! - **One writer.** `open` takes an exclusive `flock` on `dir/LOCK` ([`WalError::Locked`] if
//!   another `Wal`, in any process, holds it); the kernel releases it when the process dies.
//!
//! Power-loss caveat: the kernel may write back pages of the unsynced tail out of order, which
//! can leave a hole followed by whole (never acknowledged) records. Recovery cannot tell that
//! from mid-file damage and refuses to start, naming the offset; kill -9 cannot cause it.

mod compaction;
mod error;
mod format;
mod lock;
mod options;
mod prealloc;
mod recovery;
mod segment;
mod space;
mod wal;

use std::fs::File;
use std::path::Path;

pub use compaction::segment_obsolete;
pub use error::WalError;
pub use format::{RecordRef, FORMAT_PAYLOAD_BYTES_MAX, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};
pub use lock::LOCK_FILE_NAME;
pub use options::{
    SyncMode, WalOptions, PREALLOCATE_BYTES_PER_SYNC_MAX, PREALLOCATE_CHUNK_BYTES_DEFAULT,
    PREALLOCATE_CHUNK_BYTES_MAX, PREALLOCATE_CHUNK_BYTES_MIN, RECORD_PAYLOAD_BYTES_DEFAULT,
    RESERVED_KIND_MIN, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN,
    WRITE_BUFFER_BYTES_DEFAULT, WRITE_BUFFER_BYTES_MAX,
};
pub use prealloc::PreallocationStats;
pub use recovery::{Recovered, RecoveredRecord, RecoveryReport, TornTail};
pub use segment::{segment_file_name, GroupSpan};
pub use space::{is_no_space, leave_threshold_bytes, SpaceStatus, LEAVE_MARGIN_MIN_BYTES};
pub use wal::{AppendOutcome, CompactOutcome, Wal};

/// Largest batch `append` accepts, in framed bytes. A batch is never split across segments and
/// recovery reads a segment into memory whole, so this bounds that memory (with
/// `SEGMENT_BYTES_MAX`).
pub const BATCH_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Record kind the WAL writes for [`Wal::forget_group`]: the group's history ends here.
pub const KIND_FORGET_GROUP: u8 = 0xFF;

/// Log sequence number: the position of a record in the log, 1 for the first record ever,
/// consecutive, never reused. `Lsn(0)` means "no record".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lsn {}", self.0)
    }
}

/// fsyncs a directory so entries created or removed in it survive a crash.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), WalError> {
    let handle = File::open(dir).map_err(|e| WalError::io("open dir", dir, e))?;
    handle
        .sync_all()
        .map_err(|e| WalError::io("fsync dir", dir, e))
}
