//! Deterministic in-process clusters: several `MultiRaftCore`s over a `SimNetwork`, driven by
//! hand (tick, deliver, round) — no threads, no clock, bounded loops that report convergence.
//!
//! Each test states its claim; each wait is a bounded drive that fails the test if the
//! condition never holds.

mod common;
mod sim;

use std::collections::BTreeMap;

use common::put;
use nodedb_kv::KvResult;
use nodedb_multiraft::error::RaftError;
use nodedb_multiraft::{GroupId, MembershipChange, Metrics, MultiRaftConfig, NodeId, Role};
use sim::Cluster;
use tokio::sync::oneshot;

#[test]
fn each_group_elects_exactly_one_leader_and_all_agree() {
    let mut c = Cluster::new(3, 8, |_| {}, false);
    c.elect_all(8);
    c.drive_until(50, |_| false); // let followers learn the leaders
    for g in 1..=8 {
        let g = GroupId(g);
        let statuses: Vec<_> = c
            .live()
            .iter()
            .map(|id| {
                c.nodes[id]
                    .core
                    .as_ref()
                    .expect("up")
                    .status(g)
                    .expect("status")
            })
            .collect();
        let leaders = statuses.iter().filter(|s| s.role == Role::Leader).count();
        assert_eq!(leaders, 1, "{g}: {statuses:?}");
        let l = statuses[0].leader;
        assert!(l.is_some());
        assert!(statuses
            .iter()
            .all(|s| s.leader == l && s.term == statuses[0].term));
        assert_eq!(statuses[0].voters, vec![NodeId(1), NodeId(2), NodeId(3)]);
    }
}

#[test]
fn proposals_across_8_groups_apply_identically_on_every_node() {
    let mut c = Cluster::new(3, 8, |_| {}, false);
    c.elect_all(8);
    let mut last_index = BTreeMap::new();
    for i in 0..400u32 {
        let g = GroupId(u64::from(i % 8) + 1);
        // Mix single and batch proposals.
        let cmds: Vec<Vec<u8>> = (0..(1 + i % 3))
            .map(|j| put(&format!("k{i}-{j}"), &[i as u8; 100]))
            .collect();
        let n = cmds.len();
        let out = c.propose(g, cmds).expect("proposal commits");
        assert_eq!(out.results.len(), n);
        for r in &out.results {
            assert_eq!(KvResult::decode(r), Ok(KvResult::Ok { value: None }));
        }
        let prev = last_index.insert(g, out.index).unwrap_or(0);
        assert!(out.index > prev, "indexes grow within a group");
    }
    let all_applied = c.drive_until(50, |c| (1..=8).all(|g| c.converged(GroupId(g))));
    assert!(all_applied, "nodes did not converge");
    for g in 1..=8 {
        let g = GroupId(g);
        let (count, _) = c.nodes[&NodeId(1)].reg.seq(g);
        assert_eq!(
            count,
            (0..400u64)
                .filter(|i| i % 8 == g.0 - 1)
                .map(|i| 1 + i % 3)
                .sum::<u64>()
        );
        let digests: Vec<u64> = c
            .live()
            .iter()
            .map(|id| c.nodes[id].reg.kv(g).digest())
            .collect();
        assert!(digests.windows(2).all(|w| w[0] == w[1]));
    }
    let m = c.core(NodeId(1)).metrics().clone();
    assert!(
        Metrics::get(&m.fsyncs) < Metrics::get(&m.records_written),
        "records are group-committed, not one fsync each"
    );
}

