//! A KV_REQUEST payload as the server takes it: [`nodedb_wire::kv`]'s request, checked, or the
//! typed Error a bad one is answered with. Every input gets an answer from Rust (no request is
//! handed to another handler): a payload that does not decode, an unknown op, a timeout of 0 or
//! over [`REQUEST_TIMEOUT_MS_MAX`] and a bad staleness are `InvalidRequest` (the requester raises
//! `InvalidRequest`/`RemoteError` and never retries it elsewhere); a newer KV version is
//! `UnsupportedVersion`.

use std::borrow::Cow;

use nodedb_multiraft::NodeId;
use nodedb_transport::HandlerError;
use nodedb_wire::{KvRequest, KvWireError, ReadLevel, KV_CAP_READ_OVER, KV_CAP_VSHARD_REDIRECTS};

use crate::client::error::{INVALID_REQUEST, UNSUPPORTED_VERSION};
use crate::command::is_client_command;

/// A request timeout above this (or 0) is refused: no caller waits longer than the RPC bound.
pub(super) const REQUEST_TIMEOUT_MS_MAX: u64 = 60_000;
/// Nodes a probe may name in "wl", at most (the client sends at most 16); a longer list is
/// served without the wait for a leader (as kv.py, which never read it).
pub(super) const AVOIDED_MAX: usize = 64;

/// A read's level and staleness bound (`stale_s`: finite, not negative).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct ReadAt {
    pub level: ReadLevel,
    pub stale_s: f64,
}

/// What the server does. `redirects`: the requester understands per-item Paused / Moved
/// answers (`caps` has [`KV_CAP_VSHARD_REDIRECTS`]); without it a refused item makes its
/// group's share an unknown outcome, which every requester retries.
#[derive(Debug, PartialEq)]
pub(super) enum Served {
    /// Commands of several groups (`propose_many`); with `wait_leader`, a probe.
    ProposeMany {
        gs: Vec<u64>,
        cmds: Vec<Vec<u8>>,
        t: u64,
        wait_leader: Option<Vec<NodeId>>,
        redirects: bool,
    },
    /// Keys of several groups (`read_many`). `partial`: the requester takes the values one
    /// reply has room for and reads the rest again ([`KV_CAP_READ_OVER`]); without it a read
    /// over one reply is refused whole.
    ReadMany {
        gs: Vec<u64>,
        keys: Vec<Vec<u8>>,
        at: ReadAt,
        t: u64,
        redirects: bool,
        partial: bool,
    },
    /// Commands of one group (`propose`), executed here (never forwarded).
    Propose {
        g: u64,
        cmds: Vec<Vec<u8>>,
        t: u64,
        redirects: bool,
    },
    /// Keys of one group (`read`), read here (never forwarded).
    Read {
        g: u64,
        keys: Vec<Vec<u8>>,
        at: ReadAt,
        t: u64,
        redirects: bool,
    },
    Routing,
}

fn redirects(caps: u32) -> bool {
    caps & KV_CAP_VSHARD_REDIRECTS != 0
}

fn partial(caps: u32) -> bool {
    caps & KV_CAP_READ_OVER != 0
}

fn owned(list: Vec<Cow<'static, [u8]>>) -> Vec<Vec<u8>> {
    list.into_iter().map(Cow::into_owned).collect()
}

/// The commands of a proposal, refused as a whole if any is not a client's (a placement
/// command travels only in VSHARD_STEP, which only nodes may send).
fn client_commands(list: Vec<Cow<'static, [u8]>>) -> Result<Vec<Vec<u8>>, HandlerError> {
    match list.iter().position(|c| !is_client_command(c)) {
        Some(i) => Err(invalid(format!(
            "cmds[{i}]: only put, delete, cas and get may be proposed in a KV request"
        ))),
        None => Ok(owned(list)),
    }
}

fn invalid(message: impl Into<String>) -> HandlerError {
    HandlerError::new(INVALID_REQUEST, message)
}

fn timeout(t: u64) -> Result<u64, HandlerError> {
    if (1..=REQUEST_TIMEOUT_MS_MAX).contains(&t) {
        Ok(t)
    } else {
        Err(invalid(format!(
            "kv request timeout {t} ms is not in 1..={REQUEST_TIMEOUT_MS_MAX}"
        )))
    }
}

fn read_at(level: ReadLevel, stale_s: f64) -> Result<ReadAt, HandlerError> {
    if !(stale_s.is_finite() && stale_s >= 0.0) {
        return Err(invalid(format!(
            "stale_s must be a finite number >= 0, got {stale_s}"
        )));
    }
    Ok(ReadAt { level, stale_s })
}

