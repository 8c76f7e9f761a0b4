//! The KV client core: the request path of `nodedb_cluster.Client` (a process without an
//! engine) in Rust.
//!
//! Why: with 64 closed-loop callers the client's Python (a chain of coroutines, a future, a
//! coalescer entry and msgpack per call) was about a third of every batch's round trip
//! (BENCHMARKS.md, "Replicated KV"). Here a call is ONE boundary crossing: the key is routed
//! (xxh3 → vShard → group → leader), a write is wrapped in the client's session
//! (`kv_session.rs`), and the item is queued per (target node, lane). Everything queued in one
//! loop iteration leaves in ONE KV_REQUEST per target when Python calls `flush` (scheduled once
//! per iteration with `call_soon`), at most `REMOTE_IN_FLIGHT_MAX` requests in flight per lane;
//! replies are decoded, and retries run, on the transport's runtime; the calls one reply
//! finishes resolve their futures in ONE loop-bridge wake-up.
//!
//! Wire: kv.py's `propose_many` / `read_many` (documented there and in kv_serve.rs), so
//! servers need no change. Retry rules: kv.py `KvRouter._attempts` (NotLeader → learn the hint,
//! go at once while it names a leader; unknown outcome → retry when allowed; transient transport
//! errors → try other members first; one attempt bounded by the slowest recent answer — both
//! `peer_health.rs`, shared with `KvRouter`; after the deadline `Timeout` if the last attempt
//! timed out, else `Unavailable`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nodedb_multiraft::{KvCommand, KvResult};
use nodedb_transport::{MessageKind, NodeId, OutboundFrame, Transport, TransportError};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyList};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::sync::mpsc;

use crate::bridge::{settle, LoopBridge};
use crate::errors::{cluster_error, transport_error_with};
use crate::kv_session::{random_client_id, SessionState};
use crate::peer_health::{monotonic_s, PeerHealth};
use crate::transport::{transport_runtime, PyTransport};

/// vShards of the key space (`nodedb_cluster.routing.vshard.NUM_VSHARDS`).
const NUM_VSHARDS: usize = 1024;
/// Items per KV_REQUEST (kv.py `BATCH_COMMANDS_MAX`).
const BATCH_ITEMS_MAX: usize = 4096;
/// Bytes of items per KV_REQUEST (kv.py `BATCH_BYTES_MAX`; below the 1 MiB message bound).
const BATCH_BYTES_MAX: usize = 512 << 10;
/// KV_REQUESTs per (target, lane) in flight at once (kv.py `REMOTE_IN_FLIGHT_MAX`).
const REMOTE_IN_FLIGHT_MAX: usize = 4;
/// Pause before retry n (then the last value), cut short by the deadline (kv.py).
const RETRY_BACKOFF_MS: [u64; 5] = [5, 10, 20, 50, 100];
/// Retries that go at once when NotLeader named a leader, per item (kv.py: `attempt < 3`).
const NAMED_LEADER_RETRIES_MAX: usize = 3;
/// Nodes named in a request's "wl" (the nodes the client avoids), at most.
const AVOIDED_IN_REQUEST_MAX: usize = 16;
/// Targets with a suspicion channel (`State::suspects`), at most (forgotten all at once past it).
const SUSPECT_TARGETS_MAX: usize = 4096;
/// Items queued and not yet sent, at most; a call beyond it fails with `Busy` (a call that
/// finds the queue empty is always taken).
const PENDING_ITEMS_MAX: usize = 1 << 20;
/// A call's timeout, at most (a day): a typo cannot park a future forever.
const TIMEOUT_S_MAX: f64 = 86_400.0;
/// The Error-message code of a leader in NO_SPACE (kv_serve.rs / kv.py): its message is the data
/// dir, raised again here as `errors.NoSpace`, never retried.
const NO_SPACE: &str = "NoSpace";

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Level {
    Linearizable,
    Lease,
    Follower,
}

impl Level {
    fn parse(text: &str) -> Option<Level> {
        match text {
            "linearizable" => Some(Level::Linearizable),
            "lease" => Some(Level::Lease),
            "follower" => Some(Level::Follower),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Level::Linearizable => "linearizable",
            Level::Lease => "lease",
            Level::Follower => "follower",
        }
    }
}

/// What one KV_REQUEST carries: commands, or reads at one level and staleness bound.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Lane {
    Propose,
    Read { level: Level, stale_s_bits: u64 },
}

impl Lane {
    fn stale_s(self) -> f64 {
        match self {
            Lane::Propose => 0.0,
            Lane::Read { stale_s_bits, .. } => f64::from_bits(stale_s_bits),
        }
    }
}

/// What the caller asked for, which decides the value its future gets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum CallKind {
    Put,
    Delete,
    Cas,
    PutMany,
    Get,
    GetMany,
}

impl CallKind {
    fn is_write(self) -> bool {
        matches!(
            self,
            CallKind::Put | CallKind::Delete | CallKind::Cas | CallKind::PutMany
        )
    }
}

/// Why an item failed (one attempt, or for good).
#[derive(Clone, Debug)]
pub(crate) enum ItemError {
    NotLeader {
        hint: u64,
    },
    /// LeadershipLost on the server: the outcome is unknown.
    LeadershipLost,
    /// This attempt's bound passed without a reply (outcome unknown).
    Timeout {
        target: u64,
        timeout_ms: u64,
    },
    Net(TransportError),
    /// The reply did not decode as kv.py's (RemoteError "malformed" in kv.py).
    Malformed(String),
    Stale {
        age_s: f64,
        max_s: f64,
    },
    Unavailable(String),
    Invalid(String),
    /// A retried write whose first copy's result the state machine no longer has.
    OutcomeUnknown,
    Busy(String),
    Closed,
}

impl ItemError {
    fn is_timeout(&self) -> bool {
        matches!(
            self,
            ItemError::Timeout { .. } | ItemError::Net(TransportError::Timeout { .. })
        )
    }

    fn describe(&self, group: u64) -> String {
        match self {
            ItemError::NotLeader { hint: 0 } => format!("group {group}: not leader, none known"),
            ItemError::NotLeader { hint } => format!("group {group}: not leader (leader {hint})"),
            ItemError::LeadershipLost => format!("group {group}: leadership lost"),
            ItemError::Timeout { target, timeout_ms } => {
                format!("kv request to node {target} timed out after {timeout_ms} ms")
            }
            ItemError::Net(err) => err.to_string(),
            ItemError::Malformed(text) => format!("malformed kv response: {text}"),
            ItemError::Stale { age_s, .. } => format!("group {group}: stale by {age_s:.3} s"),
            ItemError::Unavailable(reason) => reason.clone(),
            ItemError::Invalid(reason) => reason.clone(),
            ItemError::OutcomeUnknown => format!("group {group}: write outcome unknown"),
            ItemError::Busy(reason) => reason.clone(),
            ItemError::Closed => "client closed".into(),
        }
    }

