//! The KV_REQUEST server of a node: every KV request is answered here, in Rust, without
//! Python (issue 14): `propose_many` / `propose` through per-group group commit, `read_many` /
//! `read` at every read level, `routing` from the snapshot the node pushes on each metadata
//! change, and a typed Error for anything else (a request that does not decode, an unknown op,
//! a bad timeout, a newer KV version: `serve/request.rs`). No request is handed on.
//!
//! Why here: under load a Python handler (msgpack + a coroutine + a future per group) was the
//! leader's bottleneck (BENCHMARKS.md, "Replicated KV"), and two serving paths kept the rules
//! twice. Requests and replies are [`nodedb_wire::kv`]'s, byte-for-byte what kv.py answered,
//! so clients and nodes of either age interoperate.
//!
//! - `*_many`: each group's share is one group commit or one shared read there; groups this
//!   node does not lead (or does not run) are named in `nlg` with the leader it knows, unknown
//!   outcomes in `unk`, too-stale follower reads in `stale_g`.
//! - `propose` / `read` (one group, `fwd`): executed on this node only, never forwarded (a
//!   non-forwarded single is served the same way: the requester follows the `nl` hint);
//!   `{nl: leader or 0}` when this node does not lead / run the group, `{stale: age_s}` for a
//!   too-stale follower read.
//! - Read levels (`serve/freshness.rs`): `linearizable` = a shared ReadIndex round then the
//!   local state; `lease` = local while this leader's lease holds; `follower` = local if this
//!   replica was confirmed within `stale_s`, else one bounded round, else stale.
//!
//! Modules: `request` (payload → request or Error), `propose`, `reads`, `group_commit`
//! (batchers and shared ReadIndex rounds), `freshness` (the lease/follower decision, pure).

pub mod freshness;
mod group_commit;
pub mod ops;
mod propose;
mod reads;
pub mod reply_room;
mod request;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nodedb_multiraft::error::RaftError;
use nodedb_multiraft::{GroupId, MultiRaft};
use nodedb_transport::{
    FrameHandler, HandlerError, HandlerFuture, HandlerResult, InboundFrame, MessageKind,
    OutboundFrame,
};
use nodedb_wire::{KvNode, KvResponse, KvResults, KvWireError, ReadLevel};
use tokio::runtime::Handle;

use self::group_commit::{entry, Batcher};
use self::reads::{new_clocks, Pending, ReadFail, ReadPath};
use self::reply_room::{node_room, HeldPayload, NoRoom, ReplyRoom, REPLY_VALUE_BYTES_MAX};
use self::request::{parse, Served};
use crate::client::error::{INVALID_REQUEST, QUOTA_EXCEEDED};
use crate::command::is_delete;
use crate::groups::KvGroups;
use crate::keys_read::Found;
use crate::peer_health::serve_budget_ms;
use crate::vshard::Refusal;

/// A group at this many times its quota refuses deletes too: each one caches a result until
/// its client acknowledges it, so a client that never does could otherwise grow the sessions
/// through deletes without bound.
const DELETE_CEILING_QUOTAS: u64 = 2;
/// Remembered group batchers, at most (the map is cleared past it; running batches finish).
const BATCHERS_MAX: usize = 4096;
/// The Error code of a `routing` request before the node pushed its first routing snapshot
/// (still joining): the requester tries another node.
pub const ROUTING_UNAVAILABLE: &str = "Unavailable";

/// Request indexes per group, groups in order of first appearance (as kv.py).
pub(crate) fn by_group(gs: &[u64]) -> Vec<(u64, Vec<usize>)> {
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

/// How a node serves reads and writes.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Linearizable reads are answered by a leader from its lease, without a quorum round,
    /// while the lease holds (`MultiRaft::read_index_leased` decides); false: every one takes
    /// a ReadIndex round, and nothing is assumed of clock rates.
    pub lease: bool,
    /// A group whose [`crate::state_machine::KvState::usage_bytes`] reached this takes no more
    /// writes but deletes (0: no quota). Checked by the group's leader, before it
    /// proposes, so replicas never disagree: one request in flight may cross it.
    pub quota_bytes: u64,
}

