//! The schema against the bytes Python's `msgpack.packb(doc, use_bin_type=True)` writes for
//! kv.py's dicts (hex captured once from Python), against maps built by hand with rmp-serde,
//! and against malformed input.

use super::*;

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn b(bytes: &[u8]) -> Cow<'static, [u8]> {
    Cow::Owned(bytes.to_vec())
}

/// Python: {"op": "propose_many", "gs": [3, 1], "cmds": [b"a", b"bc"], "t": 250}
const PY_PROPOSE_MANY: &str =
    "84a26f70ac70726f706f73655f6d616e79a26773920301a4636d647392c40161c4026263a174ccfa";
/// Python: {"op": "read_many", "gs": [7], "keys": [b"k"], "level": "follower", "stale_s": 0.5, "t": 300}
const PY_READ_MANY: &str = "86a26f70a9726561645f6d616e79a267739107a46b65797391c4016ba56c6576656ca8666f6c6c6f776572a77374616c655f73cb3fe0000000000000a174cd012c";
/// Python: {"op": "propose", "g": 4, "cmds": [b"x"], "fwd": True, "t": 5000}
const PY_PROPOSE: &str = "85a26f70a770726f706f7365a16704a4636d647391c40178a3667764c3a174cd1388";
/// Python: {"op": "read", "g": 4, "keys": [b"k"], "level": "lease", "stale_s": 1.0, "fwd": False, "t": 5000}
const PY_READ: &str = "87a26f70a472656164a16704a46b65797391c4016ba56c6576656ca56c65617365a77374616c655f73cb3ff0000000000000a3667764c2a174cd1388";
/// Python: {"op": "routing"}
const PY_ROUTING: &str = "81a26f70a7726f7574696e67";
/// Python: {"r": [b"v", None], "nlg": [[2, 3]], "unk": [4], "stale_g": [[5, 1.5]]}
const PY_RESULTS: &str =
    "84a17292c40176c0a36e6c6791920203a3756e6b9104a77374616c655f67919205cb3ff8000000000000";
/// Python: {"nl": 0} and {"stale": 2.25}
const PY_NOT_LEADER: &str = "81a26e6c00";
const PY_STALE: &str = "81a57374616c65cb4002000000000000";
/// Python: {"routing": b"RT", "nodes": [[1, "127.0.0.1:9400", None], [2, "127.0.0.1:9401", b"\x01\x02"]]}
const PY_ROUTING_REPLY: &str = "82a7726f7574696e67c4025254a56e6f646573929301ae3132372e302e302e313a39343030c09302ae3132372e302e302e313a39343031c4020102";

fn python_requests() -> Vec<(&'static str, KvRequest<'static>)> {
    vec![
        (
            PY_PROPOSE_MANY,
            KvRequest::ProposeMany(ProposeMany {
                groups: vec![3, 1],
                commands: vec![b(b"a"), b(b"bc")],
                timeout_ms: 250,
                avoid: None,
                caps: 0,
            }),
        ),
        (
            PY_READ_MANY,
            KvRequest::ReadMany(ReadMany {
                groups: vec![7],
                keys: vec![b(b"k")],
                level: ReadLevel::Follower,
                stale_s: 0.5,
                timeout_ms: 300,
                caps: 0,
            }),
        ),
        (
            PY_PROPOSE,
            KvRequest::Propose(ProposeOne {
                group: 4,
                commands: vec![b(b"x")],
                forwarded: true,
                timeout_ms: 5000,
                caps: 0,
            }),
        ),
        (
            PY_READ,
            KvRequest::Read(ReadOne {
                group: 4,
                keys: vec![b(b"k")],
                level: ReadLevel::Lease,
                stale_s: 1.0,
                forwarded: false,
                timeout_ms: 5000,
                caps: 0,
            }),
        ),
        (PY_ROUTING, KvRequest::Routing),
    ]
}

