//! The KV serving fast path: KV_REQUEST `propose_many` and linearizable `read_many` answered in
//! Rust on the serving node, without a Python coroutine per request; every other KV_REQUEST
//! (routing, lease/follower reads, singles, anything the schema refuses) goes to the
//! transport's fallback handler (the binding's: Python's `KvRouter.serve`) unchanged.
//!
//! Why: under load the Python handler (msgpack + a coroutine + a future per group) was the
//! leader's bottleneck (BENCHMARKS.md, "Replicated KV"). Requests and replies are
//! [`nodedb_wire::kv`]'s, byte-for-byte what the Python `_serve_many` answers, so clients and
//! forwarding nodes of either kind need no change. A request of a newer KV version is refused
//! with `UnsupportedVersion` here, not handed to a handler that would half-read it.
//!
//! Per group: group commit and shared ReadIndex rounds (`serve/group_commit.rs`).

mod group_commit;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nodedb_multiraft::error::RaftError;
use nodedb_multiraft::{GroupId, MultiRaft, NodeId};
use nodedb_transport::{
    FrameHandler, HandlerError, HandlerFuture, HandlerResult, InboundFrame, MessageKind,
    OutboundFrame, Transport,
};
use nodedb_wire::{KvRequest, KvResponse, KvResults, KvWireError, ReadLevel};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use self::group_commit::{Batcher, GroupResult, ReadShare};
use crate::client::error::{INVALID_REQUEST, NO_SPACE, UNSUPPORTED_VERSION};
use crate::groups::KvGroups;
use crate::peer_health::serve_budget_ms;

/// Remembered group batchers (and read shares), at most (the map is cleared past it; running
/// batches finish).
const BATCHERS_MAX: usize = 4096;
/// A request timeout above this (or 0) is left to the Python handler, which refuses it.
const REQUEST_TIMEOUT_MS_MAX: u64 = 60_000;
/// Nodes a probe may name in "wl", at most (the client sends at most 16).
const AVOIDED_MAX: usize = 64;

/// A request the fast path serves.
enum Fast {
    Propose {
        gs: Vec<u64>,
        cmds: Vec<Vec<u8>>,
        t: u64,
        wait_leader: Option<Vec<NodeId>>,
    },
    Read {
        gs: Vec<u64>,
        keys: Vec<Vec<u8>>,
        t: u64,
    },
}

/// What the fast path does with a request.
enum Parsed {
    Serve(Fast),
    /// Refused here: a newer KV version this build cannot read.
    Refuse(HandlerError),
    /// The fallback handler's (its errors stay the reference for bad input).
    Delegate,
}

fn owned(list: Vec<Cow<'static, [u8]>>) -> Vec<Vec<u8>> {
    list.into_iter().map(Cow::into_owned).collect()
}