    fn into_py(self, py: Python<'_>, group: u64) -> PyErr {
        match self {
            ItemError::NotLeader { hint } => {
                cluster_error(py, "RaftNotLeader", (group, (hint != 0).then_some(hint)))
            }
            ItemError::LeadershipLost => cluster_error(py, "LeadershipLost", (group, None::<u64>)),
            ItemError::Timeout { target, timeout_ms } => cluster_error(
                py,
                "Timeout",
                (format!("kv request to node {target}"), timeout_ms),
            ),
            ItemError::Net(TransportError::Remote { code, message }) if code == NO_SPACE => {
                cluster_error(py, "NoSpace", (message,)) // the message is the data dir
            }
            ItemError::Net(err) => transport_error_with(py, err),
            ItemError::Malformed(text) => cluster_error(py, "RemoteError", ("malformed", text)),
            ItemError::Stale { age_s, max_s } => kv_error(py, "StaleRead", (group, age_s, max_s)),
            ItemError::Unavailable(reason) => kv_error(py, "Unavailable", (group, reason)),
            ItemError::Invalid(reason) => cluster_error(py, "InvalidRequest", (reason,)),
            ItemError::OutcomeUnknown => kv_error(py, "OutcomeUnknown", (group,)),
            ItemError::Busy(reason) => cluster_error(py, "Busy", (reason,)),
            ItemError::Closed => cluster_error(py, "TransportClosed", ()),
        }
    }
}

/// Instantiate `nodedb_cluster.kv.<class>(*args)` (the KV's own error classes) as a PyErr.
fn kv_error<'py, A>(py: Python<'py>, class: &str, args: A) -> PyErr
where
    A: pyo3::call::PyCallArgs<'py>,
{
    let made = py
        .import("nodedb_cluster.kv")
        .and_then(|module| module.getattr(class))
        .and_then(|cls| cls.call1(args));
    match made {
        Ok(instance) => PyErr::from_value(instance),
        Err(err) => PyRuntimeError::new_err(format!(
            "nodedb_cluster.kv.{class} unavailable ({err}); original error lost"
        )),
    }
}

struct Progress {
    results: Vec<Option<Vec<u8>>>,
    remaining: usize,
    finished: bool,
}

/// Who is told when a call finishes: an asyncio future (resolved on its loop through the
/// bridge), or a Rust caller on the runtime (`kv_load.rs`), told through a channel.
enum Waiter {
    Loop(Py<PyAny>),
    Native {
        tx: mpsc::UnboundedSender<NativeDone>,
        tag: usize,
    },
}

/// A finished call of a Rust caller: its tag, and whether it succeeded (else why not).
pub(crate) struct NativeDone {
    pub tag: usize,
    pub result: Result<(), String>,
}

/// One call: its items, deadline, session seqs and waiter.
struct Call {
    kind: CallKind,
    deadline: Instant,
    /// Group of each item (for the error a failed item raises).
    groups: Vec<u64>,
    /// Session seqs `first..first + count` (writes; count 0 for reads).
    seqs: (u64, u64),
    /// Taken once when the call resolves.
    waiter: Mutex<Option<Waiter>>,
    progress: Mutex<Progress>,
}

impl Call {
    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_finished(&self) -> bool {
        self.progress().finished
    }
}

/// One command or key of a call, as it travels (a retry resends the same bytes).
struct Item {
    call: Arc<Call>,
    slot: usize,
    group: u64,
    lane: Lane,
    payload: Vec<u8>,
    attempt: usize,
    last: Option<ItemError>,
}

type Outcome = Result<Vec<Option<Vec<u8>>>, (u64, ItemError)>;

/// A call that has its outcome, to resolve on the loop thread.
struct Finished {
    call: Arc<Call>,
    outcome: Outcome,
}

struct Route {
    leader: u64,
    voters: Vec<u64>,
}

struct Routing {
    vshard_to_group: Vec<u64>,
    routes: HashMap<u64, Route>,
}

#[derive(Default)]
struct LaneQueue {
    pending: VecDeque<Item>,
    in_flight: usize,
}

/// (target, lane, probe): a probe goes to a member while no leader of its groups is known (or
/// only one the client avoids). Probes travel in requests of their own: the member may hold
/// them until it knows a leader (kv_serve.rs), which must not delay requests to a leader, and
/// their answer times are not the cluster's (they do not feed the attempt bound).
type LaneKey = (u64, Lane, bool);
type Batch = (LaneKey, Vec<Item>);

struct State {
    routing: Option<Routing>,
    /// group → leader as last learned (0 = unknown: ask the members in turn).
    leaders: HashMap<u64, u64>,
    /// Nodes to try after the others, and the bound of one attempt.
    health: PeerHealth,
    session: SessionState,
    lanes: HashMap<LaneKey, LaneQueue>,
    pending_items: usize,
    flush_scheduled: bool,
    closed: bool,
    /// Per target, woken when one attempt to it timed out: every other attempt waiting on the
    /// same node gives up then too (the node is suspect for all of them, not one at a time).
    suspects: HashMap<u64, Arc<tokio::sync::Notify>>,
}

impl State {
    /// The suspicion channel of `target` (see `suspects`).
    fn suspect_channel(&mut self, target: u64) -> Arc<tokio::sync::Notify> {
        if self.suspects.len() >= SUSPECT_TARGETS_MAX && !self.suspects.contains_key(&target) {
            self.suspects.clear(); // a bound: attempts waiting on a dropped channel keep their timer
        }
        Arc::clone(self.suspects.entry(target).or_default())
    }

    /// A probe's answer named, as a group's leader, a node this client holds back: the member
    /// names an avoided node only once it was elected after the probe arrived (kv_serve.rs), so
    /// it is alive: tried again at once instead of after `DOWN_HOLD_S`.
    fn revive_named(&mut self, failed: &HashMap<u64, ItemError>) {
        for err in failed.values() {
            if let ItemError::NotLeader { hint } = err {
                if *hint != 0 {
                    self.health.revive(*hint);
                }
            }
        }
    }

    /// One attempt to `target` timed out: wake every other attempt waiting on it.
    fn suspect(&self, target: u64) {
        if let Some(channel) = self.suspects.get(&target) {
            channel.notify_waiters();
        }
    }

    /// A node answered after `elapsed`.
    fn answered(&mut self, elapsed: Duration, now: Instant) {
        self.health
            .answered(elapsed.as_secs_f64(), monotonic_s(now));
    }

    /// How long one attempt may wait for its answer.
    fn attempt_timeout(&self, now: Instant) -> Duration {
        Duration::from_secs_f64(self.health.attempt_timeout_s(monotonic_s(now)))
    }

    /// kv.py `_target`: the leader as last learned, else routing's; 0 when unknown or down.
    fn target(&self, group: u64, now: Instant) -> u64 {
        let leader = match self.leaders.get(&group) {
            Some(&leader) => leader,
            None => self
                .routing
                .as_ref()
                .and_then(|r| r.routes.get(&group))
                .map_or(0, |r| r.leader),
        };
        if leader != 0 && self.health.avoid(leader, monotonic_s(now)) {
            return 0;
        }
        leader
    }

    /// kv.py `_next_member`: with no leader known, the members in turn, those that answered
    /// lately first.
    fn next_member(&self, group: u64, tried: usize, me: u64, now: Instant) -> u64 {
        let Some(route) = self.routing.as_ref().and_then(|r| r.routes.get(&group)) else {
            return 0;
        };
        let mut members: Vec<u64> = route.voters.iter().copied().filter(|&m| m != me).collect();
        if members.is_empty() {
            members.clone_from(&route.voters);
        }
        let pool = self.health.preferred(&members, monotonic_s(now));
        if pool.is_empty() {
            return 0;
        }
        pool[tried % pool.len()]
    }

