//! The log itself: a thin I/O shell around the format, the scan and the compaction decision.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::compaction::segment_obsolete;
use crate::error::WalError;
use crate::format::{
    encode_frame, frame_bytes, FrameSeed, RecordRef, SegmentHeader, SEGMENT_HEADER_BYTES,
};
use crate::lock::{lock_dir, DirLock};
use crate::options::{SyncMode, WalOptions, PREALLOCATE_BYTES_PER_SYNC_MAX, RESERVED_KIND_MIN};
use crate::prealloc::{
    leaves_too_little_free, prep_file_name, prepare_file, remove_leftover_prep_files, Pacing,
    PreallocationStats, Prepared, Preparer,
};
use crate::recovery::{
    replay, track_record, Recovered, RecoveredRecord, RecoveryReport, StickyRecord,
};
use crate::segment::{segment_file_name, GroupSpans, SegmentMeta};
use crate::space::{default_reserve_bytes, fs_space, SpaceStatus};
use crate::{fsync_dir, Lsn, BATCH_BYTES_MAX, KIND_FORGET_GROUP};

/// What one `append` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// LSN of the batch's first record (`last_lsn + 1` of the previous batch).
    pub first_lsn: Lsn,
    /// LSN of the batch's last record. Durable once `sync()` returns an LSN ≥ this.
    pub last_lsn: Lsn,
    /// Whether the batch started at least one new segment. Informational: the WAL itself
    /// rewrites the sticky state into the new segment.
    pub rolled: bool,
}

/// What one `compact` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactOutcome {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
}

/// The segment being appended to.
struct Active {
    file: File,
    meta: SegmentMeta,
    /// Records rewritten from the sticky cache when the segment was created; a segment holding
    /// only those never rolls (so a large sticky set cannot cause a roll loop).
    carried_count: u64,
    /// Record crc seed of this segment.
    seed: FrameSeed,
    /// File offset of the next write: every byte before it was handed to the kernel.
    written_bytes: u64,
    /// Current file length. Larger than `written_bytes` while preallocated zeros lie ahead;
    /// cut back to `written_bytes` when the segment is closed.
    file_bytes: u64,
    /// Syncs that wrote into this segment since it became active, and `written_bytes` then:
    /// the bytes per sync that decide whether the next segment is prepared (a segment
    /// continued after a restart counts only what this process wrote).
    syncs: u64,
    written_bytes_at_start: u64,
}

impl Active {
    fn preallocated_bytes_ahead(&self) -> u64 {
        self.file_bytes.saturating_sub(self.written_bytes)
    }

    /// Were this segment's syncs, on average, too large for preallocation to pay?
    fn syncs_dense(&self) -> bool {
        let written = self.written_bytes - self.written_bytes_at_start;
        self.syncs > 0 && written / self.syncs > PREALLOCATE_BYTES_PER_SYNC_MAX
    }
}

/// The node's durable log for all Raft groups. See the crate docs for the contract.
///
/// Dropping it releases the directory lock and discards appends still in the write buffer
/// (never promised durable): call `sync()` first on a clean shutdown. Drop also stops the
/// preparation thread (waits for at most one chunk) and deletes an unused prepared file; the
/// active segment keeps its preallocated zeros (the next open continues it). Disk cost: up to
/// two full segments per log (active + prepared), 128 MiB with the defaults.
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    sticky_table: [bool; 256],
    /// Closed segments, oldest first. All fully synced.
    closed: VecDeque<SegmentMeta>,
    active: Active,
    /// Encoded frames not yet handed to the kernel.
    buffer: Vec<u8>,
    next_lsn: u64,
    synced_lsn: u64,
    sticky: BTreeMap<(u64, u8), StickyRecord>,
    forgotten_lsn: HashMap<u64, u64>,
    poisoned: Option<String>,
    /// Background preparation of the next segment (`None` with `preallocate` off). Declared
    /// before `_lock` so its thread is joined before the directory lock is released.
    preparer: Option<Preparer>,
    /// No preparation asked for since the last roll (the closed segment's syncs were large).
    prep_paused: bool,
    stats: PreallocationStats,
    /// Free bytes kept on the filesystem (`WalOptions::free_space_reserve`, resolved at open).
    reserve_bytes: u64,
    /// Held for the lifetime of the `Wal`: one writer per directory.
    _lock: DirLock,
}

