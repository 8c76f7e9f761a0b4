//! Deterministic in-process clusters under faults and bounds: full queues, lost log tails,
//! ignored pre-votes, elections during reads, commit timing (harness: `sim/mod.rs`).
//!
//! Each test states its claim; each wait is a bounded drive that fails the test if the
//! condition never holds.

mod common;
mod sim;

use common::put;
use nodedb_kv::{KvResult, KV_STATE_MACHINE};
use nodedb_multiraft::error::{EngineError, RaftError};
use nodedb_multiraft::{
    GroupId, GroupRole, LostTailPolicy, MembershipChange, Metrics, MultiRaftConfig, NodeId, Role,
};
use sim::{Cluster, Sink};
use tokio::sync::oneshot;

#[test]
fn bounded_proposals_answer_busy_instead_of_queueing() {
    let tweak = |c: &mut MultiRaftConfig| {
        c.pending_proposals_max = 2;
    };
    let mut c = Cluster::new(3, 1, tweak, false);
    let g = GroupId(1);
    c.elect_all(1);
    let l = c.leader_of(g).expect("leader");
    let mut rxs = Vec::new();
    for i in 0..3 {
        let (tx, rx) = oneshot::channel();
        c.core(l).propose(g, &[put(&format!("p{i}"), b"v")], tx);
        rxs.push(rx);
    }
    assert!(matches!(rxs[2].try_recv(), Ok(Err(RaftError::Busy { .. }))));
    c.pump();
    for rx in &mut rxs[..2] {
        assert!(matches!(rx.try_recv(), Ok(Ok(_))), "the first two commit");
    }
    // raft's uncommitted-bytes limit: with followers cut off nothing commits, so proposals
    // pile up until raft drops them, which is answered Busy too.
    let tweak = |c: &mut MultiRaftConfig| {
        c.max_size_per_msg_bytes = 1024;
        c.max_uncommitted_bytes = 4096;
    };
    let mut c = Cluster::new(3, 1, tweak, false);
    c.elect_all(1);
    let l = c.leader_of(g).expect("leader");
    let others: Vec<NodeId> = c.live().into_iter().filter(|n| *n != l).collect();
    c.net.partition(&[l], &others);
    let mut busy = 0;
    for i in 0..20 {
        let (tx, mut rx) = oneshot::channel();
        c.core(l)
            .propose(g, &[put(&format!("u{i}"), &[0; 1000])], tx);
        if matches!(rx.try_recv(), Ok(Err(RaftError::Busy { .. }))) {
            busy += 1;
        }
    }
    assert!(
        busy >= 10,
        "uncommitted limit enforced: {busy} of 20 refused"
    );
}

/// A commit is answered in the round that learns it, BEFORE that round's fsync of newer entries
/// (core.rs, round step 3): under load every round has new entries to sync, and waiting for
/// that fsync cost each commit one more fsync of latency. Shown with a leader whose next fsync
/// fails: the proposal a quorum already holds gets its result, the newer one never does.
#[test]
fn a_commit_is_answered_before_the_fsync_of_newer_entries() {
    let mut c = Cluster::new(3, 1, |_| {}, false);
    c.elect_all(1);
    let g = GroupId(1);
    let leader = c.leader_of(g).expect("leader");
    let (tx1, mut rx1) = oneshot::channel();
    c.core(leader).propose(g, &[put("a", b"1")], tx1);
    assert!(
        c.core(leader).round().expect("round") > 0,
        "P1 appended, synced, sent"
    );
    for id in c.live() {
        if id == leader {
            continue;
        }
        for f in c.net.drain(id) {
            c.core(id).step_frame(f);
        }
        c.core(id)
            .round()
            .expect("follower persists P1 and acknowledges it");
    }
    // P2 arrives with the acknowledgements; this round's fsync (of P2) fails.
    let (tx2, mut rx2) = oneshot::channel();
    c.core(leader).propose(g, &[put("b", b"2")], tx2);
    for f in c.net.drain(leader) {
        c.core(leader).step_frame(f);
    }
    let Sink::Mem(sink) = &c.nodes[&leader].sink else {
        panic!("memory sinks in this cluster");
    };
    sink.set_failing(true);
    assert!(c.core(leader).round().is_err(), "the fsync of P2 fails");
    let p1 = rx1.try_recv().expect("P1 answered in that round");
    let results = p1.expect("P1 committed").results;
    assert_eq!(
        KvResult::decode(&results[0]).expect("kv result"),
        KvResult::Ok { value: None }
    );
    assert!(
        !matches!(rx2.try_recv(), Ok(Ok(_))),
        "P2 was never durable here: not acknowledged"
    );
}

