//! A client inside a node reaches the groups this node leads without the network: one node
//! over a real transport with no peer registered (not even itself), so any attempt that left
//! the process would fail; with `serve_locally` writes and reads at every level are answered by
//! the node's own KvServer (a lease read right after a commit without a ReadIndex round).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use nodedb_kv::client::{Answer, Completion, Failure, KvClient, KvError, ReadAt, Request};
use nodedb_kv::groups::KvGroups;
use nodedb_kv::routing::{Route, Routing, VSHARDS};
use nodedb_kv::serve::KvServer;
use nodedb_kv::KV_STATE_MACHINE;
use nodedb_multiraft::error::SmError;
use nodedb_multiraft::state_machine::{StateMachine, StateMachineKind};
use nodedb_multiraft::{
    GroupId, GroupRole, MultiRaft, MultiRaftConfig, NodeId, Role, TransportNetwork, WalSink,
};
use nodedb_wire::ReadLevel;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(10);
const G: GroupId = GroupId(1);

type Outcome = Result<Answer, Failure>;

/// Hands a call's outcome to the test.
struct ToTest(mpsc::UnboundedSender<Outcome>);

impl Completion for ToTest {
    fn complete(self: Box<Self>, outcome: Outcome) {
        let _ = self.0.send(outcome);
    }
}

/// Hands a call's outcome to the test with the name of the thread that completed it.
struct ToTestFrom(mpsc::UnboundedSender<(Outcome, Option<String>)>);

impl Completion for ToTestFrom {
    fn complete(self: Box<Self>, outcome: Outcome) {
        let thread = std::thread::current().name().map(str::to_string);
        let _ = self.0.send((outcome, thread));
    }
}

async fn call(client: &Arc<KvClient>, request: Request, timeout: Duration) -> Outcome {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let deadline = Instant::now() + timeout;
    let flush = client
        .submit(request, deadline, Box::new(ToTest(tx)))
        .expect("submitted");
    if flush {
        client.flush();
    }
    tokio::time::timeout(T, rx.recv())
        .await
        .expect("answered in time")
        .expect("completion called")
}

/// One node over a real transport with no peer registered, leading KV group `G`.
async fn one_node(
    dir: &std::path::Path,
) -> (Arc<nodedb_transport::Transport>, KvGroups, Arc<MultiRaft>) {
    let transport = common::insecure_transport(1, "127.0.0.1");
    let groups = KvGroups::default();
    let factory_groups = groups.clone();
    let factory = Box::new(
        move |g: GroupId, _k: StateMachineKind| -> Result<Box<dyn StateMachine>, SmError> {
            Ok(Box::new(factory_groups.create(g)))
        },
    );
    let cfg = MultiRaftConfig::new(NodeId(1), dir.join("n1"));
    let sink = WalSink::open(
        &cfg.data_dir.join("raft"),
        nodedb_wal::WalOptions::default(),
    )
    .expect("wal");
    let net = TransportNetwork::new(Arc::clone(&transport), Handle::current(), 1024);
    let engine = Arc::new(MultiRaft::start(cfg, Box::new(sink), net, factory).expect("start"));
    TransportNetwork::attach_inbound(&transport, engine.inbound());
    let role = GroupRole::Voter {
        peers: vec![NodeId(1)],
    };
    engine
        .add_group(G, role, KV_STATE_MACHINE, T)
        .await
        .expect("add group");
    let until = Instant::now() + T;
    while engine.status(G, T).await.map(|s| s.role) != Ok(Role::Leader) {
        assert!(Instant::now() < until, "no leader within {T:?}");
        tokio::time::sleep(Duration::from_millis(10)).await; // no leadership event to await
    }
    (transport, groups, engine)
}

/// The KV server of `engine`'s node.
fn kv_server(
    engine: &Arc<MultiRaft>,
    groups: &KvGroups,
    lease: bool,
    quota_bytes: u64,
) -> Arc<KvServer> {
    Arc::new(KvServer::new(
        Arc::downgrade(engine),
        groups.clone(),
        Handle::current(),
        nodedb_kv::serve::ServeOptions { lease, quota_bytes },
    ))
}

