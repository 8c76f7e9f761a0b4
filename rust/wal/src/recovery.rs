//! Replay on open: reads every segment in order, hands each valid record to the caller, rebuilds
//! what the WAL tracks (segment spans, sticky cache, forgotten groups), and repairs a torn tail.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::WalError;
use crate::format::{RecordRef, SegmentHeader};
use crate::segment::{list_segments, scan_segment, GroupSpans, SegmentMeta};
use crate::{fsync_dir, Lsn, KIND_FORGET_GROUP, RESERVED_KIND_MIN};

/// A record read back during recovery, with the LSN it was assigned when appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredRecord {
    pub lsn: Lsn,
    pub group_id: u64,
    pub kind: u8,
    pub index: u64,
    pub payload: Vec<u8>,
}

/// Everything `Wal::open` read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Every valid record, in LSN order.
    pub records: Vec<RecoveredRecord>,
    pub report: RecoveryReport,
}

/// What recovery found and repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files read (including one whose torn header was removed).
    pub segments_replayed: usize,
    /// Records handed to the caller.
    pub records_replayed: u64,
    /// LSN of the last valid record (`Lsn(0)` for an empty log).
    pub last_lsn: Lsn,
    /// Set when the last segment ended in a torn write that was cut off.
    pub torn_tail: Option<TornTail>,
}

/// A torn tail that recovery repaired: bytes of a write that never completed. Cut off
/// (truncated) in a growing segment; overwritten with zeros in a preallocated one, which keeps
/// its size so appends continue to overwrite written blocks. With preallocation off, a zero
/// tail after the records is cut off too and reported here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub path: PathBuf,
    /// Where the valid records end: the file was truncated to this length, or zeroed from here
    /// (0 and the file removed when its header was torn).
    pub offset_bytes: u64,
    /// Bytes discarded (truncated away or zeroed).
    pub discarded_bytes: u64,
    pub reason: &'static str,
}

/// The latest record of one (group, sticky kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StickyRecord {
    /// LSN of the latest copy: carrying forward sorts by it, so the rewritten records keep
    /// their original relative order across kinds.
    pub lsn: u64,
    pub index: u64,
    pub payload: Vec<u8>,
}

/// Tracked state rebuilt by replay; `Wal` continues from it.
pub(crate) struct ReplayState {
    pub closed: Vec<SegmentMeta>,
    pub next_seq: u64,
    pub next_lsn: u64,
    pub sticky: BTreeMap<(u64, u8), StickyRecord>,
    pub forgotten_lsn: HashMap<u64, u64>,
    pub report: RecoveryReport,
    /// File length of the last segment (the last entry of `closed`) when it is preallocated
    /// (zeros after its records) and preallocation is on: the `Wal` continues appending to it.
    pub reusable_last_bytes: Option<u64>,
}

/// Bookkeeping for one replayed record, shared by recovery and the append path.
pub(crate) fn track_record(
    record: &RecordRef<'_>,
    lsn: u64,
    sticky_table: &[bool; 256],
    meta: &mut SegmentMeta,
    sticky: &mut BTreeMap<(u64, u8), StickyRecord>,
    forgotten_lsn: &mut HashMap<u64, u64>,
) {
    if record.kind == KIND_FORGET_GROUP {
        sticky.retain(|(group_id, _), _| *group_id != record.group_id);
        forgotten_lsn.insert(record.group_id, lsn);
    } else if sticky_table[usize::from(record.kind)] {
        let slot = sticky
            .entry((record.group_id, record.kind))
            .or_insert_with(|| StickyRecord {
                lsn,
                index: 0,
                payload: Vec::new(),
            });
        slot.lsn = lsn;
        slot.index = record.index;
        slot.payload.clear();
        slot.payload.extend_from_slice(record.payload);
    } else if record.kind < RESERVED_KIND_MIN {
        meta.note_record(record.group_id, record.index, lsn);
    }
}