    /// Where an item goes: the leader as known (false), else a member in turn (true: a probe).
    fn pick(&self, group: u64, attempt: usize, me: u64, now: Instant) -> Option<(u64, bool)> {
        let target = self.target(group, now);
        if target != 0 && target != me {
            return Some((target, false));
        }
        let member = self.next_member(group, attempt, me, now);
        (member != 0).then_some((member, true))
    }

    /// kv.py `_failed`: `node` did not answer: forget it as leader, try the others first.
    fn failed(&mut self, group: u64, node: u64, me: u64, now: Instant) {
        if node != 0 && node != me {
            self.health.failed(node, monotonic_s(now));
        }
        self.leaders.insert(group, 0);
    }

    fn group_of(&self, key: &[u8]) -> Result<u64, ItemError> {
        let routing = self.routing.as_ref().ok_or(ItemError::Unavailable(
            "Client not connected: call `await connect()` first".into(),
        ))?;
        let vshard = (xxhash_rust::xxh3::xxh3_64(key) % NUM_VSHARDS as u64) as usize;
        Ok(routing.vshard_to_group[vshard])
    }

    fn finish_call(&mut self, call: &Call) {
        let (first, count) = call.seqs;
        if count > 0 {
            self.session.finish(first..first + count);
        }
    }

    fn enqueue(&mut self, key: LaneKey, item: Item) {
        self.lanes.entry(key).or_default().pending.push_back(item);
        self.pending_items += 1;
    }

    /// Take batches from `key`'s queue while slots are free (spawned by the caller, outside
    /// the lock).
    fn take_batches(&mut self, key: LaneKey, out: &mut Vec<Batch>) {
        let Some(lane) = self.lanes.get_mut(&key) else {
            return;
        };
        let mut taken = 0usize;
        while lane.in_flight < REMOTE_IN_FLIGHT_MAX && !lane.pending.is_empty() {
            let mut batch: Vec<Item> = Vec::new();
            let mut size = 0usize;
            while let Some(front) = lane.pending.front() {
                if !batch.is_empty()
                    && (batch.len() >= BATCH_ITEMS_MAX
                        || size + front.payload.len() > BATCH_BYTES_MAX)
                {
                    break;
                }
                let Some(item) = lane.pending.pop_front() else {
                    break;
                };
                taken += 1;
                if item.call.is_finished() {
                    continue; // its call already failed: not sent
                }
                size += item.payload.len();
                batch.push(item);
            }
            if batch.is_empty() {
                continue;
            }
            lane.in_flight += 1;
            out.push((key, batch));
        }
        let idle = lane.pending.is_empty() && lane.in_flight == 0;
        self.pending_items -= taken;
        if idle {
            self.lanes.remove(&key);
        }
    }
}

fn complete(
    st: &mut State,
    item: Item,
    outcome: Result<Option<Vec<u8>>, ItemError>,
    out: &mut Vec<Finished>,
) {
    let mut progress = item.call.progress();
    if progress.finished {
        return;
    }
    let done = match outcome {
        Ok(value) => {
            progress.results[item.slot] = value;
            progress.remaining -= 1;
            (progress.remaining == 0).then(|| Ok(std::mem::take(&mut progress.results)))
        }
        Err(err) => Some(Err((item.group, err))),
    };
    let Some(outcome) = done else {
        return;
    };
    progress.finished = true;
    drop(progress);
    st.finish_call(&item.call);
    out.push(Finished {
        call: item.call,
        outcome,
    });
}

/// What handling one reply produced: finished calls, items to retry at once or after a pause.
#[derive(Default)]
struct Step {
    finished: Vec<Finished>,
    at_once: Vec<Item>,
    later: Vec<(Duration, Item)>,
}

pub(crate) struct Inner {
    /// This client's own id (never a target).
    me: u64,
    transport: Arc<Transport>,
    bridge: Arc<LoopBridge>,
    runtime: &'static tokio::runtime::Runtime,
    retry_unknown_writes: AtomicBool,
    requests_sent: AtomicU64,
    /// Calls queued and not yet resolved on the loop (decremented there).
    calls_unresolved: Arc<AtomicUsize>,
    state: Mutex<State>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spawn(self: &Arc<Self>, batches: Vec<Batch>) {
        for (key, items) in batches {
            let this = Arc::clone(self);
            self.runtime
                .spawn(async move { this.run_batch(key, items).await });
        }
    }

    /// Tell Rust callers at once; resolve Python futures in one loop-bridge wake-up.
    fn resolve(&self, finished: Vec<Finished>) {
        let mut on_loop = Vec::new();
        for f in finished {
            let waiter = f
                .call
                .waiter
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            match waiter {
                Some(Waiter::Loop(future)) => on_loop.push((f, future)),
                Some(Waiter::Native { tx, tag }) => {
                    let result = native_outcome(&f.call, f.outcome);
                    // A closed receiver: the caller stopped waiting (its run ended).
                    let _ = tx.send(NativeDone { tag, result });
                }
                None => {}
            }
        }
        if on_loop.is_empty() {
            return;
        }
        let unresolved = Arc::clone(&self.calls_unresolved);
        self.bridge.push(Box::new(move |py| {
            unresolved.fetch_sub(on_loop.len(), Ordering::AcqRel);
            for (f, future) in on_loop {
                let value = outcome_to_py(py, &f.call, f.outcome);
                settle(py, &future, value);
            }
        }));
    }

    /// Queue an item again (retry), or fail it: past its deadline, client closed, no member.
    fn requeue(
        &self,
        st: &mut State,
        mut item: Item,
        now: Instant,
        keys: &mut Vec<LaneKey>,
        out: &mut Vec<Finished>,
    ) {
        if item.call.is_finished() {
            return;
        }
        if st.closed {
            complete(st, item, Err(ItemError::Closed), out);
            return;
        }
        if now >= item.call.deadline {
            let err = match item.last.take() {
                Some(last) if last.is_timeout() => last,
                Some(last) => ItemError::Unavailable(last.describe(item.group)),
                None => ItemError::Unavailable("no attempt possible".into()),
            };
            complete(st, item, Err(err), out);
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
            None => complete(
                st,
                item,
                Err(ItemError::Unavailable("no member known".into())),
                out,
            ),
        }
    }

