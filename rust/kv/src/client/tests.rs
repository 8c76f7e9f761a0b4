//! The client core's wire and answer rules, without a network.

use std::borrow::Cow;

use bytes::Bytes;
use nodedb_transport::{MessageKind, OutboundFrame};
use nodedb_wire::{KvRequest, KvResponse, KvResults, ReadLevel};

use super::calls::written;
use super::*;
use crate::command::{KvCommand, KvResult};

fn frame(payload: Vec<u8>) -> OutboundFrame {
    OutboundFrame {
        kind: MessageKind::KV_RESPONSE,
        payload: Bytes::from(payload),
    }
}

fn results(
    r: Vec<Option<&'static [u8]>>,
    nlg: Vec<(u64, u64)>,
    unk: Vec<u64>,
    stale: Vec<(u64, f64)>,
) -> Vec<u8> {
    KvResponse::Results(KvResults {
        results: r.into_iter().map(|v| v.map(Cow::Borrowed)).collect(),
        not_leader: nlg,
        unknown: unk,
        stale,
        ..KvResults::default()
    })
    .encode()
    .unwrap()
}

fn call(kind: CallKind, groups: Vec<u64>) -> Call {
    let n = groups.len();
    Call {
        kind,
        deadline: Instant::now(),
        groups,
        seqs: (0, 0),
        completion: Mutex::new(None),
        progress: Mutex::new(Progress {
            results: vec![None; n],
            remaining: n,
            finished: false,
        }),
    }
}

#[test]
fn reply_decodes_results_and_per_group_failures() {
    let lane = Lane::read(ReadLevel::Follower, 0.5);
    let payload = results(
        vec![Some(b"v"), None, None, None],
        vec![(2, 3)],
        vec![4],
        vec![(5, 1.5)],
    );
    let d = decode_reply(&frame(payload), lane, 4).unwrap();
    let (values, failed) = (d.results, d.failed);
    assert!(d.refused.is_empty() && d.over.is_empty());
    assert_eq!(values, vec![Some(b"v".to_vec()), None, None, None]);
    assert!(matches!(failed[&2], KvError::NotLeader { hint: 3 }));
    assert!(matches!(failed[&4], KvError::LeadershipLost));
    assert!(matches!(failed[&5], KvError::Stale { age_s, max_s } if age_s == 1.5 && max_s == 0.5));
}

#[test]
fn refused_items_are_read_from_results_or_vsp_vsm() {
    use crate::command::KvResult;
    use crate::vshard::Refusal;
    let paused = KvResult::Paused.encode();
    let moved = KvResult::Moved { group: 7 }.encode();
    let ok = KvResult::Ok { value: None }.encode();
    let payload = KvResponse::Results(KvResults {
        results: vec![
            Some(Cow::Owned(ok)),
            Some(Cow::Owned(paused)),
            Some(Cow::Owned(moved)),
        ],
        ..KvResults::default()
    })
    .encode()
    .unwrap();
    let refused = decode_reply(&frame(payload.clone()), Lane::Propose, 3)
        .unwrap()
        .refused;
    assert_eq!(refused, vec![(1, Refusal::Paused), (2, Refusal::Moved(7))]);
    // A read's value that happens to start with those bytes is a value, not a refusal.
    let lane = Lane::read(ReadLevel::Linearizable, 0.0);
    let refused = decode_reply(&frame(payload), lane, 3).unwrap().refused;
    assert!(refused.is_empty());
    let reads = KvResponse::Results(KvResults {
        results: vec![None, None, None],
        paused: vec![2],
        moved: vec![(0, 4)],
        ..KvResults::default()
    })
    .encode()
    .unwrap();
    let refused = decode_reply(&frame(reads), lane, 3).unwrap().refused;
    assert_eq!(refused, vec![(2, Refusal::Paused), (0, Refusal::Moved(4))]);
    let bad = KvResponse::Results(KvResults {
        results: vec![None],
        paused: vec![1],
        ..KvResults::default()
    })
    .encode()
    .unwrap();
    assert!(matches!(
        decode_reply(&frame(bad), lane, 1),
        Err(KvError::Malformed(_))
    ));
}

