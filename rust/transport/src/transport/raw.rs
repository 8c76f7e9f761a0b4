//! TEST/DIAGNOSTIC: raw bytes on a live stream, for tests that prove garbage, a stalled frame or
//! an unread reply is refused or bounded without harming the connection.

use super::*;

impl Transport {
    /// TEST/DIAGNOSTIC: write raw `bytes` (not necessarily a frame) on a fresh bidirectional
    /// stream of the pooled connection to `addr` (finishing the stream if `finish`) and read the
    /// answer: `Ok(Ok(frame))`, `Ok(Err(code))` when the peer reset the stream, or an error.
    /// Lets tests prove that garbage or a stalled frame on a live stream is refused without
    /// harming the connection.
    pub async fn send_raw_to_addr(
        &self,
        addr: SocketAddr,
        bytes: Bytes,
        finish: bool,
    ) -> Result<Result<OutboundFrame, u64>, TransportError> {
        let timeout = self.inner.config.rpc_timeout;
        let attempt = async {
            let stream = self.open_raw_to_addr(addr, bytes, finish).await?;
            stream.read_answer().await
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or(Err(TransportError::Timeout {
                op: "send_raw",
                timeout,
            }))
    }

    /// TEST/DIAGNOSTIC: [`Transport::send_raw_to_addr`] without reading the answer yet: the
    /// stream is open (its bytes handed to QUIC) when this returns, and nothing of the answer
    /// is read until [`RawStream::answer`] (a peer that does not read its replies, or holds
    /// many streams at once).
    pub async fn open_raw_to_addr(
        &self,
        addr: SocketAddr,
        bytes: Bytes,
        finish: bool,
    ) -> Result<RawStream, TransportError> {
        let inner = &self.inner;
        let (conn, _) = inner.connection(addr, None).await?;
        let lost = |e: quinn::ConnectionError| inner.connection_error(addr, e);
        let (mut send, recv) = conn.open_bi().await.map_err(lost)?;
        send.write_all(&bytes)
            .await
            .map_err(|e| write_error(addr, inner, e))?;
        if finish {
            let _ = send.finish();
        }
        Ok(RawStream {
            inner: Arc::clone(inner),
            addr,
            send,
            recv,
        })
    }
}

/// TEST/DIAGNOSTIC: a stream opened by [`Transport::open_raw_to_addr`], its answer not read.
pub struct RawStream {
    inner: Arc<Inner>,
    addr: SocketAddr,
    /// Kept open (dropping it would finish the stream).
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl RawStream {
    /// Write more raw `bytes` on the stream (finishing it if `finish`).
    pub async fn send_more(&mut self, bytes: Bytes, finish: bool) -> Result<(), TransportError> {
        self.send
            .write_all(&bytes)
            .await
            .map_err(|e| write_error(self.addr, &self.inner, e))?;
        if finish {
            let _ = self.send.finish();
        }
        Ok(())
    }

    /// Read the answer within `rpc_timeout`: `Ok(Ok(frame))`, `Ok(Err(code))` when the peer
    /// reset the stream, or an error.
    pub async fn answer(self) -> Result<Result<OutboundFrame, u64>, TransportError> {
        let timeout = self.inner.config.rpc_timeout;
        tokio::time::timeout(timeout, self.read_answer())
            .await
            .unwrap_or(Err(TransportError::Timeout {
                op: "send_raw",
                timeout,
            }))
    }

    async fn read_answer(mut self) -> Result<Result<OutboundFrame, u64>, TransportError> {
        let (addr, inner) = (self.addr, &self.inner);
        match read_frame(&mut self.recv).await {
            Ok((kind, payload)) => Ok(Ok(OutboundFrame { kind, payload })),
            Err(ReadFrameError::Read(quinn::ReadError::Reset(code))) => Ok(Err(code.into_inner())),
            Err(ReadFrameError::Read(e)) => Err(read_error(addr, inner, e)),
            Err(ReadFrameError::Frame(e)) => Err(TransportError::Frame(e)),
        }
    }
}