#[test]
fn killing_a_leader_elects_a_new_one_and_keeps_acknowledged_writes() {
    let mut c = Cluster::new(3, 2, |_| {}, false);
    c.elect_all(2);
    let g = GroupId(1);
    for i in 0..20 {
        c.propose(g, vec![put(&format!("a{i}"), b"v")])
            .expect("commit");
    }
    let old = c.leader_of(g).expect("leader");
    let old_term = c.core(old).status(g).expect("status").term;
    c.crash(old);
    let ok = c.drive_until(100, |c| c.leader_of(g).is_some_and(|l| l != old));
    assert!(ok, "no new leader within 100 ticks");
    let new = c.leader_of(g).expect("leader");
    assert!(c.core(new).status(g).expect("status").term > old_term);
    c.propose(g, vec![put("after", b"x")])
        .expect("commit under new leader");
    for id in c.live() {
        let kv = c.nodes[&id].reg.kv(g);
        c.drive_until(20, |_| kv.get(b"after").is_some());
        for i in 0..20 {
            assert_eq!(
                kv.get(format!("a{i}").as_bytes()),
                Some(b"v".to_vec()),
                "{id} lost a{i}"
            );
        }
    }
    // The old leader restarts from its log and catches up.
    c.restart(old);
    let ok = c.drive_until(100, |c| c.converged(g));
    assert!(ok, "restarted node did not catch up");
    assert_eq!(c.nodes[&old].reg.kv(g).get(b"after"), Some(b"x".to_vec()));
}

#[test]
fn minority_leader_steps_down_and_its_pending_proposal_fails_typed() {
    let mut c = Cluster::new(3, 1, |_| {}, false);
    c.elect_all(1);
    let g = GroupId(1);
    c.propose(g, vec![put("x", b"1")]).expect("commit");
    let old = c.leader_of(g).expect("leader");
    let others: Vec<NodeId> = c.live().into_iter().filter(|n| *n != old).collect();
    c.net.partition(&[old], &others);
    let (tx, mut rx) = oneshot::channel();
    c.core(old).propose(g, &[put("lost?", b"1")], tx);
    // Majority elects a new leader; check_quorum makes the isolated one step down.
    let ok = c.drive_until(200, |c| {
        c.leader_of(g).is_some_and(|l| l != old)
            && !c.nodes[&old].core.as_ref().expect("up").is_leader(g)
    });
    assert!(
        ok,
        "partitioned leader did not step down / majority did not elect"
    );
    match rx.try_recv() {
        Ok(Err(RaftError::LeadershipLost { .. })) => {}
        other => panic!("expected LeadershipLost, got {other:?}"),
    }
    // Proposals on the isolated node are refused with NotLeader.
    let (tx, mut rx) = oneshot::channel();
    c.core(old).propose(g, &[put("y", b"1")], tx);
    assert!(matches!(
        rx.try_recv(),
        Ok(Err(RaftError::NotLeader { .. }))
    ));
    c.net.heal();
    c.propose(g, vec![put("z", b"1")])
        .expect("commit after heal");
    assert!(
        c.drive_until(100, |c| c.converged(g)),
        "no convergence after heal"
    );
    assert_eq!(c.nodes[&old].reg.kv(g).get(b"z"), Some(b"1".to_vec()));
}

#[test]
fn restart_from_the_wal_keeps_term_vote_and_log() {
    let mut c = Cluster::new(3, 2, |_| {}, true);
    c.elect_all(2);
    for i in 0..50 {
        c.propose(GroupId(1 + i % 2), vec![put(&format!("k{i}"), &[1; 100])])
            .expect("commit");
    }
    let id = NodeId(2);
    let before: Vec<_> = (1..=2)
        .map(|g| c.core(id).status(GroupId(g)).expect("status"))
        .collect();
    c.crash(id);
    c.restart(id);
    for (g, b) in (1..=2).zip(before) {
        let after = c.core(id).status(GroupId(g)).expect("status");
        assert_eq!(after.term, b.term, "term survives restart");
        assert_eq!(after.last_index, b.last_index, "log survives restart");
        // The commit index is not forced to disk (it is re-learned from the leader).
        assert!(after.commit_index <= after.last_index);
        assert_eq!(after.voters, b.voters);
    }
    assert!(c.drive_until(100, |c| (1..=2).all(|g| c.converged(GroupId(g)))));
    assert_eq!(c.nodes[&id].reg.kv(GroupId(1)).len(), 25);
}

