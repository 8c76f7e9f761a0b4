//! The KV serving fast path: KV_REQUEST `propose_many` and linearizable `read_many` answered in
//! Rust on the serving node, without a Python coroutine per request; every other KV_REQUEST
//! (routing, lease/follower reads, singles, load, anything malformed) goes to the Python handler
//! unchanged.
//!
//! Why: under load the Python handler (msgpack + a coroutine + a future per group) was the
//! leader's bottleneck (BENCHMARKS.md, "Replicated KV"). The wire schema is the one of
//! `nodedb_cluster/kv.py`: request `{"op": "propose_many", "gs": [group per cmd], "cmds":
//! [bytes], "t": timeout_ms}` (or `{"op": "read_many", "gs", "keys", "level": "linearizable",
//! "stale_s", "t"}`), reply `{"r": [result or nil], "nlg": [[group, leader or 0]],
//! "unk": [group]}` — byte-for-byte what the Python `_serve_many` answers, so clients and
//! forwarding nodes need no change.
//!
//! Group commit per group: every command that arrives while `BATCHES_IN_FLIGHT_MAX` entries of
//! its group are in flight rides the next entry (ONE Raft entry per batch), as in kv.py. Reads
//! share ReadIndex rounds per group: a read that arrives while a round is in flight waits for the
//! next one (the running one may have been sent before it arrived), then reads the local state.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nodedb_multiraft::error::RaftError;
use nodedb_multiraft::{GroupId, KvReader, MultiRaft, NodeId, StateMachineKind};
use nodedb_transport::{
    FrameHandler, HandlerError, HandlerFuture, HandlerResult, InboundFrame, MessageKind,
    OutboundFrame, Transport,
};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::peer_health::serve_budget_ms;

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
/// Remembered group batchers (and read shares), at most (the map is cleared past it; running batches finish).
const BATCHERS_MAX: usize = 4096;
/// A request timeout above this (or 0) is left to the Python handler, which refuses it.
const REQUEST_TIMEOUT_MS_MAX: u64 = 60_000;
/// kv.py's default when a request names no timeout.
const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 5_000;

fn default_timeout_ms() -> u64 {
    REQUEST_TIMEOUT_MS_DEFAULT
}

/// The part of a KV_REQUEST the fast path reads; unknown fields are ignored.
#[derive(Deserialize)]
struct KvMany {
    op: String,
    #[serde(default)]
    gs: Vec<u64>,
    #[serde(default)]
    cmds: Vec<ByteBuf>,
    #[serde(default)]
    keys: Vec<ByteBuf>,
    level: Option<String>,
    /// Only checked to be a number (as kv.py does); unused by linearizable reads.
    #[serde(rename = "stale_s")]
    _stale_s: Option<f64>,
    #[serde(default = "default_timeout_ms")]
    t: u64,
    /// A probe's avoided nodes (kv_client.rs): a group's share that finds no leader here, or only
    /// one of these, waits for another leader within the request's time and is sent there.
    wl: Option<Vec<u64>>,
}

/// Nodes a probe may name in "wl", at most (the client sends at most 16).
const AVOIDED_MAX: usize = 64;

/// A request the fast path serves.
enum Fast {
    Propose {
        gs: Vec<u64>,
        cmds: Vec<ByteBuf>,
        t: u64,
        wait_leader: Option<Vec<NodeId>>,
    },
    Read {
        gs: Vec<u64>,
        keys: Vec<ByteBuf>,
        t: u64,
    },
}

#[derive(Serialize)]
struct ManyReply {
    r: Vec<Option<ByteBuf>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    nlg: Vec<(u64, u64)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unk: Vec<u64>,
}