/// The KV_REQUEST handler of a node. Holds the engine weakly (the node owns it).
pub struct KvServer {
    engine: Weak<MultiRaft>,
    groups: KvGroups,
    quota_bytes: u64,
    /// Room for the values of every reply in flight ([`reply_room`]).
    reply_room: Arc<tokio::sync::Semaphore>,
    batchers: Mutex<HashMap<u64, Arc<Batcher>>>,
    reads: Arc<ReadPath>,
    /// The encoded answer to `routing`, as the node last pushed it (None: not yet).
    routing: Mutex<Option<Bytes>>,
    pub ops: Arc<ops::KvOpCounters>,
}

impl KvServer {
    /// Serves `groups` (the node's KV groups) of `engine`; tasks run on `runtime`. Leases last
    /// [`freshness::LEASE_FRACTION`] of the engine's minimum election timeout.
    pub fn new(
        engine: Weak<MultiRaft>,
        groups: KvGroups,
        runtime: Handle,
        options: ServeOptions,
    ) -> Self {
        let election = engine
            .upgrade()
            .map_or(Duration::ZERO, |e| e.election_timeout_min());
        KvServer {
            reads: ReadPath::new(
                engine.clone(),
                groups.clone(),
                runtime,
                new_clocks(election, options),
            ),
            engine,
            groups,
            quota_bytes: options.quota_bytes,
            reply_room: node_room(),
            batchers: Mutex::new(HashMap::new()),
            routing: Mutex::new(None),
            ops: Arc::default(),
        }
    }

    /// The routing snapshot `routing` requests are answered with from now on: the routing table
    /// as the formation layer encodes it (`RoutingTable.encode()`, opaque here) and the members
    /// a client may reach. The node pushes it on every metadata change.
    pub fn set_routing(&self, routing: Vec<u8>, nodes: Vec<KvNode>) -> Result<(), KvWireError> {
        let encoded = KvResponse::Routing { routing, nodes }.encode()?;
        *self.routing.lock().unwrap_or_else(|p| p.into_inner()) = Some(Bytes::from(encoded));
        Ok(())
    }

    /// `keys`, all of `group`, read in the calling thread when this node may answer them now
    /// without a round (the decision a served read takes: `serve/reads.rs`); None: ask by
    /// request. How a client inside this node reads what the node leads with no hop at all.
    pub fn read_here(
        &self,
        group: u64,
        level: ReadLevel,
        stale_s: f64,
        keys: &[&[u8]],
    ) -> Option<Vec<Option<Vec<u8>>>> {
        self.reads
            .read_now(group, request::ReadAt { level, stale_s }, keys)
    }

    fn batcher(&self, group: u64) -> Arc<Batcher> {
        entry(&self.batchers, group, BATCHERS_MAX, || {
            Batcher::new(self.reads.ctx(group))
        })
    }

