//! Reads from a leader's lease (`read_index_leased`): answered at once, with no quorum round,
//! only by a leader of the group whose lease holds and that has not started handing leadership
//! away in its term; anything else takes the ReadIndex round.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sim_cluster::SimCluster;
use common::{factory, Journals, JOURNAL};
use nodedb_multiraft::error::RaftError;
use nodedb_multiraft::log_sink::MemLogSink;
use nodedb_multiraft::{GroupId, NodeId, ReadLease, ReadPoint};
use tokio::sync::oneshot;

type Cluster = SimCluster<MemLogSink, Journals>;

const G: GroupId = GroupId(1);

fn cluster() -> (Cluster, NodeId) {
    let mut c = Cluster::founding(3, G, JOURNAL, |_| {
        let journals = Journals::default();
        (journals.clone(), factory(journals))
    });
    let l = c.elect(G);
    c.propose_via(l, None, G, &[b"x".to_vec()]).expect("commit");
    (c, l)
}

/// A lease earned now (after the leader was elected), trusted for a minute.
fn held() -> Option<ReadLease> {
    let from = Instant::now();
    Some(ReadLease {
        from,
        until: from + Duration::from_secs(60),
    })
}

type Answer = oneshot::Receiver<Result<ReadPoint, RaftError>>;

/// Asks `at` for a read; its answer if it came without any frame delivered or tick.
fn read_alone(
    c: &mut Cluster,
    at: NodeId,
    lease: Option<ReadLease>,
) -> (Option<Result<ReadPoint, RaftError>>, Answer) {
    let (tx, mut rx) = oneshot::channel();
    c.core(at).read_index_leased(G, lease, None, tx);
    (rx.try_recv().ok(), rx)
}

#[test]
fn a_leader_whose_lease_holds_answers_with_its_commit_index_and_no_round() {
    let (mut c, l) = cluster();
    let (answer, _) = read_alone(&mut c, l, held());
    let point = answer.expect("answered at once").expect("read index");
    assert!(
        point.by_lease,
        "said to be from the lease: it earns no new one"
    );
    let (answer, mut rx) = read_alone(&mut c, l, None);
    assert!(answer.is_none(), "without a lease a quorum round is needed");
    c.drive_until(20, |_| false);
    let confirmed = rx.try_recv().expect("round done").expect("read index");
    assert!(!confirmed.by_lease);
    assert_eq!(
        confirmed.index, point.index,
        "nothing was written meanwhile"
    );
}

#[test]
fn an_ended_lease_takes_a_quorum_round() {
    let (mut c, l) = cluster();
    let ended = held().map(|lease| ReadLease {
        until: lease.from,
        ..lease
    });
    let (answer, mut rx) = read_alone(&mut c, l, ended);
    assert!(answer.is_none(), "an ended lease answers nothing alone");
    c.drive_until(20, |_| false);
    assert!(
        matches!(
            rx.try_recv(),
            Ok(Ok(ReadPoint {
                by_lease: false,
                ..
            }))
        ),
        "answered by the round"
    );
}

#[test]
fn a_follower_never_answers_from_a_lease() {
    let (mut c, l) = cluster();
    let f = *c.nodes.keys().find(|id| **id != l).expect("a follower");
    let (answer, mut rx) = read_alone(&mut c, f, held());
    assert!(answer.is_none());
    c.drive_until(20, |_| false);
    assert!(
        matches!(rx.try_recv(), Ok(Ok(_))),
        "answered through the leader"
    );
}

#[test]
fn no_lease_is_honoured_after_the_leader_started_a_transfer_in_its_term() {
    let (mut c, l) = cluster();
    let target = *c.nodes.keys().find(|id| **id != l).expect("a follower");
    c.core(l).transfer_leader(G, target).expect("transfer");
    let (answer, _) = read_alone(&mut c, l, held());
    assert!(
        answer.is_none(),
        "the target may be elected inside the lease"
    );
    // And once the transfer is over, the old leader is a follower.
    c.drive_until(50, |c| c.a_leader(G) == Some(target));
    assert_eq!(c.a_leader(G), Some(target), "the transfer completed");
    let (answer, _) = read_alone(&mut c, l, held());
    assert!(answer.is_none(), "no longer the leader");
}

#[test]
fn a_lease_earned_before_this_node_last_became_leader_is_not_honoured() {
    let (mut c, l) = cluster();
    let earned_before = Instant::now();
    let target = *c.nodes.keys().find(|id| **id != l).expect("a follower");
    // Leadership goes to `target` and comes back: the old lease spans another leader's term.
    c.core(l).transfer_leader(G, target).expect("transfer");
    assert!(c.drive_until(50, |c| c.a_leader(G) == Some(target)));
    c.core(target).transfer_leader(G, l).expect("transfer back");
    assert!(c.drive_until(50, |c| c.a_leader(G) == Some(l)));
    c.propose_via(l, None, G, &[b"y".to_vec()])
        .expect("commit in the new term");
    let stale = Some(ReadLease {
        from: earned_before,
        until: earned_before + Duration::from_secs(60),
    });
    let (answer, _) = read_alone(&mut c, l, stale);
    assert!(answer.is_none(), "earned in an earlier leadership");
    let (answer, _) = read_alone(&mut c, l, held());
    assert!(answer.is_some(), "one earned in this leadership holds");
}