/// A valid `propose_many` or linearizable `read_many`, or None: the Python handler then
/// answers (its errors stay the reference for bad input).
fn parse(payload: &[u8]) -> Option<Fast> {
    let req: KvMany = rmp_serde::from_slice(payload).ok()?;
    if !(1..=REQUEST_TIMEOUT_MS_MAX).contains(&req.t) {
        return None;
    }
    match req.op.as_str() {
        "propose_many"
            if req.gs.len() == req.cmds.len()
                && req.keys.is_empty()
                && req.wl.as_ref().is_none_or(|wl| wl.len() <= AVOIDED_MAX) =>
        {
            Some(Fast::Propose {
                gs: req.gs,
                cmds: req.cmds,
                t: req.t,
                wait_leader: req.wl.map(|wl| wl.into_iter().map(NodeId).collect()),
            })
        }
        "read_many"
            if req.gs.len() == req.keys.len()
                && req.cmds.is_empty()
                && req.level.as_deref().is_none_or(|l| l == "linearizable") =>
        {
            Some(Fast::Read {
                gs: req.gs,
                keys: req.keys,
                t: req.t,
            })
        }
        _ => None,
    }
}

/// Request indexes per group, groups in order of first appearance (as kv.py).
fn by_group(gs: &[u64]) -> Vec<(u64, Vec<usize>)> {
    let mut order: Vec<(u64, Vec<usize>)> = Vec::new();
    let mut index_of: HashMap<u64, usize> = HashMap::new();
    for (i, &g) in gs.iter().enumerate() {
        let slot = *index_of.entry(g).or_insert_with(|| {
            order.push((g, Vec::new()));
            order.len() - 1
        });
        order[slot].1.push(i);
    }
    order
}

type GroupResult = Result<Vec<Vec<u8>>, RaftError>;

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
struct Batcher {
    group: GroupId,
    engine: Weak<MultiRaft>,
    runtime: Handle,
    queue: Mutex<Queue>,
}

impl Batcher {
    fn submit(
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
        self.launch(&mut queue);
        receiver
    }

    /// Start entries while slots are free (queue lock held).
    fn launch(self: &Arc<Self>, queue: &mut Queue) {
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
            let this = Arc::clone(self);
            self.runtime.spawn(async move { this.run(batch).await });
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
        let outcome = match self.engine.upgrade() {
            // KV commands only into groups that run the KV state machine (never group 0's
            // metadata machine nor a host's).
            Some(engine) => {
                engine
                    .propose_for(Some(StateMachineKind::Kv), self.group, items, timeout)
                    .await
            }
            None => Err(RaftError::Stopped {
                reason: "engine closed".into(),
            }),
        };
        match outcome {
            Ok(out) if out.results.len() == expected => {
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
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.in_flight -= 1;
        self.launch(&mut queue);
    }
}

#[derive(Default)]
struct ReadQueue {
    next: Vec<oneshot::Sender<Result<(), RaftError>>>,
    next_deadline: Option<Instant>,
    running: bool,
}

/// One group's shared ReadIndex rounds (kv.py `_ReadIndexShare`).
struct ReadShare {
    group: GroupId,
    engine: Weak<MultiRaft>,
    runtime: Handle,
    queue: Mutex<ReadQueue>,
}

impl ReadShare {
    fn wait(self: &Arc<Self>, deadline: Instant) -> oneshot::Receiver<Result<(), RaftError>> {
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
            self.runtime.spawn(async move { this.rounds().await });
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
            let timeout = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let outcome = match self.engine.upgrade() {
                Some(engine) => engine.read_index(self.group, timeout).await.map(|_| ()),
                None => Err(RaftError::Stopped {
                    reason: "engine closed".into(),
                }),
            };
            for waiter in waiters {
                let _ = waiter.send(outcome.clone());
            }
        }
    }
}

/// The KV_REQUEST handler of a node: `propose_many` here, the rest to the transport's fallback
/// (the Python handler). Holds the engine and transport weakly (the transport owns it).
pub(crate) struct KvFastHandler {
    engine: Weak<MultiRaft>,
    transport: Weak<Transport>,
    readers: Arc<Mutex<HashMap<GroupId, KvReader>>>,
    runtime: Handle,
    batchers: Mutex<HashMap<u64, Arc<Batcher>>>,
    reads: Mutex<HashMap<u64, Arc<ReadShare>>>,
}

impl KvFastHandler {
    pub(crate) fn new(
        engine: Weak<MultiRaft>,
        transport: Weak<Transport>,
        readers: Arc<Mutex<HashMap<GroupId, KvReader>>>,
        runtime: Handle,
    ) -> Self {
        KvFastHandler {
            engine,
            transport,
            readers,
            runtime,
            batchers: Mutex::new(HashMap::new()),
            reads: Mutex::new(HashMap::new()),
        }
    }

