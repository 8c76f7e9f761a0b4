//! The engine with a state machine that knows no KV: groups elect, replicate and apply the
//! same commands everywhere, and the state-machine kind is an opaque tag the engine only
//! records and compares (nodedb-kv's tests drive the engine with the KV state machine).

mod common;

use common::sim_cluster::SimCluster;
use common::{factory, Journals, JOURNAL};
use nodedb_multiraft::core::ProposeOutcome;
use nodedb_multiraft::error::{EngineError, RaftError};
use nodedb_multiraft::log_sink::MemLogSink;
use nodedb_multiraft::{GroupId, GroupRole, NodeId, StateMachineKind};

type Cluster = SimCluster<MemLogSink, Journals>;

const G: GroupId = GroupId(1);

/// `n` nodes, each a founding voter of group 1 running the journal.
fn cluster(n: u64) -> Cluster {
    Cluster::founding(n, G, JOURNAL, |_| {
        let journals = Journals::default();
        (journals.clone(), factory(journals))
    })
}

fn applied(c: &Cluster, id: NodeId) -> Vec<(u64, Vec<u8>)> {
    let entries = c.nodes[&id].reg.lock().expect("lock")[&G].clone();
    let snapshot = entries.lock().expect("lock").clone();
    snapshot
}

fn propose(
    c: &mut Cluster,
    at: NodeId,
    kind: Option<StateMachineKind>,
    cmds: &[Vec<u8>],
) -> Result<ProposeOutcome, RaftError> {
    c.propose_via(at, kind, G, cmds)
}

#[test]
fn every_node_applies_the_same_commands_in_the_same_order() {
    let mut c = cluster(3);
    let l = c.elect(G);
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
    let l = c.elect(G);
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