impl Wal {
    /// Opens (or creates) the log in `dir` and returns every valid record it holds.
    /// Holds all payloads in memory; use [`Wal::open_with`] to stream them instead.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<(Wal, Recovered), WalError> {
        let mut records = Vec::new();
        let (wal, report) = Wal::open_with(dir, options, |lsn, record| {
            records.push(RecoveredRecord {
                lsn,
                group_id: record.group_id,
                kind: record.kind,
                index: record.index,
                payload: record.payload.to_vec(),
            });
        })?;
        Ok((wal, Recovered { records, report }))
    }

    /// Opens (or creates) the log in `dir`, calling `visit` for every valid record in LSN order.
    ///
    /// A torn tail of the last segment is repaired (see `RecoveryReport::torn_tail`); damage
    /// anywhere else returns [`WalError::Corrupt`] naming the file and byte offset. On error,
    /// `visit` may already have seen some records: discard them, the node must not start.
    /// With `preallocate` on, a last segment with preallocated zeros after its records is
    /// continued (its torn tail, if any, zeroed); otherwise a fresh segment starts (zero-filled
    /// synchronously with `preallocate` on; measured in BENCHMARKS.md) and older segments are never
    /// appended to again. Either way the sticky state is rewritten into the active segment.
    /// Leftover `*.wal.prep` files are deleted first (never replayed).
    /// Everything replayed is made durable before `open` returns (a killed process's unsynced
    /// writes survive in the page cache and are replayed), so `synced_lsn()` is truthful.
    pub fn open_with(
        dir: impl AsRef<Path>,
        options: WalOptions,
        visit: impl FnMut(Lsn, RecordRef<'_>),
    ) -> Result<(Wal, RecoveryReport), WalError> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        create_dir_durably(&dir)?;
        let lock = lock_dir(&dir)?;
        if remove_leftover_prep_files(&dir)? > 0 {
            fsync_dir(&dir)?;
        }
        let sticky_table = options.sticky_table();
        let reserve_bytes = resolve_reserve(&dir, &options);
        let mut state = replay(&dir, &sticky_table, options.preallocate, visit)?;
        make_replayed_durable(&dir, state.closed.last())?;
        let mut stats = PreallocationStats::default();
        let reused = match (state.reusable_last_bytes, state.closed.pop()) {
            (Some(file_bytes), Some(meta)) => Some(continue_segment(meta, file_bytes)?),
            (_, last) => {
                state.closed.extend(last);
                None
            }
        };
        let active = match reused {
            Some(active) => active,
            None if options.preallocate
                && leaves_too_little_free(&dir, options.segment_bytes_max, reserve_bytes) =>
            {
                // Zero-filling a whole segment would eat into the reserve: grow instead.
                stats.prepare_skipped_low_space += 1;
                create_segment(&dir, state.next_seq, state.next_lsn)?
            }
            None if options.preallocate => {
                match prepare_first_segment(&dir, &options, state.next_seq) {
                    Ok(prepared) => {
                        stats.segments_prepared += 1;
                        activate_prepared(&dir, prepared, state.next_lsn)?
                    }
                    Err(e) => {
                        // E.g. the disk is too full for a whole segment: start a growing one,
                        // as a roll would.
                        stats.prepare_failures += 1;
                        stats.last_failure = Some(e.to_string());
                        create_segment(&dir, state.next_seq, state.next_lsn)?
                    }
                }
            }
            None => create_segment(&dir, state.next_seq, state.next_lsn)?,
        };
        let preparer = if options.preallocate {
            let preparer = Preparer::start(
                &dir,
                options.segment_bytes_max,
                options.preallocate_chunk_bytes,
                reserve_bytes,
            )?;
            preparer.want(active.meta.seq + 1);
            Some(preparer)
        } else {
            None
        };
        let mut wal = Wal {
            buffer: Vec::with_capacity(options.write_buffer_bytes),
            dir,
            options,
            sticky_table,
            closed: state.closed.into(),
            active,
            next_lsn: state.next_lsn,
            synced_lsn: state.next_lsn - 1,
            sticky: state.sticky,
            forgotten_lsn: state.forgotten_lsn,
            poisoned: None,
            preparer,
            prep_paused: false,
            stats,
            reserve_bytes,
            _lock: lock,
        };
        wal.carry_sticky();
        Ok((wal, state.report))
    }

    /// Appends a batch without syncing. The batch's records get consecutive LSNs
    /// `first_lsn..=last_lsn` and always land in one segment: if the batch does not fit, the WAL
    /// rolls first (the sticky records it rewrites come before the batch), so a segment may
    /// exceed `segment_bytes_max` by at most one batch. The batch is validated first: on
    /// `RecordTooLarge`, `ReservedKind` or `BatchTooLarge` nothing is written.
    ///
    /// Disk full: [`WalError::NoSpace`] from `append` comes from the roll (writing out the old
    /// segment's buffered tail, or creating the next segment), before the batch was taken:
    /// nothing of the batch was appended, the log is not poisoned, append it again later. A
    /// full disk while writing out a full buffer AFTER the batch was taken does not fail the
    /// append: the batch is appended (its LSNs assigned) and stays buffered, and the next
    /// [`Wal::sync`] writes it again and reports `NoSpace` if the disk is still full.
    ///
    /// NOT durable yet: the engine must call [`Wal::sync`] before sending any message that
    /// depends on these records or acknowledging a proposal.
    pub fn append(&mut self, records: &[RecordRef<'_>]) -> Result<AppendOutcome, WalError> {
        self.check_usable()?;
        let mut batch_bytes = 0u64;
        for record in records {
            self.check_record(record)?;
            batch_bytes += frame_bytes(record.payload.len()) as u64;
        }
        if batch_bytes > BATCH_BYTES_MAX {
            return Err(WalError::BatchTooLarge {
                batch_bytes,
                limit_bytes: BATCH_BYTES_MAX,
            });
        }
        let rolled = self.roll_if_full(batch_bytes)?;
        let first_lsn = Lsn(self.next_lsn);
        let mut write_deferred = false;
        for record in records {
            self.push(record);
            self.write_if_full(&mut write_deferred)?;
        }
        Ok(AppendOutcome {
            first_lsn,
            last_lsn: Lsn(self.next_lsn - 1),
            rolled,
        })
    }

    /// Makes every appended record durable with one write and one fsync/fdatasync (group
    /// commit: append every group's Ready, then sync once).
    ///
    /// DURABILITY POINT: a record is durable when `sync()` returns `Ok(lsn)` with
    /// `lsn >= record's LSN`. A no-op (no syscall) when nothing was appended since the last sync.
    /// [`WalError::NoSpace`] (the write of the buffered records hit a full disk) does not
    /// poison: nothing of that write counts, the records stay buffered with their LSNs, and the
    /// next `sync()` writes them again from the same file offset. Any other failure poisons
    /// the WAL (a failed fsync above all: whether the data reached the disk is unknown).
    pub fn sync(&mut self) -> Result<Lsn, WalError> {
        self.check_usable()?;
        if self.synced_lsn + 1 == self.next_lsn && self.buffer.is_empty() {
            return Ok(Lsn(self.synced_lsn));
        }
        self.write_buffer()?;
        let result = match self.options.sync_mode {
            SyncMode::Fdatasync => self.active.file.sync_data(),
            SyncMode::Fsync => self.active.file.sync_all(),
        };
        result.map_err(|e| self.poison(WalError::io("fsync", &self.active.meta.path, e)))?;
        self.active.syncs += 1;
        self.synced_lsn = self.next_lsn - 1;
        Ok(Lsn(self.synced_lsn))
    }

    /// Deletes the oldest closed segments whose counted records are all obsolete (see
    /// [`crate::compaction::segment_obsolete`]); stops at the first one that is still needed,
    /// so the surviving segments always form an unbroken sequence. `floors` maps group → the
    /// highest index the engine no longer needs from the log (its snapshot / compacted index);
    /// a group missing from `floors` keeps its segments. Never touches the active segment.
    ///
    /// Syncs first: the sticky records carried into the active segment must be durable before
    /// older copies are deleted. Each deletion is followed by a directory fsync, so a crash
    /// can never leave a gap in the sequence.
    pub fn compact(&mut self, floors: &HashMap<u64, u64>) -> Result<CompactOutcome, WalError> {
        self.sync()?;
        let mut outcome = CompactOutcome::default();
        while let Some(oldest) = self.closed.front() {
            if !segment_obsolete(&oldest.groups, floors, &self.forgotten_lsn) {
                break;
            }
            fs::remove_file(&oldest.path)
                .map_err(|e| WalError::io("remove segment", &oldest.path, e))?;
            let removed = self.closed.pop_front();
            fsync_dir(&self.dir).map_err(|e| self.poison(e))?;
            if let Some(meta) = removed {
                outcome.segments_deleted += 1;
                outcome.bytes_deleted += meta.size_bytes;
            }
        }
        let oldest_lsn = self
            .closed
            .front()
            .map_or(self.active.meta.first_lsn, |m| m.first_lsn);
        self.forgotten_lsn.retain(|_, lsn| *lsn >= oldest_lsn);
        Ok(outcome)
    }

    /// Ends a group's history in this log (after the engine removed the group): appends a
    /// [`KIND_FORGET_GROUP`] record, stops carrying the group's sticky records forward, and
    /// lets compaction drop every older record of the group without a floor. Not durable
    /// until `sync()`.
    pub fn forget_group(&mut self, group_id: u64) -> Result<Lsn, WalError> {
        self.check_usable()?;
        let record = RecordRef {
            group_id,
            kind: KIND_FORGET_GROUP,
            index: 0,
            payload: &[],
        };
        self.roll_if_full(frame_bytes(0) as u64)?;
        self.push(&record);
        self.write_if_full(&mut false)?;
        Ok(Lsn(self.next_lsn - 1))
    }

    /// LSN of the last appended record (`Lsn(0)` if none ever).
    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.next_lsn - 1)
    }

    /// LSN up to which everything is durable.
    pub fn synced_lsn(&self) -> Lsn {
        Lsn(self.synced_lsn)
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Segment files on disk, including the active one.
    pub fn segment_count(&self) -> usize {
        self.closed.len() + 1
    }

    /// Seq of the segment being appended to.
    pub fn active_segment_seq(&self) -> u64 {
        self.active.meta.seq
    }

    /// Waits (at most `timeout`) until the next segment has been prepared in the background,
    /// so the next roll starts a preallocated segment. False if preallocation is off, the
    /// preparation failed, or the time ran out. For tests and benchmarks; the WAL never waits.
    pub fn wait_for_prepared_segment(&self, timeout: Duration) -> bool {
        self.preparer
            .as_ref()
            .is_some_and(|p| p.wait_ready(self.active.meta.seq + 1, timeout))
    }

    /// Gives back the disk space of the next segment prepared in the background (a file of
    /// zeros only this log would use): for a node out of space, whose reserve its own
    /// preparation may hold. True if a prepared file was deleted.
    pub fn release_prepared_segment(&self) -> bool {
        self.preparer.as_ref().is_some_and(Preparer::release)
    }

    /// How segment preallocation went so far (all zero with `preallocate` off).
    pub fn preallocation_stats(&self) -> PreallocationStats {
        let mut stats = self.stats.clone();
        if let Some(preparer) = &self.preparer {
            let (failures, last_failure) = preparer.failures();
            stats.prepare_failures += failures;
            stats.prepare_skipped_low_space += preparer.skipped_low_space();
            stats.last_failure = last_failure.or(stats.last_failure);
        }
        stats
    }

    /// Free space on the log's filesystem and the reserve the log keeps (one `statvfs`, cheap
    /// enough for every tick). The engine refuses writes while `available < reserve`.
    pub fn space(&self) -> Result<SpaceStatus, WalError> {
        let fs = fs_space(&self.dir).map_err(|e| WalError::io("statvfs", &self.dir, e))?;
        Ok(SpaceStatus {
            available_bytes: fs.available_bytes,
            reserve_bytes: self.reserve_bytes,
        })
    }

    /// The free-space reserve in bytes (`WalOptions::free_space_reserve`, resolved at open).
    pub fn reserve_bytes(&self) -> u64 {
        self.reserve_bytes
    }

    fn check_usable(&self) -> Result<(), WalError> {
        match &self.poisoned {
            Some(cause) => Err(WalError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn check_record(&self, record: &RecordRef<'_>) -> Result<(), WalError> {
        if record.kind >= RESERVED_KIND_MIN {
            return Err(WalError::ReservedKind {
                kind: record.kind,
                reserved_min: RESERVED_KIND_MIN,
            });
        }
        if record.payload.len() > self.options.record_payload_bytes_max as usize {
            return Err(WalError::RecordTooLarge {
                payload_bytes: record.payload.len(),
                limit_bytes: self.options.record_payload_bytes_max,
            });
        }
        Ok(())
    }

    /// Rolls to a new segment if `batch_bytes` more would take the active one past
    /// `segment_bytes_max`. Batches are never split, so a batch's LSNs are consecutive; a
    /// segment holding only carried records never rolls (no roll loop on a large sticky set).
    fn roll_if_full(&mut self, batch_bytes: u64) -> Result<bool, WalError> {
        let has_own_records = self.active.meta.record_count > self.active.carried_count;
        let full = self.active.meta.size_bytes + batch_bytes > self.options.segment_bytes_max;
        if has_own_records && full {
            self.roll()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Frames one record into the buffer (no I/O).
    fn push(&mut self, record: &RecordRef<'_>) {
        let lsn = self.next_lsn;
        encode_frame(self.active.seed, record, &mut self.buffer);
        self.active.meta.size_bytes += frame_bytes(record.payload.len()) as u64;
        self.active.meta.record_count += 1;
        track_record(
            record,
            lsn,
            &self.sticky_table,
            &mut self.active.meta,
            &mut self.sticky,
            &mut self.forgotten_lsn,
        );
        self.next_lsn += 1;
    }

    /// Writes the buffer out once it is full. A full disk is not an error of the append that
    /// filled the buffer (its records are taken; `sync` retries the write and reports it):
    /// `deferred` is set and no further write is tried during this append.
    fn write_if_full(&mut self, deferred: &mut bool) -> Result<(), WalError> {
        if *deferred || self.buffer.len() < self.options.write_buffer_bytes {
            return Ok(());
        }
        match self.write_buffer() {
            Err(e) if e.is_no_space() => {
                *deferred = true;
                Ok(())
            }
            other => other,
        }
    }

    /// Closes the active segment (write, cut the unused preallocated zeros, fsync: closed
    /// segments are always whole and end at their last record) and starts the next one with
    /// the sticky state rewritten at its start: the prepared file if it is ready, else a
    /// growing segment (counted in `rolls_fallback`; never waits for the preparation).
    ///
    /// A full disk ([`WalError::NoSpace`]) while writing the old segment's tail or creating the
    /// new one leaves the old segment active (whole and fsynced if it got that far), removes
    /// what was created of the new one, and does not poison: the next append rolls again.
    fn roll(&mut self) -> Result<(), WalError> {
        self.write_buffer()?;
        let cut = self.active.preallocated_bytes_ahead() > 0;
        let closed = if cut {
            self.active
                .file
                .set_len(self.active.written_bytes)
                .and_then(|()| self.active.file.sync_all())
        } else {
            self.active.file.sync_data()
        };
        closed
            .map_err(|e| self.poison(WalError::io("fsync on roll", &self.active.meta.path, e)))?;
        self.active.file_bytes = self.active.written_bytes;
        self.synced_lsn = self.next_lsn - 1;
        let seq = self.active.meta.seq + 1;
        // Large syncs: the next segment grows (and `seq + 1` is not prepared either) until a
        // segment of small syncs asks for preparation again.
        let dense = self.active.syncs_dense();
        let was_wanted = !self.prep_paused;
        self.prep_paused = dense;
        // `take` also asks for `seq + 1` (unless dense), whether or not `seq` was ready.
        let prepared = match &self.preparer {
            Some(p) if !dense => p.take(seq, true),
            Some(p) => {
                self.stats.rolls_dense += 1;
                p.take(seq, false) // one already prepared is used: its zeros are written
            }
            None => None,
        };
        let next = match prepared {
            Some(prepared) => {
                self.stats.segments_prepared += 1;
                activate_prepared(&self.dir, prepared, self.next_lsn)
            }
            None => {
                if self.preparer.is_some() && !dense && was_wanted {
                    self.stats.rolls_fallback += 1;
                }
                create_segment(&self.dir, seq, self.next_lsn)
            }
        };
        let next = match next {
            Ok(next) => next,
            Err(e) if e.is_no_space() => {
                remove_unborn_segment(&self.dir, seq).map_err(|e| self.poison(e))?;
                return Err(e);
            }
            Err(e) => return Err(self.poison(e)),
        };
        let old = std::mem::replace(&mut self.active, next);
        self.closed.push_back(old.meta);
        self.carry_sticky();
        Ok(())
    }

    /// Rewrites the latest record of every (group, sticky kind) into the active segment, in
    /// their original LSN order, so replay sees state records in the order they were written.
    fn carry_sticky(&mut self) {
        let mut sticky = std::mem::take(&mut self.sticky);
        let mut ordered: Vec<(&(u64, u8), &mut StickyRecord)> = sticky.iter_mut().collect();
        ordered.sort_unstable_by_key(|(_, rec)| rec.lsn);
        for ((group_id, kind), rec) in ordered {
            debug_assert!(self.sticky_table[usize::from(*kind)]);
            let record = RecordRef {
                group_id: *group_id,
                kind: *kind,
                index: rec.index,
                payload: &rec.payload,
            };
            encode_frame(self.active.seed, &record, &mut self.buffer);
            rec.lsn = self.next_lsn;
            self.active.meta.size_bytes += frame_bytes(rec.payload.len()) as u64;
            self.active.meta.record_count += 1;
            self.active.carried_count += 1;
            self.next_lsn += 1;
        }
        self.sticky = sticky;
    }

    /// Hands the buffer to the kernel at `written_bytes`. A full disk (`ENOSPC`/`EDQUOT`)
    /// leaves everything as it was: the buffer is kept, `written_bytes` does not move, and the
    /// next call writes the same bytes at the same offset, over whatever prefix of them reached
    /// the file (a crash before that leaves the prefix as a torn tail, which recovery cuts).
    /// Any other failure poisons.
    fn write_buffer(&mut self) -> Result<(), WalError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let at = self.active.written_bytes;
        if let Err(e) = self.active.file.write_all_at(&self.buffer, at) {
            let path = &self.active.meta.path;
            let error = WalError::io_or_no_space("write", &self.dir, path, e);
            if error.is_no_space() {
                return Err(error);
            }
            self.buffer.clear();
            return Err(self.poison(error));
        }
        self.active.written_bytes += self.buffer.len() as u64;
        self.active.file_bytes = self.active.file_bytes.max(self.active.written_bytes);
        self.buffer.clear();
        Ok(())
    }

    fn poison(&mut self, error: WalError) -> WalError {
        self.poisoned = Some(error.to_string());
        error
    }
}

/// What replay read may still be only in the page cache: a killed process's writes survive in
/// it, unsynced. Before anyone treats those records as durable (Raft would acknowledge them),
/// fsync the newest segment (every older one was fsynced whole when it was closed) and the
/// directory (a segment created just before the crash).
fn make_replayed_durable(dir: &Path, newest: Option<&SegmentMeta>) -> Result<(), WalError> {
    if let Some(meta) = newest {
        // fsync flushes the file's dirty pages whatever mode the descriptor was opened in.
        let file =
            File::open(&meta.path).map_err(|e| WalError::io("open for fsync", &meta.path, e))?;
        file.sync_all()
            .map_err(|e| WalError::io("fsync on open", &meta.path, e))?;
    }
    fsync_dir(dir)
}

/// Creates `dir` (and parents) if missing, making the new directory entry durable.
fn create_dir_durably(dir: &Path) -> Result<(), WalError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| WalError::io("create_dir", dir, e))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Creates segment `seq` with its header, durably (file fsync, then directory fsync).
fn create_segment(dir: &Path, seq: u64, first_lsn: u64) -> Result<Active, WalError> {
    let path = dir.join(segment_file_name(seq));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| WalError::io_or_no_space("create segment", dir, &path, e))?;
    let header = SegmentHeader { seq, first_lsn }.encode();
    file.write_all_at(&header, 0)
        .map_err(|e| WalError::io_or_no_space("write segment header", dir, &path, e))?;
    file.sync_all()
        .map_err(|e| WalError::io("fsync segment header", &path, e))?;
    fsync_dir(dir)?;
    Ok(empty_active(
        file,
        path,
        seq,
        first_lsn,
        SEGMENT_HEADER_BYTES as u64,
    ))
}

/// The active state of a segment that holds only its header; `file_bytes` is its length on
/// disk (the header alone, or a whole preallocated segment).
fn empty_active(file: File, path: PathBuf, seq: u64, first_lsn: u64, file_bytes: u64) -> Active {
    let meta = SegmentMeta {
        seq,
        path,
        first_lsn,
        record_count: 0,
        size_bytes: SEGMENT_HEADER_BYTES as u64,
        groups: GroupSpans::default(),
    };
    Active {
        file,
        meta,
        carried_count: 0,
        seed: FrameSeed::for_segment(seq),
        written_bytes: SEGMENT_HEADER_BYTES as u64,
        file_bytes,
        syncs: 0,
        written_bytes_at_start: SEGMENT_HEADER_BYTES as u64,
    }
}

/// Turns a prepared (zero-filled, synced) file into segment `prepared.seq`: header written and
/// synced at offset 0, then linked under the segment name and the directory fsynced, so a crash
/// leaves either no segment or a whole empty one. `hard_link` refuses to replace an existing
/// segment (a rename would silently overwrite it); the `.prep` name is removed afterwards.
fn activate_prepared(dir: &Path, prepared: Prepared, first_lsn: u64) -> Result<Active, WalError> {
    let Prepared {
        seq,
        path: prep_path,
        file,
        len_bytes,
    } = prepared;
    let header = SegmentHeader { seq, first_lsn }.encode();
    file.write_all_at(&header, 0)
        .map_err(|e| WalError::io_or_no_space("write segment header", dir, &prep_path, e))?;
    file.sync_data()
        .map_err(|e| WalError::io("fsync segment header", &prep_path, e))?;
    let path = dir.join(segment_file_name(seq));
    fs::hard_link(&prep_path, &path)
        .map_err(|e| WalError::io_or_no_space("link prepared segment", dir, &path, e))?;
    fs::remove_file(&prep_path).map_err(|e| WalError::io("remove prep name", &prep_path, e))?;
    fsync_dir(dir)?;
    Ok(empty_active(file, path, seq, first_lsn, len_bytes))
}

/// Removes what a roll that ran out of space created of segment `seq` (the segment file, or the
/// prepared file it was being made from), then fsyncs the directory: the log is back to the
/// old segment as the last one, and a later roll creates `seq` afresh.
fn remove_unborn_segment(dir: &Path, seq: u64) -> Result<(), WalError> {
    for path in [
        dir.join(segment_file_name(seq)),
        dir.join(prep_file_name(seq)),
    ] {
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(WalError::io("remove unborn segment", &path, e))
            }
            _ => {}
        }
    }
    fsync_dir(dir)
}

