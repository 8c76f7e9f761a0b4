//! The inbound buffer budget: how many bytes of inbound payloads the connections it serves may
//! hold at once (`TransportConfig::inbound_buffer_bytes_max`).
//!
//! A frame is charged as its payload bytes arrive, chunk by chunk ([`FrameCharge::charge`]), not
//! when its header announces them: a stream that sends a header and nothing more holds nothing
//! (attack probe s30, finding 8: five 11-byte headers announcing 64 MiB each, re-sent every 4 s,
//! held the whole budget clients and admins shared, and the FIFO semaphore made every small
//! request wait behind them).
//!
//! Charging as bytes arrive means frames hold parts of the budget while they are incomplete, so
//! frames that together announce more than it holds could each hold a part and all wait for
//! room only another would free (until their read deadlines reset them). Two rules keep every
//! frame able to finish:
//!
//! - **Headroom.** A frame may take room only while the budget then still has `headroom` (one
//!   maximal frame, `PAYLOAD_BYTES_MAX`) free. When it may not, it queues, and the oldest
//!   waiting frame is *promoted*: it alone may use the headroom, until its whole payload is
//!   charged (or it is dropped). What every other incomplete frame holds is at most
//!   `capacity - headroom`, so once the complete frames are handled (bounded by the handler
//!   timeout) the promoted frame's rest fits: it always finishes, then the next waiting frame is
//!   promoted. A big frame waiting for room therefore never blocks small frames behind it while
//!   the budget is below `capacity - headroom`, and never waits for ever itself.
//! - **Share per identity** (shared budgets only). The bytes one certificate identity's frames
//!   hold outside the promoted frame are at most `identity_bytes_max`; a frame of an identity at
//!   its share waits (and is promoted in its turn). So one identity holds at most its share plus
//!   one promoted frame, and others keep the rest.
//!
//! Waiting is not first-in first-out for unpromoted frames (a small frame that fits goes ahead
//! of a big one that does not); the promotion is, so no frame starves.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// An inbound buffer budget shared by the frames of one or more connections.
pub struct InboundBudget {
    capacity: usize,
    /// Room only the promoted frame may take (one maximal frame, at most `capacity`).
    headroom: usize,
    /// Bytes one identity's unpromoted frames may hold (`None`: no shares, e.g. a node's own
    /// connection budget).
    identity_bytes_max: Option<usize>,
    next_frame: AtomicU64,
    state: Mutex<State>,
    /// Notified whenever room is released or the promotion passes on.
    changed: Notify,
}

#[derive(Default)]
struct State {
    held: usize,
    /// Bytes held by each identity's unpromoted charges (entries at zero are removed).
    by_identity: HashMap<Arc<str>, usize>,
    /// The frame that may use the headroom.
    promoted: Option<u64>,
    /// Frames waiting for room, oldest first (promoted in this order).
    waiting: VecDeque<u64>,
}

impl InboundBudget {
    /// A budget of `capacity` bytes keeping `headroom` for the promoted frame; with
    /// `identity_bytes_max`, each identity's share.
    pub fn new(capacity: usize, headroom: usize, identity_bytes_max: Option<usize>) -> Self {
        InboundBudget {
            capacity,
            headroom: headroom.min(capacity),
            identity_bytes_max,
            next_frame: AtomicU64::new(0),
            state: Mutex::default(),
            changed: Notify::new(),
        }
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.lock().held
    }

    /// Bytes `identity`'s unpromoted frames hold now.
    #[cfg(test)]
    pub fn held_by(&self, identity: &str) -> usize {
        self.lock().by_identity.get(identity).copied().unwrap_or(0)
    }