#[test]
fn reads_over_the_reply_are_sent_again_and_a_reply_answering_none_is_malformed() {
    let lane = Lane::read(ReadLevel::Linearizable, 0.0);
    let answer = |over: Vec<u64>| {
        let reply = KvResponse::Results(KvResults {
            results: vec![Some(Cow::Borrowed(&b"v"[..])), None, None],
            over,
            ..KvResults::default()
        });
        frame(reply.encode().unwrap())
    };
    let d = decode_reply(&answer(vec![1, 2]), lane, 3).unwrap();
    assert_eq!(d.over, vec![1, 2]);
    assert_eq!(d.results[0], Some(b"v".to_vec()));
    // None answered, an index past the items, or a proposal "over": never believed.
    for (over, lane) in [
        (vec![0, 1, 2], lane),
        (vec![3], lane),
        (vec![1], Lane::Propose),
    ] {
        assert!(matches!(
            decode_reply(&answer(over), lane, 3),
            Err(KvError::Malformed(_))
        ));
    }
}

#[test]
fn reply_with_wrong_count_or_shape_is_malformed() {
    let payload = results(vec![None], vec![], vec![], vec![]);
    assert!(matches!(
        decode_reply(&frame(payload), Lane::Propose, 2),
        Err(KvError::Malformed(_))
    ));
    assert!(matches!(
        decode_reply(&frame(vec![0xc1]), Lane::Propose, 1),
        Err(KvError::Malformed(_))
    ));
    // {"nl": 2}: the single-group NotLeader form.
    assert!(matches!(
        decode_reply(&frame(b"\x81\xa2nl\x02".to_vec()), Lane::Propose, 1),
        Err(KvError::NotLeader { hint: 2 })
    ));
    // {"r": [], "v": 2}: a newer version is refused, not half-read.
    match decode_reply(&frame(b"\x82\xa1r\x90\xa1v\x02".to_vec()), Lane::Propose, 0) {
        Err(KvError::Malformed(text)) => assert!(text.contains("version 2"), "{text}"),
        other => panic!("{other:?}"),
    }
    let wrong_kind = OutboundFrame {
        kind: MessageKind::KV_REQUEST,
        payload: Bytes::new(),
    };
    assert!(matches!(
        decode_reply(&wrong_kind, Lane::Propose, 0),
        Err(KvError::Malformed(_))
    ));
}

#[test]
fn request_is_the_schemas_propose_many_and_only_a_probe_names_wl() {
    let c = Arc::new(call(CallKind::Put, vec![3, 1]));
    let items: Vec<Item> = [(3u64, b"a".to_vec()), (1, b"bc".to_vec())]
        .into_iter()
        .enumerate()
        .map(|(slot, (group, payload))| Item {
            call: Arc::clone(&c),
            slot,
            group,
            lane: Lane::Propose,
            payload,
            attempt: 0,
            last: None,
            vshard: 0,
            refused: 0,
            search: Default::default(),
            timeouts: 0,
        })
        .collect();
    let bytes = encode_request(Lane::Propose, &items, 250, None).unwrap();
    match KvRequest::decode(&bytes).unwrap() {
        KvRequest::ProposeMany(m) => {
            assert_eq!(m.groups, vec![3, 1]);
            assert_eq!(m.commands[1].as_ref(), b"bc");
            assert_eq!(m.timeout_ms, 250);
            assert_eq!(m.avoid, None, "only probes may be held");
        }
        other => panic!("{other:?}"),
    }
    let bytes = encode_request(Lane::Propose, &[], 250, Some(vec![3, 5])).unwrap();
    assert!(
        matches!(KvRequest::decode(&bytes).unwrap(), KvRequest::ProposeMany(m) if m.avoid == Some(vec![3, 5]))
    );
}

#[test]
fn duplicate_write_result_is_an_unknown_outcome() {
    assert!(matches!(
        written(Some(&KvResult::Duplicate.encode())),
        Err(KvError::OutcomeUnknown)
    ));
    assert!(matches!(
        written(Some(&KvResult::NotFound.encode())),
        Ok(KvResult::NotFound)
    ));
    assert!(matches!(written(None), Err(KvError::Malformed(_))));
}