#[test]
fn learner_catches_up_then_is_promoted() {
    let mut c = Cluster::new(3, 1, |_| {}, false);
    let g = GroupId(1);
    c.elect_all(1);
    for i in 0..100 {
        c.propose(g, vec![put(&format!("k{i}"), &[2; 100])])
            .expect("commit");
    }
    c.start_learner(NodeId(4), g); // created empty; the leader adds it
    let leader = c.leader_of(g).expect("leader");
    let (tx, mut rx) = oneshot::channel();
    c.core(leader)
        .change_membership(g, &[MembershipChange::AddLearner(NodeId(4))], tx);
    assert!(c.drive_until(50, |_| matches!(
        rx.try_recv(),
        Ok(Ok(_)) | Err(oneshot::error::TryRecvError::Closed)
    )));
    let ok = c.drive_until(200, |c| c.converged(g));
    if !ok {
        let l = c.leader_of(g).expect("leader");
        let a = format!(
            "{:?} {:?}",
            c.core(NodeId(4)).status(g),
            c.core(NodeId(4)).metrics()
        );
        let b = format!("{:?} {:?}", c.core(l).status(g), c.core(l).metrics());
        panic!("learner did not catch up: {a} / leader {b}");
    }
    let st = c.core(NodeId(4)).status(g).expect("status");
    assert_eq!(st.learners, vec![NodeId(4)]);
    assert_ne!(st.role, Role::Leader);
    assert_eq!(c.nodes[&NodeId(4)].reg.kv(g).len(), 100);
    // A learner never campaigns, even with the leader gone for a long time.
    let (tx, mut rx) = oneshot::channel();
    let leader = c.leader_of(g).expect("leader");
    c.core(leader)
        .change_membership(g, &[MembershipChange::AddVoter(NodeId(4))], tx);
    let mut voters = None;
    assert!(c.drive_until(50, |_| {
        if let Ok(r) = rx.try_recv() {
            voters = Some(r);
        }
        voters.is_some()
    }));
    assert_eq!(
        voters.expect("answered").expect("promoted"),
        vec![NodeId(1), NodeId(2), NodeId(3), NodeId(4)]
    );
    assert!(
        c.drive_until(50, |c| c.core(NodeId(4)).status(g).map(|s| s.voters.len())
            == Ok(4))
    );
}

#[test]
fn learner_never_campaigns() {
    let mut c = Cluster::new(3, 1, |_| {}, false);
    let g = GroupId(1);
    c.elect_all(1);
    let leader = c.leader_of(g).expect("leader");
    let learner = c
        .live()
        .into_iter()
        .find(|n| *n != leader)
        .expect("follower");
    let (tx, mut rx) = oneshot::channel();
    // Demote a voter to learner with a joint change: AddLearner of an existing voter.
    c.core(leader)
        .change_membership(g, &[MembershipChange::AddLearner(learner)], tx);
    let mut answered = None;
    assert!(c.drive_until(50, |_| {
        if let Ok(r) = rx.try_recv() {
            answered = Some(r);
        }
        answered.is_some()
    }));
    answered.expect("answered").expect("demoted");
    assert!(c.drive_until(50, |c| c
        .core(learner)
        .status(g)
        .map(|s| s.learners.contains(&learner))
        == Ok(true)));
    // Kill every other node: the learner alone must never become (pre)candidate.
    for n in c.live() {
        if n != learner {
            c.crash(n);
        }
    }
    for _ in 0..100 {
        c.tick();
        let st = c.core(learner).status(g).expect("status");
        assert_eq!(st.role, Role::Follower, "learner changed role: {st:?}");
    }
}

/// Three nodes, one group (group, leader, the follower): the follower crashed, then 300 writes
/// of 200 bytes committed, past small snapshot thresholds (compaction soon, a state of many
/// chunks), so it can only catch up by a snapshot.
fn follower_down_while_the_log_compacts() -> (Cluster, GroupId, NodeId, NodeId) {
    let tweak = |c: &mut MultiRaftConfig| {
        c.snapshot_threshold_entries = 50;
        c.install_snapshot_chunk_bytes = 4096;
    };
    let mut c = Cluster::new(3, 1, tweak, false);
    let g = GroupId(1);
    c.elect_all(1);
    let leader = c.leader_of(g).expect("leader");
    let lagger = c
        .live()
        .into_iter()
        .find(|n| *n != leader)
        .expect("follower");
    c.crash(lagger);
    for i in 0..300 {
        c.propose(g, vec![put(&format!("key-{i:05}"), &[i as u8; 200])])
            .expect("commit");
    }
    (c, g, leader, lagger)
}