    /// kv.py `_attempts`' handling of one failed attempt: learn, mark, and decide when (or
    /// whether) to retry.
    fn on_error(
        &self,
        st: &mut State,
        mut item: Item,
        err: ItemError,
        target: u64,
        now: Instant,
        step: &mut Step,
    ) {
        if st.closed {
            complete(st, item, Err(ItemError::Closed), &mut step.finished);
            return;
        }
        let group = item.group;
        let may_retry_unknown =
            !item.call.kind.is_write() || self.retry_unknown_writes.load(Ordering::Relaxed);
        let retry = match &err {
            ItemError::NotLeader { hint } => {
                st.leaders.insert(group, *hint);
                true
            }
            ItemError::LeadershipLost | ItemError::Timeout { .. } => {
                if may_retry_unknown {
                    st.failed(
                        group,
                        if err.is_timeout() { target } else { 0 },
                        self.me,
                        now,
                    );
                }
                may_retry_unknown
            }
            ItemError::Net(TransportError::Timeout { .. }) => {
                if may_retry_unknown {
                    st.failed(group, target, self.me, now);
                }
                may_retry_unknown
            }
            ItemError::Net(TransportError::Remote { code, .. }) if code == "InvalidRequest" => {
                false // the request itself is bad: no other node or attempt will take it
            }
            ItemError::Net(TransportError::Remote { code, .. }) if code == NO_SPACE => {
                false // the leader's disk is full: a definite refusal until space is freed
            }
            ItemError::Net(
                TransportError::Unreachable { .. }
                | TransportError::Handshake { .. }
                | TransportError::Closed
                | TransportError::UnknownPeer { .. }
                | TransportError::Remote { .. },
            )
            | ItemError::Malformed(_) => {
                st.failed(group, target, self.me, now);
                true
            }
            _ => false,
        };
        if !retry {
            complete(st, item, Err(err), &mut step.finished);
            return;
        }
        let pause =
            Duration::from_millis(RETRY_BACKOFF_MS[item.attempt.min(RETRY_BACKOFF_MS.len() - 1)]);
        item.attempt += 1;
        let named = matches!(err, ItemError::NotLeader { hint } if hint != 0);
        item.last = Some(err);
        if named && item.attempt < NAMED_LEADER_RETRIES_MAX {
            step.at_once.push(item);
        } else {
            let left = item.call.deadline.saturating_duration_since(now);
            step.later.push((pause.min(left), item));
        }
    }

    async fn run_batch(self: Arc<Self>, key: LaneKey, items: Vec<Item>) {
        let (target, lane, probe) = key;
        let start = Instant::now();
        // Attempts that may be given up early (their items are retried): reads, and writes when
        // unknown outcomes are retried (exactly-once through the session).
        let cancellable =
            lane != Lane::Propose || self.retry_unknown_writes.load(Ordering::Relaxed);
        let (attempt, avoid, suspect) = {
            let mut st = self.state();
            let avoid = (probe && lane == Lane::Propose).then(|| {
                st.health
                    .avoided(monotonic_s(start), AVOIDED_IN_REQUEST_MAX)
            });
            let suspect = cancellable.then(|| st.suspect_channel(target));
            (st.attempt_timeout(start), avoid, suspect)
        };
        let deadline = items
            .iter()
            .map(|i| i.call.deadline)
            .min()
            .unwrap_or(start)
            .min(start + attempt);
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
        let reply = match encode_request(lane, &items, timeout_ms, avoid.as_deref()) {
            Err(err) => Err(err),
            Ok(payload) => {
                self.requests_sent.fetch_add(1, Ordering::Relaxed);
                let rpc = self
                    .transport
                    .send_rpc(NodeId(target), MessageKind::KV_REQUEST, payload);
                tokio::select! {
                    biased;
                    answer = tokio::time::timeout(timeout, rpc) => match answer {
                        Err(_) => {
                            timed_out_here = true;
                            Err(ItemError::Timeout { target, timeout_ms })
                        }
                        Ok(Err(err)) => Err(ItemError::Net(err)),
                        Ok(Ok(frame)) => decode_reply(&frame, lane, items.len()),
                    },
                    () = &mut suspected => {
                        // Another attempt to this node timed out: this one gives up too.
                        let waited = start.elapsed().as_millis();
                        Err(ItemError::Timeout {
                            target,
                            timeout_ms: u64::try_from(waited).unwrap_or(u64::MAX),
                        })
                    }
                }
            }
        };
        let now = Instant::now();
        let mut step = Step::default();
        let mut batches = Vec::new();
        {
            let mut st = self.state();
            if let Some(q) = st.lanes.get_mut(&key) {
                q.in_flight -= 1;
            }
            if timed_out_here {
                st.suspect(target);
            }
            match reply {
                Ok((results, failed)) => {
                    if !probe {
                        st.answered(now.saturating_duration_since(start), now);
                    }
                    if probe && lane == Lane::Propose {
                        st.revive_named(&failed);
                    }
                    for (item, result) in items.into_iter().zip(results) {
                        match failed.get(&item.group) {
                            Some(err) => {
                                self.on_error(&mut st, item, err.clone(), target, now, &mut step)
                            }
                            None => {
                                st.leaders.entry(item.group).or_insert(target);
                                complete(&mut st, item, Ok(result), &mut step.finished);
                            }
                        }
                    }
                }
                Err(err) => {
                    for item in items {
                        self.on_error(&mut st, item, err.clone(), target, now, &mut step);
                    }
                }
            }
            let mut keys = vec![key];
            for item in std::mem::take(&mut step.at_once) {
                self.requeue(&mut st, item, now, &mut keys, &mut step.finished);
            }
            for k in keys {
                st.take_batches(k, &mut batches);
            }
        }
        self.spawn(batches);
        self.resolve(step.finished);
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
                {
                    let mut st = this.state();
                    for item in items {
                        this.requeue(&mut st, item, now, &mut keys, &mut out);
                    }
                    for k in keys {
                        st.take_batches(k, &mut batches);
                    }
                }
                this.spawn(batches);
                this.resolve(out);
            });
        }
    }
}

#[derive(Serialize)]
struct ProposeMany<'a> {
    op: &'static str,
    gs: Vec<u64>,
    cmds: Vec<&'a serde_bytes::Bytes>,
    t: u64,
    /// Present on a probe: the receiver may hold a group's share until it knows a leader that
    /// is none of these nodes (the ones the client avoids), then answer with it (kv_serve.rs).
    #[serde(skip_serializing_if = "Option::is_none")]
    wl: Option<&'a [u64]>,
}

#[derive(Serialize)]
struct ReadMany<'a> {
    op: &'static str,
    gs: Vec<u64>,
    keys: Vec<&'a serde_bytes::Bytes>,
    level: &'static str,
    stale_s: f64,
    t: u64,
}

fn encode_request(
    lane: Lane,
    items: &[Item],
    timeout_ms: u64,
    wait_leader_avoiding: Option<&[u64]>,
) -> Result<Bytes, ItemError> {
    let gs = items.iter().map(|i| i.group).collect();
    let list = items
        .iter()
        .map(|i| serde_bytes::Bytes::new(&i.payload))
        .collect();
    let encoded = match lane {
        Lane::Propose => rmp_serde::to_vec_named(&ProposeMany {
            op: "propose_many",
            gs,
            cmds: list,
            t: timeout_ms,
            wl: wait_leader_avoiding,
        }),
        Lane::Read { level, .. } => rmp_serde::to_vec_named(&ReadMany {
            op: "read_many",
            gs,
            keys: list,
            level: level.as_str(),
            stale_s: lane.stale_s(),
            t: timeout_ms,
        }),
    };
    encoded
        .map(Bytes::from)
        .map_err(|e| ItemError::Invalid(format!("cannot encode a kv request: {e}")))
}

/// kv.py's KV_RESPONSE: `{"r", "nlg", "unk", "stale_g"}`, or a single-group `{"nl"}` /
/// `{"stale"}`; unknown fields ignored.
#[derive(Deserialize)]
struct ManyReply {
    r: Option<Vec<Option<ByteBuf>>>,
    #[serde(default)]
    nlg: Vec<(u64, u64)>,
    #[serde(default)]
    unk: Vec<u64>,
    #[serde(default)]
    stale_g: Vec<(u64, f64)>,
    nl: Option<u64>,
    stale: Option<f64>,
}