#[test]
fn a_kv_commit_reaches_followers_with_the_next_heartbeat_not_a_broadcast() {
    let mut c = Cluster::new(3, 1, |_| {}, false);
    c.elect_all(1);
    let g = GroupId(1);
    c.propose(g, vec![put("first", b"v")]).expect("commits");
    assert!(c.drive_until(10, |c| c.converged(g)), "followers caught up");
    let leader = c.leader_of(g).expect("leader");
    let (tx, mut rx) = oneshot::channel();
    c.core(leader).propose(g, &[put("k", b"v")], tx);
    c.pump(); // appends out, acks back, committed and answered on the leader: no tick needed
    assert!(rx.try_recv().is_ok(), "the leader answers without a tick");
    let applied = |c: &Cluster, id: NodeId| c.nodes[&id].reg.seq(g).0;
    let followers: Vec<NodeId> = c.live().into_iter().filter(|id| *id != leader).collect();
    for f in &followers {
        assert_eq!(
            applied(&c, *f),
            1,
            "{f:?} learned the commit without a heartbeat: was it broadcast?"
        );
    }
    c.tick(); // one heartbeat carries the commit index
    for f in &followers {
        assert_eq!(applied(&c, *f), 2, "{f:?} applied after one heartbeat");
    }
}

/// A 3-node cluster with 10 writes in `g`, and a follower, crashed, whose log lost its last
/// `lost` entry records: (cluster, leader, that follower).
fn follower_that_lost_entries(g: GroupId, lost: usize) -> (Cluster, NodeId, NodeId) {
    let mut c = Cluster::new(3, 1, |_| {}, false);
    c.elect_all(1);
    for i in 0..10 {
        c.propose(g, vec![put(&format!("k{i}"), &[1; 10])])
            .expect("commit");
    }
    assert!(c.drive_until(50, |c| c.converged(g)));
    let leader = c.leader_of(g).expect("leader");
    let f = c
        .live()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    c.crash(f);
    let Sink::Mem(m) = &c.nodes[&f].sink else {
        panic!("in-memory sink")
    };
    m.lose_last_entries(g, lost);
    (c, leader, f)
}

/// A follower whose disk lost its last acknowledged entries refuses to open (naming group and
/// indexes); opened with `LostTailPolicy::Discard` it forgets the group, and once the leader
/// demoted it to learner it is re-replicated and promoted back. Before the demotion its empty
/// replica refuses to vote, so a candidate cannot win with the vote of a node that forgot.
#[test]
fn lost_tail_refuses_then_rejoin_re_replicates_and_the_empty_replica_never_votes() {
    let g = GroupId(1);
    // 3: the commit-only hard state of the last round was never synced
    let (mut c, leader, f) = follower_that_lost_entries(g, 3);

    let net = c.net.clone();
    let err = c
        .nodes
        .get_mut(&f)
        .expect("node")
        .try_open(&net)
        .err()
        .expect("refused");
    let EngineError::LostTail { lost, .. } = &err else {
        panic!("expected LostTail, got {err}")
    };
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].group, g);
    assert!(lost[0].last_index < lost[0].commit_index);
    let text = err.to_string();
    assert!(
        text.contains("g1: log ends at index") && text.contains("--rejoin"),
        "{text}"
    );

    // --rejoin: the group is forgotten; the others would open as usual.
    c.nodes.get_mut(&f).expect("node").cfg.lost_tail = LostTailPolicy::Discard;
    c.restart(f);
    assert_eq!(c.core(f).discarded_groups().len(), 1);
    assert!(!c.core(f).has_group(g));
    c.core(f)
        .add_group(g, GroupRole::Learner, KV_STATE_MACHINE)
        .expect("empty replica");

    // Still a voter in the others' configuration: with the leader gone, the third node
    // cannot win, because the empty replica refuses its vote request.
    c.crash(leader);
    let elected = c.drive_until(60, |c| c.leader_of(g).is_some());
    assert!(
        !elected,
        "a leader was elected with the vote of an empty replica"
    );
    assert!(Metrics::get(&c.core(f).metrics().votes_refused_empty) > 0);

    // The old leader returns; the group demotes f, re-replicates it and promotes it back.
    c.restart(leader);
    c.elect_all(1);
    let l = c.leader_of(g).expect("leader");
    let (tx, mut rx) = oneshot::channel();
    c.core(l)
        .change_membership(g, &[MembershipChange::AddLearner(f)], tx);
    assert!(c.drive_until(50, |_| matches!(rx.try_recv(), Ok(Ok(_)))));
    assert!(c.drive_until(200, |c| c.nodes[&f].reg.kv(g).len() == 10));
    let (tx, mut rx) = oneshot::channel();
    let l = c.leader_of(g).expect("leader");
    c.core(l)
        .change_membership(g, &[MembershipChange::AddVoter(f)], tx);
    assert!(c.drive_until(50, |_| matches!(rx.try_recv(), Ok(Ok(_)))));
    assert!(
        c.drive_until(50, |c| c.core(f).status(g).map(|s| s.voters.contains(&f))
            == Ok(true))
    );
}

