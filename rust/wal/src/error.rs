//! Typed failures of the log. Each says who is at fault: the caller (bad input, nothing written),
//! the disk (I/O, with the path), or the bytes on disk (corruption, with path and byte offset).

use std::io;
use std::path::PathBuf;

/// Every error the WAL returns.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An operating-system call on `path` failed. After a failed write (other than
    /// [`WalError::NoSpace`]) or a failed sync the log is poisoned (see [`WalError::Poisoned`]): the kernel may have dropped dirty pages, so
    /// retrying the fsync could falsely report success ("fsyncgate").
    #[error("wal I/O error during {op} on {path}: {source}")]
    Io {
        /// What the WAL was doing ("write", "fsync", "open", "read", ...).
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The bytes on disk are damaged somewhere other than a torn tail of the last segment
    /// (or a segment is missing). The node must not start: records that were acknowledged
    /// as durable would be lost. `offset_bytes` is where the damage was found.
    #[error("wal corrupt: {path} at byte offset {offset_bytes}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset_bytes: u64,
        reason: String,
    },

    /// A record's payload is larger than `WalOptions::record_payload_bytes_max`. Nothing of
    /// the batch was written.
    #[error("record payload of {payload_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    RecordTooLarge {
        payload_bytes: usize,
        limit_bytes: u32,
    },

    /// A batch's framed size exceeds [`crate::BATCH_BYTES_MAX`]: a batch always lands in one
    /// segment, and recovery reads a segment whole. Split it. Nothing was written.
    #[error("append batch of {batch_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    BatchTooLarge { batch_bytes: u64, limit_bytes: u64 },

    /// The caller used a record kind the WAL reserves for itself (`RESERVED_KIND_MIN..=255`).
    /// Nothing of the batch was written.
    #[error("record kind {kind} is reserved for the wal (kinds >= {reserved_min} are internal)")]
    ReservedKind { kind: u8, reserved_min: u8 },

    /// Another `Wal` (in this or another process) has the directory open. Only one writer may
    /// exist; wait for it to close, or stop the other node using this data_dir.
    #[error("wal directory is locked by another writer: {path}")]
    Locked { path: PathBuf },

    /// `WalOptions` failed validation; `field` names the offending option.
    #[error("invalid wal option {field}: {reason}")]
    InvalidOptions { field: &'static str, reason: String },

    /// An earlier write or fsync failed; the log refuses all further work. Restart the node:
    /// recovery re-reads what actually reached the disk.
    #[error("wal is poisoned by an earlier failure: {cause}")]
    Poisoned { cause: String },

    /// The filesystem holding the log is full (`ENOSPC`, or `EDQUOT`) while writing appended
    /// records out or creating the next segment. NOT a poison: nothing of the failed write
    /// counts as written, the records stay buffered, and the next `sync()` writes them again
    /// from the same file offset, so once space is freed the same records land with the same
    /// LSNs. (A failed fsync still poisons, whatever its errno.)
    #[error(
        "no space left on the device holding {dir} ({op} on {path}: {source}); \
         the records are kept and written once space is freed"
    )]
    NoSpace {
        /// The log directory.
        dir: PathBuf,
        op: &'static str,
        /// The file being written or created.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl WalError {
    /// Is this [`WalError::NoSpace`] (retryable once space is freed)?
    pub fn is_no_space(&self) -> bool {
        matches!(self, WalError::NoSpace { .. })
    }

    /// `NoSpace` when `source` says the filesystem is full, else `Io`.
    pub(crate) fn io_or_no_space(
        op: &'static str,
        dir: &std::path::Path,
        path: impl Into<PathBuf>,
        source: io::Error,
    ) -> Self {
        if crate::space::is_no_space(&source) {
            WalError::NoSpace {
                dir: dir.to_path_buf(),
                op,
                path: path.into(),
                source,
            }
        } else {
            WalError::io(op, path, source)
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        WalError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset_bytes: u64,
        reason: impl Into<String>,
    ) -> Self {
        WalError::Corrupt {
            path: path.into(),
            offset_bytes,
            reason: reason.into(),
        }
    }
}