/// Does `frame` carry a MsgTimeoutNow of group `G`?
fn carries_timeout_now(frame: &nodedb_multiraft::Frame) -> bool {
    match frame {
        nodedb_multiraft::Frame::Batch(b) => b
            .messages
            .iter()
            .any(|(g, m)| *g == G && m.get_msg_type() == raft::prelude::MessageType::MsgTimeoutNow),
        _ => false,
    }
}

#[test]
fn the_lease_board_offers_a_leaders_lease_to_other_threads_and_withdraws_it_with_leadership() {
    let (mut c, l) = cluster();
    let board = c.core(l).lease_board();
    let lease = held().expect("a lease");
    assert!(
        board.readable_now(G, lease, Instant::now()),
        "a leader that committed in its term offers its lease"
    );
    let f = *c.nodes.keys().find(|id| **id != l).expect("a follower");
    assert!(
        !c.core(f)
            .lease_board()
            .readable_now(G, lease, Instant::now()),
        "a follower never does"
    );
    let ended = ReadLease {
        until: lease.from,
        ..lease
    };
    assert!(
        !board.readable_now(G, ended, Instant::now()),
        "nor an ended lease"
    );
    c.core(l).transfer_leader(G, f).expect("transfer");
    assert!(c.drive_until(50, |c| c.a_leader(G) == Some(f)));
    assert!(
        !board.readable_now(G, lease, Instant::now()),
        "the old leader's board no longer offers it"
    );
}

#[test]
fn the_lease_board_withdraws_the_lease_before_a_transfer_target_hears_of_the_transfer() {
    let (mut c, l) = cluster();
    let board = c.core(l).lease_board();
    let lease = held().expect("a lease");
    assert!(board.readable_now(G, lease, Instant::now()));
    let target = *c.nodes.keys().find(|id| **id != l).expect("a follower");
    // What the board said at the instant the target received its MsgTimeoutNow.
    let seen: Arc<Mutex<Vec<bool>>> = Arc::default();
    {
        let seen = Arc::clone(&seen);
        let board = Arc::clone(&board);
        c.net.attach(target, move |frame| {
            if carries_timeout_now(&frame) {
                let offered = board.readable_now(G, lease, Instant::now());
                seen.lock().expect("lock").push(offered);
            }
        });
    }
    c.core(l).transfer_leader(G, target).expect("transfer");
    c.core(l).round().expect("round");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(
        seen,
        vec![false],
        "the target got one MsgTimeoutNow, and the lease was gone by then"
    );
}

/// Found by an embedding probe: `read_index(timeout_s=20)` gave up after 3.2 s, the engine's
/// own bound. A read with no quorum now waits for its caller's deadline (resent meanwhile),
/// and one with no deadline of its own still ends at the engine's bound.
#[test]
fn a_read_waits_for_its_callers_deadline_not_only_the_engines_bound() {
    let (mut c, l) = cluster();
    let others: Vec<NodeId> = c.nodes.keys().copied().filter(|n| *n != l).collect();
    c.net.partition(&[l], &others);
    let bound = c.core(l).config().read_index_timeout_ticks;
    let tick_ms = c.core(l).config().tick_interval.as_millis() as u64;
    let asked_ticks = 2 * bound;
    let (tx, mut long) = oneshot::channel();
    let timeout = Duration::from_millis(asked_ticks * tick_ms);
    c.core(l).read_index_leased(G, None, Some(timeout), tx);
    let (tx, mut short) = oneshot::channel();
    c.core(l).read_index_leased(G, None, None, tx);
    for _ in 0..bound {
        c.tick();
    }
    match short.try_recv() {
        Ok(Err(RaftError::Timeout { timeout_ms, .. })) => assert_eq!(timeout_ms, bound * tick_ms),
        other => panic!("the engine's bound ends a read with no deadline: {other:?}"),
    }
    assert!(
        long.try_recv().is_err(),
        "a longer deadline is still waited for"
    );
    for _ in bound..asked_ticks {
        c.tick();
    }
    match long.try_recv() {
        Ok(Err(RaftError::Timeout { timeout_ms, .. })) => {
            assert_eq!(timeout_ms, asked_ticks * tick_ms)
        }
        other => panic!("timed out at its own deadline: {other:?}"),
    }
}
