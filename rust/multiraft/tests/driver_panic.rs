//! A driver thread that panics (the failpoint): a request it drops unanswered says why the
//! engine stopped, not only that it did. A test binary of its own: every engine started in the
//! process reads the failpoint from the environment.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{start_engine, JOURNAL};
use nodedb_multiraft::driver::FAILPOINT_DRIVER_PANIC_AFTER_MS;
use nodedb_multiraft::network::SimNetwork;
use nodedb_multiraft::{GroupId, GroupRole, MembershipChange, NodeId, RaftError};

const T: Duration = Duration::from_secs(5);
/// Ticks slow enough that the leader, once its group needs a voter that never runs, keeps
/// leading (check-quorum steps it down only after an election timeout, 8 ticks) past the panic.
const TICK: Duration = Duration::from_millis(200);
/// Long enough for a sole voter's election and one membership change on a loaded machine, and
/// well inside the first election timeout.
const PANIC_AFTER_MS: u64 = 800;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_panicking_driver_dropped_names_the_panic() {
    std::env::set_var(FAILPOINT_DRIVER_PANIC_AFTER_MS, PANIC_AFTER_MS.to_string());
    let dir = tempfile::tempdir().expect("tempdir");
    let net = SimNetwork::new(7, 10_000);
    let engine = start_engine(dir.path(), &net, NodeId(1), |cfg| cfg.tick_interval = TICK);
    let g = GroupId(1);
    let sole = GroupRole::Voter {
        peers: vec![NodeId(1)],
    };
    engine.add_group(g, sole, JOURNAL, T).await.expect("add");
    engine.campaign(g, T).await.expect("campaign");
    // Node 2 never runs: once it votes, a proposal waits for a quorum until the driver drops it.
    let voters = engine
        .change_membership(g, vec![MembershipChange::AddVoter(NodeId(2))], T)
        .await
        .expect("add voter 2");
    assert_eq!(voters, vec![NodeId(1), NodeId(2)]);
    // Requests that keep coming while it panics: queued, refused at the door, or dropped
    // with the unwound core, each learns why the engine stopped.
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let engine = Arc::clone(&engine);
            tokio::spawn(async move {
                loop {
                    if let Err(e) = engine.groups(T).await {
                        return e;
                    }
                }
            })
        })
        .collect();
    let outcome = engine.propose(g, b"x".to_vec(), T * 2).await;
    let mut stopped = vec![outcome.map(|_| ()).expect_err("the proposal cannot commit")];
    for caller in callers {
        stopped.push(caller.await.expect("caller"));
    }
    for e in stopped {
        match e {
            RaftError::Stopped { reason } => assert!(
                reason.contains("driver thread panicked: failpoint"),
                "the reason the engine stopped, got {reason:?}"
            ),
            // Raft had taken it: its entry may commit elsewhere, so its outcome is unknown.
            RaftError::LeadershipLost { leader_hint, .. } => assert_eq!(leader_hint, None),
            other => panic!("expected Stopped naming the panic or LeadershipLost, got {other:?}"),
        }
    }
}