    /// Answer one KV_REQUEST payload (from a peer, or from a client inside this node through
    /// [`crate::client::KvClient::serve_locally`], without the network).
    pub fn serve(&self, payload: &[u8]) -> HandlerFuture {
        let request = match parse(payload) {
            Ok(request) => request,
            Err(err) => return Box::pin(async move { Err(err) }),
        };
        if request != Served::Routing && self.engine.strong_count() == 0 {
            return Box::pin(async {
                Err(HandlerError::new("EngineStopped", "the engine is closed"))
            });
        }
        let op = ops::op_of(&request);
        let answer: HandlerFuture = match request {
            Served::ProposeMany {
                gs,
                cmds,
                t,
                wait_leader,
                redirects,
            } => {
                if let Some(refusal) = self.over_quota(gs.iter().copied().zip(&cmds)) {
                    return Box::pin(async move { Err(refusal) });
                }
                let (total, shares, park) = self.submit(&gs, cmds, t, wait_leader);
                Box::pin(propose::answer(total, shares, park, redirects))
            }
            Served::ReadMany {
                gs,
                keys,
                at,
                t,
                redirects,
                partial,
            } => {
                let deadline = deadline_of(t);
                let shares: Vec<(Vec<usize>, Pending)> = by_group(&gs)
                    .into_iter()
                    .map(|(g, idx)| (idx, self.reads.start(g, at, deadline)))
                    .collect();
                Box::pin(answer_reads(
                    Arc::clone(&self.reads),
                    keys,
                    shares,
                    Answers { redirects, partial },
                    ReplyRoom::new(&self.reply_room),
                ))
            }
            Served::Propose {
                g,
                cmds,
                t,
                redirects,
            } => {
                if let Some(refusal) = self.over_quota(cmds.iter().map(|c| (g, c))) {
                    return Box::pin(async move { Err(refusal) });
                }
                let submitted = self.batcher(g).submit(cmds, deadline_of(t));
                let reads = Arc::clone(&self.reads);
                Box::pin(async move {
                    let outcome = submitted.outcome().await;
                    match outcome {
                        Ok(results) if !redirects && any_refused(&results) => {
                            answer_one_failure(&reads, g, ReadFail::Raft(refused_share(g)))
                        }
                        Ok(results) => {
                            let mut reply = reply_of(0);
                            reply.results = results.into_iter().map(|r| Some(r.into())).collect();
                            encode(reply)
                        }
                        Err(err) => answer_one_failure(&reads, g, ReadFail::Raft(err)),
                    }
                })
            }
            Served::Read {
                g,
                keys,
                at,
                t,
                redirects,
            } => {
                let pending = self.reads.start(g, at, deadline_of(t));
                let reads = Arc::clone(&self.reads);
                let mut room = ReplyRoom::new(&self.reply_room);
                Box::pin(async move {
                    let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                    match reads.finish(pending, &keys, &mut room).await {
                        Ok(values) if values.full => Err(no_room(NoRoom::Reply)),
                        Ok(values) if !redirects && values.found.iter().any(Result::is_err) => {
                            answer_one_failure(&reads, g, ReadFail::Raft(refused_share(g)))
                        }
                        Ok(values) => {
                            let mut reply = reply_of(values.found.len());
                            place_values(&mut reply, 0.., values.found);
                            encode_holding(reply, room)
                        }
                        Err(fail) => answer_one_failure(&reads, g, fail),
                    }
                })
            }
            Served::Routing => self.routing_answer(),
        };
        self.ops.counted(op, answer)
    }
}

impl KvServer {
    /// The refusal of a request with a write other than a delete into a group this node leads
    /// that is at its quota (None: propose it; a group led elsewhere is answered NotLeader as
    /// before, and its leader decides on its own, current, count). The whole request is
    /// refused, nothing of it proposed, as for a full disk: the requester does not retry it
    /// elsewhere (every replica holds the same bytes).
    fn over_quota<'c>(
        &self,
        items: impl Iterator<Item = (u64, &'c Vec<u8>)>,
    ) -> Option<HandlerError> {
        if self.quota_bytes == 0 {
            return None;
        }
        let engine = self.engine.upgrade()?;
        let me = Some(engine.node_id());
        let mut checked: Vec<(u64, bool)> = Vec::new();
        for (group, cmd) in items {
            let delete = is_delete(cmd);
            if checked.contains(&(group, delete)) {
                continue;
            }
            checked.push((group, delete));
            let Some(reader) = self.groups.reader(GroupId(group)) else {
                continue;
            };
            let used = reader.usage_bytes() as u64;
            let quota = self.quota_bytes;
            // Leadership is looked up (a lock) only for a group at its quota: rarely.
            if used < quota || engine.leader(GroupId(group)) != me {
                continue;
            }
            if !delete && used >= quota {
                return Some(HandlerError::new(
                    QUOTA_EXCEEDED,
                    format!(
                        "group {group} holds {used} bytes of keys, values and session results, \
                         at its quota of {quota} (kv_quota_bytes): writes are refused, reads and \
                         deletes are served; delete keys, or raise kv_quota_bytes on every node"
                    ),
                ));
            }
            if delete && used >= quota.saturating_mul(DELETE_CEILING_QUOTAS) {
                return Some(HandlerError::new(
                    QUOTA_EXCEEDED,
                    format!(
                        "group {group} holds {used} bytes, {DELETE_CEILING_QUOTAS} times its \
                         quota of {quota} (kv_quota_bytes): deletes are refused too (their \
                         results were never acknowledged); raise kv_quota_bytes on every node"
                    ),
                ));
            }
        }
        None
    }

