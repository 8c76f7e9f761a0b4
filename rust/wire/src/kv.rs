//! KV_REQUEST / KV_RESPONSE payloads (kinds 32 / 33): the replicated KV's messages, typed.
//!
//! The encoding is the MessagePack map that `nodedb_cluster/kv.py` has always written (short
//! keys, no schema), kept byte-compatible so nodes and clients from before this schema and after
//! it interoperate. Requests (`op` names the variant):
//! - `propose_many`: `gs: [u64] (group per command), cmds: [bin], t: u64 ms, wl: [u64] | absent`
//! - `read_many`: `gs: [u64] (group per key), keys: [bin], level: str, stale_s: f64, t: u64 ms`
//! - `propose`: `g: u64, cmds: [bin], fwd: bool, t: u64 ms` (one group; `fwd`: executed on the
//!   receiver only, never forwarded again)
//! - `read`: `g: u64, keys: [bin], level: str, stale_s: f64, fwd: bool, t: u64 ms`
//! - `routing`: no fields (what a client needs to reach leaders)
//!
//! Every request but `routing` may carry `caps: u32`, the answers the requester understands
//! (absent = 0, what every requester before it sent): [`KV_CAP_VSHARD_REDIRECTS`] = per-item
//! Paused / Moved answers (a command result of status Paused or Moved, a read's `vsp` / `vsm`).
//! A server never sends those to a requester without the bit: it answers that group's share as
//! an unknown outcome (`unk`, or `LeadershipLost` for the single forms), which every requester
//! retries. [`KV_CAP_READ_OVER`] = a `read_many` answered in part: the values that fit in one
//! reply, and `ovr` naming the items that did not, to read again (without the bit, a read whose
//! values exceed one reply is refused whole, `InvalidRequest`).
//!
//! Responses (the key present names the variant, in this order):
//! - `r: [bin | nil]` (a result per item), `nlg: [[group, leader or 0]]`, `unk: [group]`,
//!   `stale_g: [[group, age_s]]`, `vsp: [item index]` (reads whose vShard is paused for a
//!   move: retry shortly), `vsm: [[item index, group]]` (reads whose vShard moved to that
//!   group), `ovr: [item index]` (reads this reply had no room for: read them again) — all but
//!   `r` only when non-empty;
//! - `nl: u64` (not leader; leader or 0), `stale: f64` (age in seconds);
//! - `routing: bin (RoutingTable.encode()), nodes: [[id, "ip:port", spki pin | nil]]`.
//!
//! Size: a request lists at most [`KV_ITEMS_MAX`] groups, commands or keys; decoding stops at
//! the first past it (a client sends at most 4096 per request; one request of a million keys
//! held a node's only I/O worker for most of a second).
//!
//! Versions: `v: u32` in either direction, absent = 1 ([`KV_VERSION`]); this build writes no
//! `v` while it speaks version 1, so its bytes are exactly the old ones. A message of a newer
//! version is refused with [`KvWireError::UnsupportedVersion`] instead of being half-understood.
//! Unknown keys are ignored (a field can be added without a version bump, as for control
//! messages), a missing `t` is 5000 ms, a missing `level` is linearizable and a missing
//! `stale_s` is 1.0 s (kv.py's defaults).

use std::borrow::Cow;
use std::marker::PhantomData;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::ByteBuf;

/// The KV message version this build speaks (and the meaning of an absent `v`).
pub const KV_VERSION: u32 = 1;
/// `caps` bit: the requester understands Paused / Moved answers (vShard moves).
pub const KV_CAP_VSHARD_REDIRECTS: u32 = 1;
/// `caps` bit: the requester takes a `read_many` answered in part (`ovr`: the items one reply
/// had no room for, each to read again).
pub const KV_CAP_READ_OVER: u32 = 2;
/// Groups, commands or keys one request may list (an entry holds as many commands).
pub const KV_ITEMS_MAX: usize = 65_536;
/// kv.py's request timeout when `t` is absent.
pub const KV_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// kv.py's staleness bound when `stale_s` is absent (`MAX_STALENESS_S_DEFAULT`).
pub const KV_STALE_S_DEFAULT: f64 = 1.0;

