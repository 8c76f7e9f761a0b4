//! Room for the values a read's reply carries: at most one frame's worth per reply, and at
//! most [`REPLY_BYTES_IN_FLIGHT_MAX`] over every reply of the node until it is sent.
//!
//! Why: a read copies its values into the reply, so a request of a few bytes naming one large
//! key many times (or many large keys) cost its size times the count: 40 reads of a 32 MiB
//! value in one 1 KiB request took a node's memory from 315 MiB to 2.7 GiB, and the reply,
//! over a frame's bound, then failed as a bare stream reset. Room is taken per value before it
//! is copied, so neither one request nor many at once can hold more than these bounds.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of values one reply may carry: a frame's payload bound less room for the rest.
pub const REPLY_VALUE_BYTES_MAX: usize = nodedb_wire::PAYLOAD_BYTES_MAX - (1 << 20);
/// Bytes of values every reply of a node may hold together, from their copy until their frame
/// is dropped (sent, or abandoned).
pub const REPLY_BYTES_IN_FLIGHT_MAX: usize = 256 << 20;
/// A value's share of a reply besides its bytes (its MessagePack header, generously).
const ITEM_BYTES: usize = 16;

/// Why a value found no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoom {
    /// The reply would exceed one frame: no attempt can answer it; split the keys.
    Reply,
    /// The node's replies in flight hold their bound now: try again shortly.
    Node,
}

/// The node's room for replies in flight, shared by its reads.
pub fn node_room() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(REPLY_BYTES_IN_FLIGHT_MAX))
}

/// One reply's room: what it may still take, and what it holds of the node's.
pub struct ReplyRoom {
    node: Arc<Semaphore>,
    left: usize,
    held: Option<OwnedSemaphorePermit>,
}

impl ReplyRoom {
    pub fn new(node: &Arc<Semaphore>) -> Self {
        ReplyRoom {
            node: Arc::clone(node),
            left: REPLY_VALUE_BYTES_MAX,
            held: None,
        }
    }

    /// Room for a value of `bytes` (None: absent), taken before it is copied.
    pub fn take(&mut self, bytes: usize) -> Result<(), NoRoom> {
        let need = ITEM_BYTES + bytes;
        self.left = self.left.checked_sub(need).ok_or(NoRoom::Reply)?;
        let permits = u32::try_from(need).map_err(|_| NoRoom::Reply)?;
        let permit = Arc::clone(&self.node)
            .try_acquire_many_owned(permits)
            .map_err(|_| NoRoom::Node)?;
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        Ok(())
    }

    /// What the reply's frame keeps until it is dropped.
    pub fn into_held(self) -> Option<OwnedSemaphorePermit> {
        self.held
    }
}

/// A reply's encoded bytes with the room its values took, released with them.
pub struct HeldPayload {
    pub bytes: Vec<u8>,
    pub room: Option<OwnedSemaphorePermit>,
}

impl AsRef<[u8]> for HeldPayload {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_takes_at_most_a_frame_and_the_node_at_most_its_bound() {
        let node = node_room();
        let mut one = ReplyRoom::new(&node);
        one.take(REPLY_VALUE_BYTES_MAX - 64).expect("fits");
        assert_eq!(one.take(64), Err(NoRoom::Reply));
        let mut rooms = vec![one];
        // Other replies take the rest of the node's room, then one more finds none.
        loop {
            let mut room = ReplyRoom::new(&node);
            match room.take(REPLY_VALUE_BYTES_MAX - 64) {
                Ok(()) => rooms.push(room),
                Err(e) => {
                    assert_eq!(e, NoRoom::Node);
                    break;
                }
            }
        }
        assert_eq!(
            rooms.len(),
            REPLY_BYTES_IN_FLIGHT_MAX / REPLY_VALUE_BYTES_MAX
        );
        // A reply's room comes back when what holds it is dropped.
        let held = rooms.pop().map(ReplyRoom::into_held);
        drop(held);
        ReplyRoom::new(&node)
            .take(REPLY_VALUE_BYTES_MAX - 64)
            .expect("room again");
    }
}