    /// The last routing snapshot pushed, or (none yet) an Error the requester answers by
    /// asking another node (`Client.connect` does).
    fn routing_answer(&self) -> HandlerFuture {
        let routing = self
            .routing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Box::pin(async move {
            match routing {
                Some(payload) => Ok(Some(OutboundFrame {
                    kind: MessageKind::KV_RESPONSE,
                    payload,
                })),
                None => Err(HandlerError::new(
                    ROUTING_UNAVAILABLE,
                    "this node has no routing table yet (still joining): ask another node",
                )),
            }
        })
    }
}

/// The serving deadline of a request bounded by `t` ms (a little before the requester's).
fn deadline_of(t: u64) -> Instant {
    Instant::now() + Duration::from_millis(serve_budget_ms(t))
}

/// A single's failure: `{nl}` when this node does not lead or run the group, `{stale}` for a
/// too-stale follower read, else the Error the requester raises.
fn answer_one_failure(reads: &ReadPath, group: u64, fail: ReadFail) -> HandlerResult {
    let response = match fail {
        ReadFail::NotHere(leader) => KvResponse::NotLeader { leader },
        ReadFail::Stale(age_s) => KvResponse::Stale { age_s },
        ReadFail::Raft(RaftError::NotLeader { leader_hint, .. }) => KvResponse::NotLeader {
            leader: leader_hint.map_or(0, |n| n.0),
        },
        ReadFail::Raft(RaftError::GroupNotFound { .. }) => KvResponse::NotLeader {
            leader: reads.hint(group),
        },
        ReadFail::Raft(err) => return Err(HandlerError::from(err)),
        ReadFail::NoRoom(why) => return Err(no_room(why)),
    };
    frame(response)
}

/// The refusal of a read without room ([`reply_room`]). Over one reply: the request is valid,
/// but no node or attempt could answer it in one frame (so it is not retried), and its keys
/// must be split. Over the node's replies in flight: Busy, tried again like any.
fn no_room(why: NoRoom) -> HandlerError {
    match why {
        NoRoom::Reply => HandlerError::new(
            INVALID_REQUEST,
            format!(
                "the values read add up to more than {REPLY_VALUE_BYTES_MAX} bytes, over what \
                 one reply carries: read these keys in several calls"
            ),
        ),
        NoRoom::Node => HandlerError::new(
            "Busy",
            "this node's replies in flight hold as many values as it sends at once: try again",
        ),
    }
}

/// Whether any encoded command result is a refusal (Paused, Moved).
pub(super) fn any_refused(results: &[Vec<u8>]) -> bool {
    results.iter().any(|r| Refusal::of_result(r).is_some())
}

/// What a share with a refused item is for a requester that does not understand refusals: an
/// unknown outcome (nothing of it is lost: a refused item was not applied, the others are in
/// their sessions), which every requester retries.
pub(super) fn refused_share(group: u64) -> RaftError {
    RaftError::LeadershipLost {
        group: GroupId(group),
        leader_hint: None,
    }
}

/// Read values into their items' places; refused items named in "vsp" / "vsm".
fn place_values(
    reply: &mut KvResults<'_>,
    places: impl Iterator<Item = usize>,
    values: Vec<Found>,
) {
    for (i, v) in places.zip(values) {
        match v {
            Ok(v) => reply.results[i] = v.map(Cow::Owned),
            Err(Refusal::Paused) => reply.paused.push(i as u64),
            Err(Refusal::Moved(group)) => reply.moved.push((i as u64, group)),
        }
    }
}

/// The answers a `read_many`'s requester understands beyond values and failed groups.
struct Answers {
    /// Per-item Paused / Moved ([`nodedb_wire::KV_CAP_VSHARD_REDIRECTS`]).
    redirects: bool,
    /// Items the reply had no room for, to read again ([`nodedb_wire::KV_CAP_READ_OVER`]).
    partial: bool,
}

