//! The KV serving fast path: KV_REQUEST `propose_many` answered in Rust on the serving node,
//! without a Python coroutine per request; every other KV_REQUEST (routing, reads, singles,
//! load, anything malformed) goes to the Python handler unchanged.
//!
//! Why: under load the Python handler (msgpack + a coroutine + a future per group) was the
//! leader's bottleneck (BENCHMARKS.md, "Replicated KV"). The wire schema is the one of
//! `nodedb_cluster/kv.py`: request `{"op": "propose_many", "gs": [group per cmd], "cmds":
//! [bytes], "t": timeout_ms}`, reply `{"r": [result or nil], "nlg": [[group, leader or 0]],
//! "unk": [group]}` — byte-for-byte what the Python `_serve_many` answers, so clients and
//! forwarding nodes need no change.
//!
//! Group commit per group: every command that arrives while `BATCHES_IN_FLIGHT_MAX` entries of
//! its group are in flight rides the next entry (ONE Raft entry per batch), as in kv.py.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nodedb_multiraft::error::RaftError;
use nodedb_multiraft::{GroupId, MultiRaft};
use nodedb_transport::{
    FrameHandler, HandlerError, HandlerFuture, HandlerResult, InboundFrame, MessageKind,
    OutboundFrame, Transport,
};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Commands per Raft entry (kv.py `BATCH_COMMANDS_MAX`).
const BATCH_COMMANDS_MAX: usize = 4096;
/// Bytes of commands per Raft entry (kv.py `BATCH_BYTES_MAX`; below the 1 MiB message bound).
const BATCH_BYTES_MAX: usize = 512 << 10;
/// Entries per group proposed concurrently (kv.py `BATCHES_IN_FLIGHT_MAX`).
const BATCHES_IN_FLIGHT_MAX: usize = 4;
/// Commands of one group waiting for an entry, at most; more are refused with Busy.
const PENDING_COMMANDS_MAX: usize = 1 << 16;
/// Remembered group batchers, at most (the map is cleared past it; running batches finish).
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
struct ProposeMany {
    op: String,
    #[serde(default)]
    gs: Vec<u64>,
    #[serde(default)]
    cmds: Vec<ByteBuf>,
    #[serde(default = "default_timeout_ms")]
    t: u64,
}

#[derive(Serialize)]
struct ManyReply {
    r: Vec<Option<ByteBuf>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    nlg: Vec<(u64, u64)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unk: Vec<u64>,
}

/// A valid `propose_many`, or None: the Python handler then answers (its errors stay the
/// reference for bad input).
fn parse(payload: &[u8]) -> Option<ProposeMany> {
    let req: ProposeMany = rmp_serde::from_slice(payload).ok()?;
    let valid = req.op == "propose_many"
        && req.gs.len() == req.cmds.len()
        && (1..=REQUEST_TIMEOUT_MS_MAX).contains(&req.t);
    valid.then_some(req)
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
        if queue.pending_cmds + cmds.len() > PENDING_COMMANDS_MAX {
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
            Some(engine) => engine.propose_batch(self.group, items, timeout).await,
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

/// The KV_REQUEST handler of a node: `propose_many` here, the rest to the transport's fallback
/// (the Python handler). Holds the engine and transport weakly (the transport owns it).
pub(crate) struct KvFastHandler {
    engine: Weak<MultiRaft>,
    transport: Weak<Transport>,
    runtime: Handle,
    batchers: Mutex<HashMap<u64, Arc<Batcher>>>,
}

impl KvFastHandler {
    pub(crate) fn new(
        engine: Weak<MultiRaft>,
        transport: Weak<Transport>,
        runtime: Handle,
    ) -> Self {
        KvFastHandler {
            engine,
            transport,
            runtime,
            batchers: Mutex::new(HashMap::new()),
        }
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

    /// Split by group (first appearance order, as kv.py), submit each share to its batcher.
    fn submit(&self, req: ProposeMany) -> (usize, Vec<GroupShare>) {
        let deadline = Instant::now() + Duration::from_millis(req.t);
        let total = req.cmds.len();
        let mut order: Vec<(u64, Vec<usize>)> = Vec::new();
        let mut index_of: HashMap<u64, usize> = HashMap::new();
        for (i, &g) in req.gs.iter().enumerate() {
            let slot = *index_of.entry(g).or_insert_with(|| {
                order.push((g, Vec::new()));
                order.len() - 1
            });
            order[slot].1.push(i);
        }
        let mut cmds: Vec<Option<Vec<u8>>> =
            req.cmds.into_iter().map(|c| Some(c.into_vec())).collect();
        let shares = order
            .into_iter()
            .map(|(g, idx)| {
                let share: Vec<Vec<u8>> = idx
                    .iter()
                    .map(|&i| cmds[i].take().unwrap_or_default())
                    .collect();
                let receiver = self.batcher(g).submit(share, deadline);
                GroupShare {
                    group: g,
                    idx,
                    receiver,
                }
            })
            .collect();
        (total, shares)
    }
}

struct GroupShare {
    group: u64,
    idx: Vec<usize>,
    receiver: oneshot::Receiver<GroupResult>,
}

/// kv.py `_serve_many`'s answer: results in place, NotLeader/unknown-group shares in "nlg",
/// unknown outcomes in "unk", any other failure fails the whole request.
async fn answer(total: usize, shares: Vec<GroupShare>) -> HandlerResult {
    let mut reply = ManyReply {
        r: vec![None; total],
        nlg: Vec::new(),
        unk: Vec::new(),
    };
    for share in shares {
        match share.receiver.await {
            Ok(Ok(results)) => {
                for (i, r) in share.idx.into_iter().zip(results) {
                    reply.r[i] = Some(ByteBuf::from(r));
                }
            }
            Ok(Err(RaftError::NotLeader { leader_hint, .. })) => {
                reply
                    .nlg
                    .push((share.group, leader_hint.map_or(0, |n| n.0)));
            }
            Ok(Err(RaftError::GroupNotFound { .. })) => reply.nlg.push((share.group, 0)),
            Ok(Err(RaftError::LeadershipLost { .. } | RaftError::Timeout { .. })) | Err(_) => {
                reply.unk.push(share.group);
            }
            Ok(Err(err)) => return Err(handler_error(err)),
        }
    }
    let payload = rmp_serde::to_vec_named(&reply)
        .map_err(|e| HandlerError::new("encode", format!("kv reply: {e}")))?;
    Ok(Some(OutboundFrame {
        kind: MessageKind::KV_RESPONSE,
        payload: Bytes::from(payload),
    }))
}

/// The code the Python handler would send for the same error (its exception class name).
fn handler_error(err: RaftError) -> HandlerError {
    let code = match &err {
        RaftError::Busy { .. } => "Busy",
        RaftError::Stopped { .. } => "EngineStopped",
        RaftError::Invalid { .. } => "InvalidRequest",
        RaftError::NotLeader { .. } => "RaftNotLeader",
        RaftError::GroupNotFound { .. } => "UnknownGroup",
        RaftError::LeadershipLost { .. } => "LeadershipLost",
        RaftError::Timeout { .. } => "Timeout",
    };
    HandlerError::new(code, err.to_string())
}

impl FrameHandler for KvFastHandler {
    fn handle(&self, frame: InboundFrame) -> HandlerFuture {
        match parse(&frame.payload) {
            Some(req) if !frame.oneway && self.engine.strong_count() > 0 => {
                let (total, shares) = self.submit(req);
                Box::pin(answer(total, shares))
            }
            _ => self.delegate(frame),
        }
    }
}
