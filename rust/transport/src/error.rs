//! Typed transport errors. The Python binding maps each variant 1:1 onto a class of
//! `nodedb_cluster.errors`.

use std::net::SocketAddr;
use std::time::Duration;

use nodedb_wire::{FrameError, NodeId};

#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// An operation did not finish within its deadline.
    #[error("{op} timed out after {} ms", timeout.as_millis())]
    Timeout { op: &'static str, timeout: Duration },
    /// The peer could not be reached or the connection was lost.
    #[error("peer {addr} unreachable: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    /// The TLS handshake failed (wrong CA, insecure vs mTLS, pin mismatch, ALPN).
    #[error("TLS handshake with {addr} failed: {reason}")]
    Handshake { addr: SocketAddr, reason: String },
    /// `send_rpc` to a node id never registered.
    #[error("unknown peer {node_id}: register_peer it first")]
    UnknownPeer { node_id: NodeId },
    /// A frame we received is malformed.
    #[error("malformed frame: {0}")]
    Frame(FrameError),
    /// The peer reset our request stream because it could not decode our frame.
    #[error("peer {addr} rejected the frame ({code})")]
    PeerRejectedFrame {
        addr: SocketAddr,
        code: &'static str,
    },
    /// The peer answered with an Error message.
    #[error("peer error {code}: {message}")]
    Remote { code: String, message: String },
    /// The peer refused the request: our certificate's role may not send that kind (or the
    /// node does not allow it at all). Retrying cannot help.
    #[error("permission denied: {message}")]
    PermissionDenied { message: String },
    /// The transport was closed.
    #[error("transport is closed")]
    Closed,
    /// The UDP socket could not be bound.
    #[error("cannot bind {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    /// Credentials could not be read, parsed or generated.
    #[error("credentials: {reason}")]
    Credentials { reason: String },
    /// A configuration value is invalid.
    #[error("invalid transport config: {reason}")]
    Config { reason: String },
}

impl TransportError {
    /// Stable label for the metrics error counters.
    pub fn label(&self) -> &'static str {
        match self {
            TransportError::Timeout { .. } => "timeout",
            TransportError::Unreachable { .. } => "unreachable",
            TransportError::Handshake { .. } => "handshake",
            TransportError::UnknownPeer { .. } => "unknown_peer",
            TransportError::Frame(_) => "frame",
            TransportError::PeerRejectedFrame { .. } => "peer_rejected_frame",
            TransportError::Remote { .. } => "remote",
            TransportError::PermissionDenied { .. } => "permission_denied",
            TransportError::Closed => "closed",
            TransportError::Bind { .. } => "bind",
            TransportError::Credentials { .. } => "credentials",
            TransportError::Config { .. } => "config",
        }
    }
}

impl From<FrameError> for TransportError {
    fn from(err: FrameError) -> Self {
        TransportError::Frame(err)
    }
}
