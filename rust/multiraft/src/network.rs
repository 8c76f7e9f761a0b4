//! The network seam: send a frame (a batch of raft messages, a snapshot chunk or ack) to a peer.
//! Implemented over nodedb-transport (`transport_net.rs`) and in memory (`SimNetwork`, with
//! per-link partitions and drop rates, after raft-rs `harness/src/network.rs`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use raft::eraftpb::{Message, MessageType};

use crate::codec::Frame;
use crate::ids::NodeId;

/// Why a frame was not handed to the network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// The peer's outbound queue is full; the frame was dropped (raft retransmits).
    #[error("outbound queue to {0} full")]
    Full(NodeId),
    /// No address is known for the peer, or the network is shut down.
    #[error("peer {0} unreachable")]
    Unreachable(NodeId),
}

/// Which of a peer's send queues a frame takes. The network sends each queue in order, and a
/// `Signal` frame ahead of `Log` bytes already queued: a heartbeat queued behind an append of a
/// 32 MiB entry waited for it to cross the link, which over 200 Mbit/s outlasted the election
/// timeout, so the group's followers campaigned again and again while the entry was sent.
/// Nothing else is reordered: appends stay in order among themselves, and a heartbeat carries
/// no entries and commits at most what its follower acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Log entries: appends (entries, or the commit index that follows them), snapshot chunks.
    Log,
    /// Everything else: heartbeats, votes, responses, snapshot acks. Small.
    Signal,
}

impl Lane {
    pub fn of_message(m: &Message) -> Lane {
        match m.get_msg_type() {
            MessageType::MsgAppend | MessageType::MsgSnapshot => Lane::Log,
            _ => Lane::Signal,
        }
    }

    /// A batch takes the log lane if any of its messages does (the engine sends the two kinds
    /// in frames of their own).
    pub fn of(frame: &Frame) -> Lane {
        match frame {
            Frame::Batch(batch)
                if batch
                    .messages
                    .iter()
                    .any(|(_, m)| Lane::of_message(m) == Lane::Log) =>
            {
                Lane::Log
            }
            Frame::Chunk(_) => Lane::Log,
            Frame::Batch(_) | Frame::Ack(_) => Lane::Signal,
        }
    }
}

/// Sends frames to peers. `send` never blocks: raft tolerates loss, so a full queue drops.
/// `send_blocking` waits up to `timeout` for queue space (used by snapshot transfer threads,
/// where a dropped chunk would restart the whole transfer).
pub trait RaftNetwork: Send + Sync {
    fn send(&self, to: NodeId, frame: Frame) -> Result<(), NetError>;
    fn send_blocking(&self, to: NodeId, frame: Frame, _timeout: Duration) -> Result<(), NetError> {
        self.send(to, frame)
    }
}

/// Where a simulated node's inbound frames go: queued for a test to pump, or handed straight to
/// a running engine.
type Deliver = Box<dyn Fn(Frame) + Send + Sync>;

#[derive(Default)]
struct Hub {
    queues: BTreeMap<NodeId, VecDeque<Frame>>,
    deliver: BTreeMap<NodeId, Arc<Deliver>>,
    /// Directed links that drop everything.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Nodes that are down: everything to or from them is dropped.
    down: BTreeSet<NodeId>,
    /// Drop rate per directed link, in parts per million.
    drop_ppm: BTreeMap<(NodeId, NodeId), u32>,
    rng: u64,
    dropped_frames: u64,
    delivered_frames: u64,
    /// Frames per node queue before drop (bounded like a real outbound queue).
    queue_frames_max: usize,
    /// Shuffle frames on drain.
    reorder: bool,
}

impl Hub {
    /// xorshift64*: deterministic drops for a fixed seed.
    fn next_ppm(&mut self) -> u32 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % 1_000_000) as u32
    }
}

/// An in-memory network shared by simulated nodes. Clone it to hand a node its endpoint.
#[derive(Clone)]
pub struct SimNetwork {
    hub: Arc<Mutex<Hub>>,
}

/// One node's view of the simulated network.
#[derive(Clone)]
pub struct SimEndpoint {
    me: NodeId,
    hub: Arc<Mutex<Hub>>,
}