/// A client of node 1 whose routing puts every vShard in group `G`, led by node 1.
fn routed_client(transport: &Arc<nodedb_transport::Transport>, client_id: u64) -> Arc<KvClient> {
    let client = KvClient::new(Arc::clone(transport), Handle::current(), 1, client_id);
    let route = Route {
        leader: 1,
        voters: vec![1],
    };
    client.set_routing(Routing::new(vec![1; VSHARDS], [(1, route)]).expect("routing"));
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_inside_a_node_serves_its_own_groups_without_the_network() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (transport, groups, engine) = one_node(dir.path()).await;
    let server = kv_server(&engine, &groups, true, 0);
    let client = routed_client(&transport, 77);
    let put = || Request::Put {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
    };

    // Without its node's server the request would have to leave the process, and this
    // transport knows no peer (itself included): it fails at its deadline.
    let short = Duration::from_millis(300);
    match call(&client, put(), short).await {
        Err(Failure {
            error: KvError::Unavailable(text),
            ..
        }) => assert!(text.contains("unknown peer"), "{text}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }

    client.serve_locally(&server);
    let written = call(&client, put(), T).await.expect("put");
    assert_eq!(written, Answer::Written { refused: None });
    // The write committed on the engine's driver thread, and its reply ran to the caller's
    // completion right there: no runtime worker in between (crate::inline).
    let (tx, mut rx) = mpsc::unbounded_channel();
    let deadline = Instant::now() + T;
    if client
        .submit(put(), deadline, Box::new(ToTestFrom(tx)))
        .expect("submitted")
    {
        client.flush();
    }
    let (outcome, thread) = tokio::time::timeout(T, rx.recv())
        .await
        .expect("answered in time")
        .expect("completion called");
    assert_eq!(outcome.expect("put"), Answer::Written { refused: None });
    assert_eq!(
        thread.as_deref(),
        Some("multiraft-1"),
        "completed on the driver thread"
    );
    let get = Request::Get {
        key: b"k".to_vec(),
        read: ReadAt::LINEARIZABLE,
    };
    let read = call(&client, get, T).await.expect("get");
    assert_eq!(read, Answer::Value(Some(b"v".to_vec())));
    // Reads right after this leader's own commit: answered from its lease, with no quorum
    // round and no request to the engine's driver (counted as local lease reads).
    let counts = || {
        let m = engine.metrics();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        (
            load(&m.read_index_requests),
            load(&m.read_index_leased),
            load(&m.read_lease_local),
        )
    };
    call(&client, put(), T).await.expect("put");
    let (requests, leased, local) = counts();
    let get_at = |level, max_staleness_s| Request::Get {
        key: b"k".to_vec(),
        read: ReadAt {
            level,
            max_staleness_s,
        },
    };
    for level in [ReadLevel::Lease, ReadLevel::Linearizable] {
        let read = call(&client, get_at(level, 1.0), T).await.expect("get");
        assert_eq!(read, Answer::Value(Some(b"v".to_vec())));
    }
    assert_eq!(
        counts(),
        (requests, leased, local + 2),
        "reads inside the lease take no quorum round and no trip through the driver"
    );
    let follower = get_at(ReadLevel::Follower, 5.0);
    let read = call(&client, follower, T).await.expect("follower get");
    assert_eq!(read, Answer::Value(Some(b"v".to_vec())));

    // The same reads asked in the caller's own thread (how `node.kv` reads): answered there,
    // with nothing queued, no request and no completion; the lease decides as above.
    let sent = client.requests_sent();
    let (_, _, local) = counts();
    let many = Request::GetMany {
        keys: vec![b"k".to_vec(), b"absent".to_vec()],
        read: ReadAt::LINEARIZABLE,
    };
    assert_eq!(
        client.read_here(&many),
        Some(Answer::Values(vec![Some(b"v".to_vec()), None]))
    );
    assert_eq!(
        client.read_here(&get_at(ReadLevel::Follower, 5.0)),
        Some(Answer::Value(Some(b"v".to_vec())))
    );
    assert_eq!(
        client.read_here(&put()),
        None,
        "a write is never answered here"
    );
    assert_eq!(client.requests_sent(), sent);
    assert_eq!(
        counts().2,
        local + 1,
        "the linearizable read was a lease read"
    );
    // Without a server in its process, or when that server has no lease to read in (leases
    // off), a client sends its reads as requests.
    let other = routed_client(&transport, 78);
    let linearizable = get_at(ReadLevel::Linearizable, 0.0);
    assert_eq!(other.read_here(&linearizable), None, "no server here");
    let no_lease = kv_server(&engine, &groups, false, 0);
    other.serve_locally(&no_lease);
    assert_eq!(other.read_here(&linearizable), None, "no lease to read in");
    assert_eq!(
        call(&other, linearizable, T).await.expect("get by request"),
        Answer::Value(Some(b"v".to_vec()))
    );

    let reader = groups.reader(G).expect("a KV group here");
    assert_eq!(
        reader.get(b"k"),
        Some(b"v".to_vec()),
        "applied by the engine"
    );

    engine.shutdown();
    transport.close().await;
}

/// A group at its quota refuses writes other than deletes, naming the group and the quota,
/// and proposes nothing of such a request; reads and deletes go on, and once deletes bring the
/// group below its quota writes are taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_at_its_quota_takes_deletes_and_reads_but_no_other_write() {
    const QUOTA: u64 = 64 << 10;
    let dir = tempfile::tempdir().expect("tempdir");
    let (transport, groups, engine) = one_node(dir.path()).await;
    let server = kv_server(&engine, &groups, true, QUOTA);
    let client = routed_client(&transport, 79);
    client.serve_locally(&server);
    let put = |i: u32| Request::Put {
        key: i.to_le_bytes().to_vec(),
        value: vec![b'v'; 4096],
    };
    let reader = groups.reader(G).expect("a KV group here");
    let mut written = 0u32;
    let refusal = loop {
        assert!(written < 64, "no refusal after {written} writes of 4 KiB");
        match call(&client, put(written), T).await {
            Ok(_) => written += 1,
            Err(failure) => break failure,
        }
    };
    assert!(reader.usage_bytes() as u64 >= QUOTA);
    assert!(
        (reader.usage_bytes() as u64) < QUOTA + 4200,
        "crossed by one write at most"
    );
    match &refusal.error {
        KvError::Net(nodedb_transport::TransportError::Remote { code, message }) => {
            assert_eq!(code, nodedb_kv::client::error::QUOTA_EXCEEDED);
            assert!(
                message.contains("group 1") && message.contains(&QUOTA.to_string()),
                "{message}"
            );
        }
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
    let applied = reader.applied_index();
    let cas = Request::Cas {
        key: 0u32.to_le_bytes().to_vec(),
        expected: None,
        value: b"x".to_vec(),
    };
    assert!(call(&client, cas, T).await.is_err(), "a CAS is a write too");
    assert_eq!(
        reader.applied_index(),
        applied,
        "nothing refused was proposed"
    );
    let get = Request::Get {
        key: 0u32.to_le_bytes().to_vec(),
        read: ReadAt::LINEARIZABLE,
    };
    assert_eq!(
        call(&client, get, T).await.expect("a read"),
        Answer::Value(Some(vec![b'v'; 4096]))
    );
    for i in 0..4u32 {
        let delete = Request::Delete {
            key: i.to_le_bytes().to_vec(),
        };
        call(&client, delete, T).await.expect("a delete");
    }
    assert!((reader.usage_bytes() as u64) < QUOTA);
    call(&client, put(1000), T)
        .await
        .expect("below the quota again: written");

    // Deletes of absent keys from a session that never acknowledges: each caches a result,
    // so they too are refused once the group holds twice its quota.
    let mut seq = 0u64;
    let refusal = loop {
        assert!(seq < 100_000, "deletes never refused");
        let commands: Vec<std::borrow::Cow<'_, [u8]>> = (0..256)
            .map(|i: u64| {
                let delete = nodedb_kv::command::KvCommand::Delete {
                    key: (1_000_000 + seq + i).to_le_bytes().to_vec(),
                };
                let cmd = nodedb_kv::command::KvCommand::encode_session(
                    0xDE1,
                    seq + i + 1,
                    0,
                    &delete.encode(),
                );
                std::borrow::Cow::Owned(cmd)
            })
            .collect();
        seq += 256;
        let request = nodedb_wire::KvRequest::ProposeMany(nodedb_wire::ProposeMany {
            groups: vec![G.0; commands.len()],
            commands,
            timeout_ms: 5000,
            avoid: None,
            caps: 0,
        });
        match server.serve(&request.encode().expect("encodes")).await {
            Ok(_) => {}
            Err(refused) => break refused,
        }
    };
    assert_eq!(refusal.code, nodedb_kv::client::error::QUOTA_EXCEEDED);
    assert!(
        refusal.message.contains("deletes are refused too"),
        "{}",
        refusal.message
    );
    let used = reader.usage_bytes() as u64;
    assert!((2 * QUOTA..2 * QUOTA + 256 * 128).contains(&used), "{used}");
    engine.shutdown();
    transport.close().await;
}

/// A read whose values exceed one reply is answered over several: each reply carries what it
/// has room for and names the rest (`ovr`), which the client reads again at once. One call's
/// 9 x 8 MiB used to be refused ("read these keys in several calls"), and so were independent
/// calls whose reads the client had put in one request. A requester that does not take a
/// partial answer is still refused with the reason (before that, such a read was copied whole,
/// its size times the count of its keys, and then failed as a bare stream reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_values_exceed_one_reply_is_answered_over_several() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (transport, groups, engine) = one_node(dir.path()).await;
    let server = kv_server(&engine, &groups, true, 0);
    let client = routed_client(&transport, 80);
    client.serve_locally(&server);
    let big = vec![b'b'; 8 << 20];
    let put = Request::Put {
        key: b"big".to_vec(),
        value: big.clone(),
    };
    call(&client, put, T).await.expect("put");
    let many = |n: usize| Request::GetMany {
        keys: vec![b"big".to_vec(); n],
        read: ReadAt::LINEARIZABLE,
    };
    let sent = client.requests_sent();
    assert_eq!(
        call(&client, many(7), T).await.expect("56 MiB fit"),
        Answer::Values(vec![Some(big.clone()); 7])
    );
    assert_eq!(client.requests_sent() - sent, 1);
    let sent = client.requests_sent();
    assert_eq!(
        call(&client, many(20), T)
            .await
            .expect("160 MiB in three replies"),
        Answer::Values(vec![Some(big.clone()); 20])
    );
    assert_eq!(client.requests_sent() - sent, 3);
    // Independent calls the client sends in one request each get their value.
    let calls: Vec<_> = (0..12)
        .map(|_| {
            let client = Arc::clone(&client);
            tokio::spawn(async move { call(&client, many(1), T).await })
        })
        .collect();
    for answer in calls {
        let answer = answer.await.expect("the call's task");
        assert_eq!(
            answer.expect("one value each"),
            Answer::Values(vec![Some(big.clone())])
        );
    }
    // A requester without the capability: refused whole, with the reason.
    let request = nodedb_wire::KvRequest::ReadMany(nodedb_wire::ReadMany {
        groups: vec![1; 9],
        keys: vec![std::borrow::Cow::Borrowed(&b"big"[..]); 9],
        level: ReadLevel::Linearizable,
        stale_s: 0.0,
        timeout_ms: 10_000,
        caps: nodedb_wire::KV_CAP_VSHARD_REDIRECTS,
    });
    match server.serve(&request.encode().expect("encode")).await {
        Err(refusal) => {
            assert_eq!(refusal.code, nodedb_kv::client::error::INVALID_REQUEST);
            assert!(
                refusal.message.contains("several calls"),
                "{}",
                refusal.message
            );
        }
        Ok(_) => panic!("a read over one reply answered to a requester without KV_CAP_READ_OVER"),
    }
    engine.shutdown();
    transport.close().await;
}