    /// The charge of one frame of `payload_bytes` from `identity` (nothing is taken yet).
    pub fn frame(
        self: &Arc<Self>,
        identity: Option<Arc<str>>,
        payload_bytes: usize,
    ) -> FrameCharge {
        FrameCharge {
            budget: Arc::clone(self),
            id: self.next_frame.fetch_add(1, Ordering::Relaxed),
            identity,
            remaining: payload_bytes,
            counted: 0,
            exempt: 0,
            queued: false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The oldest waiting frame becomes the promoted one, if none is.
    fn promote_next(state: &mut State) {
        if state.promoted.is_none() {
            state.promoted = state.waiting.pop_front();
        }
    }
}

/// One frame's part of an [`InboundBudget`]: what it was given so far, released when dropped.
pub struct FrameCharge {
    budget: Arc<InboundBudget>,
    id: u64,
    identity: Option<Arc<str>>,
    /// Bytes of the payload not charged yet.
    remaining: usize,
    /// Bytes charged while not promoted (they count in the identity's share).
    counted: usize,
    /// Bytes charged while promoted.
    exempt: usize,
    /// Perhaps in the waiting queue.
    queued: bool,
}

impl FrameCharge {
    /// Take room for `bytes` more of the payload (at most what remains of it), waiting as long
    /// as it takes: the caller bounds the wait. Cancel-safe.
    pub async fn charge(&mut self, bytes: usize) {
        let bytes = bytes.min(self.remaining);
        if bytes == 0 {
            return;
        }
        let budget = Arc::clone(&self.budget);
        if self.try_take(&mut budget.lock(), bytes) {
            return; // the usual case: room at once, no waiter registered
        }
        loop {
            let notified = budget.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = budget.lock();
                if self.try_take(&mut state, bytes) {
                    return;
                }
                if state.promoted != Some(self.id) && !self.queued {
                    state.waiting.push_back(self.id);
                    self.queued = true;
                }
                if state.promoted.is_none() {
                    InboundBudget::promote_next(&mut state);
                    if state.promoted == Some(self.id) {
                        continue; // promoted: try again with the headroom
                    }
                    budget.changed.notify_waiters();
                }
            }
            notified.await;
        }
    }

    /// Takes `bytes` if the rules allow (module docs); on success, leaves the queue and, with
    /// the whole payload charged, hands the promotion on.
    fn try_take(&mut self, state: &mut State, bytes: usize) -> bool {
        let budget = &self.budget;
        let promoted = state.promoted == Some(self.id);
        let taken = if promoted {
            state.held + bytes <= budget.capacity
        } else {
            let share_left = match (&self.identity, budget.identity_bytes_max) {
                (Some(identity), Some(max)) => {
                    let held = state.by_identity.get(identity).copied().unwrap_or(0);
                    held + bytes <= max
                }
                _ => true,
            };
            share_left && state.held + bytes <= budget.capacity - budget.headroom
        };
        if !taken {
            return false;
        }
        state.held += bytes;
        self.remaining -= bytes;
        if promoted {
            self.exempt += bytes;
        } else {
            self.counted += bytes;
            if let Some(identity) = &self.identity {
                *state.by_identity.entry(Arc::clone(identity)).or_insert(0) += bytes;
            }
        }
        if self.queued {
            state.waiting.retain(|&id| id != self.id);
            self.queued = false;
        }
        if promoted && self.remaining == 0 {
            state.promoted = None;
            InboundBudget::promote_next(state);
            budget.changed.notify_waiters();
        }
        true
    }
}

impl Drop for FrameCharge {
    fn drop(&mut self) {
        let budget = &self.budget;
        let mut state = budget.lock();
        state.held -= self.counted + self.exempt;
        if let Some(identity) = &self.identity {
            if self.counted > 0 {
                if let Some(held) = state.by_identity.get_mut(identity) {
                    *held -= self.counted;
                    if *held == 0 {
                        state.by_identity.remove(identity);
                    }
                }
            }
        }
        if self.queued {
            state.waiting.retain(|&id| id != self.id);
        }
        if state.promoted == Some(self.id) {
            state.promoted = None;
            InboundBudget::promote_next(&mut state);
        }
        drop(state);
        budget.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn budget(capacity: usize, headroom: usize, share: Option<usize>) -> Arc<InboundBudget> {
        Arc::new(InboundBudget::new(capacity, headroom, share))
    }

    async fn within<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout(Duration::from_millis(200), f)
            .await
            .ok()
    }