/// A follower that lost an acknowledged entry but whose persisted commit index does not show
/// it opens; the leader's next heartbeat carries a commit index beyond its log (raft-rs would
/// panic there). The engine stops with `LostTail` instead and records the attested commit
/// index, so the next open refuses the group too.
#[test]
fn heartbeat_beyond_the_log_stops_the_engine_and_the_next_open_refuses() {
    let g = GroupId(1);
    // 1: below the durable commit index, so open cannot tell
    let (mut c, _leader, f) = follower_that_lost_entries(g, 1);
    c.restart(f);
    let mut stopped = None;
    'drive: for _ in 0..100 {
        for id in c.live() {
            c.core(id).tick();
        }
        for id in c.live() {
            let frames = c.net.drain(id);
            let core = c.core(id);
            for frame in frames {
                core.step_frame(frame);
            }
            match core.round() {
                Err(e) if id == f => {
                    stopped = Some(e);
                    break 'drive;
                }
                r => {
                    r.expect("round");
                }
            }
        }
    }
    let err = stopped.expect("the follower's engine stopped");
    let EngineError::LostTail { lost, .. } = &err else {
        panic!("expected LostTail, got {err}")
    };
    assert_eq!(lost[0].group, g);
    assert!(lost[0].commit_index > lost[0].last_index);
    c.crash(f);
    let net = c.net.clone();
    let again = c.nodes.get_mut(&f).expect("node").try_open(&net);
    assert!(
        matches!(again, Err(EngineError::LostTail { .. })),
        "the next open must refuse too"
    );
}

/// The followers of `g` (not `leader`), in id order.
fn followers(c: &Cluster, leader: NodeId) -> Vec<NodeId> {
    c.live().into_iter().filter(|n| *n != leader).collect()
}

/// Issue 13 (failover tail): a pre-candidate whose pre-vote the only other live voter ignored
/// (it heard from the old leader less than an election timeout ago: check-quorum's lease)
/// sends it again every tick, so it is elected as soon as that lease ends, not a whole
/// election timeout later.
#[test]
fn an_ignored_pre_vote_is_sent_again_when_the_lease_ends() {
    let mut c = Cluster::new(3, 1, |_| {}, false);
    c.elect_all(1);
    let g = GroupId(1);
    c.propose(g, vec![put("x", b"1")]).expect("commit");
    let e = c.core(NodeId(1)).config().election_ticks;
    let old = c.leader_of(g).expect("leader");
    let f = followers(&c, old);
    let (a, b) = (f[0], f[1]);
    // A hears nothing from the leader any more and times out first; B stays in the leader's
    // lease until the leader dies, and would time out last.
    c.core(a).set_election_timeout_ticks(g, e);
    c.core(b).set_election_timeout_ticks(g, 2 * e - 1);
    c.net.partition(&[a], &[old]);
    let fired = c.drive_until(3 * e, |c| {
        c.nodes[&a]
            .core
            .as_ref()
            .expect("up")
            .status(g)
            .expect("status")
            .role
            == Role::PreCandidate
    });
    assert!(fired, "A never became a pre-candidate");
    // A's pre-vote reached B inside the lease: ignored. The leader dies a little later (raft-rs
    // alone would have A ask again only a whole timeout after its first request, B still in
    // the lease then, and again a timeout later).
    for _ in 0..2 {
        c.tick();
    }
    assert_eq!(
        c.leader_of(g),
        Some(old),
        "B stays with the old leader meanwhile"
    );
    c.crash(old);
    c.net.heal();
    // B's lease ends e ticks after it last heard from the leader; A asks again each tick.
    let elected = c.drive_until(e + 2, |c| c.leader_of(g) == Some(a));
    assert!(
        elected,
        "A was not elected within {} ticks of the leader's death",
        e + 2
    );
    c.propose(g, vec![put("y", b"2")]).expect("commit under A");
}