/// Replays `dir`, calling `visit` for each valid record in LSN order. With `preallocate`, a
/// last segment with zeros after its records keeps them (see `ReplayState::reusable_last_bytes`);
/// without, they are cut off so the segment can be closed as it is.
pub(crate) fn replay(
    dir: &Path,
    sticky_table: &[bool; 256],
    preallocate: bool,
    mut visit: impl FnMut(Lsn, RecordRef<'_>),
) -> Result<ReplayState, WalError> {
    let files = list_segments(dir)?;
    let mut state = ReplayState {
        closed: Vec::with_capacity(files.len()),
        next_seq: files.first().map_or(0, |(seq, _)| *seq),
        next_lsn: 1,
        sticky: BTreeMap::new(),
        forgotten_lsn: HashMap::new(),
        report: RecoveryReport {
            segments_replayed: 0,
            records_replayed: 0,
            last_lsn: Lsn(0),
            torn_tail: None,
        },
        reusable_last_bytes: None,
    };
    for (position, (seq, path)) in files.iter().enumerate() {
        let is_last = position + 1 == files.len();
        if *seq != state.next_seq {
            let missing = crate::segment::segment_file_name(state.next_seq);
            return Err(WalError::corrupt(
                path,
                0,
                format!("segment {missing} is missing before this one"),
            ));
        }
        let bytes = fs::read(path).map_err(|e| WalError::io("read", path, e))?;
        let header = SegmentHeader::decode(&bytes).ok();
        if let Some(h) = header {
            check_header(path, *seq, h, state.next_lsn, position == 0)?;
            state.next_lsn = h.first_lsn;
        }
        let mut meta = SegmentMeta {
            seq: *seq,
            path: path.clone(),
            first_lsn: state.next_lsn,
            record_count: 0,
            size_bytes: 0,
            groups: GroupSpans::default(),
        };
        let mut lsn = state.next_lsn;
        let scan = scan_segment(&bytes, is_last, |record, _offset| {
            track_record(
                &record,
                lsn,
                sticky_table,
                &mut meta,
                &mut state.sticky,
                &mut state.forgotten_lsn,
            );
            visit(Lsn(lsn), record);
            lsn += 1;
        })
        .map_err(|e| WalError::corrupt(path, e.offset_bytes, e.reason))?;
        state.report.segments_replayed += 1;
        state.report.records_replayed += scan.record_count;
        state.next_lsn = lsn;
        state.next_seq = seq + 1;
        let file_bytes = bytes.len() as u64;
        if scan.header.is_none() {
            let reason = scan.torn_reason.unwrap_or("torn segment header");
            state.report.torn_tail = Some(cut_torn_tail(dir, path, &scan, file_bytes, reason)?);
            state.next_seq = *seq; // the file is gone; its seq is free again
            continue;
        }
        let zero_tail_bytes = file_bytes - scan.torn_end_bytes;
        if is_last && preallocate && zero_tail_bytes > 0 {
            if let Some(reason) = scan.torn_reason {
                state.report.torn_tail = Some(zero_torn_bytes(path, &scan, reason)?);
            }
            state.reusable_last_bytes = Some(file_bytes);
        } else if is_last && file_bytes > scan.valid_bytes {
            let reason = scan
                .torn_reason
                .unwrap_or("zero fill after the last record");
            state.report.torn_tail = Some(cut_torn_tail(dir, path, &scan, file_bytes, reason)?);
        }
        meta.record_count = scan.record_count;
        meta.size_bytes = scan.valid_bytes;
        state.closed.push(meta);
    }
    state.report.last_lsn = Lsn(state.next_lsn - 1);
    Ok(state)
}

fn check_header(
    path: &Path,
    seq: u64,
    header: SegmentHeader,
    expected_lsn: u64,
    first: bool,
) -> Result<(), WalError> {
    if header.seq != seq {
        return Err(WalError::corrupt(
            path,
            0,
            format!(
                "header says segment {} but the file name says {seq}",
                header.seq
            ),
        ));
    }
    // The oldest surviving segment may start anywhere (older ones were compacted away);
    // every later one must continue exactly where its predecessor ended.
    if !first && header.first_lsn != expected_lsn {
        return Err(WalError::corrupt(
            path,
            0,
            format!(
                "segment starts at lsn {} but the previous one ended before lsn {expected_lsn}",
                header.first_lsn
            ),
        ));
    }
    if header.first_lsn == 0 {
        return Err(WalError::corrupt(
            path,
            0,
            "segment first_lsn is 0 (lsns start at 1)",
        ));
    }
    Ok(())
}

/// Overwrites the torn bytes of a preallocated segment with zeros, durably, keeping the file's
/// size: the segment then ends cleanly and appends continue at `valid_bytes`.
fn zero_torn_bytes(
    path: &Path,
    scan: &crate::segment::Scan,
    reason: &'static str,
) -> Result<TornTail, WalError> {
    let torn_bytes = scan.torn_end_bytes - scan.valid_bytes;
    let file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| WalError::io("open to zero torn tail", path, e))?;
    let zeros = vec![0u8; torn_bytes as usize];
    file.write_all_at(&zeros, scan.valid_bytes)
        .map_err(|e| WalError::io("zero torn tail", path, e))?;
    file.sync_all()
        .map_err(|e| WalError::io("fsync after zeroing torn tail", path, e))?;
    Ok(TornTail {
        path: path.to_path_buf(),
        offset_bytes: scan.valid_bytes,
        discarded_bytes: torn_bytes,
        reason,
    })
}

/// Truncates the torn tail (or removes a segment whose header never made it) and makes the
/// repair durable before anything new is written after it.
fn cut_torn_tail(
    dir: &Path,
    path: &Path,
    scan: &crate::segment::Scan,
    file_bytes: u64,
    reason: &'static str,
) -> Result<TornTail, WalError> {
    if scan.header.is_none() {
        fs::remove_file(path).map_err(|e| WalError::io("remove torn segment", path, e))?;
        fsync_dir(dir)?;
    } else {
        let file = fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| WalError::io("open for truncation", path, e))?;
        file.set_len(scan.valid_bytes)
            .map_err(|e| WalError::io("truncate torn tail", path, e))?;
        file.sync_all()
            .map_err(|e| WalError::io("fsync after truncation", path, e))?;
    }
    Ok(TornTail {
        path: path.to_path_buf(),
        offset_bytes: scan.valid_bytes,
        discarded_bytes: file_bytes - scan.valid_bytes,
        reason,
    })
}
