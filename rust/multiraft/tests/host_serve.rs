//! HOST_PROPOSE served on the leader by the engine (`HostProposeServer`): a running engine,
//! payloads as another node sends them, answers as it reads them.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{start_engine, JOURNAL};
use nodedb_multiraft::core::ProposeOutcome;
use nodedb_multiraft::host_serve::outcome_of;
use nodedb_multiraft::network::SimNetwork;
use nodedb_multiraft::{GroupId, GroupRole, HostProposeServer, MultiRaft, NodeId, RaftError};
use nodedb_transport::HandlerError;
use nodedb_wire::control::ControlMessage;
use nodedb_wire::{
    HostItem, HostOutcomes, HostPropose, HostProposeBatch, HostProposeResponse, MessageKind,
};

const T: Duration = Duration::from_secs(5);

/// A sole-voter engine leading groups 1 and 2 (the journal), and its server.
async fn leader() -> (Arc<MultiRaft>, HostProposeServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = SimNetwork::new(7, 10_000);
    let engine = start_engine(dir.path(), &net, NodeId(1), |_| {});
    for g in [GroupId(1), GroupId(2)] {
        let sole = GroupRole::Voter {
            peers: vec![NodeId(1)],
        };
        engine.add_group(g, sole, JOURNAL, T).await.expect("add");
        engine.campaign(g, T).await.expect("campaign");
        engine.wait_leader(g, &[], T).await.expect("elected");
    }
    let server = HostProposeServer::new(Arc::downgrade(&engine), JOURNAL);
    (engine, server, dir)
}

fn batch(items: &[(u64, &[u8])]) -> Vec<u8> {
    HostProposeBatch {
        v: 2,
        timeout_ms: 5_000,
        items: items
            .iter()
            .map(|(group, command)| HostItem {
                group: *group,
                command: command.to_vec(),
            })
            .collect(),
    }
    .to_msgpack()
    .expect("encode")
}

async fn served(server: &HostProposeServer, payload: &[u8]) -> Result<Vec<u8>, HandlerError> {
    let frame = server.serve(payload).await?.expect("a reply");
    assert_eq!(frame.kind, MessageKind::HOST_PROPOSE_RESPONSE);
    Ok(frame.payload.to_vec())
}

fn applied(out: &HostProposeResponse) -> (u64, u64) {
    match out {
        HostProposeResponse::Applied { index, result } => (
            *index,
            u64::from_le_bytes(result.as_slice().try_into().expect("8 bytes")),
        ),
        other => panic!("expected applied, got {other:?}"),
    }
}

/// Every command its own index, in the request's order per group, each answered with what the
/// state machine returned for it; groups interleaved in the request keep their places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_applied_one_index_per_command_answered_in_order() {
    let (engine, server, _dir) = leader().await;
    let payload = batch(&[(1, b"a"), (2, b"bb"), (1, b"ccc"), (1, b"dddd")]);
    let reply = served(&server, &payload).await.expect("served");
    let HostOutcomes { outcomes } = HostOutcomes::from_msgpack(&reply).expect("outcomes");
    let got: Vec<(u64, u64)> = outcomes.iter().map(applied).collect();
    let (i1, _) = got[0];
    assert_eq!(got[0].1, 1);
    assert_eq!(got[1].1, 2, "group 2's command answered in its place");
    assert_eq!(got[2], (i1 + 1, 3));
    assert_eq!(got[3], (i1 + 2, 4));
    drop(engine);
}

/// Group 0 (the metadata group) in a batch is refused alone; a group this node does not hold
/// is `not_leader` with no hint; the others apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_command_is_refused_alone() {
    let (_engine, server, _dir) = leader().await;
    let payload = batch(&[(0, b"meta"), (9, b"nowhere"), (1, b"ok")]);
    let reply = served(&server, &payload).await.expect("served");
    let HostOutcomes { outcomes } = HostOutcomes::from_msgpack(&reply).expect("outcomes");
    match &outcomes[0] {
        HostProposeResponse::Failed { code, message } => {
            assert_eq!(code, "InvalidRequest");
            assert!(message.contains("metadata group"), "{message}");
        }
        other => panic!("expected failed, got {other:?}"),
    }
    assert_eq!(outcomes[1], HostProposeResponse::NotLeader { leader: None });
    assert_eq!(applied(&outcomes[2]).1, 2);
}

