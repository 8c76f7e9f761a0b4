//! Configuration, validated on `Wal::open`. Every limit carries its reason.

use crate::error::WalError;
use crate::format::FORMAT_PAYLOAD_BYTES_MAX;

/// Kinds at or above this value belong to the WAL itself (see [`crate::KIND_FORGET_GROUP`]).
pub const RESERVED_KIND_MIN: u8 = 0xF0;

/// Default segment size. 64 MiB keeps the file count low (a busy node writes a few segments a
/// minute) while a segment is still small enough to read whole during recovery.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Smallest accepted segment size: below this the roll fsyncs would dominate.
pub const SEGMENT_BYTES_MIN: u64 = 4 * 1024;
/// Largest accepted segment size: recovery reads a segment into memory at once.
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Default payload limit; raft-rs entries batches above this should be split by the engine.
pub const RECORD_PAYLOAD_BYTES_DEFAULT: u32 = 64 * 1024 * 1024;
/// Default write-buffer size: appends are copied here and written with one `write` syscall once
/// it fills (or at `sync`). 1 MiB amortises the syscall to nothing for 100-byte records.
pub const WRITE_BUFFER_BYTES_DEFAULT: usize = 1024 * 1024;
/// Largest accepted write buffer: it is memory held per node. (A buffer larger than a segment
/// is harmless: it is flushed on every roll.)
pub const WRITE_BUFFER_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Default zero-fill chunk when preparing a segment: each chunk is written and fdatasynced on
/// its own (then the disk is left idle as long), so a foreground `sync` waits behind at most one
/// chunk's flush. Measured (BENCHMARKS.md, Log append): foreground sync p99 during a
/// preparation 0.33 ms with 256 KiB vs 0.67 ms with 1 MiB (0.18 ms idle), preparing 64 MiB in
/// 0.23 s vs 0.11 s; 64 KiB bought little more (0.27 ms) for 0.7 s.
pub const PREALLOCATE_CHUNK_BYTES_DEFAULT: usize = 256 * 1024;
/// A segment whose syncs carried more than this on average is followed by a growing segment,
/// not a prepared one. Zero-filling doubles the bytes written, while what it saves (the inode
/// write, ~50 us) is per sync: it pays only when syncs are many and small. Measured on the
/// replicated KV (BENCHMARKS.md, "Replicated KV"): 64-client waves (64 commands of ~150 B per
/// sync) +24 % writes/s with preallocation; 8 x 1000-item batches lost 12 % with it at a 64 KiB
/// bound (group commit splits their batches into smaller syncs) and nothing at this one. The
/// next segment is prepared again once a segment of smaller syncs closes.
pub const PREALLOCATE_BYTES_PER_SYNC_MAX: u64 = 16 * 1024;
/// Smallest accepted zero-fill chunk (one page).
pub const PREALLOCATE_CHUNK_BYTES_MIN: usize = 4096;
/// Largest accepted zero-fill chunk: the chunk is a buffer of zeros held while preparing.
pub const PREALLOCATE_CHUNK_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Which system call makes appended bytes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// `fdatasync(2)`: data and the metadata needed to read it back (the file size); skips
    /// timestamps. Default: equally durable for an append-only file and never slower; with
    /// preallocation the size never changes, so it writes data blocks only.
    Fdatasync,
    /// `fsync(2)`: data and all metadata.
    Fsync,
}

/// Options for [`crate::Wal::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// A new segment is started before a batch that would take the current one past this many
    /// bytes. Keep it well above the sticky set (latest sticky record of every group, rewritten
    /// at the start of each segment): otherwise nearly every batch rolls (correct, but each roll
    /// costs an fsync, a file creation and a directory fsync).
    pub segment_bytes_max: u64,
    /// Largest payload `append` accepts (≤ [`FORMAT_PAYLOAD_BYTES_MAX`]).
    pub record_payload_bytes_max: u32,
    /// Size of the in-memory write buffer.
    pub write_buffer_bytes: usize,
    /// Sync call used by `sync()`, on roll and on open.
    pub sync_mode: SyncMode,
    /// Kinds whose latest record per group is *state*, not history (hard state, conf state,
    /// snapshot mark...). The WAL keeps the latest record of each (group, sticky kind) in memory
    /// and rewrites it at the start of every new segment, so compaction can never delete the
    /// only copy. Must not contain reserved kinds.
    pub sticky_kinds: Vec<u8>,
    /// Segments are filled with real zero bytes up to `segment_bytes_max` before they become
    /// active (the next one on a background thread), so appends overwrite written blocks and a
    /// sync never changes the file size (no inode write per `fdatasync`). Costs one extra write
    /// of every segment's bytes, off the sync path. `false`: segments grow by appending.
    pub preallocate: bool,
    /// Zero-fill chunk size, each chunk fdatasynced separately (paces the background fill).
    pub preallocate_chunk_bytes: usize,
    /// Bytes of the log's filesystem kept free. Preparing the next segment (background, or the
    /// first one at open) is skipped when it would leave less than this (the roll then starts a
    /// growing segment, counted in `PreallocationStats::prepare_skipped_low_space`), and the
    /// engine enters its NO_SPACE state (writes refused) once free space falls below it
    /// ([`crate::Wal::space`]). `None` (default): two segments (`2 × segment_bytes_max`) or 10 %
    /// of the filesystem's size, whichever is less, resolved at open. Two segments is what
    /// preallocation itself may hold (active + prepared); the 10 % cap keeps a small volume
    /// (20 MiB with 64 MiB segments) usable instead of refusing from the first byte. `Some(0)`
    /// keeps nothing in reserve (preparation runs until ENOSPC).
    pub free_space_reserve: Option<u64>,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes_max: SEGMENT_BYTES_DEFAULT,
            record_payload_bytes_max: RECORD_PAYLOAD_BYTES_DEFAULT,
            write_buffer_bytes: WRITE_BUFFER_BYTES_DEFAULT,
            sync_mode: SyncMode::Fdatasync,
            sticky_kinds: Vec::new(),
            preallocate: true,
            preallocate_chunk_bytes: PREALLOCATE_CHUNK_BYTES_DEFAULT,
            free_space_reserve: None,
        }
    }
}