    fn read_share(&self, group: u64) -> Arc<ReadShare> {
        let mut reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = reads.get(&group) {
            return Arc::clone(r);
        }
        if reads.len() >= BATCHERS_MAX {
            reads.clear();
        }
        let r = Arc::new(ReadShare {
            group: GroupId(group),
            engine: self.engine.clone(),
            runtime: self.runtime.clone(),
            queue: Mutex::new(ReadQueue::default()),
        });
        reads.insert(group, Arc::clone(&r));
        r
    }

    fn batcher(&self, group: u64) -> Arc<Batcher> {
        let mut batchers = self.batchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = batchers.get(&group) {
            return Arc::clone(b);
        }
        if batchers.len() >= BATCHERS_MAX {
            batchers.clear();
        }
        let b = Arc::new(Batcher {
            group: GroupId(group),
            engine: self.engine.clone(),
            runtime: self.runtime.clone(),
            queue: Mutex::new(Queue::default()),
        });
        batchers.insert(group, Arc::clone(&b));
        b
    }

    fn delegate(&self, frame: InboundFrame) -> HandlerFuture {
        match self.transport.upgrade().and_then(|t| t.fallback_handler()) {
            Some(handler) => handler.handle(frame),
            None => Box::pin(async {
                Err(HandlerError::new(
                    "no_handler",
                    "no handler serves this KV request on this node",
                ))
            }),
        }
    }

