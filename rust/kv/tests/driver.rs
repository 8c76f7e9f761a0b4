//! The threaded driver (`MultiRaft`) and its async API over a simulated network: real time,
//! real threads, bounded waits.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{factory, put, Readers};
use nodedb_kv::{KvCommand, KvResult, KvStateMachine, KV_STATE_MACHINE};
use nodedb_multiraft::error::SmError;
use nodedb_multiraft::log_sink::MemLogSink;
use nodedb_multiraft::network::SimNetwork;
use nodedb_multiraft::state_machine::{StateMachine, StateMachineKind};
use nodedb_multiraft::{
    GroupId, GroupRole, MultiRaft, MultiRaftConfig, NodeId, RaftError, Role, WalSink,
};

const T: Duration = Duration::from_secs(5);

struct Node {
    engine: Arc<MultiRaft>,
    readers: Readers,
}

fn fast_cfg(id: u64, dir: &std::path::Path) -> MultiRaftConfig {
    let mut cfg = MultiRaftConfig::new(NodeId(id), dir.join(format!("n{id}")));
    cfg.tick_interval = Duration::from_millis(20);
    cfg
}

fn start(net: &SimNetwork, cfg: MultiRaftConfig, wal: bool) -> Node {
    let readers: Readers = Arc::default();
    let sink: Box<dyn nodedb_multiraft::LogSink> = if wal {
        Box::new(
            WalSink::open(
                &cfg.data_dir.join("raft"),
                nodedb_wal::WalOptions::default(),
            )
            .expect("wal"),
        )
    } else {
        Box::new(MemLogSink::new())
    };
    let id = cfg.node_id;
    let engine = Arc::new(
        MultiRaft::start(
            cfg,
            sink,
            Arc::new(net.endpoint(id)),
            factory(Arc::clone(&readers)),
        )
        .expect("start"),
    );
    let inbound = engine.inbound();
    net.attach(id, move |f| inbound.deliver(f));
    Node { engine, readers }
}