/// A valid `propose_many` or linearizable `read_many` with a timeout this path takes.
fn parse(payload: &[u8]) -> Parsed {
    let request = match KvRequest::decode(payload) {
        Ok(request) => request,
        Err(err @ KvWireError::UnsupportedVersion { .. }) => {
            return Parsed::Refuse(HandlerError::new(UNSUPPORTED_VERSION, err.to_string()));
        }
        Err(_) => return Parsed::Delegate,
    };
    let fast = match request {
        KvRequest::ProposeMany(m) if m.avoid.as_ref().is_none_or(|wl| wl.len() <= AVOIDED_MAX) => {
            Fast::Propose {
                gs: m.groups,
                cmds: owned(m.commands),
                t: m.timeout_ms,
                wait_leader: m.avoid.map(|wl| wl.into_iter().map(NodeId).collect()),
            }
        }
        KvRequest::ReadMany(m) if m.level == ReadLevel::Linearizable => Fast::Read {
            gs: m.groups,
            keys: owned(m.keys),
            t: m.timeout_ms,
        },
        _ => return Parsed::Delegate,
    };
    let t = match &fast {
        Fast::Propose { t, .. } | Fast::Read { t, .. } => *t,
    };
    if !(1..=REQUEST_TIMEOUT_MS_MAX).contains(&t) {
        return Parsed::Delegate;
    }
    Parsed::Serve(fast)
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

/// The KV_REQUEST handler of a node: `propose_many` and linearizable `read_many` here, the
/// rest to the transport's fallback handler. Holds the engine and transport weakly (the
/// transport owns it).
pub struct KvServer {
    engine: Weak<MultiRaft>,
    transport: Weak<Transport>,
    groups: KvGroups,
    runtime: Handle,
    batchers: Mutex<HashMap<u64, Arc<Batcher>>>,
    reads: Mutex<HashMap<u64, Arc<ReadShare>>>,
}

impl KvServer {
    /// Serves `groups` (the node's KV groups) of `engine`, answering the rest through
    /// `transport`'s fallback handler; tasks run on `runtime`.
    pub fn new(
        engine: Weak<MultiRaft>,
        transport: Weak<Transport>,
        groups: KvGroups,
        runtime: Handle,
    ) -> Self {
        KvServer {
            engine,
            transport,
            groups,
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
        let r = Arc::new(ReadShare::new(
            GroupId(group),
            self.engine.clone(),
            self.runtime.clone(),
        ));
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
        let b = Arc::new(Batcher::new(
            GroupId(group),
            self.engine.clone(),
            self.runtime.clone(),
        ));
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
        cmds: Vec<Vec<u8>>,
        t: u64,
        wait_leader: Option<Vec<NodeId>>,
    ) -> (usize, Vec<GroupShare>, Option<Park>) {
        let deadline = Instant::now() + Duration::from_millis(serve_budget_ms(t));
        let total = cmds.len();
        let mut cmds: Vec<Option<Vec<u8>>> = cmds.into_iter().map(Some).collect();
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

/// A probe's wait for a leader (its `wl`: the nodes the client avoids).
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
    let mut reply = reply_of(total);
    for share in shares {
        let mut outcome = share.receiver.await;
        if let (Some(park), Some((batcher, cmds))) = (&park, share.again) {
            if let Ok(Err(RaftError::NotLeader { leader_hint, .. })) = &outcome {
                if park.waits_for(*leader_hint) {
                    match wait_for_leader(park, share.group).await {
                        Some((_, true)) => outcome = batcher.submit(cmds, park.deadline).await,
                        Some((leader, false)) => {
                            reply.not_leader.push((share.group, leader.0));
                            continue;
                        }
                        None => {
                            // Still no usable leader: "none known", never the avoided one
                            // again (a probe's answer naming an avoided node means that node
                            // was elected since: the client may use it at once).
                            reply.not_leader.push((share.group, 0));
                            continue;
                        }
                    }
                }
            }
        }
        match outcome {
            Ok(Ok(results)) => {
                for (i, r) in share.idx.into_iter().zip(results) {
                    reply.results[i] = Some(Cow::Owned(r));
                }
            }
            Ok(Err(err)) => classify(&mut reply, share.group, err)?,
            Err(_) => reply.unknown.push(share.group),
        }
    }
    encode(reply)
}

fn reply_of(total: usize) -> KvResults<'static> {
    KvResults {
        results: vec![None; total],
        ..KvResults::default()
    }
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
    groups: KvGroups,
    keys: Vec<Vec<u8>>,
    shares: Vec<ReadWait>,
) -> HandlerResult {
    let mut reply = reply_of(keys.len());
    for share in shares {
        match share.receiver.await {
            Ok(Ok(())) => {
                let Some(reader) = groups.reader(GroupId(share.group)) else {
                    reply.not_leader.push((share.group, 0)); // not a KV group here
                    continue;
                };
                for i in share.idx {
                    reply.results[i] = reader.get(&keys[i]).map(Cow::Owned);
                }
            }
            Ok(Err(err)) => classify(&mut reply, share.group, err)?,
            Err(_) => reply.unknown.push(share.group),
        }
    }
    encode(reply)
}

/// A group's failure into the reply (NotLeader / unknown group → "nlg", unknown outcome →
/// "unk"), or the error that fails the whole request (as the Python handler raises it).
fn classify(reply: &mut KvResults<'_>, group: u64, err: RaftError) -> Result<(), HandlerError> {
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
        err => return Err(handler_error(err)),
    }
    Ok(())
}

fn encode(reply: KvResults<'_>) -> HandlerResult {
    let payload = KvResponse::Results(reply)
        .encode()
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
        return HandlerError::new(NO_SPACE, data_dir.display().to_string());
    }
    let code = match &err {
        RaftError::Busy { .. } => "Busy",
        RaftError::Stopped { .. } => "EngineStopped",
        RaftError::Invalid { .. } => INVALID_REQUEST,
        RaftError::NotLeader { .. } => "RaftNotLeader",
        RaftError::GroupNotFound { .. } => "UnknownGroup",
        RaftError::LeadershipLost { .. } => "LeadershipLost",
        RaftError::Timeout { .. } => "Timeout",
        RaftError::NoSpace { .. } => NO_SPACE,
    };
    HandlerError::new(code, err.to_string())
}

