//! On-disk format, pure (no I/O): the segment header and the record frame.
//!
//! Segment file `{seq:016x}.wal`:
//! ```text
//! header (32 bytes, little endian)
//!   0..8    magic  b"NODEDBWL"
//!   8..12   format version (u32) = 1
//!   12..20  segment seq (u64), equal to the number in the file name
//!   20..28  first_lsn (u64): the LSN of the first record of this segment
//!   28..32  crc32c of bytes 0..28
//! records, back to back (28-byte frame header + payload):
//!   0..4    crc32c, seeded with the segment seq, over bytes 4..28 and the payload
//!   4..8    payload length in bytes (u32)
//!   8..16   group_id (u64)
//!   16..24  index (u64): highest Raft index the record covers, 0 if none
//!   24      kind (u8)
//!   25..28  reserved, zero
//!   28..    payload
//! ```
//! Seeding the record crc with the segment seq means a frame is only valid in the segment it was
//! written to: bytes copied from elsewhere (a frame embedded in a user's payload, a stale or
//! misplaced file) do not pass as records, which keeps the torn-tail test (no valid record after
//! the damage) sound.
//!
//! The LSN of a record is not stored: it is `first_lsn` + its position in the segment, so
//! segments must chain (`first_lsn` of the next = `first_lsn` + record count of this one).

/// Bytes in a segment header.
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// Bytes in a record frame header (before the payload).
pub const FRAME_HEADER_BYTES: usize = 28;
/// Segment magic.
pub const SEGMENT_MAGIC: [u8; 8] = *b"NODEDBWL";
/// Current format version written by this crate; the only one it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Hard ceiling on a payload the reader accepts, independent of options, so a damaged length
/// field can never make recovery allocate or skip gigabytes. Options may only lower it.
pub const FORMAT_PAYLOAD_BYTES_MAX: u32 = 256 * 1024 * 1024;

/// Decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub seq: u64,
    pub first_lsn: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut out = [0u8; SEGMENT_HEADER_BYTES];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[12..20].copy_from_slice(&self.seq.to_le_bytes());
        out[20..28].copy_from_slice(&self.first_lsn.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a header; the error string says which check failed.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, String> {
        if bytes.len() < SEGMENT_HEADER_BYTES {
            return Err(format!(
                "segment header truncated: {} of {SEGMENT_HEADER_BYTES} bytes",
                bytes.len()
            ));
        }
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err("bad segment magic".to_string());
        }
        let stored_crc = le_u32(&bytes[28..32]);
        if crc32c::crc32c(&bytes[0..28]) != stored_crc {
            return Err("segment header crc mismatch".to_string());
        }
        let version = le_u32(&bytes[8..12]);
        if version != FORMAT_VERSION {
            return Err(format!(
                "unsupported segment format version {version} (this build reads {FORMAT_VERSION})"
            ));
        }
        Ok(SegmentHeader {
            seq: le_u64(&bytes[12..20]),
            first_lsn: le_u64(&bytes[20..28]),
        })
    }
}

/// A record as the caller hands it in: borrowed payload, nothing copied until encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Raft group the record belongs to.
    pub group_id: u64,
    /// Engine-defined kind (entries, hard state, ...); `RESERVED_KIND_MIN..=255` are the WAL's.
    pub kind: u8,
    /// Highest Raft index the record covers, 0 if none. Drives compaction (see `Wal::compact`).
    pub index: u64,
    /// Opaque to the WAL.
    pub payload: &'a [u8],
}

/// The crc32c state every record crc of one segment starts from: crc32c of the segment seq
/// (little endian). Computed once per segment, not per record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSeed(u32);

impl FrameSeed {
    pub fn for_segment(seq: u64) -> FrameSeed {
        FrameSeed(crc32c::crc32c(&seq.to_le_bytes()))
    }
}

/// Bytes a record occupies on disk.
pub fn frame_bytes(payload_bytes: usize) -> usize {
    FRAME_HEADER_BYTES + payload_bytes
}

/// Appends the framed record to `out`. The caller has checked the payload size.
pub fn encode_frame(seed: FrameSeed, record: &RecordRef<'_>, out: &mut Vec<u8>) {
    debug_assert!(record.payload.len() <= FORMAT_PAYLOAD_BYTES_MAX as usize);
    let start = out.len();
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[4..8].copy_from_slice(&(record.payload.len() as u32).to_le_bytes());
    header[8..16].copy_from_slice(&record.group_id.to_le_bytes());
    header[16..24].copy_from_slice(&record.index.to_le_bytes());
    header[24] = record.kind;
    let crc = frame_crc(seed, &header, record.payload);
    header[0..4].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(record.payload);
    debug_assert_eq!(out.len() - start, frame_bytes(record.payload.len()));
}

