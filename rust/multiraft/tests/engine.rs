//! The engine with a state machine that knows no KV: groups elect, replicate and apply the
//! same commands everywhere, and the state-machine kind is an opaque tag the engine only
//! records and compares (nodedb-kv's tests drive the engine with the KV state machine).

mod common;

use common::sim_cluster::SimCluster;
use common::{factory, Journals, FAIL, JOURNAL, SHORT};
use nodedb_multiraft::core::ProposeOutcome;
use nodedb_multiraft::error::{EngineError, RaftError};
use nodedb_multiraft::log_sink::MemLogSink;
use nodedb_multiraft::{GroupId, GroupRole, NodeId, StateMachineKind};
use tokio::sync::oneshot;

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

/// A machine that cannot apply (its `Err`, or a result count that does not match) stops the
/// engine: the round fails with `EngineError::Apply` naming the group and the entries, nothing
/// of the batch is recorded or answered with a result, and the applied index stays before it.
#[test]
fn a_state_machine_that_cannot_apply_stops_the_engine() {
    let cases = [
        (FAIL, "state machine: the journal's disk failed"),
        (SHORT, "0 results for 1 commands"),
    ];
    for (bad, why) in cases {
        let mut c = cluster(1);
        let l = c.elect(G);
        propose(&mut c, l, None, &[b"a".to_vec()]).expect("a first command");
        let applied_before = c.core(l).status(G).expect("status").applied_index;
        let (tx, mut rx) = oneshot::channel();
        c.core(l).propose_for(None, G, &[bad.to_vec()], tx);
        let mut failed = None;
        for _ in 0..20 {
            match c.core(l).round() {
                Ok(_) => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            Some(EngineError::Apply {
                group,
                first,
                last,
                reason,
            }) => {
                assert_eq!(group, G);
                assert_eq!((first, last), (applied_before + 1, applied_before + 1));
                assert_eq!(reason, why);
            }
            other => panic!("expected EngineError::Apply, got {other:?}"),
        }
        assert_eq!(applied(&c, l), vec![(applied_before, b"a".to_vec())]);
        assert_eq!(
            c.core(l).status(G).expect("status").applied_index,
            applied_before
        );
        assert!(
            rx.try_recv().is_err(),
            "no result for a command that was not applied"
        );
    }
}

/// An entry this node writes must decode, fit a log record and reach a follower in one frame.
/// Before these checks, 65,537 commands were committed by every replica and then applied as
/// nothing ("committed entry did not decode"), and one command over 64 MiB stopped the
/// leader's engine (its log refused the record).
#[test]
fn a_proposal_no_entry_can_hold_is_refused_before_raft_sees_it() {
    use nodedb_multiraft::codec::{COMMANDS_PER_ENTRY_MAX, ENTRY_BYTES_MAX};
    let mut c = cluster(3);
    let l = c.elect(G);
    let last = |c: &mut Cluster| c.core(l).status(G).expect("status").last_index;
    let before = last(&mut c);
    let too_many = vec![b"c".to_vec(); COMMANDS_PER_ENTRY_MAX + 1];
    let too_big = vec![vec![0u8; ENTRY_BYTES_MAX]];
    let followers: Vec<NodeId> = c.nodes.keys().copied().filter(|id| *id != l).collect();
    for (cmds, says) in [(&too_many, "at most 65536"), (&too_big, "one frame")] {
        for at in [l, followers[0]] {
            match propose(&mut c, at, None, cmds) {
                Err(RaftError::Invalid { reason }) => assert!(reason.contains(says), "{reason}"),
                outcome => panic!("expected Invalid, got {outcome:?}"),
            }
        }
    }
    assert_eq!(last(&mut c), before, "nothing reached the log");
    let most = vec![b"c".to_vec(); COMMANDS_PER_ENTRY_MAX];
    let out = propose(&mut c, l, None, &most).expect("the most an entry holds");
    assert_eq!(out.results.len(), COMMANDS_PER_ENTRY_MAX);
    let everywhere = c.drive_until(50, |c| {
        c.nodes
            .keys()
            .all(|id| applied(c, *id).len() == COMMANDS_PER_ENTRY_MAX)
    });
    assert!(everywhere, "every node applied it");
}

/// A host's concurrent proposals: each command its own entry and index, in order, all in one
/// raft proposal; a command no entry can hold is refused alone, the others still apply.
#[test]
fn proposals_of_one_command_each_get_an_entry_and_an_index_each() {
    use nodedb_multiraft::codec::ENTRY_BYTES_MAX;
    use nodedb_multiraft::core::Reply;
    let mut c = cluster(3);
    let l = c.elect(G);
    let before = c.core(l).status(G).expect("status").last_index;
    let cmds = vec![
        b"a".to_vec(),
        vec![0u8; ENTRY_BYTES_MAX],
        b"bb".to_vec(),
        b"ccc".to_vec(),
    ];
    let (txs, mut rxs): (Vec<_>, Vec<_>) = (0..cmds.len()).map(|_| oneshot::channel()).unzip();
    let replies: Vec<Reply<ProposeOutcome>> = txs.into_iter().map(Reply::from).collect();
    c.core(l).propose_each_for(None, G, cmds, replies);
    let mut answers = vec![None; rxs.len()];
    for _ in 0..100 {
        c.pump();
        for (answer, rx) in answers.iter_mut().zip(rxs.iter_mut()) {
            if let Ok(outcome) = rx.try_recv() {
                *answer = Some(outcome);
            }
        }
        if answers.iter().all(Option::is_some) {
            break;
        }
        c.tick();
    }
    let answers: Vec<_> = answers.into_iter().map(|a| a.expect("answered")).collect();
    assert!(
        matches!(&answers[1], Err(RaftError::Invalid { .. })),
        "{answers:?}"
    );
    let indexes: Vec<u64> = [0, 2, 3]
        .iter()
        .map(|&i| answers[i].as_ref().expect("applied").index)
        .collect();
    assert_eq!(indexes, vec![before + 1, before + 2, before + 3]);
    let everywhere = c.drive_until(50, |c| c.nodes.keys().all(|id| applied(c, *id).len() == 3));
    assert!(everywhere, "every node applied the three");
    let expected = vec![
        (before + 1, b"a".to_vec()),
        (before + 2, b"bb".to_vec()),
        (before + 3, b"ccc".to_vec()),
    ];
    for id in c.nodes.keys() {
        assert_eq!(applied(&c, *id), expected, "node {id}");
    }
    let follower = *c.nodes.keys().find(|id| **id != l).expect("a follower");
    let (tx, mut rx) = oneshot::channel();
    c.core(follower)
        .propose_each_for(None, G, vec![b"d".to_vec()], vec![Reply::from(tx)]);
    match rx.try_recv() {
        Ok(Err(RaftError::NotLeader { leader_hint, .. })) => assert_eq!(leader_hint, Some(l)),
        other => panic!("expected NotLeader, got {other:?}"),
    }
}

/// Past a group's room for pending proposals, the rest of a call's commands are refused
/// `Busy` alone; those that fit are proposed.
#[test]
fn proposals_past_the_pending_limit_are_refused_alone() {
    use nodedb_multiraft::core::Reply;
    let mut c = Cluster::founding_with(
        1,
        G,
        JOURNAL,
        |cfg| cfg.pending_proposals_max = 2,
        |_| {
            let journals = Journals::default();
            (journals.clone(), factory(journals))
        },
    );
    let l = c.elect(G);
    let cmds: Vec<Vec<u8>> = (0..4u8).map(|i| vec![b'a' + i]).collect();
    let (txs, mut rxs): (Vec<_>, Vec<_>) = (0..cmds.len()).map(|_| oneshot::channel()).unzip();
    let replies: Vec<Reply<ProposeOutcome>> = txs.into_iter().map(Reply::from).collect();
    c.core(l).propose_each_for(None, G, cmds, replies);
    for rx in &mut rxs[2..] {
        match rx.try_recv() {
            Ok(Err(RaftError::Busy { .. })) => {}
            other => panic!("expected Busy at once, got {other:?}"),
        }
    }
    let applied_both = c.drive_until(50, |c| applied(c, l).len() == 2);
    assert!(applied_both, "the two that fit are applied");
    for rx in &mut rxs[..2] {
        assert!(matches!(rx.try_recv(), Ok(Ok(_))));
    }
}