    #[tokio::test]
    async fn nothing_is_held_before_bytes_are_charged_and_all_is_released_on_drop() {
        let b = budget(100, 40, None);
        let mut f = b.frame(None, 1_000_000);
        assert_eq!(b.held(), 0);
        f.charge(30).await;
        assert_eq!(b.held(), 30);
        drop(f);
        assert_eq!(b.held(), 0);
    }

    #[tokio::test]
    async fn partial_frames_that_overfill_the_budget_all_finish_one_promoted_at_a_time() {
        // Three frames of 40 in a budget of 100 (headroom 40): each takes 20, then unpromoted
        // frames may hold no more (60); the waiting ones are promoted in turn and finish.
        let b = budget(100, 40, None);
        let mut frames: Vec<FrameCharge> = (0..3).map(|_| b.frame(None, 40)).collect();
        for f in &mut frames {
            f.charge(20).await;
        }
        assert_eq!(b.held(), 60);
        let mut third = frames.pop().unwrap();
        let mut second = frames.pop().unwrap();
        let first = frames.pop().unwrap();
        // The second waits, is promoted, and takes some of the headroom.
        assert!(within(second.charge(20)).await.is_some(), "promoted");
        assert_eq!(b.held(), 80);
        // The third is promoted next; it fits too.
        assert!(within(third.charge(20)).await.is_some(), "promoted next");
        assert_eq!(b.held(), 100);
        // A fourth must wait until a frame is released.
        let mut fourth = b.frame(None, 40);
        assert!(within(fourth.charge(20)).await.is_none());
        drop(first);
        assert!(within(fourth.charge(20)).await.is_some());
        assert_eq!(b.held(), 100);
        assert!(within(fourth.charge(20)).await.is_none());
        drop((second, third));
        assert!(within(fourth.charge(20)).await.is_some());
        assert_eq!(b.held(), 40);
    }

    #[tokio::test]
    async fn a_small_frame_goes_ahead_of_a_big_one_waiting_for_room() {
        let b = budget(100, 40, None);
        let mut holder = b.frame(None, 60);
        holder.charge(60).await;
        let mut stalled = b.frame(None, 40);
        assert!(within(stalled.charge(10)).await.is_some(), "promoted");
        drop(holder);
        // The promoted frame never sends the rest; a big frame waits for room...
        let mut big = b.frame(None, 64);
        assert!(within(big.charge(60)).await.is_none(), "waits for room");
        // ...and a small one does not wait behind it.
        let mut small = b.frame(None, 10);
        assert!(
            within(small.charge(10)).await.is_some(),
            "not behind the big one"
        );
        // Once the stalled frame is gone the big one is promoted and finishes.
        drop(stalled);
        assert!(within(big.charge(60)).await.is_some());
        assert_eq!(b.held(), 70);
    }

    #[tokio::test]
    async fn one_identity_holds_at_most_its_share_unless_promoted() {
        let b = budget(1000, 100, Some(50));
        let mallory: Arc<str> = Arc::from("mallory");
        let mut m: Vec<FrameCharge> = (0..3)
            .map(|_| b.frame(Some(Arc::clone(&mallory)), 100))
            .collect();
        m[0].charge(50).await;
        assert_eq!(b.held_by("mallory"), 50);
        // Over the share: promoted (nobody else waits), so it may go on with the headroom.
        assert!(within(m[1].charge(10)).await.is_some());
        assert_eq!(
            b.held_by("mallory"),
            50,
            "promoted bytes are not in the share"
        );
        // A third frame waits for the promotion.
        assert!(within(m[2].charge(10)).await.is_none());
        let mut alice = b.frame(Some(Arc::from("alice")), 100);
        assert!(within(alice.charge(50)).await.is_some(), "another identity");
        drop(m);
        assert_eq!(b.held(), 50);
        assert_eq!(b.held_by("mallory"), 0);
    }
}