/// `WalOptions::free_space_reserve`, or its default from the filesystem's size (two segments
/// when the size cannot be read).
fn resolve_reserve(dir: &Path, options: &WalOptions) -> u64 {
    options.free_space_reserve.unwrap_or_else(|| {
        let two_segments = options.segment_bytes_max.saturating_mul(2);
        fs_space(dir).map_or(two_segments, |fs| {
            default_reserve_bytes(options.segment_bytes_max, fs.total_bytes)
        })
    })
}

/// Continues appending to the (preallocated) last segment replay found: the next write goes
/// right after its last valid record, over zeros.
fn continue_segment(meta: SegmentMeta, file_bytes: u64) -> Result<Active, WalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(&meta.path)
        .map_err(|e| WalError::io("open segment", &meta.path, e))?;
    Ok(Active {
        file,
        seed: FrameSeed::for_segment(meta.seq),
        written_bytes: meta.size_bytes,
        written_bytes_at_start: meta.size_bytes,
        file_bytes,
        meta,
        carried_count: 0,
        syncs: 0,
    })
}

/// Zero-fills the first segment inside `open` (one sync at the end: nothing else is waiting).
/// On failure the partial file is deleted (a leftover would also go at the next open).
fn prepare_first_segment(dir: &Path, options: &WalOptions, seq: u64) -> Result<Prepared, WalError> {
    let prepared = prepare_file(
        dir,
        seq,
        options.segment_bytes_max,
        options.preallocate_chunk_bytes,
        Pacing::SyncAtEnd,
        |_| true,
    );
    match prepared {
        Ok(Some(prepared)) => Ok(prepared),
        Ok(None) => unreachable!("an unconditional preparation does not stop early"),
        Err(e) => {
            let path = dir.join(prep_file_name(seq));
            match fs::remove_file(&path) {
                Err(rm) if rm.kind() != std::io::ErrorKind::NotFound => {
                    Err(WalError::io("remove partial prep file", &path, rm))
                }
                _ => Err(e),
            }
        }
    }
}