/// The leader's snapshot file damaged at rest (one byte, its size kept) after it was written:
/// the leader finds it while sending (the file's xxh3 is not the recorded one), sends none of
/// its last chunk, and builds a new snapshot that the lagging follower installs. Before, every
/// retry sent the damaged file and the follower refused it, so it never caught up.
#[test]
fn a_leader_whose_snapshot_file_was_damaged_sends_a_new_one() {
    let (mut c, g, leader, lagger) = follower_down_while_the_log_compacts();
    let damaged_index = c.core(leader).status(g).expect("status").snapshot_index;
    assert!(damaged_index > 0, "the leader compacted its log");
    let snapshots = c.nodes[&leader].cfg.data_dir.join("snapshots");
    let prefix = format!("g{}-i{:020}-", g.0, damaged_index);
    let damaged = std::fs::read_dir(&snapshots)
        .expect("snapshots dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".snap"))
        })
        .expect("the leader's snapshot file");
    let mut bytes = std::fs::read(&damaged).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&damaged, &bytes).expect("damage");
    c.restart(lagger);
    let ok = c.drive_until(300, |c| c.converged(g));
    let lm = c.core(leader).metrics().clone();
    assert!(ok, "the lagger did not converge: leader {lm:?}");
    assert!(
        Metrics::get(&lm.snapshot_files_damaged) >= 1,
        "found: {lm:?}"
    );
    assert!(
        c.core(leader).status(g).expect("status").snapshot_index > damaged_index,
        "a new snapshot replaced it"
    );
    assert!(!damaged.exists(), "the damaged file is gone");
    let m = c.core(lagger).metrics().clone();
    assert!(Metrics::get(&m.snapshots_installed) >= 1, "{m:?}");
    assert_eq!(
        c.nodes[&lagger].reg.kv(g).digest(),
        c.nodes[&leader].reg.kv(g).digest()
    );
}

#[test]
fn lagging_follower_receives_a_chunked_snapshot_and_converges() {
    let (mut c, g, leader, lagger) = follower_down_while_the_log_compacts();
    let st = c.core(leader).status(g).expect("status");
    assert!(st.snapshot_index > 0, "leader compacted its log: {st:?}");
    let kv_bytes: usize = 300 * 210;
    assert!(kv_bytes > 4096 * 10, "state spans many chunks");
    c.restart(lagger);
    let ok = c.drive_until(300, |c| c.converged(g));
    let m = c.core(lagger).metrics().clone();
    let lm = c.core(leader).metrics().clone();
    assert!(
        ok,
        "lagging follower did not converge: {m:?} leader {lm:?} {:?} {:?}",
        c.core(lagger).status(g),
        c.core(leader).status(g)
    );
    assert!(
        Metrics::get(&m.snapshots_received) >= 1,
        "caught up via snapshot"
    );
    assert!(Metrics::get(&m.snapshots_installed) >= 1);
    assert!(m.snapshot_apply_seconds.snapshot().count >= 1, "install");
    assert!(lm.snapshot_send_seconds.snapshot().count >= 1, "send");
    assert!(lm.proposal_commit_seconds.snapshot().count >= 300);
    assert!(lm.wal_fsync_seconds.snapshot().count >= 1, "fsyncs");
    assert!(lm.apply_batch_seconds.snapshot().count >= 1, "applies");
    assert_eq!(c.nodes[&lagger].reg.kv(g).len(), 300);
    assert_eq!(
        c.nodes[&lagger].reg.kv(g).digest(),
        c.nodes[&leader].reg.kv(g).digest()
    );
    // The follower can restart from its own snapshot + log.
    c.crash(lagger);
    c.restart(lagger);
    // Its snapshot is the one it installed or a later one of its own (taken once the log
    // holds a quarter of the last snapshot's size: past ~200 of the 300 keys here).
    assert!(
        c.nodes[&lagger].reg.kv(g).len() >= 200,
        "state restored from the local snapshot before any message"
    );
    assert!(c.drive_until(100, |c| c.converged(g)));
    assert_eq!(c.nodes[&lagger].reg.kv(g).len(), 300);
    let m = c.core(lagger).metrics().clone();
    assert_eq!(
        Metrics::get(&m.snapshots_received),
        0,
        "no second transfer needed"
    );
}

