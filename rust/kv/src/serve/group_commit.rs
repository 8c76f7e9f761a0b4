//! Group commit and shared ReadIndex rounds, per group (kv.py's `_GroupCommit` and
//! `_ReadIndexShare`, the reference).
//!
//! Group commit: every command that arrives while `BATCHES_IN_FLIGHT_MAX` entries of its group
//! are in flight rides the next entry (ONE Raft entry per batch). Reads share ReadIndex rounds:
//! a read that arrives while a round is in flight waits for the next one (the running one may
//! have been sent before it arrived), then reads the local state.
//!
//! Both report what a quorum confirmed to the node's [`Freshness`] clocks: a committed entry
//! (its send time starts a lease) and a ReadIndex round that came back (its send time is how
//! current this replica is), which lease and follower reads decide on.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use nodedb_multiraft::error::RaftError;
use nodedb_multiraft::{GroupId, MultiRaft};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::freshness::Freshness;
use crate::KV_STATE_MACHINE;

/// The node's confirmation clocks, shared by its batchers, read shares and reads.
pub(super) type Clocks = Arc<Mutex<Freshness>>;

pub(super) fn clocks(clocks: &Clocks) -> std::sync::MutexGuard<'_, Freshness> {
    clocks.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a group's batcher and read share work with.
#[derive(Clone)]
pub(super) struct GroupCtx {
    pub group: GroupId,
    pub engine: Weak<MultiRaft>,
    pub runtime: Handle,
    pub clocks: Clocks,
}

/// The entry of `group` in `map`, created by `make` if absent; past `max` entries the map is
/// cleared first (running batches and rounds finish; their users hold them).
pub(super) fn entry<T>(
    map: &Mutex<HashMap<u64, Arc<T>>>,
    group: u64,
    max: usize,
    make: impl FnOnce() -> T,
) -> Arc<T> {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = map.get(&group) {
        return Arc::clone(found);
    }
    if map.len() >= max {
        map.clear();
    }
    let made = Arc::new(make());
    map.insert(group, Arc::clone(&made));
    made
}

/// Commands per Raft entry (kv.py `BATCH_COMMANDS_MAX`).
const BATCH_COMMANDS_MAX: usize = 4096;
/// Bytes of commands per Raft entry (kv.py `BATCH_BYTES_MAX`; below the 1 MiB message bound).
const BATCH_BYTES_MAX: usize = 512 << 10;
/// Entries per group proposed concurrently (kv.py `BATCHES_IN_FLIGHT_MAX`).
const BATCHES_IN_FLIGHT_MAX: usize = 4;
/// Commands of one group waiting for an entry, at most; more are refused with Busy (a request
/// that finds the queue empty is taken whatever its size: the 1 MiB frame bounds it).
const PENDING_COMMANDS_MAX: usize = 1 << 16;
/// Reads of one group waiting for a ReadIndex round, at most; more are refused with Busy.
const PENDING_READS_MAX: usize = 1 << 16;
pub(super) type GroupResult = Result<Vec<Vec<u8>>, RaftError>;

struct Waiter {
    cmds: Vec<Vec<u8>>,
    deadline: Instant,
    reply: oneshot::Sender<GroupResult>,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Waiter>,
    pending_cmds: usize,
    in_flight: usize,
}

/// One group's group commit.
pub(super) struct Batcher {
    ctx: GroupCtx,
    queue: Mutex<Queue>,
}

impl Batcher {
    pub(super) fn new(ctx: GroupCtx) -> Self {
        Batcher {
            ctx,
            queue: Mutex::new(Queue::default()),
        }
    }

    pub(super) fn submit(
        self: &Arc<Self>,
        cmds: Vec<Vec<u8>>,
        deadline: Instant,
    ) -> oneshot::Receiver<GroupResult> {
        let (reply, receiver) = oneshot::channel();
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        // One request alone is always taken (its size is bounded by the frame size).
        if queue.pending_cmds > 0 && queue.pending_cmds + cmds.len() > PENDING_COMMANDS_MAX {
            drop(queue);
            // The receiver is alive right here: the send cannot fail.
            let _ = reply.send(Err(RaftError::Busy {
                reason: "kv group commit queue full",
            }));
            return receiver;
        }
        queue.pending_cmds += cmds.len();
        queue.pending.push_back(Waiter {
            cmds,
            deadline,
            reply,
        });
        let batches = take_batches(&mut queue);
        drop(queue);
        self.launch(batches);
        receiver
    }

    /// Propose each batch as one entry. Polled on this thread and then on the thread that
    /// answers it (the driver's): nothing hops to a runtime worker ([`crate::inline`]).
    fn launch(self: &Arc<Self>, batches: Vec<Vec<Waiter>>) {
        for batch in batches {
            let this = Arc::clone(self);
            crate::inline::spawn(&self.ctx.runtime, async move { this.run(batch).await });
        }
    }