impl KvServer {
    /// Serve `payload` here when the fast path takes it (`propose_many`, linearizable
    /// `read_many`, or a refusal of a newer version); None when it belongs to the fallback
    /// handler. A client inside this node serves its own share through this, without the
    /// network ([`crate::client::KvClient::serve_locally`]).
    pub fn serve_fast(&self, payload: &[u8]) -> Option<HandlerFuture> {
        if self.engine.strong_count() == 0 {
            return None;
        }
        match parse(payload) {
            Parsed::Serve(Fast::Propose {
                gs,
                cmds,
                t,
                wait_leader,
            }) => {
                let (total, shares, park) = self.submit(&gs, cmds, t, wait_leader);
                Some(Box::pin(answer(total, shares, park)))
            }
            Parsed::Serve(Fast::Read { gs, keys, t }) => {
                let deadline = Instant::now() + Duration::from_millis(serve_budget_ms(t));
                let shares: Vec<ReadWait> = by_group(&gs)
                    .into_iter()
                    .map(|(g, idx)| ReadWait {
                        group: g,
                        idx,
                        receiver: self.read_share(g).wait(deadline),
                    })
                    .collect();
                Some(Box::pin(answer_reads(self.groups.clone(), keys, shares)))
            }
            Parsed::Refuse(err) => Some(Box::pin(async move { Err(err) })),
            Parsed::Delegate => None,
        }
    }
}

impl FrameHandler for KvServer {
    fn handle(&self, frame: InboundFrame) -> HandlerFuture {
        if frame.oneway {
            return self.delegate(frame);
        }
        match self.serve_fast(&frame.payload) {
            Some(served) => served,
            None => self.delegate(frame),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use serde_bytes::ByteBuf;

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
        assert!(
            matches!(propose, Parsed::Serve(Fast::Propose { ref gs, t: 50, .. }) if *gs == [1, 2, 1])
        );
        let read = parse(&req("read_many", vec![3], 1, "linearizable", 5000));
        assert!(matches!(read, Parsed::Serve(Fast::Read { ref keys, .. }) if keys.len() == 1));
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
            assert!(matches!(parse(&payload), Parsed::Delegate), "{payload:?}");
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
            Parsed::Serve(Fast::Propose { wait_leader, .. }) => {
                assert_eq!(wait_leader, Some(vec![NodeId(3)]));
            }
            _ => panic!("a probe is a fast request"),
        }
        match parse(&req("propose_many", vec![1], 1, "linearizable", 50)) {
            Parsed::Serve(Fast::Propose { wait_leader, .. }) => assert_eq!(wait_leader, None),
            _ => panic!("a plain request is a fast request"),
        }
        let too_many = (1..=AVOIDED_MAX as u64 + 1).collect();
        assert!(
            matches!(parse(&probe(too_many)), Parsed::Delegate),
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
        let mut reply = reply_of(2);
        reply.results[0] = Some(Cow::Borrowed(b"x"));
        let frame = encode(reply.clone()).unwrap().unwrap();
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
        assert_eq!(reply.not_leader, vec![(4, 0)]);
        assert_eq!(reply.unknown, vec![5]);
    }

    #[test]
    fn a_newer_version_is_refused_here_not_delegated() {
        // {"op": "propose_many", "v": 2}
        let newer = b"\x82\xa2op\xacpropose_many\xa1v\x02";
        match parse(newer) {
            Parsed::Refuse(err) => assert_eq!(err.code, UNSUPPORTED_VERSION),
            _ => panic!("a newer version must be refused"),
        }
    }
}
