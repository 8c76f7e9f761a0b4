//! Group commit and shared ReadIndex rounds, per group (kv.py's `_GroupCommit` and
//! `_ReadIndexShare`, the reference).
//!
//! Group commit: every command that arrives while `BATCHES_IN_FLIGHT_MAX` entries of its group
//! are in flight rides the next entry (ONE Raft entry per batch). A session command that
//! arrives again (a client's retry after its attempt timed out: a slow link, an overloaded
//! leader) is not proposed a second time: once its first copy applied here it gets the result
//! the group cached for it, and while that copy is proposed and unanswered it takes that
//! copy's answer. So retries never add entries; the batcher awaits an entry's fate past its
//! requesters' deadlines for this. Reads share ReadIndex rounds:
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
use crate::command::session_of;
use crate::groups::KvGroups;
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
    /// The node's KV groups: a batcher answers a retry's copy of an applied command from its
    /// group's state.
    pub groups: KvGroups,
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
/// Clients whose highest seq a batcher remembers, at most (then forgotten all at once).
const SEEN_CLIENTS_MAX: usize = 1 << 14;
/// Entries per group proposed concurrently (kv.py `BATCHES_IN_FLIGHT_MAX`).
const BATCHES_IN_FLIGHT_MAX: usize = 4;
/// Commands of one group waiting for an entry, at most; more are refused with Busy (a request
/// that finds the queue empty is taken whatever its size: the 1 MiB frame bounds it).
const PENDING_COMMANDS_MAX: usize = 1 << 16;
/// Reads of one group waiting for a ReadIndex round, at most; more are refused with Busy.
const PENDING_READS_MAX: usize = 1 << 16;
/// How long a proposed entry's answer is awaited at most. Its fate is known once it applies or
/// its leader steps down (check_quorum: within an election timeout of losing its quorum), so
/// this only frees the slot of an engine that answers neither; each requester is answered at
/// its own deadline ([`Submitted::outcome`]).
const PROPOSED_ANSWER_BOUND: Duration = Duration::from_secs(30);
pub(super) type GroupResult = Result<Vec<Vec<u8>>, RaftError>;
/// One command's answer, for a copy of it riding on the entry that holds the first.
type CommandResult = Result<Vec<u8>, RaftError>;
/// A session command's (client, seq): a retry carries the same.
type SessionKey = (u64, u64);

struct Waiter {
    cmds: Vec<Vec<u8>>,
    reply: oneshot::Sender<GroupResult>,
}

/// Waiters proposed as one entry, and the session of each of its commands in order.
struct Batch {
    waiters: Vec<Waiter>,
    sessions: Vec<Option<SessionKey>>,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Waiter>,
    pending_cmds: usize,
    in_flight: usize,
    /// The session commands of the entries proposed and not yet answered, each with the copies
    /// riding on it.
    proposed: HashMap<SessionKey, Vec<oneshot::Sender<CommandResult>>>,
    /// Per client, the highest seq queued here: a command above it is no copy.
    seen: HashMap<u64, u64>,
}

/// Commands riding on proposed entries, by position, each with the receiver of its answer.
type Riding = Vec<(usize, oneshot::Receiver<CommandResult>)>;

impl Queue {
    /// Which of `cmds` may be copies of commands queued here before, by position: those riding
    /// on a proposed entry (each with the receiver of its answer), and the rest, to look up in
    /// the applied state. A command whose seq is above every seq its client had here is new (a
    /// client's seqs only grow), so the common case touches neither the proposed map nor the
    /// state.
    fn copies(&mut self, cmds: &[Vec<u8>]) -> (Riding, Vec<usize>) {
        if self.seen.len() > SEEN_CLIENTS_MAX {
            self.seen.clear(); // forgetting only costs copies proposed again
        }
        let (mut riding, mut maybe_applied) = (Vec::new(), Vec::new());
        for (i, cmd) in cmds.iter().enumerate() {
            let Some((client, seq)) = session_of(cmd) else {
                continue;
            };
            match self.seen.get_mut(&client) {
                Some(highest) if seq <= *highest => {}
                Some(highest) => {
                    *highest = seq;
                    continue;
                }
                None => {
                    self.seen.insert(client, seq);
                    continue;
                }
            }
            match self.proposed.get_mut(&(client, seq)) {
                Some(riders) => {
                    let (tx, rx) = oneshot::channel();
                    riders.push(tx);
                    riding.push((i, rx));
                }
                None => maybe_applied.push(i),
            }
        }
        (riding, maybe_applied)
    }

