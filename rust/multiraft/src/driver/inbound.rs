//! The handle a transport delivers inbound Raft frames through: decoded, the claimed sender
//! checked against the connection's, queued for the driver thread (bounded, counted drops).

use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use super::input::Input;
use super::Shared;
use crate::codec::Frame;
use crate::ids::NodeId;
use crate::metrics::Metrics;

/// Hands inbound frames to the engine; cheap to clone, usable from any thread (the transport's
/// handler calls it).
#[derive(Clone)]
pub struct Inbound {
    pub(super) tx: SyncSender<Input>,
    pub(super) shared: Arc<Shared>,
}

impl Inbound {
    /// Queues a frame; drops it (counted) if the inbound queue is full or the engine stopped.
    pub fn deliver(&self, frame: Frame) {
        let s = &self.shared;
        if s.inbound_queued.fetch_add(1, Ordering::AcqRel) >= s.inbound_capacity {
            s.inbound_queued.fetch_sub(1, Ordering::AcqRel);
            Metrics::inc(&s.metrics.inbound_dropped_full);
            return;
        }
        if self.tx.try_send(Input::Frame(frame)).is_err() {
            s.inbound_queued.fetch_sub(1, Ordering::AcqRel);
            Metrics::inc(&s.metrics.inbound_dropped_full);
        }
    }

    /// Decodes a frame received with wire kind `kind` and queues it; undecodable frames are
    /// counted and dropped.
    pub fn deliver_bytes(&self, kind: u16, payload: &[u8]) {
        match Frame::decode(kind, payload) {
            Ok(f) => self.deliver(f),
            Err(_) => Metrics::inc(&self.shared.metrics.inbound_decode_errors),
        }
    }

    /// [`Inbound::deliver_bytes`] for a frame whose connection proved it comes from `sender`
    /// (`None`: an unauthenticated transport, nothing to check). A frame claiming any other
    /// sender is dropped before the engine sees it, counted, and the reason returned.
    pub fn deliver_bytes_from(
        &self,
        kind: u16,
        payload: &[u8],
        sender: Option<NodeId>,
    ) -> Result<(), String> {
        let frame = match Frame::decode(kind, payload) {
            Ok(frame) => frame,
            Err(_) => {
                Metrics::inc(&self.shared.metrics.inbound_decode_errors);
                return Ok(());
            }
        };
        if let Some(sender) = sender {
            if let Err(reason) = frame.check_sender(sender) {
                Metrics::inc(&self.shared.metrics.inbound_forged_sender);
                return Err(reason);
            }
        }
        self.deliver(frame);
        Ok(())
    }
}
