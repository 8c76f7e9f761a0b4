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
/// The node's room is taken in steps of at least this much (and for the rest at the end of a
/// reply): one atomic operation per reply of small values, not one per value. A reply may
/// copy this much before the node's bound refuses it.
const RESERVE_STEP: usize = 64 << 10;

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
    /// Taken from `left` but not yet from the node's room.
    unreserved: usize,
    held: Option<OwnedSemaphorePermit>,
}

impl ReplyRoom {
    pub fn new(node: &Arc<Semaphore>) -> Self {
        ReplyRoom {
            node: Arc::clone(node),
            left: REPLY_VALUE_BYTES_MAX,
            unreserved: 0,
            held: None,
        }
    }

    /// Room for a value of `bytes` (0: absent), taken before it is copied.
    pub fn take(&mut self, bytes: usize) -> Result<(), NoRoom> {
        let need = ITEM_BYTES + bytes;
        self.left = self.left.checked_sub(need).ok_or(NoRoom::Reply)?;
        self.unreserved += need;
        if self.unreserved >= RESERVE_STEP {
            self.settle()?;
        }
        Ok(())
    }

    /// Takes from the node's room what this reply took since the last time.
    pub fn settle(&mut self) -> Result<(), NoRoom> {
        if self.unreserved == 0 {
            return Ok(());
        }
        let permits = u32::try_from(self.unreserved).map_err(|_| NoRoom::Reply)?;
        let permit = Arc::clone(&self.node)
            .try_acquire_many_owned(permits)
            .map_err(|_| NoRoom::Node)?;
        self.unreserved = 0;
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        Ok(())
    }

    /// What the reply's frame keeps until it is dropped (call [`Self::settle`] first).
    pub fn into_held(self) -> Option<OwnedSemaphorePermit> {
        debug_assert_eq!(self.unreserved, 0, "settled");
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
        // Small values are taken from the node's room together, at the end.
        let mut small = ReplyRoom::new(&node);
        small.take(100).expect("fits");
        assert_eq!(
            node.available_permits(),
            REPLY_BYTES_IN_FLIGHT_MAX - (REPLY_VALUE_BYTES_MAX - 64 + ITEM_BYTES)
        );
        small.settle().expect("room");
        assert_eq!(
            node.available_permits(),
            REPLY_BYTES_IN_FLIGHT_MAX
                - (REPLY_VALUE_BYTES_MAX - 64 + ITEM_BYTES)
                - (100 + ITEM_BYTES)
        );
        drop(small);
        let mut rooms = vec![one];
        // Other replies take the rest of the node's room, then one more finds none.
        loop {
            let mut room = ReplyRoom::new(&node);
            match room
                .take(REPLY_VALUE_BYTES_MAX - 64)
                .and_then(|()| room.settle())
            {
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
        let mut again = ReplyRoom::new(&node);
        again.take(REPLY_VALUE_BYTES_MAX - 64).expect("room again");
    }
}
