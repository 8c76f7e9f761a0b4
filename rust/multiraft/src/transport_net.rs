//! `RaftNetwork` over nodedb-transport: raft frames travel as one-way QUIC frames of wire kinds
//! RaftBatch (16), SnapshotChunk (17), SnapshotAck (18) on the node's one endpoint, and inbound
//! frames of those kinds are handed to the engine inside Rust (they never reach Python).
//!
//! Each peer has bounded outbound queues drained by tokio tasks, so the driver thread never
//! waits on the network: a full queue drops the frame (raft retransmits), counted. The queues
//! are bounded in frames and, together, in bytes: snapshot chunks (4 MiB) and big appends
//! would otherwise let a slow peer hold gigabytes of queued frames on the sender.
//!
//! Two queues per peer, one per [`Lane`], each sent in order by a task of its own; the signal
//! lane's streams have the higher QUIC priority.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nodedb_transport::{handler_fn, PeerIdentity, Refusal, Transport};
use nodedb_wire::MessageKind;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::codec::{Frame, KIND_RAFT_BATCH, KIND_SNAPSHOT_ACK, KIND_SNAPSHOT_CHUNK};
use crate::driver::Inbound;
use crate::ids::NodeId;
use crate::network::{Lane, NetError, RaftNetwork};

/// Frames queued per peer before drops: a few seconds of rounds at full rate.
pub const PEER_QUEUE_FRAMES_DEFAULT: usize = 1024;
/// Bytes queued (or being sent) per peer, at most, in KiB: a slow peer costs at most this much
/// memory on the sender (16 snapshot chunks, or many seconds of small rounds).
pub const PEER_QUEUE_KIB: u32 = 64 << 10;

/// QUIC priority of the signal lane's streams (the log lane's are 0).
const SIGNAL_STREAM_PRIORITY: i32 = 1;

/// A frame on its way to a peer, holding its share of the peer's byte budget until sent.
type Queued = (Frame, OwnedSemaphorePermit);

#[derive(Clone)]
struct PeerQueue {
    log: mpsc::Sender<Queued>,
    signal: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
}

impl PeerQueue {
    fn lane(&self, lane: Lane) -> &mpsc::Sender<Queued> {
        match lane {
            Lane::Log => &self.log,
            Lane::Signal => &self.signal,
        }
    }
}

/// Outbound raft traffic over QUIC.
pub struct TransportNetwork {
    transport: Arc<Transport>,
    runtime: Handle,
    queue_frames_max: usize,
    peers: Mutex<HashMap<NodeId, PeerQueue>>,
}

/// The byte budget a frame takes (KiB, rounded up, at least 1, at most the whole budget).
fn kib_of(frame: &Frame) -> u32 {
    let kib = frame.approx_bytes().div_ceil(1024).max(1);
    u32::try_from(kib).unwrap_or(u32::MAX).min(PEER_QUEUE_KIB)
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
    /// `Inbound::deliver_bytes_from`, never a panic. Refused, counted and logged through the
    /// transport's refusal log: a frame from a node certificate that is not a registered peer
    /// with the registered key (`unknown_sender`), and one whose claimed sender is not the node
    /// id of the certificate it came under (`sender_mismatch`).
    pub fn attach_inbound(transport_arc: &Arc<Transport>, inbound: Inbound) {
        let transport: &Transport = transport_arc;
        for kind in [KIND_RAFT_BATCH, KIND_SNAPSHOT_CHUNK, KIND_SNAPSHOT_ACK] {
            let Some(wk) = wire_kind(kind) else {
                continue;
            };
            let inbound = inbound.clone();
            let transport_ref = Arc::downgrade(transport_arc);
            transport.register_handler(
                wk,
                handler_fn(move |frame| {
                    let Some(transport) = transport_ref.upgrade() else {
                        return std::future::ready(Ok(None));
                    };
                    // The transport already refused every role but node. Under mTLS the
                    // certificate's node id is the only sender this connection may claim, and
                    // it must be a member this node knows, holding the key it registered.
                    let sender = match frame.peer.identity.as_ref() {
                        PeerIdentity::Unauthenticated => None,
                        identity => Some(NodeId(identity.node_id().unwrap_or(0))),
                    };
                    let refusal = match sender.map(|s| known_sender(&transport, &frame, s)) {
                        Some(Err(refusal)) => Some(refusal),
                        _ => inbound
                            .deliver_bytes_from(kind, &frame.payload, sender)
                            .err()
                            .map(|message| Refusal {
                                reason: "sender_mismatch",
                                message,
                            }),
                    };
                    if let Some(refusal) = refusal {
                        transport.record_refusal(&frame.peer, wk, refusal);
                    }
                    std::future::ready(Ok(None))
                }),
            );
        }
    }

    fn sender(&self, to: NodeId) -> PeerQueue {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = peers
            .get(&to)
            .filter(|q| !q.log.is_closed() && !q.signal.is_closed())
        {
            return q.clone();
        }
        let lane = |priority: i32| {
            let (tx, rx) = mpsc::channel(self.queue_frames_max);
            let transport = Arc::clone(&self.transport);
            self.runtime.spawn(pump(transport, to, rx, priority));
            tx
        };
        let q = PeerQueue {
            log: lane(0),
            signal: lane(SIGNAL_STREAM_PRIORITY),
            bytes: Arc::new(Semaphore::new(PEER_QUEUE_KIB as usize)),
        };
        peers.insert(to, q.clone());
        q
    }
}