/// A KV payload could not be encoded or decoded; says which rule the peer broke.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KvWireError {
    #[error("cannot decode {message} payload: {reason}")]
    Decode {
        message: &'static str,
        reason: String,
    },
    #[error(
        "{message} version {version} is newer than this build's {supported}: upgrade this node"
    )]
    UnsupportedVersion {
        message: &'static str,
        version: u32,
        supported: u32,
    },
    #[error("unknown kv op {0:?}")]
    UnknownOp(String),
    #[error("kv request field {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("cannot encode {message} payload: {reason}")]
    Encode {
        message: &'static str,
        reason: String,
    },
}

/// The consistency a read asks for (kv.py's module docs define each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadLevel {
    Linearizable,
    Lease,
    Follower,
}

impl ReadLevel {
    pub fn parse(text: &str) -> Option<ReadLevel> {
        match text {
            "linearizable" => Some(ReadLevel::Linearizable),
            "lease" => Some(ReadLevel::Lease),
            "follower" => Some(ReadLevel::Follower),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReadLevel::Linearizable => "linearizable",
            ReadLevel::Lease => "lease",
            ReadLevel::Follower => "follower",
        }
    }
}

/// Commands of several groups for one target (`propose_many`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProposeMany<'a> {
    /// The group of each command (`gs`), as many as `commands`.
    pub groups: Vec<u64>,
    pub commands: Vec<Cow<'a, [u8]>>,
    pub timeout_ms: u64,
    /// A probe's avoided nodes (`wl`): the receiver may hold a group's share until it knows a
    /// leader that is none of these, and answer with that leader.
    pub avoid: Option<Vec<u64>>,
    /// The answers the requester understands (`caps`, [`KV_CAP_VSHARD_REDIRECTS`]).
    pub caps: u32,
}

/// Keys of several groups read at one level (`read_many`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadMany<'a> {
    /// The group of each key (`gs`), as many as `keys`.
    pub groups: Vec<u64>,
    pub keys: Vec<Cow<'a, [u8]>>,
    pub level: ReadLevel,
    pub stale_s: f64,
    pub timeout_ms: u64,
    pub caps: u32,
}

/// Commands of one group (`propose`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProposeOne<'a> {
    pub group: u64,
    pub commands: Vec<Cow<'a, [u8]>>,
    pub forwarded: bool,
    pub timeout_ms: u64,
    pub caps: u32,
}

/// Keys of one group (`read`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadOne<'a> {
    pub group: u64,
    pub keys: Vec<Cow<'a, [u8]>>,
    pub level: ReadLevel,
    pub stale_s: f64,
    pub forwarded: bool,
    pub timeout_ms: u64,
    pub caps: u32,
}