type Decoded = (Vec<Option<Vec<u8>>>, HashMap<u64, ItemError>);

/// One result per item and the groups that failed, or the error of the whole request.
fn decode_reply(frame: &OutboundFrame, lane: Lane, count: usize) -> Result<Decoded, ItemError> {
    if frame.kind != MessageKind::KV_RESPONSE {
        return Err(ItemError::Malformed(format!(
            "answered kv with kind {}",
            frame.kind.number()
        )));
    }
    let reply: ManyReply =
        rmp_serde::from_slice(&frame.payload).map_err(|e| ItemError::Malformed(e.to_string()))?;
    if let Some(results) = reply.r {
        if results.len() != count {
            return Err(ItemError::Malformed(format!(
                "{} results for {count} items",
                results.len()
            )));
        }
        let mut failed = HashMap::new();
        for (group, hint) in reply.nlg {
            failed.insert(group, ItemError::NotLeader { hint });
        }
        for group in reply.unk {
            failed.insert(group, ItemError::LeadershipLost);
        }
        for (group, age_s) in reply.stale_g {
            failed.insert(
                group,
                ItemError::Stale {
                    age_s,
                    max_s: lane.stale_s(),
                },
            );
        }
        let results = results
            .into_iter()
            .map(|r| r.map(ByteBuf::into_vec))
            .collect();
        return Ok((results, failed));
    }
    if let Some(hint) = reply.nl {
        return Err(ItemError::NotLeader { hint });
    }
    if let Some(age_s) = reply.stale {
        return Err(ItemError::Stale {
            age_s,
            max_s: lane.stale_s(),
        });
    }
    Err(ItemError::Malformed("kv response without a result".into()))
}

/// A write's result; a session copy refused as already answered is an unknown outcome.
fn written(result: Option<&Vec<u8>>) -> Result<KvResult, ItemError> {
    let bytes = result.ok_or_else(|| ItemError::Malformed("a write without a result".into()))?;
    match KvResult::decode(bytes) {
        Ok(KvResult::Duplicate) => Err(ItemError::OutcomeUnknown),
        Ok(result) => Ok(result),
        Err(e) => Err(ItemError::Malformed(format!("kv result: {e}"))),
    }
}

fn opt_bytes(py: Python<'_>, value: Option<Vec<u8>>) -> Py<PyAny> {
    match value {
        Some(v) => PyBytes::new(py, &v).into_any().unbind(),
        None => py.None(),
    }
}

/// What a Rust caller learns: writes must have applied (not refused), reads must have
/// answered; the error text is `ItemError::describe`'s.
fn native_outcome(call: &Call, outcome: Outcome) -> Result<(), String> {
    let results = outcome.map_err(|(group, err)| err.describe(group))?;
    if call.kind.is_write() {
        for (i, r) in results.iter().enumerate() {
            let group = call.groups.get(i).copied().unwrap_or(0);
            match written(r.as_ref()) {
                Ok(KvResult::Invalid { reason }) => return Err(format!("refused: {reason}")),
                Ok(_) => {}
                Err(e) => return Err(e.describe(group)),
            }
        }
    }
    Ok(())
}

/// The value (or exception) the caller's future gets, by call kind.
fn outcome_to_py(py: Python<'_>, call: &Call, outcome: Outcome) -> PyResult<Py<PyAny>> {
    let mut results = outcome.map_err(|(group, err)| err.into_py(py, group))?;
    let fail = |i: usize, err: ItemError| err.into_py(py, call.groups.get(i).copied().unwrap_or(0));
    match call.kind {
        CallKind::Get => Ok(opt_bytes(py, results.pop().flatten())),
        CallKind::GetMany => {
            let values: Vec<Py<PyAny>> = results.into_iter().map(|v| opt_bytes(py, v)).collect();
            Ok(PyList::new(py, values)?.into_any().unbind())
        }
        CallKind::Put | CallKind::PutMany => {
            for (i, r) in results.iter().enumerate() {
                written(r.as_ref()).map_err(|e| fail(i, e))?;
            }
            Ok(py.None())
        }
        CallKind::Delete => {
            let status =
                written(results.first().and_then(Option::as_ref)).map_err(|e| fail(0, e))?;
            let existed = matches!(status, KvResult::Ok { .. });
            Ok(PyBool::new(py, existed).to_owned().into_any().unbind())
        }
        CallKind::Cas => {
            let status =
                written(results.first().and_then(Option::as_ref)).map_err(|e| fail(0, e))?;
            match status {
                KvResult::Invalid { reason } => Err(cluster_error(
                    py,
                    "InvalidRequest",
                    (format!("cas refused: {reason:?}"),),
                )),
                status => {
                    let applied = matches!(status, KvResult::Ok { .. });
                    Ok(PyBool::new(py, applied).to_owned().into_any().unbind())
                }
            }
        }
    }
}

/// `KvClient(transport, node_id, timeout_s=5.0, client_id=None)`: see the module docs. Every
/// call method takes an asyncio future created on the owning loop (which watches
/// `bridge_fd()` with `drain`) and returns True when the caller must schedule `flush()` (once
/// per loop iteration: everything queued until then shares its requests).
#[pyclass(frozen, name = "KvClient", module = "nodedb_cluster_core")]
pub struct PyKvClient {
    inner: Arc<Inner>,
    timeout_s: f64,
}

fn invalid(py: Python<'_>, text: String) -> PyErr {
    cluster_error(py, "InvalidRequest", (text,))
}

impl PyKvClient {
    fn deadline(&self, py: Python<'_>, timeout_s: Option<f64>) -> PyResult<Instant> {
        let t = timeout_s.unwrap_or(self.timeout_s);
        if !(t.is_finite() && t > 0.0) {
            return Err(invalid(py, format!("timeout must be positive, got {t}")));
        }
        Ok(Instant::now() + Duration::from_secs_f64(t.min(TIMEOUT_S_MAX)))
    }

    /// Route, wrap (writes) and queue one call's items; raise at once when it cannot start.
    fn submit(
        &self,
        py: Python<'_>,
        kind: CallKind,
        lane: Lane,
        timeout_s: Option<f64>,
        future: Py<PyAny>,
        items: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> PyResult<bool> {
        let deadline = self.deadline(py, timeout_s)?;
        self.inner
            .enqueue_call(kind, lane, deadline, Waiter::Loop(future), items)
            .map_err(|e| e.into_py(py))
    }

    /// The shared core (`kv_load.rs` drives it from the runtime).
    pub(crate) fn core(&self) -> Arc<Inner> {
        Arc::clone(&self.inner)
    }

    pub(crate) fn runtime(&self) -> &'static tokio::runtime::Runtime {
        self.inner.runtime
    }

    pub(crate) fn bridge(&self) -> &Arc<LoopBridge> {
        &self.inner.bridge
    }

    /// Counts one more call whose future is resolved through the bridge by other code (so a
    /// closing `Client` keeps watching the bridge); dropping the guard on the loop thread, once
    /// that future is settled, uncounts it.
    pub(crate) fn unresolved_call(&self) -> UnresolvedCall {
        let counter = Arc::clone(&self.inner.calls_unresolved);
        counter.fetch_add(1, Ordering::AcqRel);
        UnresolvedCall(counter)
    }
}