    /// Split by group, submit each share to its batcher. With `wait_leader` (a probe) each
    /// share keeps its commands and batcher, to be proposed again here if this node becomes
    /// the leader while the share waits ([`answer`]).
    fn submit(
        &self,
        gs: &[u64],
        cmds: Vec<ByteBuf>,
        t: u64,
        wait_leader: Option<Vec<NodeId>>,
    ) -> (usize, Vec<GroupShare>, Option<Park>) {
        let deadline = Instant::now() + Duration::from_millis(serve_budget_ms(t));
        let total = cmds.len();
        let mut cmds: Vec<Option<Vec<u8>>> = cmds.into_iter().map(|c| Some(c.into_vec())).collect();
        let park = wait_leader.map(|avoid| Park {
            engine: self.engine.clone(),
            avoid,
            deadline,
        });
        let shares = by_group(gs)
            .into_iter()
            .map(|(g, idx)| {
                let share: Vec<Vec<u8>> = idx
                    .iter()
                    .map(|&i| cmds[i].take().unwrap_or_default())
                    .collect();
                let batcher = self.batcher(g);
                let again = park.as_ref().map(|_| (Arc::clone(&batcher), share.clone()));
                let receiver = batcher.submit(share, deadline);
                GroupShare {
                    group: g,
                    idx,
                    receiver,
                    again,
                }
            })
            .collect();
        (total, shares, park)
    }
}

struct GroupShare {
    group: u64,
    idx: Vec<usize>,
    receiver: oneshot::Receiver<GroupResult>,
    /// A probe's share: its batcher and commands, to propose again if this node comes to lead.
    again: Option<(Arc<Batcher>, Vec<Vec<u8>>)>,
}

/// A probe's wait for a leader (see `KvMany::wl`).
struct Park {
    engine: Weak<MultiRaft>,
    avoid: Vec<NodeId>,
    deadline: Instant,
}

impl Park {
    /// A NotLeader answer the probe may wait out: no leader known here, or only one the
    /// client avoids (it will be replaced).
    fn waits_for(&self, hint: Option<NodeId>) -> bool {
        hint.is_none_or(|h| self.avoid.contains(&h))
    }
}

/// kv.py `_serve_many`'s answer: results in place, NotLeader/unknown-group shares in "nlg",
/// unknown outcomes in "unk", any other failure fails the whole request. A probe's share that
/// found no usable leader here waits for one (issue 13, failover tail): named in "nlg" as soon
/// as this node knows it (an avoided node only when elected during the wait), or proposed here
/// if that is this node; 0 when none came within the request's time.
async fn answer(total: usize, shares: Vec<GroupShare>, park: Option<Park>) -> HandlerResult {
    let mut reply = ManyReply {
        r: vec![None; total],
        nlg: Vec::new(),
        unk: Vec::new(),
    };
    for share in shares {
        let mut outcome = share.receiver.await;
        if let (Some(park), Some((batcher, cmds))) = (&park, share.again) {
            if let Ok(Err(RaftError::NotLeader { leader_hint, .. })) = &outcome {
                if park.waits_for(*leader_hint) {
                    match wait_for_leader(park, share.group).await {
                        Some((_, true)) => outcome = batcher.submit(cmds, park.deadline).await,
                        Some((leader, false)) => {
                            reply.nlg.push((share.group, leader.0));
                            continue;
                        }
                        None => {
                            // Still no usable leader: "none known", never the avoided one
                            // again (a probe's answer naming an avoided node means that node
                            // was elected since: the client may use it at once).
                            reply.nlg.push((share.group, 0));
                            continue;
                        }
                    }
                }
            }
        }
        match outcome {
            Ok(Ok(results)) => {
                for (i, r) in share.idx.into_iter().zip(results) {
                    reply.r[i] = Some(ByteBuf::from(r));
                }
            }
            Ok(Err(err)) => classify(&mut reply, share.group, err)?,
            Err(_) => reply.unk.push(share.group),
        }
    }
    encode(&reply)
}

/// The leader `park` waits for in `group`, and whether it is this node; None once its time is
/// up (or the engine is gone).
async fn wait_for_leader(park: &Park, group: u64) -> Option<(NodeId, bool)> {
    let engine = park.engine.upgrade()?;
    let left = park.deadline.saturating_duration_since(Instant::now());
    let leader = engine
        .wait_leader(GroupId(group), &park.avoid, left)
        .await?;
    Some((leader, leader == engine.node_id()))
}

struct ReadWait {
    group: u64,
    idx: Vec<usize>,
    receiver: oneshot::Receiver<Result<(), RaftError>>,
}

/// kv.py `_serve_many` for linearizable reads: after the group's ReadIndex round, the keys from
/// the local state; failures as for proposals.
async fn answer_reads(
    readers: Arc<Mutex<HashMap<GroupId, KvReader>>>,
    keys: Vec<ByteBuf>,
    shares: Vec<ReadWait>,
) -> HandlerResult {
    let mut reply = ManyReply {
        r: vec![None; keys.len()],
        nlg: Vec::new(),
        unk: Vec::new(),
    };
    for share in shares {
        match share.receiver.await {
            Ok(Ok(())) => {
                let reader = readers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&GroupId(share.group))
                    .cloned();
                let Some(reader) = reader else {
                    reply.nlg.push((share.group, 0)); // not a KV group here
                    continue;
                };
                for i in share.idx {
                    reply.r[i] = reader.get(&keys[i]).map(ByteBuf::from);
                }
            }
            Ok(Err(err)) => classify(&mut reply, share.group, err)?,
            Err(_) => reply.unk.push(share.group),
        }
    }
    encode(&reply)
}