#[test]
fn hosts_256_groups_per_node() {
    let mut c = Cluster::new(3, 256, |_| {}, false);
    c.elect_all(256);
    for g in 1..=256 {
        c.propose(GroupId(g), vec![put("k", b"v")]).expect("commit");
    }
    assert!(c.drive_until(50, |c| (1..=256).all(|g| c.converged(GroupId(g)))));
    // One tick drives all groups: rounds are shared, so fsyncs ≪ groups × ticks.
    let m = c.core(NodeId(1)).metrics().clone();
    assert!(Metrics::get(&m.fsyncs) > 0);
}

/// Writes keep flowing while a learner joins (on-demand snapshot, compaction on the leader),
/// with frames reordered and 5% of them dropped: no node may ever panic (raft-rs asserts its
/// log invariants), and all converge.
#[test]
fn learner_joins_under_load_with_reordering_and_loss() {
    let mut c = Cluster::new(3, 1, |_| {}, false);
    let g = GroupId(1);
    c.elect_all(1);
    c.net.set_reorder(true);
    for a in 1..=4u64 {
        for b in 1..=4u64 {
            if a != b {
                c.net.set_drop_ppm(NodeId(a), NodeId(b), 50_000);
            }
        }
    }
    c.start_learner(NodeId(4), g); // created empty; the leader adds it
    let mut pending = Vec::new();
    let mut added = false;
    for round in 0..400u32 {
        if let Some(l) = c.leader_of(g) {
            for i in 0..10 {
                let (tx, rx) = oneshot::channel();
                c.core(l)
                    .propose(g, &[put(&format!("r{round}-{i}"), &[1; 50])], tx);
                pending.push(rx);
            }
            if round == 20 && !added {
                let (tx, _rx) = oneshot::channel();
                c.core(l)
                    .change_membership(g, &[MembershipChange::AddLearner(NodeId(4))], tx);
                added = true;
            }
        }
        c.tick();
    }
    for a in 1..=4u64 {
        for b in 1..=4u64 {
            c.net.set_drop_ppm(NodeId(a), NodeId(b), 0);
        }
    }
    assert!(c.drive_until(300, |c| c.converged(g)), "did not converge");
    let acked = pending
        .into_iter()
        .filter_map(|mut rx| rx.try_recv().ok())
        .filter(|r| r.is_ok())
        .count();
    assert!(acked > 1000, "only {acked} proposals acknowledged");
}

#[test]
fn removed_group_fails_pending_requests_and_stays_removed_after_restart() {
    let mut c = Cluster::new(3, 2, |_| {}, true);
    c.elect_all(2);
    c.propose(GroupId(2), vec![put("x", b"1")]).expect("commit");
    let id = NodeId(1);
    let (tx, mut rx) = oneshot::channel();
    c.core(id).read_index(GroupId(2), tx);
    c.core(id).remove_group(GroupId(2)).expect("remove");
    assert!(matches!(
        rx.try_recv(),
        Ok(Err(RaftError::GroupNotFound { .. }))
    ));
    let (tx, mut rx) = oneshot::channel();
    c.core(id).propose(GroupId(2), &[put("y", b"1")], tx);
    assert!(matches!(
        rx.try_recv(),
        Ok(Err(RaftError::GroupNotFound { .. }))
    ));
    c.crash(id);
    c.restart(id);
    assert_eq!(
        c.core(id).group_ids(),
        vec![GroupId(1)],
        "removal survives restart"
    );
    assert!(c.drive_until(100, |c| c.converged(GroupId(1))));
}

