//! The KV client core: the request path of a process that reaches the cluster over the
//! network (`nodedb_cluster.Client`, the native load driver), or of a node whose own share is
//! served in process ([`KvClient::serve_locally`]).
//!
//! A call is routed (key → vShard → group → leader, [`crate::routing`]), a write is wrapped in
//! the client's session ([`crate::session`]), and its items are queued per (target node, lane).
//! Everything queued until [`KvClient::flush`] leaves in ONE KV_REQUEST per target (the
//! binding flushes once per asyncio loop iteration), at most `REMOTE_IN_FLIGHT_MAX` requests
//! in flight per lane; replies are decoded, and retries run ([`retry`]), on the runtime. A
//! finished call is handed to its [`Completion`] with a plain [`Answer`] or [`Failure`].
//!
//! Wire: [`nodedb_wire::kv`] (`propose_many`, `read_many`). After the deadline an item fails
//! with `Timeout` if its last attempt timed out, else `Unavailable`.
//!
//! Modules: `calls` (requests into items, results into answers), [`state`] (routing, health,
//! lanes, batching), [`retry`] (the rules of a failed attempt), `wire` (one attempt's bytes),
//! [`error`].

mod calls;
pub mod error;
pub mod retry;
pub mod state;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nodedb_transport::{MessageKind, NodeId, RpcPace, Transport, TransportError};
use tokio::runtime::Handle;

use self::calls::{answer, item_error, items_of, Items};
pub use self::calls::{Answer, Outcome, ReadAt, Request};
pub use self::error::{Failure, KvError, SubmitError};
use self::retry::{backed_off, is_timeout, judge, when, LeaderSearch, When};
use self::state::{Batch, Call, CallKind, Finished, Item, Lane, LaneKey, Progress, State};
use self::wire::{decode_reply, encode_request, serve_here, Decoded, Rpc};
use crate::peer_health::{transfer_allowance_s, TRANSFER_BYTES_PER_S_MIN};
use crate::routing::Routing;
use crate::serve::KvServer;
use crate::session::SessionState;
use crate::vshard::Refusal;

/// Items queued and not yet sent, at most; a call beyond it fails with `Busy` (a call that
/// finds the queue empty is always taken).
pub const PENDING_ITEMS_MAX: usize = 1 << 20;
/// A call's timeout, at most (a day): a typo cannot park a caller forever.
pub const TIMEOUT_S_MAX: f64 = 86_400.0;
/// Nodes named in a probe's "wl" (the nodes the client avoids), at most.
const AVOIDED_IN_REQUEST_MAX: usize = 16;

/// Whom a call tells when it finishes: called exactly once, never with the client's lock held,
/// on a runtime thread, the thread that closed the client, or (served in process) the thread
/// that flushed it or the engine's driver thread: it must not block.
pub trait Completion: Send + 'static {
    fn complete(self: Box<Self>, outcome: Result<Answer, Failure>);
}

/// The deadline of a call that may take `timeout_s` (at most [`TIMEOUT_S_MAX`]).
pub fn deadline_in(timeout_s: f64) -> Result<Instant, KvError> {
    if !(timeout_s.is_finite() && timeout_s > 0.0) {
        return Err(KvError::Invalid(format!(
            "timeout must be positive, got {timeout_s}"
        )));
    }
    Ok(Instant::now() + Duration::from_secs_f64(timeout_s.min(TIMEOUT_S_MAX)))
}

/// The client core; shared (`Arc`) by its caller and the tasks it spawns.
pub struct KvClient {
    /// This client's own id (never a target).
    me: u64,
    transport: Arc<Transport>,
    runtime: Handle,
    retry_unknown_writes: AtomicBool,
    requests_sent: AtomicU64,
    /// Set by [`Self::serve_locally`]: a client without a server here skips `read_here` lock-free.
    serves_locally: AtomicBool,
    state: Mutex<State>,
}