/// One KV_REQUEST.
#[derive(Debug, Clone, PartialEq)]
pub enum KvRequest<'a> {
    ProposeMany(ProposeMany<'a>),
    ReadMany(ReadMany<'a>),
    Propose(ProposeOne<'a>),
    Read(ReadOne<'a>),
    Routing,
}

/// Per-item results and the groups that failed (`r`, `nlg`, `unk`, `stale_g`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KvResults<'a> {
    pub results: Vec<Option<Cow<'a, [u8]>>>,
    /// (group, leader or 0): groups this node does not lead (or does not know).
    pub not_leader: Vec<(u64, u64)>,
    /// Groups whose outcome is unknown (leadership lost, timed out).
    pub unknown: Vec<u64>,
    /// (group, age in seconds): groups whose local copy is staler than asked.
    pub stale: Vec<(u64, f64)>,
    /// Items (indexes) of a read whose vShard is paused for a move (`vsp`).
    pub paused: Vec<u64>,
    /// (item index, group): items of a read whose vShard moved to `group` (`vsm`).
    pub moved: Vec<(u64, u64)>,
    /// Items (indexes) of a read this reply had no room for, to read again (`ovr`; only to a
    /// requester with [`KV_CAP_READ_OVER`]).
    pub over: Vec<u64>,
}

/// A member in a routing answer: `[id, "ip:port", spki pin | nil]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvNode(
    pub u64,
    pub String,
    #[serde(with = "crate::control::serde_bytes_opt")] pub Option<Vec<u8>>,
);

/// One KV_RESPONSE.
#[derive(Debug, Clone, PartialEq)]
pub enum KvResponse<'a> {
    Results(KvResults<'a>),
    /// The one group of a single request is led elsewhere (`nl`: leader or 0).
    NotLeader {
        leader: u64,
    },
    /// The one group of a single read is staler than asked (`stale`: age in seconds).
    Stale {
        age_s: f64,
    },
    /// `routing`: the routing table as the formation layer encodes it (opaque here).
    Routing {
        routing: Vec<u8>,
        nodes: Vec<KvNode>,
    },
}

impl KvRequest<'_> {
    pub fn encode(&self) -> Result<Vec<u8>, KvWireError> {
        let encoded = match self {
            KvRequest::ProposeMany(m) => rmp_serde::to_vec_named(&ProposeManyOut {
                op: "propose_many",
                gs: &m.groups,
                cmds: bins(&m.commands),
                t: m.timeout_ms,
                wl: m.avoid.as_deref(),
                caps: m.caps,
            }),
            KvRequest::ReadMany(m) => rmp_serde::to_vec_named(&ReadManyOut {
                op: "read_many",
                gs: &m.groups,
                keys: bins(&m.keys),
                level: m.level.as_str(),
                stale_s: m.stale_s,
                t: m.timeout_ms,
                caps: m.caps,
            }),
            KvRequest::Propose(p) => rmp_serde::to_vec_named(&ProposeOut {
                op: "propose",
                g: p.group,
                cmds: bins(&p.commands),
                fwd: p.forwarded,
                t: p.timeout_ms,
                caps: p.caps,
            }),
            KvRequest::Read(r) => rmp_serde::to_vec_named(&ReadOut {
                op: "read",
                g: r.group,
                keys: bins(&r.keys),
                level: r.level.as_str(),
                stale_s: r.stale_s,
                fwd: r.forwarded,
                t: r.timeout_ms,
                caps: r.caps,
            }),
            KvRequest::Routing => rmp_serde::to_vec_named(&RoutingOut { op: "routing" }),
        };
        encoded.map_err(|e| KvWireError::Encode {
            message: "KvRequest",
            reason: e.to_string(),
        })
    }

    pub fn decode(payload: &[u8]) -> Result<KvRequest<'static>, KvWireError> {
        let raw: RawRequest = decode_raw("KvRequest", payload)?;
        check_version("KvRequest", raw.v)?;
        let t = raw.t.unwrap_or(KV_TIMEOUT_MS_DEFAULT);
        let op = raw.op.ok_or_else(|| invalid("op", "missing"))?;
        let level = || match raw.level.as_deref() {
            None => Ok(ReadLevel::Linearizable),
            Some(text) => ReadLevel::parse(text)
                .ok_or_else(|| invalid("level", format!("unknown read level {text:?}"))),
        };
        let stale_s = raw.stale_s.unwrap_or(KV_STALE_S_DEFAULT);
        let caps = raw.caps.unwrap_or(0);
        match op.as_str() {
            "propose_many" => {
                let commands = owned(raw.cmds, "cmds")?;
                let groups = one_group_each(raw.gs.map(|g| g.0), commands.len())?;
                Ok(KvRequest::ProposeMany(ProposeMany {
                    groups,
                    commands,
                    timeout_ms: t,
                    avoid: raw.wl.map(|w| w.0),
                    caps,
                }))
            }
            "read_many" => {
                let keys = owned(raw.keys, "keys")?;
                let groups = one_group_each(raw.gs.map(|g| g.0), keys.len())?;
                Ok(KvRequest::ReadMany(ReadMany {
                    groups,
                    keys,
                    level: level()?,
                    stale_s,
                    timeout_ms: t,
                    caps,
                }))
            }
            "propose" => Ok(KvRequest::Propose(ProposeOne {
                group: raw.g.ok_or_else(|| invalid("g", "missing"))?,
                commands: owned(raw.cmds, "cmds")?,
                forwarded: raw.fwd.unwrap_or(false),
                timeout_ms: t,
                caps,
            })),
            "read" => Ok(KvRequest::Read(ReadOne {
                group: raw.g.ok_or_else(|| invalid("g", "missing"))?,
                keys: owned(raw.keys, "keys")?,
                level: level()?,
                stale_s,
                forwarded: raw.fwd.unwrap_or(false),
                timeout_ms: t,
                caps,
            })),
            "routing" => Ok(KvRequest::Routing),
            _ => Err(KvWireError::UnknownOp(op)),
        }
    }
}