#[test]
fn config_errors_name_the_field() {
    let mut cfg = MultiRaftConfig::new(NodeId(1), "/nonexistent");
    cfg.election_ticks = 1;
    match cfg.validate() {
        Err(nodedb_multiraft::EngineError::Config { field, .. }) => {
            assert_eq!(field, "election_ticks")
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    let mut cfg = MultiRaftConfig::new(NodeId(1), "/nonexistent");
    cfg.max_uncommitted_bytes = cfg.max_size_per_msg_bytes;
    assert!(matches!(
        cfg.validate(),
        Err(nodedb_multiraft::EngineError::Config {
            field: "max_uncommitted_bytes",
            ..
        })
    ));
    let mut cfg = MultiRaftConfig::new(NodeId(0), "/nonexistent");
    cfg.tick_interval = std::time::Duration::from_millis(10);
    assert!(matches!(
        cfg.validate(),
        Err(nodedb_multiraft::EngineError::Config {
            field: "node_id",
            ..
        })
    ));
}

#[test]
fn leader_transfer_moves_leadership_to_the_named_voter() {
    let mut c = Cluster::new(3, 1, |_| {}, false);
    let g = GroupId(1);
    c.elect_all(1);
    c.propose(g, vec![put("a", b"1")]).expect("commit");
    let old = c.leader_of(g).expect("leader");
    let target = c.live().into_iter().find(|n| *n != old).expect("follower");
    let follower = c
        .live()
        .into_iter()
        .find(|n| *n != old && *n != target)
        .expect("third");
    assert!(matches!(
        c.core(follower).transfer_leader(g, target),
        Err(RaftError::NotLeader { .. })
    ));
    c.core(old).transfer_leader(g, target).expect("transfer");
    assert!(
        c.drive_until(50, |c| c.leader_of(g) == Some(target)),
        "leadership did not move to {target}"
    );
    let out = c
        .propose(g, vec![put("b", b"2")])
        .expect("commit under the new leader");
    assert!(out.index > 0);
}

#[test]
fn joint_change_replaces_a_voter_in_one_step() {
    let mut c = Cluster::new(3, 1, |_| {}, false);
    let g = GroupId(1);
    c.elect_all(1);
    for i in 0..20 {
        c.propose(g, vec![put(&format!("k{i}"), b"v")])
            .expect("commit");
    }
    c.start_learner(NodeId(4), g); // created empty; the leader adds it
    let leader = c.leader_of(g).expect("leader");
    let (tx, mut rx) = oneshot::channel();
    c.core(leader)
        .change_membership(g, &[MembershipChange::AddLearner(NodeId(4))], tx);
    assert!(c.drive_until(50, |_| rx.try_recv().is_ok()));
    assert!(c.drive_until(200, |c| c.converged(g)), "learner caught up");
    // Promote 4 and remove a follower that is not the leader, atomically (joint consensus,
    // left automatically by raft).
    let leader = c.leader_of(g).expect("leader");
    let gone = c
        .live()
        .into_iter()
        .find(|n| *n != leader && *n != NodeId(4))
        .expect("a follower");
    let (tx, mut rx) = oneshot::channel();
    c.core(leader).change_membership(
        g,
        &[
            MembershipChange::AddVoter(NodeId(4)),
            MembershipChange::Remove(gone),
        ],
        tx,
    );
    let mut voters = None;
    assert!(c.drive_until(50, |_| {
        if let Ok(r) = rx.try_recv() {
            voters = Some(r);
        }
        voters.is_some()
    }));
    let voters = voters.expect("answered").expect("joint change applied");
    assert!(
        voters.contains(&NodeId(4)) && !voters.contains(&gone),
        "{voters:?}"
    );
    // The joint config is left automatically: the final config has no outgoing voters.
    assert!(c.drive_until(50, |c| {
        c.core(leader)
            .status(g)
            .map(|s| s.voters.len() == 3 && s.voters_outgoing.is_empty())
            .unwrap_or(false)
    }));
    c.propose(g, vec![put("after", b"1")])
        .expect("commit in the new config");
}

#[test]
fn wal_rolls_and_compacts_behind_snapshots_and_restarts_from_what_is_left() {
    let tweak = |c: &mut MultiRaftConfig| c.snapshot_threshold_entries = 100;
    let mut c = Cluster::new(3, 2, tweak, true);
    c.elect_all(2);
    for i in 0..800u32 {
        let g = GroupId(1 + u64::from(i % 2));
        c.propose(g, vec![put(&format!("k{i}"), &[3; 200])])
            .expect("commit");
    }
    let id = NodeId(3);
    let wal_dir = c.nodes[&id].cfg.data_dir.join("raft");
    let seqs: Vec<u64> = std::fs::read_dir(&wal_dir)
        .expect("wal dir")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            u64::from_str_radix(name.strip_suffix(".wal")?, 16).ok()
        })
        .collect();
    let newest = seqs.iter().copied().max().unwrap_or(0);
    // 800 x ~250 B of entries ≈ 200 KB ≈ 12+ segments of 16 KiB were written...
    assert!(
        newest >= 8,
        "the log rolled many times: newest segment {newest}"
    );
    // ...and compaction deleted the ones behind every group's snapshot.
    assert!(seqs.len() < 4, "old segments deleted: {seqs:?}");
    assert!(c.drive_until(50, |c| (1..=2).all(|g| c.converged(GroupId(g)))));
    let before: Vec<_> = (1..=2)
        .map(|g| c.core(id).status(GroupId(g)).expect("status"))
        .collect();
    c.crash(id);
    c.restart(id);
    for (g, b) in (1..=2).zip(before) {
        let after = c.core(id).status(GroupId(g)).expect("status");
        assert_eq!(
            after.last_index, b.last_index,
            "{g}: log tail survives compaction"
        );
        assert_eq!(after.term, b.term);
        assert!(after.snapshot_index > 0);
    }
    assert!(c.drive_until(100, |c| (1..=2).all(|g| c.converged(GroupId(g)))));
    assert_eq!(c.nodes[&id].reg.kv(GroupId(1)).len(), 400);
}