/// Version 1 (one command) is answered with one outcome; its failures that are not about
/// leadership are an Error frame, as before batches existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_one_gets_one_outcome_and_its_failure_as_an_error_frame() {
    let (_engine, server, _dir) = leader().await;
    let one = |group: u64| {
        HostPropose {
            v: 1,
            group,
            command: b"solo".to_vec(),
            timeout_ms: 5_000,
        }
        .to_msgpack()
        .expect("encode")
    };
    let reply = served(&server, &one(2)).await.expect("served");
    let answer = HostProposeResponse::from_msgpack(&reply).expect("one outcome");
    assert_eq!(applied(&answer).1, 4);
    let refused = served(&server, &one(0)).await.expect_err("group 0");
    assert_eq!(refused.code, "InvalidRequest");
}

/// A malformed payload, or one of a newer version, is an Error frame naming why; nothing is
/// proposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_or_newer_request_is_refused_naming_why() {
    let (engine, server, _dir) = leader().await;
    let before = engine
        .status(GroupId(1), T)
        .await
        .expect("status")
        .commit_index;
    let garbage = served(&server, b"\xc1not msgpack")
        .await
        .expect_err("garbage");
    assert_eq!(garbage.code, "InvalidRequest");
    let mut newer = batch(&[(1, b"x")]);
    assert_eq!(
        newer[..4],
        [0x83, 0xa1, b'v', 2],
        "a map whose first field is v = 2"
    );
    newer[3] = 3;
    let refused = served(&server, &newer).await.expect_err("v3");
    assert!(
        refused.message.contains("newer than this build"),
        "{refused}"
    );
    let after = engine
        .status(GroupId(1), T)
        .await
        .expect("status")
        .commit_index;
    assert_eq!(before, after, "nothing proposed");
}

/// A server whose engine is gone answers EngineStopped, never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_engine_answers_engine_stopped() {
    let (engine, server, _dir) = leader().await;
    engine.shutdown();
    drop(engine);
    let refused = served(&server, &batch(&[(1, b"late")]))
        .await
        .expect_err("stopped");
    assert_eq!(refused.code, "EngineStopped");
}

/// What a sender makes of each engine answer: retry at the hint, unknown outcome, or the
/// engine's own code (the data dir for NoSpace, which the sender raises NoSpace with again).
#[test]
fn outcomes_follow_the_engines_codes() {
    let hint = outcome_of(Err(RaftError::NotLeader {
        group: GroupId(1),
        leader_hint: Some(NodeId(3)),
    }));
    assert_eq!(hint, HostProposeResponse::NotLeader { leader: Some(3) });
    let lost = outcome_of(Err(RaftError::LeadershipLost {
        group: GroupId(1),
        leader_hint: None,
    }));
    assert!(matches!(lost, HostProposeResponse::Unknown { .. }));
    let late = outcome_of(Err(RaftError::Timeout {
        op: "propose",
        timeout_ms: 9,
    }));
    assert!(matches!(late, HostProposeResponse::Unknown { .. }));
    let full = outcome_of(Err(RaftError::NoSpace {
        data_dir: PathBuf::from("/data/n1"),
    }));
    assert_eq!(
        full,
        HostProposeResponse::Failed {
            code: "NoSpace".into(),
            message: "/data/n1".into()
        }
    );
    let busy = outcome_of(Err(RaftError::Busy { reason: "full" }));
    assert!(matches!(busy, HostProposeResponse::Failed { code, .. } if code == "Busy"));
    let ok = outcome_of(Ok(ProposeOutcome {
        index: 7,
        results: vec![b"r".to_vec()],
    }));
    assert_eq!(
        ok,
        HostProposeResponse::Applied {
            index: 7,
            result: b"r".to_vec()
        }
    );
}