/// `read_many`'s answer: values in place, failures per group as for proposals, too-stale
/// follower reads in "stale_g", refused items in "vsp" / "vsm" (or, for a requester without
/// `redirects`, their group in "unk"). Once the reply is full, the items left are named in
/// "ovr" for a requester that reads them again (at least one item is answered: the requester
/// always progresses), and the whole read is refused for one that would not.
async fn answer_reads(
    reads: Arc<ReadPath>,
    keys: Vec<Vec<u8>>,
    shares: Vec<(Vec<usize>, Pending)>,
    answers: Answers,
    mut room: ReplyRoom,
) -> HandlerResult {
    let mut reply = reply_of(keys.len());
    let mut answered = 0usize;
    let mut full = false;
    for (idx, pending) in shares {
        let group = pending.group();
        if full {
            reply.over.extend(idx.iter().map(|&i| i as u64));
            continue;
        }
        let share: Vec<&[u8]> = idx.iter().map(|&i| keys[i].as_slice()).collect();
        match reads.finish(pending, &share, &mut room).await {
            Ok(values)
                if values.full && (!answers.partial || answered + values.found.len() == 0) =>
            {
                return Err(no_room(NoRoom::Reply));
            }
            Ok(values) if !answers.redirects && values.found.iter().any(Result::is_err) => {
                reply.unknown.push(group);
                full = values.full;
            }
            Ok(values) => {
                let read = values.found.len();
                answered += read;
                full = values.full;
                reply.over.extend(idx[read..].iter().map(|&i| i as u64));
                place_values(&mut reply, idx.into_iter(), values.found);
            }
            Err(ReadFail::NotHere(leader)) => reply.not_leader.push((group, leader)),
            Err(ReadFail::Stale(age_s)) => reply.stale.push((group, age_s)),
            Err(ReadFail::NoRoom(why)) => return Err(no_room(why)),
            Err(ReadFail::Raft(err)) => classify(&mut reply, group, err)?,
        }
    }
    encode_holding(reply, room)
}

/// A read's reply, holding the room its values took until its frame is dropped.
fn encode_holding(reply: KvResults<'_>, room: ReplyRoom) -> HandlerResult {
    let bytes = KvResponse::Results(reply)
        .encode()
        .map_err(|e| HandlerError::new("encode", format!("kv reply: {e}")))?;
    let held = HeldPayload {
        bytes,
        room: room.into_held(),
    };
    Ok(Some(OutboundFrame {
        kind: MessageKind::KV_RESPONSE,
        payload: Bytes::from_owner(held),
    }))
}

fn reply_of(total: usize) -> KvResults<'static> {
    KvResults {
        results: vec![None; total],
        ..KvResults::default()
    }
}

fn frame(response: KvResponse<'_>) -> HandlerResult {
    let payload = response
        .encode()
        .map_err(|e| HandlerError::new("encode", format!("kv reply: {e}")))?;
    Ok(Some(OutboundFrame {
        kind: MessageKind::KV_RESPONSE,
        payload: Bytes::from(payload),
    }))
}

/// A group's failure into the reply (NotLeader / unknown group → "nlg", unknown outcome →
/// "unk"), or the error that fails the whole request (as the Python handler raises it).
pub(super) fn classify(
    reply: &mut KvResults<'_>,
    group: u64,
    err: RaftError,
) -> Result<(), HandlerError> {
    match err {
        RaftError::NotLeader { leader_hint, .. } => {
            reply
                .not_leader
                .push((group, leader_hint.map_or(0, |n| n.0)));
        }
        RaftError::GroupNotFound { .. } => reply.not_leader.push((group, 0)),
        RaftError::LeadershipLost { .. } | RaftError::Timeout { .. } => {
            reply.unknown.push(group);
        }
        err => return Err(HandlerError::from(err)),
    }
    Ok(())
}

pub(super) fn encode(reply: KvResults<'_>) -> HandlerResult {
    frame(KvResponse::Results(reply))
}

impl FrameHandler for KvServer {
    /// Every KV_REQUEST, one-way ones included (their answer is dropped by the transport).
    fn handle(&self, frame: InboundFrame) -> HandlerFuture {
        self.serve(&frame.payload)
    }

    /// A request is served for its `t` (`peer_health::serve_budget_ms`), up to
    /// `REQUEST_TIMEOUT_MS_MAX`: the RPC bound alone answered one with `t` of 60 s
    /// `handler_timeout` at 5 s (attack probe, session 31).
    fn answer_within(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_millis(
            request::REQUEST_TIMEOUT_MS_MAX,
        ))
    }
}

#[cfg(test)]
mod tests;