#[test]
fn answers_follow_the_kind_of_call() {
    let ok = Some(KvResult::Ok { value: None }.encode());
    let missing = Some(KvResult::NotFound.encode());
    let refused = Some(
        KvResult::Invalid {
            reason: "bad".into(),
        }
        .encode(),
    );
    let dup = Some(KvResult::Duplicate.encode());
    let c = call(CallKind::Delete, vec![7]);
    assert_eq!(
        answer(&c, Ok(vec![ok.clone()])).unwrap(),
        Answer::Deleted { existed: true }
    );
    assert_eq!(
        answer(&c, Ok(vec![missing.clone()])).unwrap(),
        Answer::Deleted { existed: false }
    );
    let c = call(CallKind::Cas, vec![7]);
    let mismatch = Some(KvResult::CasMismatch { current: None }.encode());
    assert_eq!(
        answer(&c, Ok(vec![mismatch])).unwrap(),
        Answer::Swapped { applied: false }
    );
    let err = answer(&c, Ok(vec![refused.clone()])).unwrap_err();
    assert!(
        matches!(&err.error, KvError::Invalid(t) if t.contains("cas refused")) && err.group == 7
    );
    let c = call(CallKind::PutMany, vec![7, 8]);
    assert_eq!(
        answer(&c, Ok(vec![ok.clone(), refused])).unwrap(),
        Answer::Written {
            refused: Some("bad".into())
        }
    );
    let err = answer(&c, Ok(vec![ok, dup])).unwrap_err();
    assert!(
        matches!(err.error, KvError::OutcomeUnknown) && err.group == 8,
        "the failed item's group"
    );
    let c = call(CallKind::Get, vec![7]);
    assert_eq!(
        answer(&c, Ok(vec![Some(b"v".to_vec())])).unwrap(),
        Answer::Value(Some(b"v".to_vec()))
    );
    let c = call(CallKind::GetMany, vec![7, 7]);
    assert_eq!(
        answer(&c, Ok(vec![None, None])).unwrap(),
        Answer::Values(vec![None, None])
    );
}

#[test]
fn requests_become_items_and_bad_reads_are_refused_before_queueing() {
    let (kind, lane, items) =
        items_of(Request::PutMany(vec![(b"k".to_vec(), b"v".to_vec())])).unwrap();
    assert_eq!((kind, lane), (CallKind::PutMany, Lane::Propose));
    assert_eq!(items[0].0, b"k".to_vec(), "routed by the key");
    assert_eq!(
        KvCommand::decode(&items[0].1).unwrap(),
        KvCommand::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec()
        }
    );
    let read = ReadAt {
        level: ReadLevel::Lease,
        max_staleness_s: -1.0,
    };
    assert!(matches!(
        items_of(Request::Get {
            key: b"k".to_vec(),
            read
        }),
        Err(SubmitError::Item(Failure {
            error: KvError::Invalid(_),
            ..
        }))
    ));
    assert!(
        deadline_in(0.0).is_err() && deadline_in(f64::NAN).is_err() && deadline_in(1.0).is_ok()
    );
}

#[test]
fn a_key_no_group_can_hold_refuses_the_call_before_queueing() {
    use crate::command::KEY_BYTES_MAX;
    let at_limit = vec![b'a'; KEY_BYTES_MAX];
    let over = vec![b'o'; KEY_BYTES_MAX + 1];
    assert!(items_of(Request::Put {
        key: at_limit,
        value: b"v".to_vec()
    })
    .is_ok());
    let refused = |request| {
        matches!(
            items_of(request),
            Err(SubmitError::Item(Failure { error: KvError::Invalid(t), .. }))
                if t.contains("exceeds the limit")
        )
    };
    assert!(refused(Request::PutMany(vec![
        (b"k".to_vec(), b"v".to_vec()),
        (over.clone(), b"v".to_vec())
    ])));
    assert!(refused(Request::Delete { key: over.clone() }));
    assert!(refused(Request::Get {
        key: over,
        read: ReadAt::LINEARIZABLE
    }));
}