/// See [`PyKvClient::unresolved_call`].
pub(crate) struct UnresolvedCall(Arc<AtomicUsize>);

impl Drop for UnresolvedCall {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a call could not start.
pub(crate) enum SubmitError {
    Closed,
    NotConnected(String),
    Item(u64, ItemError),
}

impl SubmitError {
    fn into_py(self, py: Python<'_>) -> PyErr {
        match self {
            SubmitError::Closed => cluster_error(py, "TransportClosed", ()),
            SubmitError::NotConnected(text) => cluster_error(py, "ClusterError", (text,)),
            SubmitError::Item(group, err) => err.into_py(py, group),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            SubmitError::Closed => "client closed".into(),
            SubmitError::NotConnected(text) => text.clone(),
            SubmitError::Item(group, err) => err.describe(*group),
        }
    }
}

impl Inner {
    /// Route, wrap (writes) and queue one call's items. True when the caller must flush (the
    /// first call queued since the last flush).
    fn enqueue_call(
        &self,
        kind: CallKind,
        lane: Lane,
        deadline: Instant,
        waiter: Waiter,
        items: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<bool, SubmitError> {
        let now = Instant::now();
        let mut st = self.state();
        if st.closed {
            return Err(SubmitError::Closed);
        }
        if st.pending_items > 0 && st.pending_items + items.len() > PENDING_ITEMS_MAX {
            return Err(SubmitError::Item(
                0,
                ItemError::Busy(format!(
                    "kv client queue full ({} items waiting)",
                    st.pending_items
                )),
            ));
        }
        let mut placed = Vec::with_capacity(items.len());
        for (key, _) in &items {
            let group = st.group_of(key).map_err(|e| match e {
                ItemError::Unavailable(text) => SubmitError::NotConnected(text),
                e => SubmitError::Item(0, e),
            })?;
            let Some((target, probe)) = st.pick(group, 0, self.me, now) else {
                return Err(SubmitError::Item(
                    group,
                    ItemError::Unavailable("no member known".into()),
                ));
            };
            placed.push((group, target, probe));
        }
        let count = items.len();
        let seqs = if kind.is_write() {
            let (first, floor) = st.session.open_seqs(count);
            ((first, count as u64), Some(floor))
        } else {
            ((0, 0), None)
        };
        if matches!(waiter, Waiter::Loop(_)) {
            self.calls_unresolved.fetch_add(1, Ordering::AcqRel);
        }
        let call = Arc::new(Call {
            kind,
            deadline,
            groups: placed.iter().map(|&(g, _, _)| g).collect(),
            seqs: seqs.0,
            waiter: Mutex::new(Some(waiter)),
            progress: Mutex::new(Progress {
                results: vec![None; count],
                remaining: count,
                finished: false,
            }),
        });
        for (slot, ((group, target, probe), (_, payload))) in
            placed.into_iter().zip(items).enumerate()
        {
            let payload = match seqs.1 {
                Some(floor) => st
                    .session
                    .wrap_one(seqs.0 .0 + slot as u64, floor, &payload),
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
            };
            st.enqueue((target, lane, probe), item);
        }
        Ok(!std::mem::replace(&mut st.flush_scheduled, true))
    }

    /// Send everything queued since the last flush: one KV_REQUEST per (target, lane) while
    /// slots are free (the rest follows as replies come back).
    pub(crate) fn flush(self: &Arc<Self>) {
        let mut batches = Vec::new();
        {
            let mut st = self.state();
            st.flush_scheduled = false;
            let keys: Vec<LaneKey> = st
                .lanes
                .iter()
                .filter(|(_, q)| !q.pending.is_empty() && q.in_flight < REMOTE_IN_FLIGHT_MAX)
                .map(|(k, _)| *k)
                .collect();
            for key in keys {
                st.take_batches(key, &mut batches);
            }
        }
        self.spawn(batches);
    }

    /// A put from a Rust caller, answered through `tx` with `tag`.
    pub(crate) fn put_native(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        deadline: Instant,
        tx: &mpsc::UnboundedSender<NativeDone>,
        tag: usize,
    ) -> Result<bool, SubmitError> {
        let cmd = KvCommand::Put {
            key: key.clone(),
            value,
        }
        .encode();
        let waiter = Waiter::Native {
            tx: tx.clone(),
            tag,
        };
        self.enqueue_call(
            CallKind::Put,
            Lane::Propose,
            deadline,
            waiter,
            vec![(key, cmd)],
        )
    }

    /// A linearizable get from a Rust caller, answered through `tx` with `tag`.
    pub(crate) fn get_native(
        &self,
        key: Vec<u8>,
        deadline: Instant,
        tx: &mpsc::UnboundedSender<NativeDone>,
        tag: usize,
    ) -> Result<bool, SubmitError> {
        let lane = Lane::Read {
            level: Level::Linearizable,
            stale_s_bits: 0f64.to_bits(),
        };
        let waiter = Waiter::Native {
            tx: tx.clone(),
            tag,
        };
        self.enqueue_call(
            CallKind::Get,
            lane,
            deadline,
            waiter,
            vec![(key.clone(), key)],
        )
    }
}

#[pymethods]
impl PyKvClient {
    #[new]
    #[pyo3(signature = (transport, node_id, timeout_s = 5.0, client_id = None))]
    fn new(
        py: Python<'_>,
        transport: &PyTransport,
        node_id: u64,
        timeout_s: f64,
        client_id: Option<u64>,
    ) -> PyResult<Self> {
        if !(timeout_s.is_finite() && timeout_s > 0.0 && timeout_s <= TIMEOUT_S_MAX) {
            return Err(cluster_error(
                py,
                "ConfigError",
                (
                    "timeout_s",
                    format!("{timeout_s} s is not in (0, {TIMEOUT_S_MAX}]"),
                ),
            ));
        }
        let bridge = LoopBridge::new()
            .map_err(|e| PyRuntimeError::new_err(format!("cannot create the loop bridge: {e}")))?;
        let state = State {
            routing: None,
            leaders: HashMap::new(),
            health: PeerHealth::default(),
            session: SessionState::new(client_id.unwrap_or_else(random_client_id)),
            lanes: HashMap::new(),
            pending_items: 0,
            flush_scheduled: false,
            closed: false,
            suspects: HashMap::new(),
        };
        Ok(PyKvClient {
            inner: Arc::new(Inner {
                me: node_id,
                transport: transport.shared(),
                bridge: Arc::new(bridge),
                runtime: transport_runtime()?,
                retry_unknown_writes: AtomicBool::new(true),
                requests_sent: AtomicU64::new(0),
                calls_unresolved: Arc::new(AtomicUsize::new(0)),
                state: Mutex::new(state),
            }),
            timeout_s,
        })
    }

    /// The fd the owning asyncio loop must watch: `loop.add_reader(c.bridge_fd(), c.drain)`.
    fn bridge_fd(&self) -> i32 {
        self.inner.bridge.fd()
    }

    /// Resolve finished calls (loop thread only). Returns how many bridge tasks ran.
    fn drain(&self, py: Python<'_>) -> usize {
        self.inner.bridge.drain(py)
    }

