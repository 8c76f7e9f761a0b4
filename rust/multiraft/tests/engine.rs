//! The engine with a state machine that knows no KV: groups elect, replicate and apply the
//! same commands everywhere, and the state-machine kind is an opaque tag the engine only
//! records and compares (nodedb-kv's tests drive the engine with the KV state machine).

mod common;

use std::collections::BTreeMap;

use common::sim_cluster::{SimCluster, SimNode};
use common::{factory, Journals, JOURNAL};
use nodedb_multiraft::core::ProposeOutcome;
use nodedb_multiraft::error::{EngineError, RaftError};
use nodedb_multiraft::log_sink::MemLogSink;
use nodedb_multiraft::network::SimNetwork;
use nodedb_multiraft::{
    GroupId, GroupRole, Metrics, MultiRaftConfig, MultiRaftCore, NodeId, StateMachineKind,
};
use tokio::sync::oneshot;

type Cluster = SimCluster<MemLogSink, Journals>;

const G: GroupId = GroupId(1);

/// `n` nodes, each a founding voter of group 1 running the journal.
fn cluster(n: u64) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = SimNetwork::new(7, 100_000);
    let peers: Vec<NodeId> = (1..=n).map(NodeId).collect();
    let mut nodes = BTreeMap::new();
    for id in 1..=n {
        let cfg = MultiRaftConfig::new(NodeId(id), dir.path().join(format!("n{id}")));
        let sink = MemLogSink::new();
        let reg = Journals::default();
        let mut core = MultiRaftCore::open(
            cfg.clone(),
            Box::new(sink.clone()),
            std::sync::Arc::new(net.endpoint(NodeId(id))),
            factory(reg.clone()),
            std::sync::Arc::new(Metrics::default()),
        )
        .expect("open");
        let role = GroupRole::Voter {
            peers: peers.clone(),
        };
        core.add_group(G, role, JOURNAL).expect("add group");
        let core = Some(core);
        nodes.insert(
            NodeId(id),
            SimNode {
                core,
                sink,
                reg,
                cfg,
            },
        );
    }
    Cluster { net, nodes, dir }
}

fn leader(c: &Cluster) -> Option<NodeId> {
    c.nodes
        .iter()
        .find(|(_, n)| n.core.as_ref().is_some_and(|core| core.is_leader(G)))
        .map(|(id, _)| *id)
}

fn elected(c: &mut Cluster) -> NodeId {
    assert!(
        c.drive_until(400, |c| leader(c).is_some()),
        "no leader in 400 ticks"
    );
    leader(c).expect("leader")
}

fn applied(c: &Cluster, id: NodeId) -> Vec<(u64, Vec<u8>)> {
    let entries = c.nodes[&id].reg.lock().expect("lock")[&G].clone();
    let applied = entries.lock().expect("lock").clone();
    applied
}

/// Proposes through `at` (with `kind`, when given) and drives until answered.
fn propose(
    c: &mut Cluster,
    at: NodeId,
    kind: Option<StateMachineKind>,
    cmds: &[Vec<u8>],
) -> Result<ProposeOutcome, RaftError> {
    let (tx, mut rx) = oneshot::channel();
    c.core(at).propose_for(kind, G, cmds, tx);
    for _ in 0..100 {
        c.pump();
        if let Ok(outcome) = rx.try_recv() {
            return outcome;
        }
        c.tick();
    }
    panic!("proposal not answered within 100 ticks");
}

#[test]
fn every_node_applies_the_same_commands_in_the_same_order() {
    let mut c = cluster(3);
    let l = elected(&mut c);
    let cmds = vec![b"a".to_vec(), b"bb".to_vec(), b"ccc".to_vec()];
    let out = propose(&mut c, l, None, &cmds).expect("proposal");
    let lengths: Vec<u64> = out
        .results
        .iter()
        .map(|r| u64::from_le_bytes(r.as_slice().try_into().expect("8 bytes")))
        .collect();
    assert_eq!(lengths, vec![1, 2, 3], "one result per command, in order");
    let everywhere = c.drive_until(50, |c| c.nodes.keys().all(|id| applied(c, *id).len() == 3));
    assert!(everywhere, "every node applied the batch");
    let reference = applied(&c, l);
    assert!(reference.iter().all(|(index, _)| *index == out.index));
    for id in c.nodes.keys() {
        assert_eq!(applied(&c, *id), reference, "node {id} applied the same");
    }
}

#[test]
fn commands_written_for_another_kind_are_refused_and_never_applied() {
    let mut c = cluster(3);
    let l = elected(&mut c);
    let other = StateMachineKind::new(1, "Kv");
    match propose(&mut c, l, Some(other), &[b"x".to_vec()]) {
        Err(RaftError::Invalid { reason }) => {
            assert!(
                reason.contains("does not run the Kv state machine"),
                "{reason}"
            );
        }
        outcome => panic!("expected Invalid, got {outcome:?}"),
    }
    assert!(propose(&mut c, l, Some(JOURNAL), &[b"y".to_vec()]).is_ok());
    assert_eq!(applied(&c, l).len(), 1, "only the journal's own command");
}

#[test]
fn kind_zero_is_refused_and_an_unknown_kind_fails_in_the_factory() {
    let mut c = cluster(1);
    let core = c.core(NodeId(1));
    let role = || GroupRole::Voter {
        peers: vec![NodeId(1)],
    };
    match core.add_group(GroupId(2), role(), StateMachineKind::from_tag(0)) {
        Err(EngineError::Config { field: "kind", .. }) => {}
        other => panic!("kind 0 must be a config error, got {other:?}"),
    }
    assert!(
        core.add_group(GroupId(3), role(), StateMachineKind::from_tag(9))
            .is_err(),
        "the factory knows no kind 9"
    );
    assert!(!core.has_group(GroupId(2)) && !core.has_group(GroupId(3)));
}