/// One delivery-and-round step of every live node (a slice of `pump`): lets a test act between
/// a leader's election and its first commit.
fn step_nodes(c: &mut Cluster) -> bool {
    let mut moved = false;
    for id in c.live() {
        for f in c.net.drain(id) {
            moved = true;
            c.core(id).step_frame(f);
        }
        moved |= c.core(id).round().expect("round") > 0;
    }
    moved
}

/// Issue 13: a read that reaches a follower during an election (its ReadIndex went to the dead
/// leader, or no leader is known) is sent again to the new leader and answered, instead of
/// waiting for its deadline; so is one that reaches the new leader before it committed an
/// entry of its term (raft-rs 0.7 drops those), from a follower or its own caller.
#[test]
fn reads_during_an_election_are_answered_by_the_new_leader() {
    let mut c = Cluster::new(3, 1, |_| {}, false);
    c.elect_all(1);
    let g = GroupId(1);
    c.propose(g, vec![put("x", b"1")]).expect("commit");
    let timeout = c.core(NodeId(1)).config().read_index_timeout_ticks as usize;
    let e = c.core(NodeId(1)).config().election_ticks;
    let old = c.leader_of(g).expect("leader");
    let f = followers(&c, old);
    let (a, b) = (f[0], f[1]);
    c.core(a).set_election_timeout_ticks(g, e); // A campaigns first and wins
    c.core(b).set_election_timeout_ticks(g, 2 * e - 1);
    c.crash(old);
    // Before any follower timed out: both still name the dead leader.
    let mut reads = Vec::new();
    for n in [a, b] {
        let (tx, rx) = oneshot::channel();
        c.core(n).read_index(g, tx);
        reads.push(rx);
    }
    // Step the election by hand: a read at A while it knows no leader (a pre-candidate), and
    // reads at both as soon as A leads but has not committed an entry of its term.
    let (mut asked_leaderless, mut asked_new) = (false, false);
    for _ in 0..timeout * 20 {
        if !asked_leaderless && c.core(a).status(g).expect("status").leader.is_none() {
            let (tx, rx) = oneshot::channel();
            c.core(a).read_index(g, tx);
            reads.push(rx);
            asked_leaderless = true;
        }
        let s = c.core(a).status(g).expect("status");
        if s.role == Role::Leader && s.commit_index < s.last_index {
            for n in [a, b] {
                let (tx, rx) = oneshot::channel();
                c.core(n).read_index(g, tx);
                reads.push(rx);
            }
            asked_new = true;
            break;
        }
        if !step_nodes(&mut c) {
            for id in c.live() {
                c.core(id).tick();
            }
        }
    }
    assert!(
        asked_leaderless && asked_new,
        "the election was not caught in its steps"
    );
    // All answered well before the ReadIndex deadline, none refused.
    let answered = c.drive_until(timeout / 2, |_| reads.iter().all(|rx| !rx.is_empty()));
    assert!(answered, "reads not answered within {} ticks", timeout / 2);
    for mut rx in reads {
        match rx.try_recv() {
            Ok(Ok(index)) => assert!(index > 0),
            other => panic!("read not answered with an index: {other:?}"),
        }
    }
}