    /// Queues `cmds` for an entry, or refuses them when the queue is full (one request alone
    /// is always taken: the frame size bounds it).
    fn enqueue(&mut self, cmds: Vec<Vec<u8>>, reply: oneshot::Sender<GroupResult>) {
        if self.pending_cmds > 0 && self.pending_cmds + cmds.len() > PENDING_COMMANDS_MAX {
            // The receiver is alive: the caller holds it.
            let _ = reply.send(Err(RaftError::Busy {
                reason: "kv group commit queue full",
            }));
            return;
        }
        self.pending_cmds += cmds.len();
        self.pending.push_back(Waiter { cmds, reply });
    }
}

/// A request's share given to a batcher.
pub(super) struct Submitted {
    receiver: oneshot::Receiver<GroupResult>,
    deadline: Instant,
    bound_ms: u64,
    group: GroupId,
}

impl Submitted {
    /// The share's results, or Timeout at the requester's deadline (its entry may still
    /// commit: the outcome is unknown, as when the batch is dropped unanswered).
    pub(super) async fn outcome(self) -> GroupResult {
        match tokio::time::timeout_at(self.deadline.into(), self.receiver).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(RaftError::LeadershipLost {
                group: self.group,
                leader_hint: None,
            }),
            Err(_) => Err(RaftError::Timeout {
                op: "propose",
                timeout_ms: self.bound_ms,
            }),
        }
    }
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

    pub(super) fn submit(self: &Arc<Self>, cmds: Vec<Vec<u8>>, deadline: Instant) -> Submitted {
        let (reply, receiver) = oneshot::channel();
        let now = Instant::now();
        let submitted = Submitted {
            receiver,
            deadline,
            bound_ms: deadline.saturating_duration_since(now).as_millis() as u64,
            group: self.ctx.group,
        };
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let (riding, maybe_applied) = queue.copies(&cmds);
        let applied = self.applied(&cmds, &maybe_applied);
        if applied.is_empty() && riding.is_empty() {
            queue.enqueue(cmds, reply);
        } else {
            let total = cmds.len();
            let mut own = (Vec::new(), Vec::new());
            let mut known = applied
                .iter()
                .map(|(i, _)| *i)
                .chain(riding.iter().map(|(i, _)| *i))
                .collect::<Vec<usize>>();
            known.sort_unstable();
            let mut known = known.into_iter().peekable();
            for (i, cmd) in cmds.into_iter().enumerate() {
                if known.next_if_eq(&i).is_none() {
                    own.0.push(i);
                    own.1.push(cmd);
                }
            }
            let own = (!own.1.is_empty()).then(|| {
                let (own_reply, own_receiver) = oneshot::channel();
                queue.enqueue(own.1, own_reply);
                (own.0, own_receiver)
            });
            let parts = Parts {
                applied,
                own,
                riding,
            };
            crate::inline::spawn(&self.ctx.runtime, assemble(total, parts, reply));
        }
        let batches = take_batches(&mut queue);
        drop(queue);
        self.launch(batches);
        submitted
    }

    /// Which of `cmds` at positions `maybe` this group applied already (a retry's copies), with
    /// the answers they get ([`crate::state_machine::KvState::copy_answer`]). Never waits for an
    /// apply in progress: then none are (a copy proposed again is answered from the cache when
    /// it applies, as it always was).
    fn applied(&self, cmds: &[Vec<u8>], maybe: &[usize]) -> Vec<(usize, Vec<u8>)> {
        if maybe.is_empty() {
            return Vec::new();
        }
        let Some(reader) = self.ctx.groups.reader(self.ctx.group) else {
            return Vec::new();
        };
        let Some(state) = reader.try_read() else {
            return Vec::new();
        };
        maybe
            .iter()
            .filter_map(|&i| Some((i, state.copy_answer(&cmds[i])?)))
            .collect()
    }

    /// Propose each batch as one entry. Polled on this thread and then on the thread that
    /// answers it (the driver's): nothing hops to a runtime worker ([`crate::inline`]).
    fn launch(self: &Arc<Self>, batches: Vec<Batch>) {
        for batch in batches {
            let this = Arc::clone(self);
            crate::inline::spawn(&self.ctx.runtime, async move { this.run(batch).await });
        }
    }

    async fn run(self: Arc<Self>, batch: Batch) {
        let now = Instant::now();
        let mut counts = Vec::with_capacity(batch.waiters.len());
        let mut replies = Vec::with_capacity(batch.waiters.len());
        let mut items = Vec::new();
        for waiter in batch.waiters {
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
                    .propose_for(
                        Some(KV_STATE_MACHINE),
                        self.ctx.group,
                        items,
                        PROPOSED_ANSWER_BOUND,
                    )
                    .await
            }
            None => Err(RaftError::Stopped {
                reason: "engine closed".into(),
            }),
        };
        let outcome = match outcome {
            Ok(out) if out.results.len() == expected => Ok(out.results),
            Ok(out) => Err(RaftError::Invalid {
                reason: format!("{} results for {expected} commands", out.results.len()),
            }),
            Err(err) => Err(err),
        };
        if outcome.is_ok() {
            // Only a leader commits its own proposals: a quorum followed it at `now`.
            clocks(&self.ctx.clocks).committed(self.ctx.group.0, now);
        }
        let (riders, batches) = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let riders: Vec<(usize, Vec<oneshot::Sender<CommandResult>>)> = batch
                .sessions
                .iter()
                .enumerate()
                .filter_map(|(i, key)| Some((i, queue.proposed.remove(key.as_ref()?)?)))
                .filter(|(_, riders)| !riders.is_empty())
                .collect();
            queue.in_flight -= 1;
            (riders, take_batches(&mut queue))
        };
        // A requester (or a copy's) that went away meanwhile is fine to miss.
        for (i, copies) in riders {
            for copy in copies {
                let _ = copy.send(match &outcome {
                    Ok(results) => Ok(results[i].clone()),
                    Err(err) => Err(err.clone()),
                });
            }
        }
        match outcome {
            Ok(results) => {
                let mut results = results.into_iter();
                for (reply, n) in replies.into_iter().zip(counts) {
                    let _ = reply.send(Ok(results.by_ref().take(n).collect()));
                }
            }
            Err(err) => {
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
        self.launch(batches);
    }
}