impl KvResponse<'_> {
    pub fn encode(&self) -> Result<Vec<u8>, KvWireError> {
        let encoded = match self {
            KvResponse::Results(r) => rmp_serde::to_vec_named(&ResultsOut {
                r: r.results.iter().map(|v| v.as_deref().map(Bin)).collect(),
                nlg: &r.not_leader,
                unk: &r.unknown,
                stale_g: &r.stale,
                vsp: &r.paused,
                vsm: &r.moved,
                ovr: &r.over,
            }),
            KvResponse::NotLeader { leader } => {
                rmp_serde::to_vec_named(&NotLeaderOut { nl: *leader })
            }
            KvResponse::Stale { age_s } => rmp_serde::to_vec_named(&StaleOut { stale: *age_s }),
            KvResponse::Routing { routing, nodes } => rmp_serde::to_vec_named(&RoutingReplyOut {
                routing: Bin(routing),
                nodes,
            }),
        };
        encoded.map_err(|e| KvWireError::Encode {
            message: "KvResponse",
            reason: e.to_string(),
        })
    }

    pub fn decode(payload: &[u8]) -> Result<KvResponse<'static>, KvWireError> {
        let raw: RawResponse = decode_raw("KvResponse", payload)?;
        check_version("KvResponse", raw.v)?;
        if let Some(results) = raw.r {
            return Ok(KvResponse::Results(KvResults {
                results: results
                    .into_iter()
                    .map(|v| v.map(|b| Cow::Owned(b.into_vec())))
                    .collect(),
                not_leader: raw.nlg,
                unknown: raw.unk,
                stale: raw.stale_g,
                paused: raw.vsp,
                moved: raw.vsm,
                over: raw.ovr,
            }));
        }
        if let Some(leader) = raw.nl {
            return Ok(KvResponse::NotLeader { leader });
        }
        if let Some(age_s) = raw.stale {
            return Ok(KvResponse::Stale { age_s });
        }
        if let Some(routing) = raw.routing {
            return Ok(KvResponse::Routing {
                routing: routing.into_vec(),
                nodes: raw.nodes,
            });
        }
        Err(KvWireError::Decode {
            message: "KvResponse",
            reason: "no r, nl, stale or routing".into(),
        })
    }
}

fn decode_raw<T: for<'de> Deserialize<'de>>(
    message: &'static str,
    payload: &[u8],
) -> Result<T, KvWireError> {
    rmp_serde::from_slice(payload).map_err(|e| KvWireError::Decode {
        message,
        reason: e.to_string(),
    })
}

fn check_version(message: &'static str, v: Option<u32>) -> Result<(), KvWireError> {
    match v.unwrap_or(KV_VERSION) {
        version if version > KV_VERSION => Err(KvWireError::UnsupportedVersion {
            message,
            version,
            supported: KV_VERSION,
        }),
        _ => Ok(()),
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> KvWireError {
    KvWireError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn owned(
    list: Option<Bounded<BinIn>>,
    field: &'static str,
) -> Result<Vec<Cow<'static, [u8]>>, KvWireError> {
    let list = list.ok_or_else(|| invalid(field, "must be a list of bytes"))?;
    Ok(list.0.into_iter().map(|b| Cow::Owned(b.0)).collect())
}

/// A request's list of at most [`KV_ITEMS_MAX`] elements: refused at its length when the
/// encoding states one, else at the first element past it, before the rest is decoded.
struct Bounded<T>(Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Bounded<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = Bounded<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a list of at most {KV_ITEMS_MAX} items")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Bounded<T>, A::Error> {
                use serde::de::Error;
                let too_many =
                    || A::Error::custom(format!("over {KV_ITEMS_MAX} items in one request"));
                let stated = seq.size_hint().unwrap_or(0);
                if stated > KV_ITEMS_MAX {
                    return Err(too_many());
                }
                let mut out = Vec::with_capacity(stated);
                while let Some(element) = seq.next_element()? {
                    if out.len() == KV_ITEMS_MAX {
                        return Err(too_many());
                    }
                    out.push(element);
                }
                Ok(Bounded(out))
            }
        }
        d.deserialize_seq(Visit(PhantomData))
    }
}

/// A msgpack `bin` and nothing else: kv.py refuses a str where bytes belong (`_bytes_list`),
/// and so does this schema (serde_bytes' `ByteBuf` would take a str or an int array).
struct BinIn(Vec<u8>);

