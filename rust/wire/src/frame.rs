//! The frame of docs/WIRE.md: `version u8 | kind u16 | payload_len u32 | crc32c(payload) u32`, all
//! little-endian, then the payload. Decoding checks every length before using it and never panics.

use crate::kind::{lookup, KindRow, MessageKind, KINDS};

/// Format version written into every header.
pub const FORMAT_VERSION: u8 = 1;
/// Header size: 1 + 2 + 4 + 4.
pub const HEADER_BYTES: usize = 11;
/// Largest payload accepted: bounds the memory one stream can make us allocate. Snapshot chunks
/// (4 MiB default) are far smaller.
pub const PAYLOAD_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Why bytes are not a valid frame. Each variant has a stable `code()` used in metrics, in QUIC
/// stream reset codes and in the Python error class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame too short: {found_bytes} bytes, a header needs {HEADER_BYTES}")]
    TooShort { found_bytes: usize },
    #[error("unsupported frame format version {found} (this node supports {supported})")]
    WrongVersion { found: u8, supported: u8 },
    #[error("unknown message kind {kind}")]
    UnknownKind { kind: u16 },
    #[error("message kind {kind} ({name}) is retired, upgrade all nodes")]
    RetiredKind { kind: u16, name: &'static str },
    #[error("frame payload of {payload_bytes} bytes exceeds the maximum of {PAYLOAD_BYTES_MAX}")]
    Oversize { payload_bytes: u64 },
    #[error("frame truncated: header announces {expected_bytes} payload bytes, got {found_bytes}")]
    Truncated {
        expected_bytes: usize,
        found_bytes: usize,
    },
    #[error(
        "frame checksum mismatch: header says {expected:#010x}, payload hashes to {found:#010x}"
    )]
    ChecksumMismatch { expected: u32, found: u32 },
    #[error("{trailing_bytes} unexpected bytes after the frame payload")]
    TrailingBytes { trailing_bytes: usize },
}

impl FrameError {
    /// Stable short name (metrics label, Python `FrameError.code`).
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::TooShort { .. } => "too_short",
            FrameError::WrongVersion { .. } => "wrong_version",
            FrameError::UnknownKind { .. } => "unknown_kind",
            FrameError::RetiredKind { .. } => "retired_kind",
            FrameError::Oversize { .. } => "oversize",
            FrameError::Truncated { .. } => "truncated",
            FrameError::ChecksumMismatch { .. } => "checksum_mismatch",
            FrameError::TrailingBytes { .. } => "trailing_bytes",
        }
    }

    /// Stable small number (QUIC stream reset code = `0x100 + number`).
    pub fn number(&self) -> u32 {
        match self {
            FrameError::TooShort { .. } => 1,
            FrameError::WrongVersion { .. } => 2,
            FrameError::UnknownKind { .. } => 3,
            FrameError::RetiredKind { .. } => 4,
            FrameError::Oversize { .. } => 5,
            FrameError::Truncated { .. } => 6,
            FrameError::ChecksumMismatch { .. } => 7,
            FrameError::TrailingBytes { .. } => 8,
        }
    }

    /// Inverse of [`FrameError::number`] for the code name only (the details stay with the peer).
    pub fn code_for_number(number: u32) -> Option<&'static str> {
        Some(match number {
            1 => "too_short",
            2 => "wrong_version",
            3 => "unknown_kind",
            4 => "retired_kind",
            5 => "oversize",
            6 => "truncated",
            7 => "checksum_mismatch",
            8 => "trailing_bytes",
            _ => return None,
        })
    }
}

/// A decoded, checked header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: MessageKind,
    pub payload_bytes: usize,
    pub crc32c: u32,
}

impl FrameHeader {
    /// Decode and check a header (version, kind, length bound). `bytes` may be longer than a
    /// header; only the first [`HEADER_BYTES`] are read.
    pub fn decode(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
        Self::decode_with(KINDS, bytes)
    }