/// A share split by what its commands are: copies of ones applied already, or proposed and
/// unanswered (riding), and new ones (own: queued as usual). Each part by position.
struct Parts {
    applied: Vec<(usize, Vec<u8>)>,
    own: Option<(Vec<usize>, oneshot::Receiver<GroupResult>)>,
    riding: Vec<(usize, oneshot::Receiver<CommandResult>)>,
}

/// The answer of a share some of whose commands are copies of ones this group knows. Any
/// failure fails the whole share, as for a share proposed whole.
async fn assemble(total: usize, parts: Parts, reply: oneshot::Sender<GroupResult>) {
    let Parts {
        applied,
        own,
        riding,
    } = parts;
    let mut results = vec![Vec::new(); total];
    for (i, result) in applied {
        results[i] = result;
    }
    if let Some((positions, receiver)) = own {
        match receiver.await {
            Ok(Ok(own_results)) => {
                for (i, result) in positions.into_iter().zip(own_results) {
                    results[i] = result;
                }
            }
            Ok(Err(err)) => {
                let _ = reply.send(Err(err));
                return;
            }
            Err(_) => return, // dropped unanswered: so is the share
        }
    }
    for (i, receiver) in riding {
        match receiver.await {
            Ok(Ok(result)) => results[i] = result,
            Ok(Err(err)) => {
                let _ = reply.send(Err(err));
                return;
            }
            Err(_) => return,
        }
    }
    let _ = reply.send(Ok(results));
}

/// The batches to propose now: one per free slot, each as many waiting commands as one entry
/// takes (queue lock held; the caller proposes them after letting it go).
fn take_batches(queue: &mut Queue) -> Vec<Batch> {
    let mut batches = Vec::new();
    while queue.in_flight < BATCHES_IN_FLIGHT_MAX && !queue.pending.is_empty() {
        let mut waiters: Vec<Waiter> = Vec::new();
        let (mut count, mut size) = (0usize, 0usize);
        while let Some(front) = queue.pending.front() {
            let w_size: usize = front.cmds.iter().map(Vec::len).sum();
            if !waiters.is_empty()
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
            waiters.push(waiter);
        }
        if waiters.is_empty() {
            continue;
        }
        // Recorded before the entry is proposed: a copy arriving from now on rides on it.
        let sessions: Vec<Option<SessionKey>> = waiters
            .iter()
            .flat_map(|w| w.cmds.iter().map(|c| session_of(c)))
            .collect();
        for key in sessions.iter().flatten() {
            queue.proposed.entry(*key).or_default();
        }
        queue.in_flight += 1;
        batches.push(Batch { waiters, sessions });
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

#[cfg(test)]
mod tests;