    /// Install routing: `vshard_to_group` (1024 group ids) and `(group, leader or 0, voters)`
    /// per group. Learned leaders are kept.
    fn set_routing(
        &self,
        py: Python<'_>,
        vshard_to_group: Vec<u64>,
        routes: Vec<(u64, u64, Vec<u64>)>,
    ) -> PyResult<()> {
        if vshard_to_group.len() != NUM_VSHARDS {
            return Err(invalid(
                py,
                format!(
                    "routing needs {NUM_VSHARDS} vShards, got {}",
                    vshard_to_group.len()
                ),
            ));
        }
        let routes = routes
            .into_iter()
            .map(|(group, leader, voters)| (group, Route { leader, voters }))
            .collect();
        self.inner.state().routing = Some(Routing {
            vshard_to_group,
            routes,
        });
        Ok(())
    }

    #[getter]
    fn retry_unknown_writes(&self) -> bool {
        self.inner.retry_unknown_writes.load(Ordering::Relaxed)
    }

    #[setter]
    fn set_retry_unknown_writes(&self, value: bool) {
        self.inner
            .retry_unknown_writes
            .store(value, Ordering::Relaxed);
    }

    /// This client's session id (exactly-once writes).
    #[getter]
    fn client_id(&self) -> u64 {
        self.inner.state().session.client_id()
    }

    /// The lowest write seq this client still waits for.
    #[getter]
    fn acked_below(&self) -> u64 {
        self.inner.state().session.acked_below()
    }

    /// Writes handed out and not finished.
    #[getter]
    fn writes_in_flight(&self) -> usize {
        self.inner.state().session.in_flight()
    }

    /// KV_REQUESTs sent (each carries every item queued for its target and lane).
    #[getter]
    fn requests_sent(&self) -> u64 {
        self.inner.requests_sent.load(Ordering::Relaxed)
    }

    /// Calls accepted whose futures are not resolved yet (the owner keeps watching the bridge
    /// until this is 0 after `close`).
    #[getter]
    fn calls_unresolved(&self) -> usize {
        self.inner.calls_unresolved.load(Ordering::Acquire)
    }

    fn group_of(&self, py: Python<'_>, key: &[u8]) -> PyResult<u64> {
        self.inner
            .state()
            .group_of(key)
            .map_err(|e| e.into_py(py, 0))
    }

    /// The node this client would send `group`'s requests to now (0 = unknown).
    fn leader_hint(&self, group: u64) -> u64 {
        self.inner.state().target(group, Instant::now())
    }

    #[pyo3(signature = (key, value, timeout_s, future))]
    fn put(
        &self,
        py: Python<'_>,
        key: &[u8],
        value: &[u8],
        timeout_s: Option<f64>,
        future: Py<PyAny>,
    ) -> PyResult<bool> {
        let cmd = KvCommand::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        }
        .encode();
        self.submit(
            py,
            CallKind::Put,
            Lane::Propose,
            timeout_s,
            future,
            vec![(key.to_vec(), cmd)],
        )
    }

    #[pyo3(signature = (key, timeout_s, future))]
    fn delete(
        &self,
        py: Python<'_>,
        key: &[u8],
        timeout_s: Option<f64>,
        future: Py<PyAny>,
    ) -> PyResult<bool> {
        let cmd = KvCommand::Delete { key: key.to_vec() }.encode();
        self.submit(
            py,
            CallKind::Delete,
            Lane::Propose,
            timeout_s,
            future,
            vec![(key.to_vec(), cmd)],
        )
    }

    #[pyo3(signature = (key, expected, new, timeout_s, future))]
    fn cas(
        &self,
        py: Python<'_>,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
        timeout_s: Option<f64>,
        future: Py<PyAny>,
    ) -> PyResult<bool> {
        let cmd = KvCommand::Cas {
            key: key.to_vec(),
            expected: expected.map(<[u8]>::to_vec),
            value: new.to_vec(),
        }
        .encode();
        self.submit(
            py,
            CallKind::Cas,
            Lane::Propose,
            timeout_s,
            future,
            vec![(key.to_vec(), cmd)],
        )
    }

    #[pyo3(signature = (items, timeout_s, future))]
    fn put_many(
        &self,
        py: Python<'_>,
        items: Vec<(Vec<u8>, Vec<u8>)>,
        timeout_s: Option<f64>,
        future: Py<PyAny>,
    ) -> PyResult<bool> {
        let items = items
            .into_iter()
            .map(|(key, value)| {
                let cmd = KvCommand::Put {
                    key: key.clone(),
                    value,
                }
                .encode();
                (key, cmd)
            })
            .collect();
        self.submit(
            py,
            CallKind::PutMany,
            Lane::Propose,
            timeout_s,
            future,
            items,
        )
    }

    /// Values of `keys` (`single`: the future gets the one value, not a list).
    // Python keyword arguments, one per setting: the count is the API, not a smell.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (keys, level, max_staleness_s, timeout_s, future, single = false))]
    fn get_many(
        &self,
        py: Python<'_>,
        keys: Vec<Vec<u8>>,
        level: &str,
        max_staleness_s: f64,
        timeout_s: Option<f64>,
        future: Py<PyAny>,
        single: bool,
    ) -> PyResult<bool> {
        let Some(level) = Level::parse(level) else {
            return Err(invalid(
                py,
                format!(
                    "read level must be one of ('linearizable', 'lease', 'follower'), not {level:?}"
                ),
            ));
        };
        if !max_staleness_s.is_finite() || max_staleness_s < 0.0 {
            return Err(invalid(
                py,
                format!("max_staleness_s must be >= 0, got {max_staleness_s}"),
            ));
        }
        let lane = Lane::Read {
            level,
            stale_s_bits: max_staleness_s.to_bits(),
        };
        let kind = if single {
            CallKind::Get
        } else {
            CallKind::GetMany
        };
        let items = keys.into_iter().map(|k| (k.clone(), k)).collect();
        self.submit(py, kind, lane, timeout_s, future, items)
    }

    /// Send everything queued since the last flush: one KV_REQUEST per (target, lane) while
    /// slots are free (the rest follows as replies come back).
    fn flush(&self, py: Python<'_>) {
        py.detach(|| self.inner.flush());
    }