fn python_responses() -> Vec<(&'static str, KvResponse<'static>)> {
    vec![
        (
            PY_RESULTS,
            KvResponse::Results(KvResults {
                results: vec![Some(b(b"v")), None],
                not_leader: vec![(2, 3)],
                unknown: vec![4],
                stale: vec![(5, 1.5)],
                paused: vec![],
                moved: vec![],
                over: vec![],
            }),
        ),
        (PY_NOT_LEADER, KvResponse::NotLeader { leader: 0 }),
        (PY_STALE, KvResponse::Stale { age_s: 2.25 }),
        (
            PY_ROUTING_REPLY,
            KvResponse::Routing {
                routing: b"RT".to_vec(),
                nodes: vec![
                    KvNode(1, "127.0.0.1:9400".into(), None),
                    KvNode(2, "127.0.0.1:9401".into(), Some(vec![1, 2])),
                ],
            },
        ),
    ]
}

#[test]
fn pythons_bytes_decode_and_encode_back_byte_for_byte() {
    for (bytes, want) in python_requests() {
        let payload = hex(bytes);
        assert_eq!(KvRequest::decode(&payload).unwrap(), want);
        assert_eq!(want.encode().unwrap(), payload, "{want:?}");
    }
    for (bytes, want) in python_responses() {
        let payload = hex(bytes);
        assert_eq!(KvResponse::decode(&payload).unwrap(), want);
        assert_eq!(want.encode().unwrap(), payload, "{want:?}");
    }
}

/// A msgpack value for maps written literally in tests.
enum V {
    U(u64),
    I(i64),
    F(f64),
    S(&'static str),
    B(&'static [u8]),
    L(Vec<V>),
    Nil,
}

impl Serialize for V {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            V::U(v) => s.serialize_u64(*v),
            V::I(v) => s.serialize_i64(*v),
            V::F(v) => s.serialize_f64(*v),
            V::S(v) => s.serialize_str(v),
            V::B(v) => s.serialize_bytes(v),
            V::L(v) => v.serialize(s),
            V::Nil => s.serialize_none(),
        }
    }
}