/// A group's failure into the reply (NotLeader / unknown group → "nlg", unknown outcome →
/// "unk"), or the error that fails the whole request (as the Python handler raises it).
fn classify(reply: &mut ManyReply, group: u64, err: RaftError) -> Result<(), HandlerError> {
    match err {
        RaftError::NotLeader { leader_hint, .. } => {
            reply.nlg.push((group, leader_hint.map_or(0, |n| n.0)));
        }
        RaftError::GroupNotFound { .. } => reply.nlg.push((group, 0)),
        RaftError::LeadershipLost { .. } | RaftError::Timeout { .. } => reply.unk.push(group),
        err => return Err(handler_error(err)),
    }
    Ok(())
}

fn encode(reply: &ManyReply) -> HandlerResult {
    let payload = rmp_serde::to_vec_named(reply)
        .map_err(|e| HandlerError::new("encode", format!("kv reply: {e}")))?;
    Ok(Some(OutboundFrame {
        kind: MessageKind::KV_RESPONSE,
        payload: Bytes::from(payload),
    }))
}

/// The code the Python handler would send for the same error (its exception class name).
/// `NoSpace` carries the data dir as its message, as `errors.NoSpace(data_dir)` takes it (the
/// client raises the same class again; transport.py's `_fail` sends the same).
fn handler_error(err: RaftError) -> HandlerError {
    if let RaftError::NoSpace { data_dir } = &err {
        return HandlerError::new("NoSpace", data_dir.display().to_string());
    }
    let code = match &err {
        RaftError::Busy { .. } => "Busy",
        RaftError::Stopped { .. } => "EngineStopped",
        RaftError::Invalid { .. } => "InvalidRequest",
        RaftError::NotLeader { .. } => "RaftNotLeader",
        RaftError::GroupNotFound { .. } => "UnknownGroup",
        RaftError::LeadershipLost { .. } => "LeadershipLost",
        RaftError::Timeout { .. } => "Timeout",
        RaftError::NoSpace { .. } => "NoSpace",
    };
    HandlerError::new(code, err.to_string())
}

