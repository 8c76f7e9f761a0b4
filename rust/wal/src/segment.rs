//! Segment files: naming, listing, and the pure scan that recovery runs over a segment's bytes.

use std::collections::HashMap;
use std::fs;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};

use crate::error::WalError;
use crate::format::{
    decode_frame, Frame, FrameSeed, RecordRef, SegmentHeader, FRAME_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
};

/// File name of segment `seq`: 16 lowercase hex digits, so lexical order is numeric order.
pub fn segment_file_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

/// Parses a segment file name back to its seq; `None` for any other file.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".wal")?;
    if hex.len() != 16
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Segment files in `dir`, sorted by seq. Other files are ignored.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let entries = fs::read_dir(dir).map_err(|e| WalError::io("read_dir", dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| WalError::io("read_dir", dir, e))?;
        let name = entry.file_name();
        if let Some(seq) = name.to_str().and_then(parse_segment_file_name) {
            out.push((seq, entry.path()));
        }
    }
    out.sort_by_key(|(seq, _)| *seq);
    Ok(out)
}

/// What a group contributes to one segment, for compaction. Sticky and WAL-internal records
/// are not counted: their latest versions are always rewritten into newer segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSpan {
    /// Highest `index` of the group's records in the segment.
    pub index_max: u64,
    /// LSN of the group's last record in the segment.
    pub lsn_last: u64,
}

/// Per-group spans of one segment. Updated on every append, so keyed with a multiplicative
/// hash instead of SipHash: group ids are the engine's, not attacker-chosen.
pub type GroupSpans = HashMap<u64, GroupSpan, BuildHasherDefault<GroupIdHasher>>;

/// Fibonacci hashing of a u64 key (`GroupSpans` only ever hashes one u64).
#[derive(Default)]
pub struct GroupIdHasher(u64);

impl Hasher for GroupIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A segment as the WAL tracks it after recovery or roll.
#[derive(Debug, Clone)]
pub struct SegmentMeta {
    pub seq: u64,
    pub path: PathBuf,
    pub first_lsn: u64,
    pub record_count: u64,
    pub size_bytes: u64,
    pub groups: GroupSpans,
}

impl SegmentMeta {
    pub fn note_record(&mut self, group_id: u64, index: u64, lsn: u64) {
        let span = self.groups.entry(group_id).or_insert(GroupSpan {
            index_max: index,
            lsn_last: lsn,
        });
        span.index_max = span.index_max.max(index);
        span.lsn_last = lsn;
    }
}

/// Result of scanning one segment's bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Scan {
    /// `None` when the (last) segment's header itself is torn: the file holds nothing.
    pub header: Option<SegmentHeader>,
    /// Number of valid records.
    pub record_count: u64,
    /// Byte length of the valid prefix (header + whole records).
    pub valid_bytes: u64,
    /// Set when the last segment ends in a torn tail: why the bytes after `valid_bytes` were
    /// judged a torn write.
    pub torn_reason: Option<&'static str>,
    /// End of the torn bytes: `valid_bytes..torn_end_bytes` is the torn write (empty when not
    /// torn) and everything from here to the end of the file is zero (a preallocated segment's
    /// unused space, or a zero-filled tail).
    pub torn_end_bytes: u64,
}

/// A scan failure: the offset of the damage and what was wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct ScanError {
    pub offset_bytes: u64,
    pub reason: String,
}