/// What handling one reply produced: finished calls, items to retry at once or after a pause,
/// and the routing watcher to tell (a Moved answer, or a group whose members found no leader,
/// made the routing table stale).
#[derive(Default)]
struct Step {
    finished: Vec<Finished>,
    at_once: Vec<Item>,
    later: Vec<(Duration, Item)>,
    routing_watch: Option<RoutingWatch>,
}

impl Step {
    /// `item` goes again `next`.
    fn retry(&mut self, item: Item, next: When) {
        match next {
            When::AtOnce => self.at_once.push(item),
            When::After(pause) => self.later.push((pause, item)),
        }
    }
}

/// Called once, outside the client's lock, when the routing table goes stale (see
/// [`KvClient::watch_routing`]).
pub type RoutingWatch = Box<dyn FnOnce() + Send>;

impl KvClient {
    /// A client with id `me` (never a target) and session `client_id`, sending through
    /// `transport` and running its tasks on `runtime`.
    pub fn new(transport: Arc<Transport>, runtime: Handle, me: u64, client_id: u64) -> Arc<Self> {
        Arc::new(KvClient {
            me,
            transport,
            runtime,
            retry_unknown_writes: AtomicBool::new(true),
            requests_sent: AtomicU64::new(0),
            serves_locally: AtomicBool::new(false),
            state: Mutex::new(State::new(SessionState::new(client_id))),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Install routing; learned leaders are kept.
    pub fn set_routing(&self, routing: Routing) {
        let mut st = self.state();
        st.routing = Some(routing);
        st.routing_stale = false;
    }

    /// Whether a group answered Moved, or none of a group's members found a leader
    /// ([`retry::LeaderSearch`]), since the last [`set_routing`](Self::set_routing): the routing
    /// table is stale (the client already re-routes the moved vShards by itself, and keeps
    /// retrying the leaderless group until the call's deadline; a caller that can fetch a
    /// fresh table should, without blocking calls on it).
    pub fn routing_stale(&self) -> bool {
        self.state().routing_stale
    }

    /// Call `watch` once when the routing table goes stale (at once if it is): the caller
    /// fetches a fresh table and calls [`set_routing`](Self::set_routing). Items routed to a
    /// group the table does not know (a group added since) wait for it, paced, until their
    /// deadline. One watcher at a time (a new one replaces the last).
    pub fn watch_routing(&self, watch: RoutingWatch) {
        let mut st = self.state();
        if st.routing_stale {
            drop(st);
            watch();
        } else {
            st.routing_watch = Some(watch);
        }
    }

    /// Run inside the node whose serving side is `server`: items this node leads (or, with no
    /// leader known, may ask) on lanes its fast path serves go to `server` in process, never
    /// through the network; the rest as before. Held weakly (the node owns its server).
    pub fn serve_locally(&self, server: &Arc<KvServer>) {
        self.state().local = Some(Arc::downgrade(server));
        self.serves_locally.store(true, Ordering::Release);
    }

    /// A read answered in the calling thread, with nothing queued and no completion: when this
    /// client runs inside a node ([`Self::serve_locally`]) that may answer every key now without
    /// a round (it leads their groups and its lease holds, or a follower read is fresh enough;
    /// [`KvServer::read_here`]). None: [`Self::submit`] it. A leader's own reads of what it
    /// leads then cost no thread hand-off at all.
    pub fn read_here(&self, request: &Request) -> Option<Answer> {
        if !self.serves_locally.load(Ordering::Acquire) {
            return None; // a separate client: no lock, no allocation per read
        }
        let (keys, read): (Vec<&[u8]>, ReadAt) = match request {
            Request::Get { key, read } => (vec![key.as_slice()], *read),
            Request::GetMany { keys, read } => (keys.iter().map(Vec::as_slice).collect(), *read),
            _ => return None,
        };
        let stale_s = read.max_staleness_s;
        if keys.is_empty() || !stale_s.is_finite() || stale_s < 0.0 {
            return None; // nothing to read, or refused by `submit` with its reason
        }
        let (server, groups) = {
            let st = self.state();
            if st.closed {
                return None;
            }
            let server = st.local.as_ref()?.upgrade()?;
            let groups: Option<Vec<u64>> = keys
                .iter()
                .map(|k| st.locate(k).ok().map(|(_, g)| g))
                .collect();
            (server, groups?)
        };
        let mut values = vec![None; keys.len()];
        for (group, indexes) in crate::serve::by_group(&groups) {
            let share: Vec<&[u8]> = indexes.iter().map(|&i| keys[i]).collect();
            let found = server.read_here(group, read.level, stale_s, &share)?;
            for (i, value) in indexes.into_iter().zip(found) {
                values[i] = value;
            }
        }
        Some(match request {
            Request::Get { .. } => Answer::Value(values.pop().flatten()),
            _ => Answer::Values(values),
        })
    }

    pub fn retry_unknown_writes(&self) -> bool {
        self.retry_unknown_writes.load(Ordering::Relaxed)
    }

    /// Whether a write whose outcome is unknown is retried (exactly-once through the
    /// session) or surfaces at once.
    pub fn set_retry_unknown_writes(&self, value: bool) {
        self.retry_unknown_writes.store(value, Ordering::Relaxed);
    }

    pub fn client_id(&self) -> u64 {
        self.state().session.client_id()
    }

    /// The lowest write seq this client still waits for.
    pub fn acked_below(&self) -> u64 {
        self.state().session.acked_below()
    }

    /// Writes handed out and not finished.
    pub fn writes_in_flight(&self) -> usize {
        self.state().session.in_flight()
    }

    /// KV_REQUESTs sent (each carries every item queued for its target and lane).
    pub fn requests_sent(&self) -> u64 {
        self.requests_sent.load(Ordering::Relaxed)
    }

    pub fn group_of(&self, key: &[u8]) -> Result<u64, KvError> {
        self.state().group_of(key)
    }

    /// SWIM's verdict on `node` (dead or departed: `dead`). A dead node is tried only when no
    /// other member is left ([`crate::peer_health::PeerHealth::set_dead`]), and is forgotten as
    /// the learned leader of its groups, so their requests ask the other members at once
    /// instead of waiting out an attempt bound on it.
    pub fn set_dead(&self, node: u64, dead: bool) {
        let mut st = self.state();
        st.health.set_dead(node, dead);
        if dead {
            for leader in st.leaders.values_mut() {
                if *leader == node {
                    *leader = 0;
                }
            }
        }
    }

    /// The node this client would send `group`'s requests to now (0 = unknown).
    pub fn leader_hint(&self, group: u64) -> u64 {
        self.state().target(group, Instant::now())
    }

    /// Route, wrap (writes) and queue one call; `completion` hears of it exactly once unless
    /// this returns an error. True when the caller must [`flush`](Self::flush) (the first call
    /// queued since the last flush).
    pub fn submit(
        &self,
        request: Request,
        deadline: Instant,
        completion: Box<dyn Completion>,
    ) -> Result<bool, SubmitError> {
        let (kind, lane, items) = items_of(request)?;
        if items.is_empty() {
            // Nothing to send (an empty batch): answered at once, never left waiting.
            let call = Call {
                kind,
                deadline,
                groups: Vec::new(),
                seqs: (0, 0),
                completion: Mutex::new(None),
                progress: Mutex::new(Progress {
                    results: Vec::new(),
                    remaining: 0,
                    finished: true,
                }),
            };
            completion.complete(answer(&call, Ok(Vec::new())));
            return Ok(false);
        }
        self.enqueue_call(kind, lane, deadline, completion, items)
    }

    fn enqueue_call(
        &self,
        kind: CallKind,
        lane: Lane,
        deadline: Instant,
        completion: Box<dyn Completion>,
        items: Items,
    ) -> Result<bool, SubmitError> {
        let now = Instant::now();
        let mut st = self.state();
        if st.closed {
            return Err(SubmitError::Closed);
        }
        if st.pending_items > 0 && st.pending_items + items.len() > PENDING_ITEMS_MAX {
            let text = format!("kv client queue full ({} items waiting)", st.pending_items);
            return Err(item_error(0, KvError::Busy(text)));
        }
        let mut placed = Vec::with_capacity(items.len());
        for (key, _) in &items {
            let (vshard, group) = st.locate(key).map_err(|e| match e {
                KvError::Unavailable(text) => SubmitError::NotConnected(text),
                e => item_error(0, e),
            })?;
            let Some((target, probe)) = st.pick(group, 0, self.me, now) else {
                return Err(item_error(
                    group,
                    KvError::Unavailable("no member known".into()),
                ));
            };
            placed.push((group, target, probe, vshard));
        }
        let count = items.len();
        let (seqs, floor) = if kind.is_write() {
            let (first, floor) = st.session.open_seqs(count);
            ((first, count as u64), Some(floor))
        } else {
            ((0, 0), None)
        };
        let call = Arc::new(Call {
            kind,
            deadline,
            groups: placed.iter().map(|&(g, _, _, _)| g).collect(),
            seqs,
            completion: Mutex::new(Some(completion)),
            progress: Mutex::new(Progress {
                results: vec![None; count],
                remaining: count,
                finished: false,
            }),
        });
        for (slot, ((group, target, probe, vshard), (_, payload))) in
            placed.into_iter().zip(items).enumerate()
        {
            let payload = match floor {
                Some(floor) => st.session.wrap_one(seqs.0 + slot as u64, floor, &payload),
                None => payload,
            };
            let item = Item {
                call: Arc::clone(&call),
                slot,
                group,
                lane,
                payload,
                attempt: 0,
                last: None,
                vshard,
                refused: 0,
                search: LeaderSearch::default(),
                timeouts: 0,
            };
            st.enqueue((target, lane, probe), item);
        }
        Ok(!std::mem::replace(&mut st.flush_scheduled, true))
    }

    /// Send everything queued since the last flush: one KV_REQUEST per (target, lane) while
    /// slots are free (the rest follows as replies come back).
    pub fn flush(self: &Arc<Self>) {
        let mut batches = Vec::new();
        {
            let mut st = self.state();
            st.flush_scheduled = false;
            let keys: Vec<LaneKey> = st
                .lanes
                .iter()
                .filter(|(_, q)| !q.pending.is_empty() && q.in_flight < state::REMOTE_IN_FLIGHT_MAX)
                .map(|(k, _)| *k)
                .collect();
            for key in keys {
                st.take_batches(key, &mut batches);
            }
        }
        self.spawn(batches);
    }

    /// Fail every queued call with `Closed`; calls in flight fail when their reply (or the
    /// transport's closing) comes back. Idempotent.
    pub fn close(&self) {
        let mut out = Vec::new();
        {
            let mut st = self.state();
            st.closed = true;
            let lanes: Vec<_> = st.lanes.drain().map(|(_, q)| q).collect();
            for mut q in lanes {
                st.pending_items -= q.pending.len();
                for item in q.pending.drain(..) {
                    st.complete(item, Err(KvError::Closed), &mut out);
                }
            }
        }
        resolve(out);
    }

    /// Send each batch: a network one on the runtime; one this node serves in process on the
    /// calling thread and then on whichever answers it ([`crate::inline`]): an own write that
    /// this node leads crosses the caller's thread, the driver's, and the caller's again.
    fn spawn(self: &Arc<Self>, batches: Vec<Batch>) {
        let here = self.serves_locally.load(Ordering::Acquire);
        for (key, items) in batches {
            let this = Arc::clone(self);
            let run = async move { this.run_batch(key, items).await };
            if here && key.0 == self.me {
                crate::inline::spawn(&self.runtime, run);
            } else {
                self.runtime.spawn(run);
            }
        }
    }

    /// Queue an item again (retry), or fail it: past its deadline, client closed, no member.
    /// An item of a group a stale table does not know (it moved to a group added since) waits
    /// for a fresh table in `later`.
    fn requeue(
        &self,
        st: &mut State,
        mut item: Item,
        now: Instant,
        keys: &mut Vec<LaneKey>,
        out: &mut Vec<Finished>,
        later: &mut Vec<(Duration, Item)>,
    ) {
        if item.call.is_finished() {
            return;
        }
        if st.closed {
            st.complete(item, Err(KvError::Closed), out);
            return;
        }
        if now >= item.call.deadline {
            let err = match item.last.take() {
                Some(last) if last.is_timeout() => last,
                Some(last) => KvError::Unavailable(last.describe(item.group)),
                None => KvError::Unavailable("no attempt possible".into()),
            };
            st.complete(item, Err(err), out);
            return;
        }
        match st.pick(item.group, item.attempt, self.me, now) {
            Some((target, probe)) => {
                let key = (target, item.lane, probe);
                st.enqueue(key, item);
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            None if st.routing_stale && !st.knows_group(item.group) => {
                let left = item.call.deadline.saturating_duration_since(now);
                if let When::After(pause) = retry::when_refused(item.refused, left) {
                    item.refused = item.refused.saturating_add(1);
                    item.last = Some(KvError::Unavailable(format!(
                        "group {} is not in this client's routing table yet",
                        item.group
                    )));
                    later.push((pause, item));
                }
            }
            None => st.complete(
                item,
                Err(KvError::Unavailable("no member known".into())),
                out,
            ),
        }
    }

    /// One failed attempt: learn, and decide when (or whether) to retry ([`retry`]).
    fn on_error(
        &self,
        st: &mut State,
        mut item: Item,
        err: KvError,
        target: u64,
        now: Instant,
        step: &mut Step,
    ) {
        if st.closed {
            st.complete(item, Err(KvError::Closed), &mut step.finished);
            return;
        }
        let may_retry_unknown = !item.call.kind.is_write() || self.retry_unknown_writes();
        let verdict = judge(&err, target, may_retry_unknown);
        st.learn(item.group, verdict.lesson, self.me, now);
        if !verdict.retry {
            st.complete(item, Err(err), &mut step.finished);
            return;
        }
        if item.search.failed(&err, st.members(item.group)) {
            if let Some(watch) = st.leaderless(now) {
                step.routing_watch = Some(watch);
            }
        }
        if is_timeout(&err) {
            item.timeouts = item.timeouts.saturating_add(1);
        }
        let left = item.call.deadline.saturating_duration_since(now);
        let next = when(item.attempt, &err, left);
        item.attempt += 1;
        item.last = Some(err);
        step.retry(item, next);
    }

    /// An item its vShard's state refused ([`Refusal`]): Paused goes again to the same group
    /// after a short pause; Moved re-routes the vShard and goes at once to its new group
    /// ([`retry::when_refused`]). Until the call's deadline, as any retry.
    fn on_refused(
        &self,
        st: &mut State,
        mut item: Item,
        refusal: Refusal,
        target: u64,
        now: Instant,
        step: &mut Step,
    ) {
        if st.closed {
            st.complete(item, Err(KvError::Closed), &mut step.finished);
            return;
        }
        st.leaders.entry(item.group).or_insert(target);
        item.search.found();
        let left = item.call.deadline.saturating_duration_since(now);
        let next = retry::when_refused(item.refused, left);
        item.refused = item.refused.saturating_add(1);
        match refusal {
            Refusal::Paused => {
                item.last = Some(KvError::Paused {
                    vshard: item.vshard,
                });
            }
            Refusal::Moved(group) => {
                if let Some(watch) = st.moved(item.vshard, group) {
                    step.routing_watch = Some(watch);
                }
                item.group = group;
                item.attempt = 0;
            }
        }
        let next = match (refusal, next) {
            (Refusal::Moved(_), _) if item.refused <= retry::MOVED_AT_ONCE_MAX => When::AtOnce,
            (_, next) => next,
        };
        step.retry(item, next);
    }

    async fn run_batch(self: Arc<Self>, key: LaneKey, items: Vec<Item>) {
        let (target, lane, probe) = key;
        let start = Instant::now();
        // Attempts that may be given up early (their items are retried): reads, and writes when
        // unknown outcomes are retried (exactly-once through the session).
        let cancellable = lane != Lane::Propose || self.retry_unknown_writes();
        let (attempt, avoid, suspect, local) = {
            let mut st = self.state();
            let avoid = (probe && lane == Lane::Propose).then(|| {
                st.health.avoided(
                    crate::peer_health::monotonic_s(start),
                    AVOIDED_IN_REQUEST_MAX,
                )
            });
            let suspect = cancellable.then(|| st.suspect_channel(target));
            let local = (target == self.me).then(|| st.local.clone()).flatten();
            let bytes = items.iter().map(|i| i.payload.len()).sum();
            let moving = Duration::from_secs_f64(transfer_allowance_s(bytes));
            let timeouts = items.iter().map(|i| i.timeouts).max().unwrap_or(0);
            let bound = backed_off(st.attempt_timeout(start) + moving, timeouts);
            (bound, avoid, suspect, local)
        };
        let call_deadline = items.iter().map(|i| i.call.deadline).min().unwrap_or(start);
        let deadline = call_deadline.min(start + attempt);
        let timeout = deadline
            .saturating_duration_since(start)
            .max(Duration::from_millis(1));
        let timeout_ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        // Registered before the request leaves, so a suspicion raised meanwhile is not missed.
        let suspected = async {
            match &suspect {
                Some(channel) => {
                    let notified = channel.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    notified.await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::pin!(suspected);
        let mut timed_out_here = false;
        let reply = match encode_request(lane, &items, timeout_ms, avoid) {
            Err(err) => Err(err),
            Ok(payload) => {
                self.requests_sent.fetch_add(1, Ordering::Relaxed);
                // A peer's reply must start within the attempt's bound, counted from now (the
                // request is encoded: a large one took a while), and is then given its length
                // to arrive (a large value is not a slow node); the call's deadline bounds the
                // whole. An in-process answer moves nothing.
                let sent_at = Instant::now();
                let (rpc, bound): (Rpc<'_>, Duration) = match local {
                    Some(server) => (Box::pin(serve_here(server, payload)), timeout),
                    None => (
                        Box::pin(self.transport.send_rpc_paced(
                            NodeId(target),
                            MessageKind::KV_REQUEST,
                            payload,
                            RpcPace {
                                answer_by: sent_at + timeout,
                                reply_bytes_per_s: TRANSFER_BYTES_PER_S_MIN,
                            },
                        )),
                        call_deadline
                            .saturating_duration_since(sent_at)
                            .max(timeout),
                    ),
                };
                tokio::select! {
                    biased;
                    answer = tokio::time::timeout(bound, rpc) => match answer {
                        Err(_) | Ok(Err(TransportError::Timeout { .. })) => {
                            timed_out_here = true;
                            Err(KvError::Timeout { target, timeout_ms })
                        }
                        Ok(Err(err)) => Err(KvError::Net(err)),
                        Ok(Ok(frame)) => decode_reply(&frame, lane, items.len()),
                    },
                    () = &mut suspected => {
                        // Another attempt to this node timed out: this one gives up too.
                        let waited = start.elapsed().as_millis();
                        Err(KvError::Timeout {
                            target,
                            timeout_ms: u64::try_from(waited).unwrap_or(u64::MAX),
                        })
                    }
                }
            }
        };
        self.on_reply(key, items, reply, start, timed_out_here);
    }

    /// Hand out one reply's results, retry or fail its failed items, send what is ready.
    /// `timed_out_here`: this attempt's own bound passed (not another attempt's suspicion).
    fn on_reply(
        self: &Arc<Self>,
        key: LaneKey,
        items: Vec<Item>,
        reply: Result<Decoded, KvError>,
        start: Instant,
        timed_out_here: bool,
    ) {
        let (target, lane, probe) = key;
        let now = Instant::now();
        let mut step = Step::default();
        let mut batches = Vec::new();
        let suspected = {
            let mut st = self.state();
            if let Some(q) = st.lanes.get_mut(&key) {
                q.in_flight -= 1;
            }
            let suspected = timed_out_here.then(|| st.suspected(target)).flatten();
            match reply {
                Ok(Decoded {
                    results,
                    failed,
                    refused,
                    over,
                }) => {
                    // Answer times of the network only (an in-process answer says nothing
                    // about how long a peer takes).
                    if !probe && target != self.me {
                        st.answered(now.saturating_duration_since(start), now);
                    }
                    if probe && lane == Lane::Propose {
                        st.revive_named(&failed);
                    }
                    let mut refusals: Vec<Option<Refusal>> = Vec::new();
                    if !refused.is_empty() {
                        refusals.resize(items.len(), None);
                        for (i, r) in refused {
                            refusals[i] = Some(r);
                        }
                    }
                    let mut left_over = vec![false; if over.is_empty() { 0 } else { items.len() }];
                    for i in over {
                        left_over[i] = true;
                    }
                    for (i, (item, result)) in items.into_iter().zip(results).enumerate() {
                        match (failed.get(&item.group), refusals.get(i).copied().flatten()) {
                            (Some(err), _) => {
                                self.on_error(&mut st, item, err.clone(), target, now, &mut step)
                            }
                            (None, Some(refusal)) => {
                                self.on_refused(&mut st, item, refusal, target, now, &mut step)
                            }
                            // No room in this reply: the next request, at once (the reply
                            // answered others, so each round trip progresses).
                            (None, None) if left_over.get(i) == Some(&true) => {
                                step.at_once.push(item);
                            }
                            (None, None) => {
                                st.leaders.entry(item.group).or_insert(target);
                                st.complete(item, Ok(result), &mut step.finished);
                            }
                        }
                    }
                }
                Err(err) => {
                    if err.is_no_answer() && target != self.me {
                        if let Some(watch) = st.unanswered(now) {
                            step.routing_watch = Some(watch);
                        }
                    }
                    for item in items {
                        self.on_error(&mut st, item, err.clone(), target, now, &mut step);
                    }
                }
            }
            let mut keys = vec![key];
            for item in std::mem::take(&mut step.at_once) {
                self.requeue(
                    &mut st,
                    item,
                    now,
                    &mut keys,
                    &mut step.finished,
                    &mut step.later,
                );
            }
            for k in keys {
                st.take_batches(k, &mut batches);
            }
            suspected
        };
        if let Some(channel) = suspected {
            channel.notify_waiters(); // outside the lock (`State::suspected`)
        }
        self.spawn(batches);
        resolve(step.finished);
        if let Some(watch) = step.routing_watch {
            watch();
        }
        self.retry_later(step.later);
    }

    /// Requeue items after their pause (one timer per distinct pause).
    fn retry_later(self: &Arc<Self>, later: Vec<(Duration, Item)>) {
        let mut by_pause: HashMap<Duration, Vec<Item>> = HashMap::new();
        for (pause, item) in later {
            by_pause.entry(pause).or_default().push(item);
        }
        for (pause, items) in by_pause {
            let this = Arc::clone(self);
            self.runtime.spawn(async move {
                tokio::time::sleep(pause).await;
                let now = Instant::now();
                let (mut out, mut keys, mut batches) = (Vec::new(), Vec::new(), Vec::new());
                let mut again = Vec::new();
                {
                    let mut st = this.state();
                    for item in items {
                        this.requeue(&mut st, item, now, &mut keys, &mut out, &mut again);
                    }
                    for k in keys {
                        st.take_batches(k, &mut batches);
                    }
                }
                this.spawn(batches);
                resolve(out);
                this.retry_later(again);
            });
        }
    }
}

/// Hand each finished call to its completion (outside the client's lock).
fn resolve(finished: Vec<Finished>) {
    for f in finished {
        let completion = f
            .call
            .completion
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(completion) = completion {
            completion.complete(answer(&f.call, f.outcome));
        }
    }
}

#[cfg(test)]
mod tests;