impl FrameHandler for KvFastHandler {
    fn handle(&self, frame: InboundFrame) -> HandlerFuture {
        if frame.oneway || self.engine.strong_count() == 0 {
            return self.delegate(frame);
        }
        match parse(&frame.payload) {
            Some(Fast::Propose {
                gs,
                cmds,
                t,
                wait_leader,
            }) => {
                let (total, shares, park) = self.submit(&gs, cmds, t, wait_leader);
                Box::pin(answer(total, shares, park))
            }
            Some(Fast::Read { gs, keys, t }) => {
                let deadline = Instant::now() + Duration::from_millis(serve_budget_ms(t));
                let shares: Vec<ReadWait> = by_group(&gs)
                    .into_iter()
                    .map(|(g, idx)| ReadWait {
                        group: g,
                        idx,
                        receiver: self.read_share(g).wait(deadline),
                    })
                    .collect();
                Box::pin(answer_reads(Arc::clone(&self.readers), keys, shares))
            }
            None => self.delegate(frame),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Req<'a> {
        op: &'a str,
        gs: Vec<i64>,
        cmds: Vec<ByteBuf>,
        keys: Vec<ByteBuf>,
        level: &'a str,
        t: u64,
    }

    fn req(op: &str, gs: Vec<i64>, items: usize, level: &str, t: u64) -> Vec<u8> {
        let list = (0..items).map(|i| ByteBuf::from(vec![i as u8])).collect();
        let (cmds, keys) = if op == "read_many" {
            (Vec::new(), list)
        } else {
            (list, Vec::new())
        };
        rmp_serde::to_vec_named(&Req {
            op,
            gs,
            cmds,
            keys,
            level,
            t,
        })
        .unwrap()
    }

    #[test]
    fn parse_takes_only_valid_fast_requests() {
        let propose = parse(&req("propose_many", vec![1, 2, 1], 3, "linearizable", 50));
        assert!(matches!(propose, Some(Fast::Propose { ref gs, t: 50, .. }) if *gs == [1, 2, 1]));
        let read = parse(&req("read_many", vec![3], 1, "linearizable", 5000));
        assert!(matches!(read, Some(Fast::Read { ref keys, .. }) if keys.len() == 1));
        // Everything else is the Python handler's: other ops and levels, bad shapes, bad input.
        for payload in [
            req("propose", vec![1], 1, "linearizable", 50),
            req("read_many", vec![3], 1, "lease", 50),
            req("read_many", vec![3], 1, "follower", 50),
            req("propose_many", vec![1, 2], 1, "linearizable", 50),
            req("propose_many", vec![-1], 1, "linearizable", 50),
            req("propose_many", vec![1], 1, "linearizable", 0),
            req(
                "propose_many",
                vec![1],
                1,
                "linearizable",
                REQUEST_TIMEOUT_MS_MAX + 1,
            ),
            vec![0xc1],
            Vec::new(),
        ] {
            assert!(parse(&payload).is_none(), "{payload:?}");
        }
    }

    #[test]
    fn a_probe_names_the_nodes_it_avoids_and_waits_only_for_those() {
        #[derive(Serialize)]
        struct Probe<'a> {
            op: &'a str,
            gs: Vec<u64>,
            cmds: Vec<ByteBuf>,
            t: u64,
            wl: Vec<u64>,
        }
        let probe = |wl: Vec<u64>| {
            rmp_serde::to_vec_named(&Probe {
                op: "propose_many",
                gs: vec![4],
                cmds: vec![ByteBuf::from(vec![1])],
                t: 300,
                wl,
            })
            .unwrap()
        };
        match parse(&probe(vec![3])) {
            Some(Fast::Propose { wait_leader, .. }) => {
                assert_eq!(wait_leader, Some(vec![NodeId(3)]));
            }
            _ => panic!("a probe is a fast request"),
        }
        match parse(&req("propose_many", vec![1], 1, "linearizable", 50)) {
            Some(Fast::Propose { wait_leader, .. }) => assert_eq!(wait_leader, None),
            _ => panic!("a plain request is a fast request"),
        }
        let too_many = (1..=AVOIDED_MAX as u64 + 1).collect();
        assert!(
            parse(&probe(too_many)).is_none(),
            "left to the Python handler"
        );
        let park = Park {
            engine: Weak::new(),
            avoid: vec![NodeId(3)],
            deadline: Instant::now(),
        };
        assert!(park.waits_for(None), "no leader known: wait for one");
        assert!(
            park.waits_for(Some(NodeId(3))),
            "only an avoided one: wait for another"
        );
        assert!(
            !park.waits_for(Some(NodeId(2))),
            "another leader: named at once"
        );
    }

    #[test]
    fn by_group_keeps_first_appearance_order() {
        assert_eq!(
            by_group(&[7, 2, 7, 5, 2]),
            vec![(7, vec![0, 2]), (2, vec![1, 4]), (5, vec![3])]
        );
        assert!(by_group(&[]).is_empty());
    }

    #[test]
    fn reply_names_failures_only_when_there_are_some() {
        let mut reply = ManyReply {
            r: vec![Some(ByteBuf::from(b"x".to_vec())), None],
            nlg: Vec::new(),
            unk: Vec::new(),
        };
        let frame = encode(&reply).unwrap().unwrap();
        assert_eq!(frame.kind, MessageKind::KV_RESPONSE);
        // {"r": [bin "x", nil]}
        assert_eq!(&frame.payload[..], b"\x81\xa1r\x92\xc4\x01x\xc0");
        classify(
            &mut reply,
            4,
            RaftError::GroupNotFound { group: GroupId(4) },
        )
        .unwrap();
        classify(
            &mut reply,
            5,
            RaftError::Timeout {
                op: "propose",
                timeout_ms: 1,
            },
        )
        .unwrap();
        let failed = classify(&mut reply, 6, RaftError::Busy { reason: "full" }).unwrap_err();
        assert_eq!(failed.code, "Busy");
        assert_eq!(reply.nlg, vec![(4, 0)]);
        assert_eq!(reply.unk, vec![5]);
    }
}