impl<'de> Deserialize<'de> for BinIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = BinIn;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<BinIn, E> {
                Ok(BinIn(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<BinIn, E> {
                Ok(BinIn(v))
            }
        }
        d.deserialize_byte_buf(Visit)
    }
}

fn one_group_each(gs: Option<Vec<u64>>, items: usize) -> Result<Vec<u64>, KvWireError> {
    match gs {
        Some(gs) if gs.len() == items => Ok(gs),
        _ => Err(invalid("gs", "must list one group per item")),
    }
}

fn bins<'b>(list: &'b [Cow<'_, [u8]>]) -> Vec<Bin<'b>> {
    list.iter().map(|b| Bin(b)).collect()
}

/// Bytes written as msgpack `bin` (not an array of ints).
struct Bin<'b>(&'b [u8]);

impl Serialize for Bin<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Every field of every request, as the decoder first sees them; an absent or wrongly typed
/// field is judged by [`KvRequest::decode`] per op.
#[derive(Deserialize)]
struct RawRequest {
    op: Option<String>,
    v: Option<u32>,
    gs: Option<Bounded<u64>>,
    g: Option<u64>,
    cmds: Option<Bounded<BinIn>>,
    keys: Option<Bounded<BinIn>>,
    level: Option<String>,
    stale_s: Option<f64>,
    fwd: Option<bool>,
    t: Option<u64>,
    wl: Option<Bounded<u64>>,
    caps: Option<u32>,
}

#[derive(Deserialize)]
struct RawResponse {
    v: Option<u32>,
    r: Option<Vec<Option<ByteBuf>>>,
    #[serde(default)]
    nlg: Vec<(u64, u64)>,
    #[serde(default)]
    unk: Vec<u64>,
    #[serde(default)]
    stale_g: Vec<(u64, f64)>,
    #[serde(default)]
    vsp: Vec<u64>,
    #[serde(default)]
    vsm: Vec<(u64, u64)>,
    #[serde(default)]
    ovr: Vec<u64>,
    nl: Option<u64>,
    stale: Option<f64>,
    routing: Option<ByteBuf>,
    #[serde(default, deserialize_with = "nodes_or_nil")]
    nodes: Vec<KvNode>,
}

fn nodes_or_nil<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<KvNode>, D::Error> {
    Ok(Option::<Vec<KvNode>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Serialize)]
struct ProposeManyOut<'b> {
    op: &'static str,
    gs: &'b [u64],
    cmds: Vec<Bin<'b>>,
    t: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    wl: Option<&'b [u64]>,
    #[serde(skip_serializing_if = "is_zero")]
    caps: u32,
}

#[derive(Serialize)]
struct ReadManyOut<'b> {
    op: &'static str,
    gs: &'b [u64],
    keys: Vec<Bin<'b>>,
    level: &'static str,
    stale_s: f64,
    t: u64,
    #[serde(skip_serializing_if = "is_zero")]
    caps: u32,
}

#[derive(Serialize)]
struct ProposeOut<'b> {
    op: &'static str,
    g: u64,
    cmds: Vec<Bin<'b>>,
    fwd: bool,
    t: u64,
    #[serde(skip_serializing_if = "is_zero")]
    caps: u32,
}

#[derive(Serialize)]
struct ReadOut<'b> {
    op: &'static str,
    g: u64,
    keys: Vec<Bin<'b>>,
    level: &'static str,
    stale_s: f64,
    fwd: bool,
    t: u64,
    #[serde(skip_serializing_if = "is_zero")]
    caps: u32,
}

#[derive(Serialize)]
struct RoutingOut {
    op: &'static str,
}

#[derive(Serialize)]
struct ResultsOut<'b> {
    r: Vec<Option<Bin<'b>>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    nlg: &'b [(u64, u64)],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    unk: &'b [u64],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stale_g: &'b [(u64, f64)],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    vsp: &'b [u64],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    vsm: &'b [(u64, u64)],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    ovr: &'b [u64],
}

fn is_zero(caps: &u32) -> bool {
    *caps == 0
}

#[derive(Serialize)]
struct NotLeaderOut {
    nl: u64,
}

#[derive(Serialize)]
struct StaleOut {
    stale: f64,
}

#[derive(Serialize)]
struct RoutingReplyOut<'b> {
    routing: Bin<'b>,
    nodes: &'b [KvNode],
}

#[cfg(test)]
mod tests;
