//! Copies of a proposed session command ride on its entry: three engines over the simulated
//! network, the leader's followers cut off so that its entry stays in flight while copies come.

use super::*;
use crate::command::{KvCommand, KvResult};
use crate::groups::KvGroups;
use nodedb_multiraft::log_sink::MemLogSink;
use nodedb_multiraft::network::SimNetwork;
use nodedb_multiraft::state_machine::{StateMachine, StateMachineKind};
use nodedb_multiraft::{GroupRole, MultiRaftConfig, NodeId, Role};

const G: GroupId = GroupId(1);
const T: Duration = Duration::from_secs(10);

fn put(key: &[u8]) -> Vec<u8> {
    KvCommand::Put {
        key: key.to_vec(),
        value: b"v".to_vec(),
    }
    .encode()
}

struct Cluster {
    net: SimNetwork,
    engines: Vec<Arc<MultiRaft>>,
    groups: Vec<KvGroups>,
    leader: usize,
}

impl Cluster {
    async fn start(dir: &std::path::Path) -> Cluster {
        let net = SimNetwork::new(11, 10_000);
        let (mut engines, mut all_groups) = (Vec::new(), Vec::new());
        for id in 1..=3 {
            let groups = KvGroups::default();
            all_groups.push(groups.clone());
            let factory = Box::new(
                move |g: GroupId, _k: StateMachineKind| -> Result<Box<dyn StateMachine>, _> {
                    Ok(Box::new(groups.create(g)) as Box<dyn StateMachine>)
                },
            );
            let cfg = MultiRaftConfig::new(NodeId(id), dir.join(format!("n{id}")));
            let endpoint = Arc::new(net.endpoint(NodeId(id)));
            let engine = Arc::new(
                MultiRaft::start(cfg, Box::new(MemLogSink::new()), endpoint, factory)
                    .expect("start"),
            );
            let inbound = engine.inbound();
            net.attach(NodeId(id), move |f| inbound.deliver(f));
            engines.push(engine);
        }
        let peers: Vec<NodeId> = (1..=3).map(NodeId).collect();
        for engine in &engines {
            let role = GroupRole::Voter {
                peers: peers.clone(),
            };
            engine
                .add_group(G, role, KV_STATE_MACHINE, T)
                .await
                .expect("add group");
        }
        let until = Instant::now() + T;
        let leader = loop {
            let mut found = None;
            for (i, engine) in engines.iter().enumerate() {
                if engine.status(G, T).await.map(|s| s.role) == Ok(Role::Leader) {
                    found = Some(i);
                }
            }
            if let Some(i) = found {
                break i;
            }
            assert!(Instant::now() < until, "no leader within {T:?}");
            tokio::time::sleep(Duration::from_millis(10)).await; // no leadership event to await
        };
        Cluster {
            net,
            engines,
            groups: all_groups,
            leader,
        }
    }

    fn batcher(&self) -> Arc<Batcher> {
        let leader = &self.engines[self.leader];
        Arc::new(Batcher::new(GroupCtx {
            group: G,
            engine: Arc::downgrade(leader),
            runtime: Handle::current(),
            clocks: Arc::new(Mutex::new(Freshness::new(
                Duration::from_millis(500),
                Instant::now(),
            ))),
            groups: self.groups[self.leader].clone(),
        }))
    }

    /// Cuts the leader off from both followers (or reconnects them).
    fn followers_down(&self, down: bool) {
        for i in (0..3).filter(|&i| i != self.leader) {
            self.net.set_down(NodeId(i as u64 + 1), down);
        }
    }

    async fn last_index(&self) -> u64 {
        let engine = &self.engines[self.leader];
        engine.status(G, T).await.expect("status").last_index
    }
}

fn is_ok(result: &[u8]) -> bool {
    matches!(KvResult::decode(result), Ok(KvResult::Ok { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_proposed_command_takes_its_answer_instead_of_an_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::start(dir.path()).await;
    let batcher = cluster.batcher();
    let warm = batcher.submit(vec![put(b"warm")], Instant::now() + T);
    assert!(warm.outcome().await.is_ok_and(|r| is_ok(&r[0])));
    let before = cluster.last_index().await;

    cluster.followers_down(true);
    let write = KvCommand::encode_session(7, 1, 0, &put(b"k"));
    // The first copy's requester gives up (its attempt timed out) while the entry is in flight.
    let first = batcher.submit(
        vec![write.clone()],
        Instant::now() + Duration::from_millis(30),
    );
    assert!(
        matches!(first.outcome().await, Err(RaftError::Timeout { .. })),
        "no quorum: the requester's deadline passes"
    );
    let all_riding = batcher.submit(vec![write.clone()], Instant::now() + T);
    let mixed = batcher.submit(vec![put(b"other"), write.clone()], Instant::now() + T);
    cluster.followers_down(false);

    let all_riding = all_riding.outcome().await.expect("answered");
    assert_eq!(all_riding.len(), 1);
    assert!(is_ok(&all_riding[0]), "the first copy's answer");
    let mixed = mixed.outcome().await.expect("answered");
    assert_eq!(mixed.len(), 2, "in the share's order");
    assert!(mixed.iter().all(|r| is_ok(r)));
    assert_eq!(
        cluster.last_index().await,
        before + 2,
        "one entry for the write and its copies, one for the mixed share's own command"
    );
    assert!(
        batcher.queue.lock().expect("queue").proposed.is_empty(),
        "answered entries are forgotten"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_riding_on_an_entry_whose_leader_stepped_down_gets_that_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::start(dir.path()).await;
    let batcher = cluster.batcher();
    cluster.followers_down(true);
    let write = KvCommand::encode_session(9, 1, 0, &put(b"k"));
    let first = batcher.submit(vec![write.clone()], Instant::now() + T);
    let copy = batcher.submit(vec![write], Instant::now() + T);
    // check_quorum: the cut-off leader steps down within an election timeout and fails what
    // it promised; its copy learns the same (the client then retries elsewhere).
    let (first, copy) = (first.outcome().await, copy.outcome().await);
    assert!(
        matches!(first, Err(RaftError::LeadershipLost { .. })),
        "{first:?}"
    );
    assert_eq!(format!("{first:?}"), format!("{copy:?}"));
    cluster.followers_down(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_an_applied_command_gets_its_cached_result_without_an_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::start(dir.path()).await;
    let batcher = cluster.batcher();
    let write = KvCommand::encode_session(5, 1, 0, &put(b"k"));
    let first = batcher.submit(vec![write.clone()], Instant::now() + T);
    let first = first.outcome().await.expect("applied");
    let before = cluster.last_index().await;
    let copy = batcher.submit(vec![write.clone()], Instant::now() + T);
    assert_eq!(copy.outcome().await.expect("answered"), first);
    assert_eq!(cluster.last_index().await, before, "no entry");
    let mixed = batcher.submit(vec![put(b"new"), write], Instant::now() + T);
    let mixed = mixed.outcome().await.expect("answered");
    assert_eq!(
        mixed[1], first[0],
        "the cached result, in the share's order"
    );
    assert!(is_ok(&mixed[0]));
    assert_eq!(
        cluster.last_index().await,
        before + 1,
        "one entry, for the share's new command alone"
    );
}