/// A node-role sender may speak for the cluster only if it is a registered peer (a node of the
/// topology) and presents the key registered for it: a stray certificate of the node role (a
/// removed or never-admitted node) cannot take part in any group.
fn known_sender(
    transport: &Transport,
    frame: &nodedb_transport::InboundFrame,
    sender: NodeId,
) -> Result<(), Refusal> {
    let Some(expected) = transport.registered_pin(nodedb_wire::NodeId(sender.0)) else {
        return Err(Refusal {
            reason: "unknown_sender",
            message: format!("node {} is not a member this node knows", sender.0),
        });
    };
    match expected {
        Some(pin) if frame.peer.spki_pin != Some(pin) => Err(Refusal {
            reason: "unknown_sender",
            message: format!(
                "node {} presented another key than the one in the topology",
                sender.0
            ),
        }),
        _ => Ok(()),
    }
}

/// Sends one lane of a peer's frames in order, on streams of QUIC priority `priority`. A failed
/// send (peer down: it took up to the connect timeout) also drops whatever queued meanwhile:
/// those frames are stale by now and raft retransmits what still matters, so a returning peer
/// is not fed a backlog first.
async fn pump(
    transport: Arc<Transport>,
    to: NodeId,
    mut rx: mpsc::Receiver<Queued>,
    priority: i32,
) {
    while let Some((frame, _budget)) = rx.recv().await {
        let (kind, payload) = frame.encode();
        let Some(wk) = wire_kind(kind) else {
            continue;
        };
        if transport.is_closed() {
            return;
        }
        // Errors are counted by the transport's own metrics.
        let sent = transport
            .send_oneway_prioritized(
                nodedb_wire::NodeId(to.0),
                wk,
                Bytes::from(payload),
                priority,
            )
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
        let q = self.sender(to);
        let Ok(budget) = Arc::clone(&q.bytes).try_acquire_many_owned(kib_of(&frame)) else {
            return Err(NetError::Full(to));
        };
        q.lane(Lane::of(&frame))
            .try_send((frame, budget))
            .map_err(|e| match e {
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
        let q = self.sender(to);
        let kib = kib_of(&frame);
        self.runtime.block_on(async move {
            let queued = async {
                let budget = Arc::clone(&q.bytes)
                    .acquire_many_owned(kib)
                    .await
                    .map_err(|_| NetError::Unreachable(to))?;
                q.lane(Lane::of(&frame))
                    .send((frame, budget))
                    .await
                    .map_err(|_| NetError::Unreachable(to))
            };
            tokio::time::timeout(timeout, queued)
                .await
                .unwrap_or(Err(NetError::Full(to)))
        })
    }
}
