//! Reading and writing one frame on a QUIC stream. Lengths are checked before any allocation and
//! the payload buffer grows only as bytes actually arrive (flow control bounds that), so a peer
//! announcing 64 MiB and sending nothing costs nothing.
//!
//! One frame per stream, then the stream ends: `write_frame` finishes the stream after the
//! payload, and `read_payload` requires the end right after it. Bytes after the frame are
//! `FrameError::TrailingBytes` (the server counts it and resets the stream with its code),
//! never silently ignored.

use bytes::Bytes;
use nodedb_wire::{FrameError, FrameHeader, MessageKind, HEADER_BYTES};

/// Bytes reserved up front for a payload; the rest grows with arrivals.
const PAYLOAD_PREALLOC_BYTES_MAX: usize = 1024 * 1024;
/// Largest chunk read before it is charged to an inbound budget: a stream waiting for room
/// holds at most this outside the budget.
const CHARGED_CHUNK_BYTES_MAX: usize = 64 * 1024;
/// At most this many bytes after a frame are read to report how many trailed it (the stream is
/// refused either way; a peer sending more is not worth reading).
const TRAILING_PROBE_BYTES: usize = 64 * 1024;

#[derive(Debug)]
pub enum ReadFrameError {
    /// The bytes are not a valid frame.
    Frame(FrameError),
    /// The stream or connection failed.
    Read(quinn::ReadError),
}

impl From<quinn::ReadError> for ReadFrameError {
    fn from(err: quinn::ReadError) -> Self {
        ReadFrameError::Read(err)
    }
}

/// Read exactly one frame (header, then the announced payload).
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
) -> Result<(MessageKind, Bytes), ReadFrameError> {
    let header = read_header(recv).await?;
    let payload = read_payload(recv, &header).await?;
    Ok((header.kind, payload))
}

/// Read and check a header (version, kind, length bound) before anything is allocated.
pub async fn read_header(recv: &mut quinn::RecvStream) -> Result<FrameHeader, ReadFrameError> {
    let mut header = [0u8; HEADER_BYTES];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(found_bytes)) => {
            return Err(ReadFrameError::Frame(FrameError::TooShort { found_bytes }))
        }
        Err(quinn::ReadExactError::ReadError(err)) => return Err(ReadFrameError::Read(err)),
    }
    FrameHeader::decode(&header).map_err(ReadFrameError::Frame)
}

/// Read the payload `header` announces, growing the buffer only as bytes arrive, verify it, and
/// require the stream to end right after it (`FrameError::TrailingBytes` otherwise: one frame
/// per stream). Waits for the end of the stream: the caller bounds the wait.
pub async fn read_payload(
    recv: &mut quinn::RecvStream,
    header: &FrameHeader,
) -> Result<Bytes, ReadFrameError> {
    let mut payload = Vec::with_capacity(header.payload_bytes.min(PAYLOAD_PREALLOC_BYTES_MAX));
    while payload.len() < header.payload_bytes {
        let wanted = header.payload_bytes - payload.len();
        let chunk = next_chunk(recv, header, payload.len(), wanted).await?;
        payload.extend_from_slice(&chunk);
    }
    finish_payload(recv, header, payload).await
}

/// [`read_payload`] charging each chunk to `charge` before it is kept: the budget holds the
/// bytes that arrived (at most one chunk more, while it waits for room), never the bytes a
/// header announced. Nothing is allocated before the first byte.
pub(crate) async fn read_payload_charged(
    recv: &mut quinn::RecvStream,
    header: &FrameHeader,
    charge: &mut crate::budget::FrameCharge,
) -> Result<Bytes, ReadFrameError> {
    let mut payload = Vec::new();
    while payload.len() < header.payload_bytes {
        let wanted = (header.payload_bytes - payload.len()).min(CHARGED_CHUNK_BYTES_MAX);
        let chunk = next_chunk(recv, header, payload.len(), wanted).await?;
        charge.charge(chunk.len()).await;
        if payload.capacity() == 0 {
            payload.reserve_exact(header.payload_bytes.min(PAYLOAD_PREALLOC_BYTES_MAX));
        }
        payload.extend_from_slice(&chunk);
    }
    finish_payload(recv, header, payload).await
}

/// The next chunk of at most `wanted` bytes of the payload, `found_bytes` of which are read.
async fn next_chunk(
    recv: &mut quinn::RecvStream,
    header: &FrameHeader,
    found_bytes: usize,
    wanted: usize,
) -> Result<Bytes, ReadFrameError> {
    match recv.read_chunk(wanted, true).await? {
        Some(chunk) => Ok(chunk.bytes),
        None => Err(ReadFrameError::Frame(FrameError::Truncated {
            expected_bytes: header.payload_bytes,
            found_bytes,
        })),
    }
}

/// Verify a whole payload and require the end of the stream right after it.
async fn finish_payload(
    recv: &mut quinn::RecvStream,
    header: &FrameHeader,
    payload: Vec<u8>,
) -> Result<Bytes, ReadFrameError> {
    header
        .verify_payload(&payload)
        .map_err(ReadFrameError::Frame)?;
    while let Some(trailing) = recv.read_chunk(TRAILING_PROBE_BYTES, true).await? {
        if !trailing.bytes.is_empty() {
            return Err(ReadFrameError::Frame(FrameError::TrailingBytes {
                trailing_bytes: trailing.bytes.len(),
            }));
        }
    }
    Ok(Bytes::from(payload))
}

/// Write one frame and finish the stream.
pub async fn write_frame(
    send: &mut quinn::SendStream,
    kind: MessageKind,
    payload: Bytes,
) -> Result<(), WriteFrameError> {
    let header = FrameHeader::encode(kind, &payload).map_err(WriteFrameError::Frame)?;
    let mut chunks = [Bytes::copy_from_slice(&header), payload];
    send.write_all_chunks(&mut chunks)
        .await
        .map_err(WriteFrameError::Write)?;
    send.finish()
        .map_err(|_| WriteFrameError::Write(quinn::WriteError::ClosedStream))?;
    Ok(())
}

#[derive(Debug)]
pub enum WriteFrameError {
    Frame(FrameError),
    Write(quinn::WriteError),
}