fn map(entries: Vec<(&'static str, V)>) -> Vec<u8> {
    let m: Vec<(&str, V)> = entries;
    struct M(Vec<(&'static str, V)>);
    impl Serialize for M {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut m = s.serialize_map(Some(self.0.len()))?;
            for (k, v) in &self.0 {
                m.serialize_entry(k, v)?;
            }
            m.end()
        }
    }
    rmp_serde::to_vec_named(&M(m)).unwrap()
}

#[test]
fn todays_maps_decode_with_their_defaults_and_unknown_keys_ignored() {
    // A probe from the client core (nodedb_kv::client), with a field this build does not know.
    let probe = map(vec![
        ("op", V::S("propose_many")),
        ("gs", V::L(vec![V::U(4)])),
        ("cmds", V::L(vec![V::B(b"c")])),
        ("t", V::U(300)),
        ("wl", V::L(vec![V::U(3), V::U(5)])),
        ("later_field", V::S("ignored")),
    ]);
    match KvRequest::decode(&probe).unwrap() {
        KvRequest::ProposeMany(m) => assert_eq!(m.avoid, Some(vec![3, 5])),
        other => panic!("{other:?}"),
    }
    // kv.py's defaults: t 5000 ms, level linearizable, stale_s 1.0; an int stale_s is a number.
    let read = map(vec![
        ("op", V::S("read_many")),
        ("gs", V::L(vec![V::U(1)])),
        ("keys", V::L(vec![V::B(b"k")])),
    ]);
    assert_eq!(
        KvRequest::decode(&read).unwrap(),
        KvRequest::ReadMany(ReadMany {
            groups: vec![1],
            keys: vec![b(b"k")],
            level: ReadLevel::Linearizable,
            stale_s: KV_STALE_S_DEFAULT,
            timeout_ms: KV_TIMEOUT_MS_DEFAULT,
            caps: 0,
        })
    );
    let int_stale = map(vec![
        ("op", V::S("read")),
        ("g", V::U(2)),
        ("keys", V::L(vec![])),
        ("stale_s", V::U(3)),
    ]);
    assert!(matches!(KvRequest::decode(&int_stale), Ok(KvRequest::Read(r)) if r.stale_s == 3.0));
    // Version 1 named explicitly is version 1.
    let v1 = map(vec![("op", V::S("routing")), ("v", V::U(1))]);
    assert_eq!(KvRequest::decode(&v1).unwrap(), KvRequest::Routing);
    // A routing reply with nil members.
    let reply = map(vec![("routing", V::B(b"x")), ("nodes", V::Nil)]);
    assert!(
        matches!(KvResponse::decode(&reply), Ok(KvResponse::Routing { nodes, .. }) if nodes.is_empty())
    );
}

#[test]
fn a_newer_version_is_a_typed_refusal() {
    let newer = map(vec![("op", V::S("routing")), ("v", V::U(2))]);
    assert_eq!(
        KvRequest::decode(&newer).unwrap_err(),
        KvWireError::UnsupportedVersion {
            message: "KvRequest",
            version: 2,
            supported: KV_VERSION,
        }
    );
    let newer = map(vec![("r", V::L(vec![])), ("v", V::U(7))]);
    assert!(matches!(
        KvResponse::decode(&newer),
        Err(KvWireError::UnsupportedVersion { version: 7, .. })
    ));
}

#[test]
fn malformed_requests_are_typed_errors() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0xc1], "decode"),
        (Vec::new(), "decode"),
        (map(vec![("gs", V::L(vec![]))]), "op"),
        (map(vec![("op", V::S("load"))]), "unknown kv op"),
        (
            map(vec![
                ("op", V::S("propose_many")),
                ("gs", V::L(vec![V::U(1), V::U(2)])),
                ("cmds", V::L(vec![V::B(b"a")])),
            ]),
            "gs",
        ),
        (
            map(vec![
                ("op", V::S("propose_many")),
                ("gs", V::L(vec![V::I(-1)])),
                ("cmds", V::L(vec![V::B(b"a")])),
            ]),
            "decode",
        ),
        (
            map(vec![("op", V::S("propose_many")), ("gs", V::L(vec![]))]),
            "cmds",
        ),
        (
            map(vec![
                ("op", V::S("read_many")),
                ("gs", V::L(vec![])),
                ("keys", V::L(vec![])),
                ("level", V::S("eventual")),
            ]),
            "level",
        ),
        (
            map(vec![("op", V::S("propose")), ("cmds", V::L(vec![]))]),
            "g",
        ),
        (
            map(vec![
                ("op", V::S("read")),
                ("g", V::U(1)),
                ("keys", V::L(vec![V::S("str")])),
            ]),
            "decode",
        ),
        (
            map(vec![("op", V::S("routing")), ("t", V::F(1.5))]),
            "decode",
        ),
    ];
    for (payload, what) in cases {
        let err = KvRequest::decode(&payload).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(what), "{what}: {text}");
    }
    assert!(matches!(
        KvResponse::decode(&map(vec![("other", V::U(1))])),
        Err(KvWireError::Decode { .. })
    ));
}

#[test]
fn every_request_round_trips_and_only_a_probe_names_wl() {
    let probe = KvRequest::ProposeMany(ProposeMany {
        groups: vec![1, 1],
        commands: vec![Cow::Borrowed(b"x"), Cow::Borrowed(b"")],
        timeout_ms: 1,
        avoid: Some(vec![9]),
        caps: 0,
    });
    let bytes = probe.encode().unwrap();
    assert_eq!(KvRequest::decode(&bytes).unwrap(), probe);
    for (_, request) in python_requests() {
        assert!(
            !request.encode().unwrap().windows(4).any(|w| w == b"caps"),
            "no caps: the old bytes"
        );
    }
    for (_, request) in python_requests() {
        let bytes = request.encode().unwrap();
        assert!(!bytes.windows(2).any(|w| w == b"wl"));
        assert!(
            !bytes.windows(3).any(|w| w == b"\xa1v\x01"),
            "v1 writes no v"
        );
        assert_eq!(KvRequest::decode(&bytes).unwrap(), request);
    }
}