/// Big entries compact the log by bytes long before the entry count would: the in-memory log
/// stays bounded, and a replica that fell behind is fed one snapshot instead of the history.
#[test]
fn big_entries_compact_the_log_by_bytes() {
    let tweak = |c: &mut MultiRaftConfig| {
        c.snapshot_threshold_entries = 1_000_000; // never by count in this test
        c.snapshot_threshold_bytes = 64 << 10;
    };
    let mut c = Cluster::new(3, 1, tweak, false);
    let g = GroupId(1);
    c.elect_all(1);
    let leader = c.leader_of(g).expect("leader");
    let lagger = c
        .live()
        .into_iter()
        .find(|n| *n != leader)
        .expect("follower");
    c.crash(lagger);
    for i in 0..40 {
        // 40 entries of ~8 KiB: 320 KiB, five times the byte threshold.
        c.propose(g, vec![put(&format!("big-{i:03}"), &[i as u8; 8 << 10])])
            .expect("commit");
    }
    let st = c.core(leader).status(g).expect("status");
    assert!(
        st.snapshot_index > 0,
        "the leader compacted by bytes: {st:?}"
    );
    c.restart(lagger);
    assert!(
        c.drive_until(300, |c| c.converged(g)),
        "the lagging node converged"
    );
    let m = c.core(lagger).metrics().clone();
    assert!(
        Metrics::get(&m.snapshots_installed) >= 1,
        "it was fed a snapshot"
    );
    assert_eq!(c.nodes[&lagger].reg.kv(g).len(), 40);
}

/// A follower that crashes after installing a received snapshot but before the round that
/// records it is durable restarts from its previous snapshot: the older snapshot files are only
/// removed once the new mark is synced (they were removed first, and the restart found its
/// newest durable mark's file gone).
#[test]
fn a_crash_before_a_received_snapshot_is_durable_keeps_the_previous_one() {
    let (mut c, g, _, lagger) = follower_down_while_the_log_compacts();
    c.restart(lagger);
    let sink = match &c.nodes[&lagger].sink {
        sim::Sink::Mem(m) => m.clone(),
        sim::Sink::Wal(_) => unreachable!("an in-memory log"),
    };
    // Every sync of the follower now meets a full disk: the install round stalls unsynced.
    sink.fail_no_space(0, u32::MAX);
    let installed = c.drive_until(300, |c| {
        Metrics::get(&c.core(lagger).metrics().snapshots_installed) >= 1
    });
    assert!(installed, "the follower installed the leader's snapshot");
    c.crash(lagger); // its unsynced records (the new mark) are lost
    sink.fail_no_space(0, 0);
    c.net.set_down(lagger, false);
    let net = c.net.clone();
    let reopened = c.nodes.get_mut(&lagger).expect("node").try_open(&net);
    let mut core = reopened.expect("the previous snapshot is still there to restart from");
    core.set_inline_snapshot_work(true); // deterministic, as every node of the sim
    c.nodes.get_mut(&lagger).expect("node").core = Some(core);
    assert!(
        c.drive_until(300, |c| c.converged(g)),
        "and it catches up again"
    );
    assert_eq!(c.nodes[&lagger].reg.kv(g).len(), 300);
}