impl SimNetwork {
    /// A network whose queues hold up to `queue_frames_max` frames per node; `seed` fixes drops.
    pub fn new(seed: u64, queue_frames_max: usize) -> Self {
        let hub = Hub {
            rng: seed | 1,
            queue_frames_max,
            ..Default::default()
        };
        SimNetwork {
            hub: Arc::new(Mutex::new(hub)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn endpoint(&self, me: NodeId) -> SimEndpoint {
        self.lock().queues.entry(me).or_default();
        SimEndpoint {
            me,
            hub: Arc::clone(&self.hub),
        }
    }

    /// Hands `me`'s inbound frames straight to `deliver` from now on (a running engine).
    pub fn attach(&self, me: NodeId, deliver: impl Fn(Frame) + Send + Sync + 'static) {
        let boxed: Deliver = Box::new(deliver);
        self.lock().deliver.insert(me, Arc::new(boxed));
    }

    /// Stops direct delivery to `me` (its engine stopped); frames queue again.
    pub fn detach(&self, me: NodeId) {
        self.lock().deliver.remove(&me);
    }

    /// Takes every frame queued for `me` (shuffled if `set_reorder(true)`).
    pub fn drain(&self, me: NodeId) -> Vec<Frame> {
        let mut h = self.lock();
        let mut out: Vec<Frame> = h
            .queues
            .get_mut(&me)
            .map(|q| q.drain(..).collect())
            .unwrap_or_default();
        if h.reorder {
            // Fisher-Yates with the hub's seeded generator: reproducible reordering.
            for i in (1..out.len()).rev() {
                let j = (u64::from(h.next_ppm()) % (i as u64 + 1)) as usize;
                out.swap(i, j);
            }
        }
        out
    }

    /// Deliver queued frames in a seeded random order (QUIC streams may overtake each other).
    pub fn set_reorder(&self, reorder: bool) {
        self.lock().reorder = reorder;
    }

    /// Cuts both directions between every node of `a` and every node of `b`.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let mut h = self.lock();
        for x in a {
            for y in b {
                h.cut.insert((*x, *y));
                h.cut.insert((*y, *x));
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    pub fn set_down(&self, node: NodeId, down: bool) {
        let mut h = self.lock();
        if down {
            h.down.insert(node);
            h.queues.entry(node).or_default().clear();
        } else {
            h.down.remove(&node);
        }
    }

    /// Drops `ppm` parts per million of frames from `from` to `to`.
    pub fn set_drop_ppm(&self, from: NodeId, to: NodeId, ppm: u32) {
        self.lock().drop_ppm.insert((from, to), ppm);
    }

    pub fn dropped_frames(&self) -> u64 {
        self.lock().dropped_frames
    }
    pub fn delivered_frames(&self) -> u64 {
        self.lock().delivered_frames
    }
}

impl RaftNetwork for SimEndpoint {
    fn send(&self, to: NodeId, frame: Frame) -> Result<(), NetError> {
        let deliver = {
            let mut h = self.hub.lock().unwrap_or_else(|p| p.into_inner());
            let link = (self.me, to);
            let ppm = h.drop_ppm.get(&link).copied().unwrap_or(0);
            let lost = h.cut.contains(&link)
                || h.down.contains(&to)
                || h.down.contains(&self.me)
                || (ppm > 0 && h.next_ppm() < ppm);
            if lost {
                h.dropped_frames += 1;
                return Ok(()); // a lossy link loses silently, like UDP
            }
            match h.deliver.get(&to).cloned() {
                Some(d) => {
                    h.delivered_frames += 1;
                    d
                }
                None => {
                    let cap = h.queue_frames_max;
                    let Some(q) = h.queues.get_mut(&to) else {
                        return Err(NetError::Unreachable(to));
                    };
                    if q.len() >= cap {
                        h.dropped_frames += 1;
                        return Err(NetError::Full(to));
                    }
                    q.push_back(frame);
                    h.delivered_frames += 1;
                    return Ok(());
                }
            }
        };
        // Outside the hub lock: the receiver may send in response from within `deliver`.
        deliver(frame);
        Ok(())
    }
}