    /// [`FrameHeader::decode`] against another kind table (tests of retired kinds).
    pub fn decode_with(table: &[KindRow], bytes: &[u8]) -> Result<FrameHeader, FrameError> {
        let Some(header) = bytes.get(..HEADER_BYTES) else {
            return Err(FrameError::TooShort {
                found_bytes: bytes.len(),
            });
        };
        let version = header[0];
        if version != FORMAT_VERSION {
            return Err(FrameError::WrongVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let kind_number = u16::from_le_bytes([header[1], header[2]]);
        let payload_bytes = u32::from_le_bytes([header[3], header[4], header[5], header[6]]);
        let crc32c = u32::from_le_bytes([header[7], header[8], header[9], header[10]]);
        let kind = match lookup(table, kind_number) {
            Ok(kind) => kind,
            Err(Some(row)) => {
                return Err(FrameError::RetiredKind {
                    kind: row.number,
                    name: row.name,
                })
            }
            Err(None) => return Err(FrameError::UnknownKind { kind: kind_number }),
        };
        // u32 always fits in u64; compare before converting to usize.
        if u64::from(payload_bytes) > PAYLOAD_BYTES_MAX as u64 {
            return Err(FrameError::Oversize {
                payload_bytes: u64::from(payload_bytes),
            });
        }
        Ok(FrameHeader {
            kind,
            payload_bytes: payload_bytes as usize,
            crc32c,
        })
    }

    /// Check that `payload` is exactly the announced length and matches the checksum.
    pub fn verify_payload(&self, payload: &[u8]) -> Result<(), FrameError> {
        if payload.len() < self.payload_bytes {
            return Err(FrameError::Truncated {
                expected_bytes: self.payload_bytes,
                found_bytes: payload.len(),
            });
        }
        if payload.len() > self.payload_bytes {
            return Err(FrameError::TrailingBytes {
                trailing_bytes: payload.len() - self.payload_bytes,
            });
        }
        let found = crc32c::crc32c(payload);
        if found != self.crc32c {
            return Err(FrameError::ChecksumMismatch {
                expected: self.crc32c,
                found,
            });
        }
        Ok(())
    }

    /// Encode a header for `kind` and `payload`.
    pub fn encode(kind: MessageKind, payload: &[u8]) -> Result<[u8; HEADER_BYTES], FrameError> {
        if payload.len() > PAYLOAD_BYTES_MAX {
            return Err(FrameError::Oversize {
                payload_bytes: payload.len() as u64,
            });
        }
        let mut header = [0u8; HEADER_BYTES];
        header[0] = FORMAT_VERSION;
        header[1..3].copy_from_slice(&kind.number().to_le_bytes());
        // Bounded above by PAYLOAD_BYTES_MAX < u32::MAX.
        header[3..7].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[7..11].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        Ok(header)
    }
}

/// A whole frame in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: MessageKind,
    pub payload: Vec<u8>,
}

/// Encode `kind` + `payload` into one buffer (header then payload).
pub fn encode_frame(kind: MessageKind, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let header = FrameHeader::encode(kind, payload)?;
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    Ok(out)
}

/// Decode exactly one frame occupying all of `bytes`.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame, FrameError> {
    let header = FrameHeader::decode(bytes)?;
    let payload = bytes.get(HEADER_BYTES..).unwrap_or(&[]);
    header.verify_payload(payload)?;
    Ok(Frame {
        kind: header.kind,
        payload: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::{KindRow, KindStatus};

    #[test]
    fn round_trip() {
        let bytes = encode_frame(MessageKind::PING, b"hello").unwrap();
        assert_eq!(bytes.len(), HEADER_BYTES + 5);
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(&bytes[1..3], &[1, 0]);
        assert_eq!(&bytes[3..7], &[5, 0, 0, 0]);
        let frame = decode_frame(&bytes).unwrap();
        assert_eq!(
            frame,
            Frame {
                kind: MessageKind::PING,
                payload: b"hello".to_vec()
            }
        );
    }

    #[test]
    fn each_error_is_typed() {
        let good = encode_frame(MessageKind::PONG, b"abc").unwrap();
        assert_eq!(
            decode_frame(&good[..4]),
            Err(FrameError::TooShort { found_bytes: 4 })
        );
        let mut wrong_version = good.clone();
        wrong_version[0] = 9;
        assert_eq!(
            decode_frame(&wrong_version),
            Err(FrameError::WrongVersion {
                found: 9,
                supported: 1
            })
        );
        let mut unknown = good.clone();
        unknown[1] = 200;
        assert_eq!(
            decode_frame(&unknown),
            Err(FrameError::UnknownKind { kind: 200 })
        );
        let mut oversize = good.clone();
        oversize[3..7].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_frame(&oversize),
            Err(FrameError::Oversize { .. })
        ));
        assert_eq!(
            decode_frame(&good[..good.len() - 1]),
            Err(FrameError::Truncated {
                expected_bytes: 3,
                found_bytes: 2
            })
        );
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            decode_frame(&flipped),
            Err(FrameError::ChecksumMismatch { .. })
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            decode_frame(&trailing),
            Err(FrameError::TrailingBytes { trailing_bytes: 1 })
        );
    }

    #[test]
    fn retired_kind_says_upgrade() {
        let table = [KindRow {
            number: 1,
            name: "Ping",
            status: KindStatus::Retired,
            senders: crate::Roles::NONE,
        }];
        let bytes = encode_frame(MessageKind::PING, b"").unwrap();
        let err = FrameHeader::decode_with(&table, &bytes).unwrap_err();
        assert_eq!(
            err,
            FrameError::RetiredKind {
                kind: 1,
                name: "Ping"
            }
        );
        assert!(err.to_string().contains("retired, upgrade all nodes"));
    }

    #[test]
    fn max_payload_accepted_one_more_refused() {
        let mut header = FrameHeader::encode(MessageKind::PING, b"").unwrap();
        header[3..7].copy_from_slice(&(PAYLOAD_BYTES_MAX as u32).to_le_bytes());
        assert_eq!(
            FrameHeader::decode(&header).unwrap().payload_bytes,
            PAYLOAD_BYTES_MAX
        );
        header[3..7].copy_from_slice(&(PAYLOAD_BYTES_MAX as u32 + 1).to_le_bytes());
        assert!(matches!(
            FrameHeader::decode(&header),
            Err(FrameError::Oversize { .. })
        ));
    }

    #[test]
    fn numbers_and_codes_agree() {
        for n in 1..=8 {
            assert!(FrameError::code_for_number(n).is_some());
        }
        assert_eq!(FrameError::code_for_number(0), None);
        let err = FrameError::ChecksumMismatch {
            expected: 1,
            found: 2,
        };
        assert_eq!(FrameError::code_for_number(err.number()), Some(err.code()));
    }
}