async fn wait_leader(nodes: &[&Node], g: GroupId, deadline: Duration) -> Option<usize> {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        for (i, n) in nodes.iter().enumerate() {
            if let Ok(s) = n.engine.status(g, T).await {
                if s.role == Role::Leader {
                    return Some(i);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await; // polling status: no event exists
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_api_proposes_reads_and_fails_typed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = SimNetwork::new(7, 10_000);
    let nodes: Vec<Node> = (1..=3)
        .map(|i| start(&net, fast_cfg(i, dir.path()), true))
        .collect();
    let peers: Vec<NodeId> = (1..=3).map(NodeId).collect();
    for n in &nodes {
        for g in 1..=4 {
            n.engine
                .add_group(
                    GroupId(g),
                    GroupRole::Voter {
                        peers: peers.clone(),
                    },
                    KV_STATE_MACHINE,
                    T,
                )
                .await
                .expect("add group");
        }
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    let g = GroupId(1);
    let li = wait_leader(&refs, g, Duration::from_secs(10))
        .await
        .expect("leader elected");
    let leader = &nodes[li].engine;
    // Single and batch proposals resolve after apply with per-command results.
    let out = leader.propose(g, put("a", b"1"), T).await.expect("propose");
    assert_eq!(
        KvResult::decode(&out.results[0]),
        Ok(KvResult::Ok { value: None })
    );
    let cas = KvCommand::Cas {
        key: b"a".to_vec(),
        expected: Some(b"0".to_vec()),
        value: b"2".to_vec(),
    }
    .encode();
    let out2 = leader
        .propose_batch(g, vec![put("b", b"1"), cas], T)
        .await
        .expect("batch");
    assert!(out2.index > out.index);
    assert_eq!(
        KvResult::decode(&out2.results[1]),
        Ok(KvResult::CasMismatch {
            current: Some(b"1".to_vec())
        })
    );
    // ReadIndex on the leader, then a local read sees the write.
    let ri = leader.read_index(g, T).await.expect("read index");
    assert!(ri >= out2.index);
    let reader = nodes[li].readers.lock().expect("lock")[&g].clone();
    assert_eq!(reader.get(b"b"), Some(b"1".to_vec()));
    // A follower refuses with NotLeader carrying the hint.
    let fi = (li + 1) % 3;
    match nodes[fi].engine.propose(g, put("x", b"1"), T).await {
        Err(RaftError::NotLeader { leader_hint, .. }) => {
            assert_eq!(leader_hint, Some(NodeId(li as u64 + 1)))
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
    // ReadIndex also works from a follower (forwarded to the leader).
    let fri = nodes[fi]
        .engine
        .read_index(g, T)
        .await
        .expect("follower read index");
    assert!(fri >= out2.index);
    assert!(matches!(
        leader.propose(GroupId(99), put("x", b"1"), T).await,
        Err(RaftError::GroupNotFound { .. })
    ));
    // Commands meant for one state machine never reach a group that runs another.
    let kv = Some(KV_STATE_MACHINE);
    let as_kv = leader.propose_for(kv, g, vec![put("k", b"1")], T).await;
    assert!(as_kv.is_ok(), "{as_kv:?}");
    let python = Some(StateMachineKind::new(2, "Python"));
    match leader.propose_for(python, g, vec![put("k", b"2")], T).await {
        Err(RaftError::Invalid { reason }) => assert!(reason.contains("group 1"), "{reason}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(
        reader.get(b"k"),
        Some(b"1".to_vec()),
        "the refused command was not applied"
    );
    // 200 concurrent proposals all resolve, with group-committed fsyncs.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let e = Arc::clone(leader);
        tasks.push(tokio::spawn(async move {
            e.propose(g, put(&format!("c{i}"), &[0; 100]), T).await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("concurrent propose");
    }
    let m = leader.metrics();
    let fsyncs = nodedb_multiraft::Metrics::get(&m.fsyncs);
    let proposals = nodedb_multiraft::Metrics::get(&m.proposals);
    assert!(
        fsyncs < proposals,
        "fsyncs {fsyncs} < proposals {proposals}"
    );
    // Shutdown fails what is pending/queued with Stopped, never hangs.
    let e = Arc::clone(leader);
    let pending = tokio::spawn(async move { e.propose(GroupId(2), put("z", b"1"), T).await });
    for n in &nodes {
        n.engine.shutdown();
    }
    let r = pending.await.expect("join");
    assert!(
        matches!(
            r,
            Ok(_)
                | Err(RaftError::Stopped { .. })
                | Err(RaftError::NotLeader { .. })
                | Err(RaftError::LeadershipLost { .. })
        ),
        "{r:?}"
    );
    assert!(matches!(
        nodes[0].engine.propose(g, put("q", b"1"), T).await,
        Err(RaftError::Stopped { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_elects_new_leader_within_two_seconds_with_default_ticks() {
    // Default tick/election settings (100 ms, 8 ticks): the failover target is 2 s.
    let dir = tempfile::tempdir().expect("tempdir");
    let net = SimNetwork::new(9, 10_000);
    let mut nodes: Vec<Option<Node>> = (1..=3)
        .map(|i| {
            Some(start(
                &net,
                MultiRaftConfig::new(NodeId(i), dir.path().join(format!("n{i}"))),
                false,
            ))
        })
        .collect();
    let g = GroupId(1);
    add_founding_group(&nodes, g).await;
    let refs: Vec<&Node> = nodes.iter().flatten().collect();
    let li = wait_leader(&refs, g, Duration::from_secs(10))
        .await
        .expect("leader");
    refs[li]
        .engine
        .propose(g, put("before", b"1"), T)
        .await
        .expect("commit");
    // Kill the leader: no more frames in or out, engine stopped.
    let dead = NodeId(li as u64 + 1);
    net.set_down(dead, true);
    net.detach(dead);
    let killed = Instant::now();
    if let Some(n) = nodes[li].take() {
        n.engine.shutdown();
    }
    let survivors: Vec<&Node> = nodes.iter().flatten().collect();
    // First committed proposal after the kill.
    let committed = loop {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "no failover in 10 s"
        );
        let mut done = None;
        for n in &survivors {
            if let Ok(o) = n
                .engine
                .propose(g, put("after", b"1"), Duration::from_millis(500))
                .await
            {
                done = Some(o);
                break;
            }
        }
        if done.is_some() {
            break killed.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        committed < Duration::from_secs(2),
        "failover took {committed:?}"
    );
    for n in &survivors {
        let reader = n.readers.lock().expect("lock")[&g].clone();
        let until = Instant::now() + T;
        while reader.get(b"after").is_none() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            reader.get(b"before"),
            Some(b"1".to_vec()),
            "acknowledged write kept"
        );
    }
}

/// A state machine that blocks its first apply until released: it parks the driver thread so
/// the bounded queues in front of it fill deterministically.
struct Gate {
    entered: std::sync::mpsc::SyncSender<()>,
    release: Arc<Mutex<std::sync::mpsc::Receiver<()>>>,
    kv: KvStateMachine,
    blocked_once: bool,
}

impl StateMachine for Gate {
    fn apply_batch(
        &mut self,
        commands: &[nodedb_multiraft::state_machine::Command<'_>],
    ) -> Result<Vec<Vec<u8>>, nodedb_multiraft::error::SmError> {
        if !self.blocked_once && !commands.is_empty() {
            self.blocked_once = true;
            let _ = self.entered.send(());
            let _ = self.release.lock().expect("lock").recv();
        }
        self.kv.apply_batch(commands)
    }
    fn commit_broadcast_wanted(&self) -> bool {
        self.kv.commit_broadcast_wanted()
    }
    fn snapshot(&self) -> Result<Vec<u8>, SmError> {
        self.kv.snapshot()
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), SmError> {
        self.kv.restore(data)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queues_answer_busy_and_drop_inbound_frames_with_a_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = SimNetwork::new(3, 100);
    let mut cfg = fast_cfg(1, dir.path());
    cfg.command_queue_capacity = 2;
    cfg.inbound_queue_capacity = 1;
    let (entered_tx, entered_rx) = std::sync::mpsc::sync_channel(1);
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let factory = Box::new(
        move |_g: GroupId, _k: StateMachineKind| -> Result<Box<dyn StateMachine>, SmError> {
            Ok(Box::new(Gate {
                entered: entered_tx.clone(),
                release: Arc::clone(&release_rx),
                kv: KvStateMachine::new(),
                blocked_once: false,
            }))
        },
    );
    let engine = Arc::new(
        MultiRaft::start(
            cfg,
            Box::new(MemLogSink::new()),
            Arc::new(net.endpoint(NodeId(1))),
            factory,
        )
        .expect("start"),
    );
    let g = GroupId(1);
    engine
        .add_group(
            g,
            GroupRole::Voter {
                peers: vec![NodeId(1)],
            },
            KV_STATE_MACHINE,
            T,
        )
        .await
        .expect("add");
    engine.campaign(g, T).await.expect("campaign");
    // The first proposal parks the driver inside apply.
    let e = Arc::clone(&engine);
    let first = tokio::spawn(async move { e.propose(g, put("a", b"1"), T).await });
    tokio::task::spawn_blocking(move || entered_rx.recv_timeout(T))
        .await
        .expect("join")
        .expect("driver entered apply");
    // Command queue (capacity 2): two queue, the third is refused at once with Busy. The
    // callback form submits synchronously, so the order is exact.
    let mut queued = Vec::new();
    for i in 0..2 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        engine.propose_batch_with(g, vec![put(&format!("q{i}"), b"1")], tx.into());
        queued.push(rx);
    }
    let (tx, mut third) = tokio::sync::oneshot::channel();
    engine.propose_batch_with(g, vec![put("third", b"1")], tx.into());
    assert!(
        matches!(third.try_recv(), Ok(Err(RaftError::Busy { .. }))),
        "a full command queue answers Busy at once"
    );
    // Inbound queue (capacity 1): one frame queues, the rest are dropped and counted.
    let inbound = engine.inbound();
    let hb = nodedb_multiraft::Frame::Batch(nodedb_multiraft::codec::RaftBatch {
        from: NodeId(2),
        messages: Vec::new(),
    });
    for _ in 0..10 {
        inbound.deliver(hb.clone());
    }
    let m = engine.metrics();
    assert_eq!(nodedb_multiraft::Metrics::get(&m.inbound_dropped_full), 9);
    // Release the driver: everything queued completes.
    release_tx.send(()).expect("release");
    first.await.expect("join").expect("first commits");
    for q in queued {
        tokio::time::timeout(T, q)
            .await
            .expect("answered in time")
            .expect("reply sent")
            .expect("queued proposals commit");
    }
    engine.shutdown();
}

/// A log whose fsync starts failing on demand (a dying disk).
struct FailingSink {
    inner: MemLogSink,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl nodedb_multiraft::LogSink for FailingSink {
    fn append(
        &mut self,
        records: &[nodedb_multiraft::log_sink::LogRecord],
    ) -> Result<(), nodedb_multiraft::error::SinkError> {
        self.inner.append(records)
    }
    fn sync(&mut self) -> Result<(), nodedb_multiraft::error::SinkError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(nodedb_multiraft::error::SinkError::Backend(
                "fdatasync: EIO".into(),
            ));
        }
        self.inner.sync()
    }
    fn compact(
        &mut self,
        floors: &[(GroupId, u64)],
    ) -> Result<(), nodedb_multiraft::error::SinkError> {
        self.inner.compact(floors)
    }
    fn forget_group(&mut self, group: GroupId) -> Result<(), nodedb_multiraft::error::SinkError> {
        self.inner.forget_group(group)
    }
    fn take_replay(
        &mut self,
    ) -> Result<Vec<nodedb_multiraft::log_sink::LogRecord>, nodedb_multiraft::error::SinkError>
    {
        self.inner.take_replay()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fsync_stops_the_engine_and_every_request_gets_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = SimNetwork::new(5, 100);
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sink = FailingSink {
        inner: MemLogSink::new(),
        fail: Arc::clone(&fail),
    };
    let readers: Readers = Arc::default();
    let engine = MultiRaft::start(
        fast_cfg(1, dir.path()),
        Box::new(sink),
        Arc::new(net.endpoint(NodeId(1))),
        factory(readers),
    )
    .expect("start");
    let g = GroupId(1);
    engine
        .add_group(
            g,
            GroupRole::Voter {
                peers: vec![NodeId(1)],
            },
            KV_STATE_MACHINE,
            T,
        )
        .await
        .expect("add");
    engine.campaign(g, T).await.expect("campaign");
    engine
        .propose(g, put("ok", b"1"), T)
        .await
        .expect("healthy commit");
    // A proposal sent after the round that answered the first one finished (that round
    // noted the leadership last), then a commit sent now, earns a lease: reads are answered
    // off the driver while it holds.
    engine
        .propose(g, put("ok", b"2"), T)
        .await
        .expect("healthy commit");
    let earned = Instant::now();
    engine
        .propose(g, put("ok", b"3"), T)
        .await
        .expect("healthy commit");
    let lease = nodedb_multiraft::ReadLease {
        from: earned,
        until: earned + Duration::from_secs(60),
    };
    assert!(
        engine.lease_read(g, lease, Instant::now()),
        "a healthy leader reads locally"
    );
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    // The proposal's entry cannot be made durable here: it must not be acknowledged. Raft
    // took it (a follower may hold it), so its outcome is unknown, never a plain failure.
    match engine.propose(g, put("lost", b"1"), T).await {
        Err(RaftError::LeadershipLost { .. }) => {}
        other => panic!("expected LeadershipLost (outcome unknown), got {other:?}"),
    }
    assert!(engine.stopped_reason().is_some_and(|r| r.contains("fatal")));
    // A host watching the engine learns it at once (it exits rather than lingers).
    let watched = tokio::time::timeout(T, engine.stopped()).await;
    assert!(watched.is_ok_and(|r| r.contains("fatal")));
    assert!(matches!(
        engine.status(g, T).await,
        Err(RaftError::Stopped { .. })
    ));
    assert!(
        !engine.lease_read(g, lease, Instant::now()),
        "a stopped engine answers no read from its lease"
    );
}

/// Issue 13 (failover tail): `wait_leader` answers as soon as a node knows a leader that is not
/// the one its caller could not reach: a request parked on a follower during an election is
/// sent on to the new leader without polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_leader_names_the_new_leader_once_it_is_known() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = SimNetwork::new(11, 10_000);
    let mut nodes: Vec<Option<Node>> = (1..=3)
        .map(|i| Some(start(&net, fast_cfg(i, dir.path()), false)))
        .collect();
    let g = GroupId(1);
    add_founding_group(&nodes, g).await;
    let refs: Vec<&Node> = nodes.iter().flatten().collect();
    let li = wait_leader(&refs, g, Duration::from_secs(10))
        .await
        .expect("leader");
    let old = NodeId(li as u64 + 1);
    refs[li]
        .engine
        .propose(g, put("x", b"1"), T)
        .await
        .expect("commit");
    let follower = (li + 1) % 3;
    // Every node knows the leader (a heartbeat reached them all).
    for n in &refs {
        let known = n.engine.wait_leader(g, &[], T).await;
        assert_eq!(known, Some(old));
    }
    // Asked to avoid the leader while it is alive: nothing within the bound.
    let none = refs[follower]
        .engine
        .wait_leader(g, &[old], Duration::from_millis(200))
        .await;
    assert_eq!(none, None);
    net.set_down(old, true);
    net.detach(old);
    if let Some(n) = nodes[li].take() {
        n.engine.shutdown();
    }
    let survivor = nodes[follower].as_ref().expect("up");
    // Even avoiding every node: one elected after the call (a later term) is named.
    let everyone: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let new = survivor
        .engine
        .wait_leader(g, &everyone, Duration::from_secs(10))
        .await
        .expect("a new leader within 10 s");
    assert_ne!(new, old);
    let leading = nodes[new.0 as usize - 1].as_ref().expect("alive");
    let status = leading.engine.status(g, T).await.expect("status");
    assert_eq!(status.role, Role::Leader);
    assert_eq!(survivor.engine.leader(g), Some(new));
}

/// Group `g` on every node given, all of them founding voters.
async fn add_founding_group(nodes: &[Option<Node>], g: GroupId) {
    let peers: Vec<NodeId> = (1..=nodes.len() as u64).map(NodeId).collect();
    for n in nodes.iter().flatten() {
        n.engine
            .add_group(
                g,
                GroupRole::Voter {
                    peers: peers.clone(),
                },
                KV_STATE_MACHINE,
                T,
            )
            .await
            .expect("add");
    }
}

/// A reply callback runs on the driver thread; one that releases the engine's last handle
/// there must not make the driver wait for (join) itself: it stops after its round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_handle_dropped_on_the_driver_thread_stops_it_without_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = SimNetwork::new(7, 10_000);
    let node = start(&net, fast_cfg(1, dir.path()), false);
    node.engine
        .add_group(
            GroupId(1),
            GroupRole::Voter {
                peers: vec![NodeId(1)],
            },
            KV_STATE_MACHINE,
            T,
        )
        .await
        .expect("add group");
    node.engine.campaign(GroupId(1), T).await.expect("campaign");
    assert!(wait_leader(&[&node], GroupId(1), T).await.is_some());
    let Node { engine, .. } = node;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let handle = Arc::clone(&engine);
    engine.propose_for_with(
        Some(KV_STATE_MACHINE),
        GroupId(1),
        vec![put("k", b"v")],
        nodedb_multiraft::core::Reply::new(move |r: Result<_, RaftError>| {
            let on = std::thread::current().name().map(str::to_string);
            drop(handle); // the last handle: `shutdown` runs here, on the driver thread
            let _ = done_tx.send((r.is_ok(), on));
        }),
    );
    drop(engine);
    let (ok, thread) = tokio::task::spawn_blocking(move || done_rx.recv_timeout(T))
        .await
        .expect("join")
        .expect("the callback finished: dropping the engine there did not panic or block");
    assert!(ok, "the proposal committed");
    assert_eq!(
        thread.as_deref(),
        Some("multiraft-1"),
        "ran on the driver thread"
    );
}