/// Outcome of decoding one frame at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A valid record and the number of bytes it occupies.
    Record(RecordRef<'a>, usize),
    /// The buffer ends inside the frame (header or payload cut short).
    Truncated,
    /// The frame is complete in length but fails a check.
    Invalid(&'static str),
}

/// Decodes the frame at the start of `buf`, read from the segment `seed` belongs to.
pub fn decode_frame(seed: FrameSeed, buf: &[u8]) -> Frame<'_> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Frame::Truncated;
    }
    let header = &buf[..FRAME_HEADER_BYTES];
    let payload_bytes = le_u32(&header[4..8]);
    if payload_bytes > FORMAT_PAYLOAD_BYTES_MAX {
        return Frame::Invalid("record length exceeds the format limit");
    }
    if header[25..28] != [0, 0, 0] {
        return Frame::Invalid("reserved frame bytes are not zero");
    }
    let total = frame_bytes(payload_bytes as usize);
    if buf.len() < total {
        return Frame::Truncated;
    }
    let payload = &buf[FRAME_HEADER_BYTES..total];
    if frame_crc(seed, header, payload) != le_u32(&header[0..4]) {
        return Frame::Invalid("record crc mismatch");
    }
    let record = RecordRef {
        group_id: le_u64(&header[8..16]),
        kind: header[24],
        index: le_u64(&header[16..24]),
        payload,
    };
    Frame::Record(record, total)
}

/// crc32c over the segment seq, the frame header after its crc field, then the payload. The crc comes first so
/// it covers one contiguous run (two crc calls per record, not three: 100-byte appends are
/// bound by per-record work).
fn frame_crc(seed: FrameSeed, header: &[u8], payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c_append(seed.0, &header[4..FRAME_HEADER_BYTES]);
    crc32c::crc32c_append(crc, payload)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEQ: u64 = 3;

    fn rec(payload: &[u8]) -> RecordRef<'_> {
        RecordRef {
            group_id: 7,
            kind: 3,
            index: 42,
            payload,
        }
    }

    #[test]
    fn frame_roundtrip() {
        let mut buf = Vec::new();
        encode_frame(FrameSeed::for_segment(SEQ), &rec(b"hello"), &mut buf);
        assert_eq!(buf.len(), frame_bytes(5));
        assert_eq!(
            decode_frame(FrameSeed::for_segment(SEQ), &buf),
            Frame::Record(rec(b"hello"), buf.len())
        );
    }

    #[test]
    fn empty_payload_roundtrip() {
        let mut buf = Vec::new();
        encode_frame(FrameSeed::for_segment(SEQ), &rec(b""), &mut buf);
        assert_eq!(
            decode_frame(FrameSeed::for_segment(SEQ), &buf),
            Frame::Record(rec(b""), FRAME_HEADER_BYTES)
        );
    }

    #[test]
    fn every_prefix_is_truncated_and_every_flip_is_invalid() {
        let mut buf = Vec::new();
        encode_frame(
            FrameSeed::for_segment(SEQ),
            &rec(b"payload bytes"),
            &mut buf,
        );
        for cut in 0..buf.len() {
            assert_eq!(
                decode_frame(FrameSeed::for_segment(SEQ), &buf[..cut]),
                Frame::Truncated,
                "cut at {cut}"
            );
        }
        // Flips in the length field may turn into "truncated" (longer) or an invalid frame;
        // a flip anywhere must never decode as a valid record.
        for at in 0..buf.len() {
            let mut bad = buf.clone();
            bad[at] ^= 0x10;
            assert!(
                !matches!(
                    decode_frame(FrameSeed::for_segment(SEQ), &bad),
                    Frame::Record(..)
                ),
                "flip at {at} decoded as a record"
            );
        }
    }

    #[test]
    fn a_frame_is_valid_only_in_its_own_segment() {
        let mut buf = Vec::new();
        encode_frame(FrameSeed::for_segment(SEQ), &rec(b"hello"), &mut buf);
        assert_eq!(
            decode_frame(FrameSeed::for_segment(SEQ + 1), &buf),
            Frame::Invalid("record crc mismatch")
        );
    }

    #[test]
    fn zero_bytes_are_not_a_record() {
        let zeros = [0u8; 64];
        assert!(matches!(
            decode_frame(FrameSeed::for_segment(SEQ), &zeros),
            Frame::Invalid(_)
        ));
    }

    #[test]
    fn header_roundtrip_and_checks() {
        let h = SegmentHeader {
            seq: 9,
            first_lsn: 1000,
        };
        let bytes = h.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(h));
        assert!(SegmentHeader::decode(&bytes[..31]).is_err());
        for at in 0..SEGMENT_HEADER_BYTES {
            let mut bad = bytes;
            bad[at] ^= 1;
            assert!(SegmentHeader::decode(&bad).is_err(), "flip at {at}");
        }
    }
}
