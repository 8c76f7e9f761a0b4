//! The server's schema-level answers: what each failure becomes on the wire, routing before and
//! after the node pushes it, and bad input (a server without an engine answers everything but
//! routing with EngineStopped; bad input is refused before that).

use super::*;
use crate::client::error::UNSUPPORTED_VERSION;
use nodedb_multiraft::NodeId;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn server(rt: &tokio::runtime::Runtime) -> KvServer {
    KvServer::new(
        Weak::new(),
        KvGroups::default(),
        rt.handle().clone(),
        ServeOptions {
            lease: true,
            quota_bytes: 0,
        },
    )
}

fn serve(rt: &tokio::runtime::Runtime, s: &KvServer, payload: &[u8]) -> HandlerResult {
    rt.block_on(s.serve(payload))
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
    reply.stale.push((7, 1.5));
    let frame = encode(reply).unwrap().unwrap();
    let back = KvResponse::decode(&frame.payload).unwrap();
    match back {
        KvResponse::Results(r) => assert_eq!(r.stale, vec![(7, 1.5)]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_single_failure_is_nl_stale_or_the_requesters_error() {
    let rt = runtime();
    let s = server(&rt);
    let bytes = |r: HandlerResult| r.unwrap().unwrap().payload.to_vec();
    // {"nl": 3}
    let nl = answer_one_failure(
        &s.reads,
        1,
        ReadFail::Raft(RaftError::NotLeader {
            group: GroupId(1),
            leader_hint: Some(NodeId(3)),
        }),
    );
    assert_eq!(bytes(nl), b"\x81\xa2nl\x03");
    // {"nl": 0}: not run here, no leader known.
    assert_eq!(
        bytes(answer_one_failure(&s.reads, 1, ReadFail::NotHere(0))),
        b"\x81\xa2nl\x00"
    );
    let unknown = ReadFail::Raft(RaftError::GroupNotFound { group: GroupId(9) });
    assert_eq!(
        bytes(answer_one_failure(&s.reads, 9, unknown)),
        b"\x81\xa2nl\x00"
    );
    // {"stale": 2.5}
    let stale = bytes(answer_one_failure(&s.reads, 1, ReadFail::Stale(2.5)));
    assert_eq!(
        KvResponse::decode(&stale).unwrap(),
        KvResponse::Stale { age_s: 2.5 }
    );
    let lost = ReadFail::Raft(RaftError::LeadershipLost {
        group: GroupId(1),
        leader_hint: None,
    });
    assert_eq!(
        answer_one_failure(&s.reads, 1, lost).unwrap_err().code,
        "LeadershipLost"
    );
}

#[test]
fn routing_is_unavailable_until_pushed_then_the_pushed_snapshot() {
    let rt = runtime();
    let s = server(&rt);
    let routing = b"\x81\xa2op\xa7routing";
    let before = serve(&rt, &s, routing).unwrap_err();
    assert_eq!(before.code, ROUTING_UNAVAILABLE);
    s.set_routing(
        b"table".to_vec(),
        vec![
            KvNode(1, "127.0.0.1:9400".into(), Some(vec![0xab; 2])),
            KvNode(2, "127.0.0.2:9400".into(), None),
        ],
    )
    .unwrap();
    let frame = serve(&rt, &s, routing).unwrap().unwrap();
    assert_eq!(frame.kind, MessageKind::KV_RESPONSE);
    // msgpack.packb({"routing": b"table", "nodes": [[1, "127.0.0.1:9400", b"\xab\xab"],
    //                [2, "127.0.0.2:9400", None]]}, use_bin_type=True), as node.py answered.
    let mut expected = b"\x82\xa7routing\xc4\x05table\xa5nodes\x92".to_vec();
    expected.extend_from_slice(b"\x93\x01\xae127.0.0.1:9400\xc4\x02\xab\xab");
    expected.extend_from_slice(b"\x93\x02\xae127.0.0.2:9400\xc0");
    assert_eq!(&frame.payload[..], &expected[..]);
}

#[test]
fn bad_input_and_newer_versions_get_typed_errors_never_a_hand_off() {
    let rt = runtime();
    let s = server(&rt);
    for payload in [
        &b""[..],
        b"\xc1",
        b"\x80",
        b"\x81\xa2op\xa4nope",
        b"\x83\xa2op\xa7propose\xa1g\x01\xa1t\x00",
    ] {
        let err = serve(&rt, &s, payload).unwrap_err();
        assert_eq!(err.code, INVALID_REQUEST, "{payload:?}");
    }
    let newer = serve(&rt, &s, b"\x82\xa2op\xa4read\xa1v\x02").unwrap_err();
    assert_eq!(newer.code, UNSUPPORTED_VERSION);
    // A valid request on a closed engine.
    let closed = serve(
        &rt,
        &s,
        b"\x84\xa2op\xa7propose\xa1g\x01\xa4cmds\x90\xa1t\x0a",
    );
    assert_eq!(closed.unwrap_err().code, "EngineStopped");
}
