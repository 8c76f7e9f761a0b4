//! `RaftNetwork` over nodedb-transport: raft frames travel as one-way QUIC frames of wire kinds
//! RaftBatch (16), SnapshotChunk (17), SnapshotAck (18) on the node's one endpoint, and inbound
//! frames of those kinds are handed to the engine inside Rust (they never reach Python).
//!
//! Each peer has a bounded outbound queue drained by one tokio task, so the driver thread never
//! waits on the network: a full queue drops the frame (raft retransmits), counted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nodedb_transport::{handler_fn, PeerIdentity, Refusal, Transport};
use nodedb_wire::MessageKind;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::codec::{Frame, KIND_RAFT_BATCH, KIND_SNAPSHOT_ACK, KIND_SNAPSHOT_CHUNK};
use crate::driver::Inbound;
use crate::ids::NodeId;
use crate::network::{NetError, RaftNetwork};

/// Frames queued per peer before drops: a few seconds of rounds at full rate, so a slow peer
/// costs bounded memory (frames are ≤ 16 MiB batches or one snapshot chunk).
pub const PEER_QUEUE_FRAMES_DEFAULT: usize = 1024;

/// Outbound raft traffic over QUIC.
pub struct TransportNetwork {
    transport: Arc<Transport>,
    runtime: Handle,
    queue_frames_max: usize,
    peers: Mutex<HashMap<NodeId, mpsc::Sender<Frame>>>,
}

fn wire_kind(kind: u16) -> Option<MessageKind> {
    MessageKind::from_u16(kind).ok()
}

impl TransportNetwork {
    /// `runtime` is where the per-peer send tasks run (the transport's runtime).
    pub fn new(transport: Arc<Transport>, runtime: Handle, queue_frames_max: usize) -> Arc<Self> {
        Arc::new(TransportNetwork {
            transport,
            runtime,
            queue_frames_max,
            peers: Mutex::new(HashMap::new()),
        })
    }

    /// Routes inbound raft kinds (16–18) of `transport` to `inbound`. A bad frame is counted by
    /// `Inbound::deliver_bytes_from`, never a panic; one whose claimed sender is not the node id
    /// of the certificate it came under is dropped there and counted as a refusal here.
    pub fn attach_inbound(transport_arc: &Arc<Transport>, inbound: Inbound) {
        let transport: &Transport = transport_arc;
        for kind in [KIND_RAFT_BATCH, KIND_SNAPSHOT_CHUNK, KIND_SNAPSHOT_ACK] {
            let Some(wk) = wire_kind(kind) else {
                continue;
            };
            let inbound = inbound.clone();
            let refusals = Arc::downgrade(transport_arc);
            transport.register_handler(
                wk,
                handler_fn(move |frame| {
                    // The transport already refused every role but node; under mTLS the
                    // certificate's node id is the only sender this connection may claim.
                    let sender = match frame.peer.identity.as_ref() {
                        PeerIdentity::Unauthenticated => None,
                        identity => Some(NodeId(identity.node_id().unwrap_or(0))),
                    };
                    if let Err(message) = inbound.deliver_bytes_from(kind, &frame.payload, sender) {
                        if let Some(transport) = refusals.upgrade() {
                            let refusal = Refusal {
                                reason: "sender_mismatch",
                                message,
                            };
                            transport.record_refusal(&frame.peer, wk, refusal);
                        }
                    }
                    async { Ok(None) }
                }),
            );
        }
    }

    fn sender(&self, to: NodeId) -> mpsc::Sender<Frame> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = peers.get(&to).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(self.queue_frames_max);
        let transport = Arc::clone(&self.transport);
        self.runtime.spawn(pump(transport, to, rx));
        peers.insert(to, tx.clone());
        tx
    }
}

/// Sends one peer's frames in order. A failed send (peer down: it took up to the connect
/// timeout) also drops whatever queued meanwhile: those frames are stale by now and raft
/// retransmits what still matters, so a returning peer is not fed a backlog first.
async fn pump(transport: Arc<Transport>, to: NodeId, mut rx: mpsc::Receiver<Frame>) {
    while let Some(frame) = rx.recv().await {
        let (kind, payload) = frame.encode();
        let Some(wk) = wire_kind(kind) else {
            continue;
        };
        if transport.is_closed() {
            return;
        }
        // Errors are counted by the transport's own metrics.
        let sent = transport
            .send_oneway(nodedb_wire::NodeId(to.0), wk, Bytes::from(payload))
            .await;
        if sent.is_err() {
            while rx.try_recv().is_ok() {}
        }
    }
}

impl RaftNetwork for TransportNetwork {
    fn send(&self, to: NodeId, frame: Frame) -> Result<(), NetError> {
        if self
            .transport
            .peer_addr(nodedb_wire::NodeId(to.0))
            .is_none()
        {
            return Err(NetError::Unreachable(to));
        }
        self.sender(to).try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => NetError::Full(to),
            mpsc::error::TrySendError::Closed(_) => NetError::Unreachable(to),
        })
    }

    /// Waits for queue space (snapshot sender threads only: never called on a runtime thread).
    fn send_blocking(&self, to: NodeId, frame: Frame, timeout: Duration) -> Result<(), NetError> {
        if self
            .transport
            .peer_addr(nodedb_wire::NodeId(to.0))
            .is_none()
        {
            return Err(NetError::Unreachable(to));
        }
        let tx = self.sender(to);
        self.runtime
            .block_on(tx.send_timeout(frame, timeout))
            .map_err(|e| match e {
                mpsc::error::SendTimeoutError::Timeout(_) => NetError::Full(to),
                mpsc::error::SendTimeoutError::Closed(_) => NetError::Unreachable(to),
            })
    }
}