impl WalOptions {
    /// Checks every field and the relations between them; the error names the field.
    pub fn validate(&self) -> Result<(), WalError> {
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes_max) {
            return Err(invalid(
                "segment_bytes_max",
                format!(
                    "{} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}",
                    self.segment_bytes_max
                ),
            ));
        }
        if self.record_payload_bytes_max > FORMAT_PAYLOAD_BYTES_MAX {
            return Err(invalid(
                "record_payload_bytes_max",
                format!(
                    "{} exceeds the format limit {FORMAT_PAYLOAD_BYTES_MAX}",
                    self.record_payload_bytes_max
                ),
            ));
        }
        if !(1..=WRITE_BUFFER_BYTES_MAX).contains(&self.write_buffer_bytes) {
            return Err(invalid(
                "write_buffer_bytes",
                format!(
                    "{} is outside 1..={WRITE_BUFFER_BYTES_MAX}",
                    self.write_buffer_bytes
                ),
            ));
        }
        if let Some(kind) = self.sticky_kinds.iter().find(|k| **k >= RESERVED_KIND_MIN) {
            return Err(invalid(
                "sticky_kinds",
                format!("kind {kind} is reserved for the wal (>= {RESERVED_KIND_MIN})"),
            ));
        }
        if !(PREALLOCATE_CHUNK_BYTES_MIN..=PREALLOCATE_CHUNK_BYTES_MAX)
            .contains(&self.preallocate_chunk_bytes)
        {
            return Err(invalid(
                "preallocate_chunk_bytes",
                format!(
                    "{} is outside {PREALLOCATE_CHUNK_BYTES_MIN}..={PREALLOCATE_CHUNK_BYTES_MAX}",
                    self.preallocate_chunk_bytes
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn sticky_table(&self) -> [bool; 256] {
        let mut table = [false; 256];
        for kind in &self.sticky_kinds {
            table[usize::from(*kind)] = true;
        }
        table
    }
}

fn invalid(field: &'static str, reason: String) -> WalError {
    WalError::InvalidOptions { field, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(opts: &WalOptions) -> &'static str {
        match opts.validate() {
            Err(WalError::InvalidOptions { field, .. }) => field,
            other => panic!("expected InvalidOptions, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        WalOptions::default().validate().unwrap();
    }

    #[test]
    fn each_bad_field_is_named() {
        let base = WalOptions::default();
        let o = WalOptions {
            segment_bytes_max: 100,
            ..base.clone()
        };
        assert_eq!(field_of(&o), "segment_bytes_max");
        let o = WalOptions {
            record_payload_bytes_max: u32::MAX,
            ..base.clone()
        };
        assert_eq!(field_of(&o), "record_payload_bytes_max");
        let o = WalOptions {
            write_buffer_bytes: 0,
            ..base.clone()
        };
        assert_eq!(field_of(&o), "write_buffer_bytes");
        let o = WalOptions {
            write_buffer_bytes: WRITE_BUFFER_BYTES_MAX + 1,
            ..base.clone()
        };
        assert_eq!(field_of(&o), "write_buffer_bytes");
        let o = WalOptions {
            sticky_kinds: vec![1, 0xF0],
            ..base.clone()
        };
        assert_eq!(field_of(&o), "sticky_kinds");
        for bad in [
            0,
            PREALLOCATE_CHUNK_BYTES_MIN - 1,
            PREALLOCATE_CHUNK_BYTES_MAX + 1,
        ] {
            let o = WalOptions {
                preallocate_chunk_bytes: bad,
                ..base.clone()
            };
            assert_eq!(field_of(&o), "preallocate_chunk_bytes");
        }
        // The chunk is checked even with preallocation off: a config must not turn invalid
        // the day someone flips the switch.
        let o = WalOptions {
            preallocate: false,
            preallocate_chunk_bytes: 0,
            ..base
        };
        assert_eq!(field_of(&o), "preallocate_chunk_bytes");
    }
}