#[test]
fn caps_and_refused_items_round_trip_and_old_decoders_ignore_them() {
    let request = KvRequest::ReadMany(ReadMany {
        groups: vec![1],
        keys: vec![b(b"k")],
        level: ReadLevel::Linearizable,
        stale_s: 1.0,
        timeout_ms: 5,
        caps: KV_CAP_VSHARD_REDIRECTS,
    });
    let bytes = request.encode().unwrap();
    assert!(bytes.windows(4).any(|w| w == b"caps"));
    assert_eq!(KvRequest::decode(&bytes).unwrap(), request);
    let reply = KvResponse::Results(KvResults {
        results: vec![None, None, Some(b(b"v"))],
        paused: vec![0],
        moved: vec![(1, 7)],
        over: vec![2],
        ..KvResults::default()
    });
    let bytes = reply.encode().unwrap();
    assert_eq!(KvResponse::decode(&bytes).unwrap(), reply);
    // Without refusals the reply is today's bytes (no vsp / vsm / ovr keys).
    let plain = KvResponse::Results(KvResults {
        results: vec![None],
        ..KvResults::default()
    })
    .encode()
    .unwrap();
    assert!(!plain
        .windows(3)
        .any(|w| w == b"vsp" || w == b"vsm" || w == b"ovr"));
    // Badly typed new fields are decode errors, never misread.
    let bad = map(vec![("r", V::L(vec![])), ("vsm", V::L(vec![V::U(1)]))]);
    assert!(KvResponse::decode(&bad).is_err());
    let bad_caps = map(vec![("op", V::S("read_many")), ("caps", V::S("x"))]);
    assert!(KvRequest::decode(&bad_caps).is_err());
}

#[test]
fn a_request_of_more_items_than_an_entry_holds_is_refused_before_it_is_decoded() {
    let read = |n: usize| {
        KvRequest::ReadMany(ReadMany {
            groups: vec![1; n],
            keys: vec![b(b"k"); n],
            level: ReadLevel::Linearizable,
            stale_s: 1.0,
            timeout_ms: 5,
            caps: 0,
        })
        .encode()
        .unwrap()
    };
    assert!(
        matches!(KvRequest::decode(&read(KV_ITEMS_MAX)), Ok(KvRequest::ReadMany(m)) if m.keys.len() == KV_ITEMS_MAX)
    );
    let refusal = KvRequest::decode(&read(KV_ITEMS_MAX + 1)).unwrap_err();
    assert!(
        refusal.to_string().contains("over 65536 items"),
        "{refusal}"
    );
    // An array header stating 2^32 - 1 keys and then nothing: refused at the header.
    let mut stated = map(vec![("op", V::S("read_many"))]);
    stated[0] += 1; // one more entry in the map
    stated.extend([0xa4, b'k', b'e', b'y', b's', 0xdd, 0xff, 0xff, 0xff, 0xff]);
    let refusal = KvRequest::decode(&stated).unwrap_err();
    assert!(
        refusal.to_string().contains("over 65536 items"),
        "{refusal}"
    );
    let propose = KvRequest::ProposeMany(ProposeMany {
        groups: vec![1; KV_ITEMS_MAX + 1],
        commands: vec![b(b"c"); KV_ITEMS_MAX + 1],
        timeout_ms: 5,
        avoid: None,
        caps: 0,
    });
    assert!(KvRequest::decode(&propose.encode().unwrap()).is_err());
}