/// The request in `payload`, or the Error that answers it.
pub(super) fn parse(payload: &[u8]) -> Result<Served, HandlerError> {
    let request = KvRequest::decode(payload).map_err(|err| match err {
        KvWireError::UnsupportedVersion { .. } => {
            HandlerError::new(UNSUPPORTED_VERSION, err.to_string())
        }
        err => invalid(err.to_string()),
    })?;
    Ok(match request {
        KvRequest::ProposeMany(m) => Served::ProposeMany {
            t: timeout(m.timeout_ms)?,
            gs: m.groups,
            cmds: client_commands(m.commands)?,
            wait_leader: m
                .avoid
                .filter(|wl| wl.len() <= AVOIDED_MAX)
                .map(|wl| wl.into_iter().map(NodeId).collect()),
            redirects: redirects(m.caps),
        },
        KvRequest::ReadMany(m) => Served::ReadMany {
            t: timeout(m.timeout_ms)?,
            at: read_at(m.level, m.stale_s)?,
            gs: m.groups,
            keys: owned(m.keys),
            redirects: redirects(m.caps),
            partial: partial(m.caps),
        },
        KvRequest::Propose(p) => Served::Propose {
            t: timeout(p.timeout_ms)?,
            g: p.group,
            cmds: client_commands(p.commands)?,
            redirects: redirects(p.caps),
        },
        KvRequest::Read(r) => Served::Read {
            t: timeout(r.timeout_ms)?,
            at: read_at(r.level, r.stale_s)?,
            g: r.group,
            keys: owned(r.keys),
            redirects: redirects(r.caps),
        },
        KvRequest::Routing => Served::Routing,
    })
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

    pub(crate) fn req(op: &str, gs: Vec<i64>, items: usize, level: &str, t: u64) -> Vec<u8> {
        let (cmds, keys) = if op == "read_many" || op == "read" {
            let keys = (0..items).map(|i| ByteBuf::from(vec![i as u8])).collect();
            (Vec::new(), keys)
        } else {
            // op bytes of put, delete, cas, get in turn (the server looks no further)
            let cmds = (0..items)
                .map(|i| ByteBuf::from(vec![1 + (i % 4) as u8]))
                .collect();
            (cmds, Vec::new())
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

    fn code(payload: &[u8]) -> String {
        match parse(payload) {
            Err(err) => err.code,
            Ok(served) => panic!("{payload:?} was taken: {served:?}"),
        }
    }

    #[test]
    fn placement_commands_are_refused_from_kv_requests() {
        use crate::command::{Import, KvCommand, VShardStep};
        let freeze = KvCommand::VShard {
            step: VShardStep::Drop,
            vshard: 7,
            group: 2,
            move_id: 1,
        }
        .encode();
        let import = KvCommand::Import(Import {
            vshard: 7,
            ..Import::default()
        })
        .encode();
        let put = KvCommand::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        }
        .encode();
        let in_session = KvCommand::encode_session(9, 1, 1, &freeze);
        let put_in_session = KvCommand::encode_session(9, 1, 1, &put);
        for bad in [&freeze, &import, &in_session] {
            for op in ["propose_many", "propose"] {
                let payload = rmp_serde::to_vec_named(&Req {
                    op,
                    gs: vec![1, 1],
                    cmds: vec![ByteBuf::from(put.clone()), ByteBuf::from(bad.clone())],
                    keys: Vec::new(),
                    level: "linearizable",
                    t: 50,
                })
                .unwrap();
                assert_eq!(code(&payload), INVALID_REQUEST, "{op} {bad:?}");
            }
        }
        for good in [&put, &put_in_session] {
            assert!(is_client_command(good));
        }
        assert!(!is_client_command(&[]));
        assert!(!is_client_command(&[16, 0, 0]), "a session cut short");
    }

    #[test]
    fn every_op_and_level_is_served() {
        let propose = parse(&req("propose_many", vec![1, 2, 1], 3, "linearizable", 50)).unwrap();
        assert!(matches!(propose, Served::ProposeMany { ref gs, t: 50, .. } if *gs == [1, 2, 1]));
        for level in ["linearizable", "lease", "follower"] {
            let read = parse(&req("read_many", vec![3], 1, level, 5000)).unwrap();
            assert!(matches!(read, Served::ReadMany { ref keys, at, .. }
                    if keys.len() == 1 && at.level.as_str() == level));
        }
        // {"op": "routing"}
        assert_eq!(parse(b"\x81\xa2op\xa7routing").unwrap(), Served::Routing);
        #[derive(Serialize)]
        struct One<'a> {
            op: &'a str,
            g: u64,
            cmds: Vec<ByteBuf>,
            keys: Vec<ByteBuf>,
            level: &'a str,
            stale_s: f64,
            fwd: bool,
        }
        let one = |op: &str, stale_s: f64| {
            rmp_serde::to_vec_named(&One {
                op,
                g: 7,
                cmds: vec![ByteBuf::from(vec![1u8])], // a put's op byte
                keys: vec![ByteBuf::from(b"k".to_vec())],
                level: "follower",
                stale_s,
                fwd: true,
            })
            .unwrap()
        };
        assert_eq!(
            parse(&one("propose", 1.0)).unwrap(),
            Served::Propose {
                g: 7,
                cmds: vec![vec![1u8]],
                t: 5000,
                redirects: false,
            }
        );
        assert_eq!(
            parse(&one("read", 0.25)).unwrap(),
            Served::Read {
                g: 7,
                keys: vec![b"k".to_vec()],
                at: ReadAt {
                    level: ReadLevel::Follower,
                    stale_s: 0.25
                },
                t: 5000,
                redirects: false,
            }
        );
        assert_eq!(code(&one("read", -1.0)), INVALID_REQUEST);
        assert_eq!(code(&one("read", f64::NAN)), INVALID_REQUEST);
        assert_eq!(code(&one("read", f64::INFINITY)), INVALID_REQUEST);
    }

    #[test]
    fn a_requester_that_announces_redirects_gets_them() {
        // {"op": "propose_many", "gs": [1], "cmds": [b"\x01"], "caps": 1}
        let with = b"\x84\xa2op\xacpropose_many\xa2gs\x91\x01\xa4cmds\x91\xc4\x01\x01\xa4caps\x01";
        match parse(with).unwrap() {
            Served::ProposeMany { redirects, .. } => assert!(redirects),
            other => panic!("{other:?}"),
        }
        match parse(&req("propose_many", vec![1], 1, "linearizable", 50)).unwrap() {
            Served::ProposeMany { redirects, .. } => assert!(!redirects, "absent = old"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_input_is_refused_with_invalid_request() {
        for payload in [
            req("propose_many", vec![1, 2], 1, "linearizable", 50), // gs/cmds mismatch
            req("propose_many", vec![-1], 1, "linearizable", 50),   // negative group
            req("propose_many", vec![1], 1, "linearizable", 0),     // timeout 0
            req(
                "propose_many",
                vec![1],
                1,
                "linearizable",
                REQUEST_TIMEOUT_MS_MAX + 1,
            ),
            req("read_many", vec![1], 1, "sloppy", 50), // unknown level
            req("read", vec![1], 1, "linearizable", 0), // timeout 0 (and no g)
            req("frobnicate", vec![1], 1, "linearizable", 50), // unknown op
            b"\x81\xa2op\xc0".to_vec(),                 // op nil
            b"\x80".to_vec(),                           // no op
            vec![0xc1],                                 // not MessagePack
            Vec::new(),                                 // empty
            b"\x93\x01\x02\x03".to_vec(),               // not a map
        ] {
            assert_eq!(code(&payload), INVALID_REQUEST, "{payload:?}");
        }
    }

    #[test]
    fn a_newer_version_is_refused_with_the_version_error() {
        // {"op": "propose_many", "v": 2}
        assert_eq!(
            code(b"\x82\xa2op\xacpropose_many\xa1v\x02"),
            UNSUPPORTED_VERSION
        );
        // {"op": "routing", "v": 9}
        assert_eq!(code(b"\x82\xa2op\xa7routing\xa1v\x09"), UNSUPPORTED_VERSION);
    }

    #[test]
    fn a_probe_names_the_nodes_it_avoids() {
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
        match parse(&probe(vec![3])).unwrap() {
            Served::ProposeMany { wait_leader, .. } => {
                assert_eq!(wait_leader, Some(vec![NodeId(3)]))
            }
            other => panic!("{other:?}"),
        }
        match parse(&req("propose_many", vec![1], 1, "linearizable", 50)).unwrap() {
            Served::ProposeMany { wait_leader, .. } => assert_eq!(wait_leader, None),
            other => panic!("{other:?}"),
        }
        let too_many = (1..=AVOIDED_MAX as u64 + 1).collect();
        match parse(&probe(too_many)).unwrap() {
            Served::ProposeMany { wait_leader, .. } => {
                assert_eq!(wait_leader, None, "served without the wait")
            }
            other => panic!("{other:?}"),
        }
    }
}