    /// Fail every queued call with TransportClosed; calls in flight fail when their reply (or
    /// the transport's closing) comes back. Idempotent.
    fn close(&self) {
        let mut out = Vec::new();
        {
            let mut st = self.inner.state();
            st.closed = true;
            let lanes: Vec<LaneQueue> = st.lanes.drain().map(|(_, q)| q).collect();
            for mut q in lanes {
                st.pending_items -= q.pending.len();
                for item in q.pending.drain(..) {
                    complete(&mut st, item, Err(ItemError::Closed), &mut out);
                }
            }
        }
        self.inner.resolve(out);
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyKvClient>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer_health::DOWN_HOLD_S;

    fn frame(payload: Vec<u8>) -> OutboundFrame {
        OutboundFrame {
            kind: MessageKind::KV_RESPONSE,
            payload: Bytes::from(payload),
        }
    }

    #[derive(Serialize)]
    struct Reply {
        r: Vec<Option<ByteBuf>>,
        nlg: Vec<(u64, u64)>,
        unk: Vec<u64>,
        stale_g: Vec<(u64, f64)>,
    }

    #[test]
    fn reply_decodes_results_and_per_group_failures() {
        let lane = Lane::Read {
            level: Level::Follower,
            stale_s_bits: 0.5f64.to_bits(),
        };
        let payload = rmp_serde::to_vec_named(&Reply {
            r: vec![Some(ByteBuf::from(b"v".to_vec())), None, None, None],
            nlg: vec![(2, 3)],
            unk: vec![4],
            stale_g: vec![(5, 1.5)],
        })
        .unwrap();
        let (results, failed) = decode_reply(&frame(payload), lane, 4).unwrap();
        assert_eq!(results, vec![Some(b"v".to_vec()), None, None, None]);
        assert!(matches!(failed[&2], ItemError::NotLeader { hint: 3 }));
        assert!(matches!(failed[&4], ItemError::LeadershipLost));
        assert!(
            matches!(failed[&5], ItemError::Stale { age_s, max_s } if age_s == 1.5 && max_s == 0.5)
        );
    }

    #[test]
    fn reply_with_wrong_count_or_shape_is_malformed() {
        let payload = rmp_serde::to_vec_named(&Reply {
            r: vec![None],
            nlg: vec![],
            unk: vec![],
            stale_g: vec![],
        })
        .unwrap();
        assert!(matches!(
            decode_reply(&frame(payload), Lane::Propose, 2),
            Err(ItemError::Malformed(_))
        ));
        assert!(matches!(
            decode_reply(&frame(vec![0xc1]), Lane::Propose, 1),
            Err(ItemError::Malformed(_))
        ));
        // {"nl": 2}: the single-group NotLeader form.
        assert!(matches!(
            decode_reply(&frame(b"\x81\xa2nl\x02".to_vec()), Lane::Propose, 1),
            Err(ItemError::NotLeader { hint: 2 })
        ));
        let wrong_kind = OutboundFrame {
            kind: MessageKind::KV_REQUEST,
            payload: Bytes::new(),
        };
        assert!(matches!(
            decode_reply(&wrong_kind, Lane::Propose, 0),
            Err(ItemError::Malformed(_))
        ));
    }

    #[test]
    fn request_is_kv_py_propose_many() {
        // Decoded with the serving side's own parser (kv_serve.rs) as the reference.
        #[derive(Deserialize)]
        struct Req {
            op: String,
            gs: Vec<u64>,
            cmds: Vec<ByteBuf>,
            t: u64,
        }
        let call = Arc::new(Call {
            kind: CallKind::Put,
            deadline: Instant::now(),
            groups: vec![3, 1],
            seqs: (0, 0),
            waiter: Mutex::new(None),
            progress: Mutex::new(Progress {
                results: vec![None, None],
                remaining: 2,
                finished: false,
            }),
        });
        let items: Vec<Item> = [(3u64, b"a".to_vec()), (1, b"bc".to_vec())]
            .into_iter()
            .enumerate()
            .map(|(slot, (group, payload))| Item {
                call: Arc::clone(&call),
                slot,
                group,
                lane: Lane::Propose,
                payload,
                attempt: 0,
                last: None,
            })
            .collect();
        let bytes = encode_request(Lane::Propose, &items, 250, None).unwrap();
        let req: Req = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(req.op, "propose_many");
        assert_eq!(req.gs, vec![3, 1]);
        assert_eq!(req.cmds[1].as_ref(), b"bc");
        assert_eq!(req.t, 250);
    }

    #[test]
    fn a_probe_request_names_the_avoided_nodes() {
        #[derive(Deserialize)]
        struct Req {
            wl: Option<Vec<u64>>,
        }
        let bytes = encode_request(Lane::Propose, &[], 250, Some(&[3, 5])).unwrap();
        let req: Req = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(req.wl, Some(vec![3, 5]));
        let bytes = encode_request(Lane::Propose, &[], 250, None).unwrap();
        let req: Req = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(req.wl, None, "only probes may be held");
    }

    #[test]
    fn one_timed_out_attempt_wakes_every_attempt_waiting_on_that_node() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut st = state_with(1, vec![1, 2]);
        let on_1 = st.suspect_channel(1);
        let on_2 = st.suspect_channel(2);
        rt.block_on(async {
            let a = on_1.notified();
            let b = on_2.notified();
            tokio::pin!(a, b);
            a.as_mut().enable();
            b.as_mut().enable();
            st.suspect(1);
            let woke = tokio::time::timeout(Duration::from_secs(5), a).await;
            assert!(woke.is_ok(), "the waiter on node 1 was woken");
            let other = tokio::time::timeout(Duration::from_millis(50), b).await;
            assert!(other.is_err(), "the one on node 2 was not");
        });
    }

    #[test]
    fn duplicate_write_result_is_an_unknown_outcome() {
        assert!(matches!(
            written(Some(&KvResult::Duplicate.encode())),
            Err(ItemError::OutcomeUnknown)
        ));
        assert!(matches!(
            written(Some(&KvResult::NotFound.encode())),
            Ok(KvResult::NotFound)
        ));
        assert!(matches!(written(None), Err(ItemError::Malformed(_))));
    }

    fn state_with(leader: u64, voters: Vec<u64>) -> State {
        let mut routes = HashMap::new();
        routes.insert(1, Route { leader, voters });
        State {
            routing: Some(Routing {
                vshard_to_group: vec![1; NUM_VSHARDS],
                routes,
            }),
            leaders: HashMap::new(),
            health: PeerHealth::default(),
            session: SessionState::new(1),
            lanes: HashMap::new(),
            pending_items: 0,
            flush_scheduled: false,
            closed: false,
            suspects: HashMap::new(),
        }
    }

    #[test]
    fn attempt_timeout_follows_the_slowest_recent_answer() {
        let now = Instant::now();
        let mut st = state_with(1, vec![1]);
        assert_eq!(st.attempt_timeout(now), Duration::from_millis(300), "floor");
        st.answered(Duration::from_millis(200), now);
        assert_eq!(st.attempt_timeout(now), Duration::from_millis(600));
        st.answered(Duration::from_millis(900), now);
        assert_eq!(st.attempt_timeout(now), Duration::from_secs(1), "ceiling");
        // Two half-lives later the 900 ms answer counts as 225 ms.
        let later = now + Duration::from_secs(4);
        let t = st.attempt_timeout(later).as_secs_f64();
        assert!((t - 0.675).abs() < 1e-9, "{t}");
    }

    #[test]
    fn target_follows_hints_and_skips_failed_nodes() {
        let now = Instant::now();
        let mut st = state_with(2, vec![1, 2, 3]);
        assert_eq!(st.pick(1, 0, 99, now), Some((2, false)), "routing's leader");
        st.leaders.insert(1, 3);
        assert_eq!(
            st.pick(1, 0, 99, now),
            Some((3, false)),
            "a learned leader wins"
        );
        st.failed(1, 3, 99, now);
        // Leader forgotten, node 3 down: members in turn (probes), those not down first.
        assert_eq!(st.pick(1, 0, 99, now), Some((1, true)));
        assert_eq!(st.pick(1, 1, 99, now), Some((2, true)));
        let hold_passed = now + Duration::from_secs_f64(2.0 * DOWN_HOLD_S);
        assert_eq!(st.pick(1, 0, 99, hold_passed), Some((1, true)));
        let empty = state_with(0, vec![]);
        assert_eq!(empty.pick(1, 0, 99, now), None);
    }
}