    async fn run(self: Arc<Self>, batch: Vec<Waiter>) {
        let now = Instant::now();
        let timeout = batch
            .iter()
            .map(|w| w.deadline.saturating_duration_since(now))
            .min()
            .unwrap_or_default()
            .max(Duration::from_millis(1));
        let mut counts = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let mut items = Vec::new();
        for waiter in batch {
            counts.push(waiter.cmds.len());
            replies.push(waiter.reply);
            items.extend(waiter.cmds);
        }
        let expected = items.len();
        let outcome = match self.ctx.engine.upgrade() {
            // KV commands only into groups that run the KV state machine (never group 0's
            // metadata machine nor a host's).
            Some(engine) => {
                engine
                    .propose_for(Some(KV_STATE_MACHINE), self.ctx.group, items, timeout)
                    .await
            }
            None => Err(RaftError::Stopped {
                reason: "engine closed".into(),
            }),
        };
        match outcome {
            Ok(out) if out.results.len() == expected => {
                // Only a leader commits its own proposals: a quorum followed it at `now`.
                clocks(&self.ctx.clocks).committed(self.ctx.group.0, now);
                let mut results = out.results.into_iter();
                for (reply, n) in replies.into_iter().zip(counts) {
                    // A requester that went away meanwhile is fine to miss.
                    let _ = reply.send(Ok(results.by_ref().take(n).collect()));
                }
            }
            Ok(out) => {
                let err = RaftError::Invalid {
                    reason: format!("{} results for {expected} commands", out.results.len()),
                };
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
            Err(err) => {
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
        let batches = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.in_flight -= 1;
            take_batches(&mut queue)
        };
        self.launch(batches);
    }
}

/// The batches to propose now: one per free slot, each as many waiting commands as one entry
/// takes (queue lock held; the caller proposes them after letting it go).
fn take_batches(queue: &mut Queue) -> Vec<Vec<Waiter>> {
    let mut batches = Vec::new();
    while queue.in_flight < BATCHES_IN_FLIGHT_MAX && !queue.pending.is_empty() {
        let mut batch: Vec<Waiter> = Vec::new();
        let (mut count, mut size) = (0usize, 0usize);
        while let Some(front) = queue.pending.front() {
            let w_size: usize = front.cmds.iter().map(Vec::len).sum();
            if !batch.is_empty()
                && (count + front.cmds.len() > BATCH_COMMANDS_MAX
                    || size + w_size > BATCH_BYTES_MAX)
            {
                break;
            }
            let Some(waiter) = queue.pending.pop_front() else {
                break;
            };
            queue.pending_cmds -= waiter.cmds.len();
            if waiter.reply.is_closed() {
                continue; // the request was dropped (requester gone): not proposed
            }
            count += waiter.cmds.len();
            size += w_size;
            batch.push(waiter);
        }
        if batch.is_empty() {
            continue;
        }
        queue.in_flight += 1;
        batches.push(batch);
    }
    batches
}

#[derive(Default)]
struct ReadQueue {
    next: Vec<oneshot::Sender<Result<(), RaftError>>>,
    next_deadline: Option<Instant>,
    running: bool,
}

/// One group's shared ReadIndex rounds (kv.py `_ReadIndexShare`).
pub(super) struct ReadShare {
    ctx: GroupCtx,
    queue: Mutex<ReadQueue>,
}

impl ReadShare {
    pub(super) fn new(ctx: GroupCtx) -> Self {
        ReadShare {
            ctx,
            queue: Mutex::new(ReadQueue::default()),
        }
    }

    pub(super) fn wait(
        self: &Arc<Self>,
        deadline: Instant,
    ) -> oneshot::Receiver<Result<(), RaftError>> {
        let (reply, receiver) = oneshot::channel();
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.next.len() >= PENDING_READS_MAX {
            drop(queue);
            let _ = reply.send(Err(RaftError::Busy {
                reason: "kv read queue full",
            }));
            return receiver;
        }
        queue.next.push(reply);
        queue.next_deadline = Some(queue.next_deadline.map_or(deadline, |d| d.min(deadline)));
        if !queue.running {
            queue.running = true;
            let this = Arc::clone(self);
            self.ctx.runtime.spawn(async move { this.rounds().await });
        }
        receiver
    }

    async fn rounds(self: Arc<Self>) {
        loop {
            let (waiters, deadline) = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if queue.next.is_empty() {
                    queue.running = false;
                    return;
                }
                (
                    std::mem::take(&mut queue.next),
                    queue.next_deadline.take().unwrap_or_else(Instant::now),
                )
            };
            let sent_at = Instant::now();
            let timeout = deadline
                .saturating_duration_since(sent_at)
                .max(Duration::from_millis(1));
            let lease = clocks(&self.ctx.clocks).linearizable_lease(self.ctx.group.0);
            let outcome = match self.ctx.engine.upgrade() {
                Some(engine) => engine
                    .read_index_leased(self.ctx.group, lease, timeout)
                    .await
                    .map(|point| point.by_lease),
                None => Err(RaftError::Stopped {
                    reason: "engine closed".into(),
                }),
            };
            if let Ok(by_lease) = outcome {
                clocks(&self.ctx.clocks).confirmed(self.ctx.group.0, sent_at, !by_lease);
            }
            let outcome = outcome.map(|_| ());
            for waiter in waiters {
                let _ = waiter.send(outcome.clone());
            }
        }
    }
}