/// A client core of node 1 on an insecure transport of its own (bound on 127.0.0.1), and the
/// runtime it runs on.
fn client_of_node_1() -> (tokio::runtime::Runtime, Arc<KvClient>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let transport = {
        let _context = rt.enter();
        nodedb_transport::Transport::bind(
            nodedb_wire::NodeId(1),
            "127.0.0.1:0".parse().expect("addr"),
            nodedb_transport::Credentials::Insecure,
            nodedb_transport::TransportConfig::default(),
        )
        .expect("bind")
    };
    let client = KvClient::new(Arc::new(transport), rt.handle().clone(), 1, 5);
    (rt, client)
}

/// A timed-out attempt wakes the others waiting on its node with the client's lock let go: a
/// woken attempt may run at once on the waking thread (`crate::inline`, for attempts this node
/// serves) and take the lock. Woken under it, two such attempts deadlocked the client (seen in
/// CI, session 22). The waker here records whether the lock was held when it ran.
#[test]
fn attempts_on_a_suspected_node_are_woken_with_the_lock_let_go() {
    use std::future::Future;
    use std::sync::Weak;
    use std::task::{Context, Wake, Waker};

    struct Probe {
        client: Mutex<Weak<KvClient>>,
        locked_when_woken: Mutex<Option<bool>>,
    }
    impl Wake for Probe {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            let client = self.client.lock().unwrap().upgrade().expect("client");
            let locked = client.state.try_lock().is_err();
            *self.locked_when_woken.lock().unwrap() = Some(locked);
        }
    }

    let (rt, client) = client_of_node_1();
    let _context = rt.enter();
    let probe = Arc::new(Probe {
        client: Mutex::new(Arc::downgrade(&client)),
        locked_when_woken: Mutex::new(None),
    });
    let waker = Waker::from(Arc::clone(&probe));
    let channel = client.state().suspect_channel(2);
    let mut waiting = std::pin::pin!(channel.notified());
    let polled = waiting.as_mut().poll(&mut Context::from_waker(&waker));
    assert!(polled.is_pending(), "an attempt waits on node 2");
    let timed_out = Err(KvError::Timeout {
        target: 2,
        timeout_ms: 300,
    });
    let key = (2, Lane::Propose, false);
    client.on_reply(key, Vec::new(), timed_out, Instant::now(), true);
    assert_eq!(
        *probe.locked_when_woken.lock().unwrap(),
        Some(false),
        "the waiting attempt was woken, with the client's lock let go"
    );
}

/// An attempt that got no answer makes the routing table stale, paced: the members' addresses
/// come with it, and a member restarted at another address is reached only once a fresh one
/// names it.
#[test]
fn an_unanswered_attempt_asks_for_fresh_routing_once_per_pause() {
    let (rt, client) = client_of_node_1();
    let _context = rt.enter();
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watch = |asked: &Arc<std::sync::atomic::AtomicUsize>| -> RoutingWatch {
        let asked = Arc::clone(asked);
        Box::new(move || {
            asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
    };
    client.watch_routing(watch(&asked));
    let key = (2, Lane::Propose, false);
    let refused = Err(KvError::NotLeader { hint: 3 });
    client.on_reply(key, Vec::new(), refused, Instant::now(), false);
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "an answer"
    );
    let unreachable = || {
        Err(KvError::Net(
            nodedb_transport::TransportError::Unreachable {
                addr: "127.0.0.2:9".parse().expect("addr"),
                reason: "connect timed out".into(),
            },
        ))
    };
    client.on_reply(key, Vec::new(), unreachable(), Instant::now(), false);
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(client.routing_stale());
    // A fresh table, then another unanswered attempt within the pause: not asked again.
    let route = crate::routing::Route {
        leader: 2,
        voters: vec![1, 2, 3],
    };
    let table = Routing::new(vec![1; crate::routing::VSHARDS], [(1, route)]).expect("routing");
    client.set_routing(table);
    client.watch_routing(watch(&asked));
    client.on_reply(key, Vec::new(), unreachable(), Instant::now(), false);
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1, "paced");
}