/// Scans a segment's bytes, calling `visit(record, offset_bytes)` for every valid record in order.
///
/// Only the last segment may end badly (a crash tears at most the unsynced tail of the file being
/// appended; every other segment was fsynced whole, and cut to its records, before its successor
/// was created). In the last segment, zero bytes after the records are a clean end (the unused
/// part of a preallocated segment); a bad frame followed only by zeros is a torn tail; a bad
/// frame followed by a valid record is damage in the middle and the scan fails, and so are
/// zeros followed by non-zero bytes (a crash tears a write into a prefix, never a hole). The zero run at
/// the end is found first (a backwards scan, word-wide), so a mostly empty 64 MiB segment costs
/// one pass, not a frame decode per offset.
pub fn scan_segment(
    bytes: &[u8],
    is_last: bool,
    mut visit: impl FnMut(RecordRef<'_>, u64),
) -> Result<Scan, ScanError> {
    let header_bytes = &bytes[..bytes.len().min(SEGMENT_HEADER_BYTES)];
    let header = match SegmentHeader::decode(bytes) {
        Ok(h) => h,
        Err(_)
            if is_last
                && (header_bytes.len() < SEGMENT_HEADER_BYTES
                    || header_bytes.iter().all(|b| *b == 0)) =>
        {
            // Crash between creating the file and its header reaching the disk.
            if bytes[header_bytes.len()..].iter().any(|b| *b != 0) {
                return Err(ScanError {
                    offset_bytes: 0,
                    reason: "zero segment header followed by data".to_string(),
                });
            }
            return Ok(Scan {
                header: None,
                record_count: 0,
                valid_bytes: 0,
                torn_reason: Some("torn segment header"),
                torn_end_bytes: bytes.len() as u64,
            });
        }
        Err(reason) => {
            return Err(ScanError {
                offset_bytes: 0,
                reason,
            })
        }
    };
    let seed = FrameSeed::for_segment(header.seq);
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut record_count = 0u64;
    while offset < bytes.len() {
        let bad_reason = match decode_frame(seed, &bytes[offset..]) {
            Frame::Record(record, frame_len) => {
                visit(record, offset as u64);
                record_count += 1;
                offset += frame_len;
                continue;
            }
            Frame::Truncated => "record cut short by end of file",
            Frame::Invalid(reason) => reason,
        };
        if !is_last {
            return Err(ScanError {
                offset_bytes: offset as u64,
                reason: bad_reason.to_string(),
            });
        }
        let data_end = nonzero_end(bytes, offset);
        if data_end == offset {
            // Only zeros from here on: the records end cleanly (zeros never decode as a
            // record: the crc of a zero header is not zero).
            break;
        }
        if let Some(next) = find_valid_frame(seed, bytes, offset + 1, data_end) {
            return Err(ScanError {
                offset_bytes: offset as u64,
                reason: format!("{bad_reason}, followed by a valid record at offset {next}"),
            });
        }
        let head_end = bytes.len().min(offset + FRAME_HEADER_BYTES);
        if bytes[offset..head_end].iter().all(|b| *b == 0) {
            // A write torn by a crash is a prefix: it starts at the end of the records. Zeros
            // there and data further on is a hole (out-of-order writeback after power loss, or
            // damage in a preallocated segment's zeros), not a torn write.
            return Err(ScanError {
                offset_bytes: offset as u64,
                reason: format!(
                    "the records end in zeros here but non-zero bytes follow (up to offset {})",
                    data_end - 1
                ),
            });
        }
        return Ok(Scan {
            header: Some(header),
            record_count,
            valid_bytes: offset as u64,
            torn_reason: Some(bad_reason),
            torn_end_bytes: data_end as u64,
        });
    }
    Ok(Scan {
        header: Some(header),
        record_count,
        valid_bytes: offset as u64,
        torn_reason: None,
        torn_end_bytes: offset as u64,
    })
}

/// First offset in `from..to` at which a valid frame decodes, if any. Only runs on the failure
/// path, and only over the non-zero bytes (`to` is where the zero tail starts; a frame starting
/// there would begin with zeros and cannot be valid). Cost: one cheap length/reserved check per
/// byte, a crc only where those pass.
fn find_valid_frame(seed: FrameSeed, bytes: &[u8], from: usize, to: usize) -> Option<usize> {
    (from..to).find(|at| matches!(decode_frame(seed, &bytes[*at..]), Frame::Record(..)))
}

/// Offset just past the last non-zero byte of `bytes[from..]`, or `from` if they are all zero.
/// Scans backwards in 4 KiB blocks OR-folded to one byte (the compiler vectorises the fold), so
/// the zero tail of a preallocated segment costs a memory pass, not per-byte branching.
pub fn nonzero_end(bytes: &[u8], from: usize) -> usize {
    const BLOCK_BYTES: usize = 4096;
    let mut end = bytes.len();
    while end > from {
        let start = end.saturating_sub(BLOCK_BYTES).max(from);
        let block = &bytes[start..end];
        if block.iter().fold(0u8, |acc, b| acc | b) != 0 {
            return block
                .iter()
                .rposition(|b| *b != 0)
                .map_or(end, |at| start + at + 1);
        }
        end = start;
    }
    from
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::encode_frame;

    fn segment(records: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = SegmentHeader {
            seq: 1,
            first_lsn: 1,
        }
        .encode()
        .to_vec();
        let mut starts = Vec::new();
        for payload in records {
            starts.push(bytes.len());
            encode_frame(
                FrameSeed::for_segment(1),
                &RecordRef {
                    group_id: 1,
                    kind: 1,
                    index: 1,
                    payload,
                },
                &mut bytes,
            );
        }
        (bytes, starts)
    }

    #[test]
    fn names_roundtrip_and_reject_others() {
        assert_eq!(segment_file_name(255), "00000000000000ff.wal");
        assert_eq!(parse_segment_file_name("00000000000000ff.wal"), Some(255));
        assert_eq!(parse_segment_file_name("00000000000000FF.wal"), None);
        assert_eq!(parse_segment_file_name("ff.wal"), None);
        assert_eq!(parse_segment_file_name("00000000000000ff.wal.tmp"), None);
    }

    #[test]
    fn clean_segment_scans_whole() {
        let (bytes, _) = segment(&[b"a", b"bb", b""]);
        let mut seen = Vec::new();
        let scan = scan_segment(&bytes, false, |r, _| seen.push(r.payload.to_vec())).unwrap();
        assert_eq!(scan.record_count, 3);
        assert_eq!(scan.valid_bytes, bytes.len() as u64);
        assert_eq!(seen, vec![b"a".to_vec(), b"bb".to_vec(), Vec::new()]);
    }

    #[test]
    fn zero_tail_is_a_clean_end_in_last_and_corrupt_elsewhere() {
        let (mut bytes, _) = segment(&[b"a"]);
        let good = bytes.len() as u64;
        bytes.extend_from_slice(&[0u8; 4096]);
        let scan = scan_segment(&bytes, true, |_, _| {}).unwrap();
        assert_eq!((scan.record_count, scan.valid_bytes), (1, good));
        assert_eq!((scan.torn_reason, scan.torn_end_bytes), (None, good));
        let err = scan_segment(&bytes, false, |_, _| {}).unwrap_err();
        assert_eq!(err.offset_bytes, good);
    }

    #[test]
    fn torn_record_followed_by_zeros_is_torn_up_to_the_zero_run() {
        let (mut bytes, starts) = segment(&[b"first", b"second record"]);
        let torn_at = starts[1];
        let torn_end = bytes.len() - 3;
        bytes.truncate(torn_end);
        bytes.extend_from_slice(&[0u8; 10_000]);
        let scan = scan_segment(&bytes, true, |_, _| {}).unwrap();
        assert_eq!(scan.record_count, 1);
        assert_eq!(scan.valid_bytes, torn_at as u64);
        assert!(scan.torn_reason.is_some());
        assert_eq!(scan.torn_end_bytes, torn_end as u64);
    }

    #[test]
    fn a_valid_frame_inside_the_zero_run_is_corrupt() {
        let (mut bytes, _) = segment(&[b"first"]);
        let good = bytes.len();
        bytes.extend_from_slice(&[0u8; 5000]);
        let mut late = Vec::new();
        encode_frame(
            FrameSeed::for_segment(1),
            &RecordRef {
                group_id: 1,
                kind: 1,
                index: 9,
                payload: b"late",
            },
            &mut late,
        );
        let late_at = bytes.len();
        bytes.extend_from_slice(&late);
        bytes.extend_from_slice(&[0u8; 5000]);
        let err = scan_segment(&bytes, true, |_, _| {}).unwrap_err();
        assert_eq!(err.offset_bytes, good as u64);
        assert!(
            err.reason.contains(&format!("offset {late_at}")),
            "{}",
            err.reason
        );
    }

    #[test]
    fn zeros_then_garbage_after_the_records_is_corrupt_not_torn() {
        let (mut bytes, _) = segment(&[b"first"]);
        let good = bytes.len();
        bytes.extend_from_slice(&[0u8; 100_000]);
        bytes[good + 50_000] = 0xFF; // a flipped bit in the preallocated zeros
        let err = scan_segment(&bytes, true, |_, _| {}).unwrap_err();
        assert_eq!(err.offset_bytes, good as u64);
        assert!(
            err.reason.contains(&format!("{}", good + 50_000)),
            "{}",
            err.reason
        );
        // Damage that starts right at the end of the records is a torn write.
        bytes[good] = 0x01;
        let scan = scan_segment(&bytes, true, |_, _| {}).unwrap();
        assert_eq!(scan.torn_end_bytes, (good + 50_001) as u64);
    }

    #[test]
    fn nonzero_end_finds_the_last_nonzero_byte() {
        let mut bytes = vec![0u8; 3 * 4096 + 17];
        assert_eq!(nonzero_end(&bytes, 0), 0);
        assert_eq!(nonzero_end(&bytes, 100), 100);
        for at in [0, 1, 4095, 4096, 8191, 9000, bytes.len() - 1] {
            bytes.fill(0);
            bytes[at] = 1;
            assert_eq!(nonzero_end(&bytes, 0), at + 1, "at {at}");
            assert_eq!(nonzero_end(&bytes, at + 1), at + 1, "from past {at}");
            if at > 0 {
                assert_eq!(nonzero_end(&bytes, at - 1), at + 1);
            }
        }
    }

    #[test]
    fn middle_flip_is_corrupt_even_in_last() {
        let (mut bytes, starts) = segment(&[b"first", b"second", b"third"]);
        bytes[starts[1] + 30] ^= 0xFF;
        let err = scan_segment(&bytes, true, |_, _| {}).unwrap_err();
        assert_eq!(err.offset_bytes, starts[1] as u64);
        assert!(err.reason.contains("crc"), "{}", err.reason);
    }

    #[test]
    fn a_frame_from_another_segment_after_damage_does_not_count_as_valid() {
        // A torn record whose payload happens to hold a whole frame (a user's value can be
        // anything): written for another segment, it must not turn the torn tail into
        // "corruption followed by a valid record".
        let (mut bytes, _) = segment(&[b"first"]);
        let good = bytes.len() as u64;
        let mut embedded = Vec::new();
        let rec = RecordRef {
            group_id: 1,
            kind: 1,
            index: 2,
            payload: b"inner",
        };
        encode_frame(FrameSeed::for_segment(2), &rec, &mut embedded);
        let outer = RecordRef {
            group_id: 1,
            kind: 1,
            index: 3,
            payload: &embedded,
        };
        let mut frame = Vec::new();
        encode_frame(FrameSeed::for_segment(1), &outer, &mut frame);
        bytes.extend_from_slice(&frame[..frame.len() - 1]); // torn: last byte missing
        let scan = scan_segment(&bytes, true, |_, _| {}).unwrap();
        assert_eq!((scan.record_count, scan.valid_bytes), (1, good));
    }

    #[test]
    fn torn_header_only_in_last() {
        let (bytes, _) = segment(&[]);
        for cut in 0..SEGMENT_HEADER_BYTES {
            let scan = scan_segment(&bytes[..cut], true, |_, _| {}).unwrap();
            assert_eq!(scan.header, None);
            assert!(scan_segment(&bytes[..cut], false, |_, _| {}).is_err());
        }
        assert!(scan_segment(&[0u8; 100], true, |_, _| {})
            .unwrap()
            .header
            .is_none());
        let mut bad = bytes.clone();
        bad[3] ^= 1;
        assert_eq!(
            scan_segment(&bad, true, |_, _| {})
                .unwrap_err()
                .offset_bytes,
            0
        );
    }
}
