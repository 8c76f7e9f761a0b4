//! Deterministic in-process clusters: several `MultiRaftCore`s over a `SimNetwork`, driven by
//! hand (tick, deliver, round) — no threads, no clock, bounded loops that report convergence.
//!
//! Each test states its claim; each wait is a bounded drive that fails the test if the
//! condition never holds.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use common::{put, SimCluster, SimNode};
use nodedb_kv::{KvReader, KvResult, KvStateMachine, KV_STATE_MACHINE};
use nodedb_multiraft::core::ProposeOutcome;
use nodedb_multiraft::error::{EngineError, RaftError, SmError};
use nodedb_multiraft::log_sink::{LogSink, MemLogSink};
use nodedb_multiraft::network::SimNetwork;
use nodedb_multiraft::state_machine::{Command, StateMachine, StateMachineKind};
use nodedb_multiraft::wal_sink::WalSink;
use nodedb_multiraft::{
    GroupId, GroupRole, LostTailPolicy, MembershipChange, Metrics, MultiRaftConfig, MultiRaftCore,
    NodeId, Role,
};
use tokio::sync::oneshot;

/// KV plus a rolling hash of the exact applied (index, command) sequence: equal hashes on two
/// nodes mean they applied the same commands in the same order.
struct SeqKv {
    kv: KvStateMachine,
    seq: Arc<Mutex<(u64, u64)>>,
}

impl StateMachine for SeqKv {
    fn apply_batch(&mut self, commands: &[Command<'_>]) -> Vec<Vec<u8>> {
        let mut s = self.seq.lock().expect("seq lock");
        for c in commands {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(&s.1.to_le_bytes());
            h.update(&c.index.to_le_bytes());
            h.update(c.data);
            s.1 = h.digest();
            s.0 += 1;
        }
        drop(s);
        self.kv.apply_batch(commands)
    }
    fn commit_broadcast_wanted(&self) -> bool {
        self.kv.commit_broadcast_wanted()
    }
    fn snapshot(&self) -> Result<Vec<u8>, SmError> {
        let s = *self.seq.lock().expect("seq lock");
        let mut out = s.0.to_le_bytes().to_vec();
        out.extend_from_slice(&s.1.to_le_bytes());
        out.extend_from_slice(&self.kv.snapshot()?);
        Ok(out)
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), SmError> {
        if data.len() < 16 {
            return Err(SmError::Decode("short SeqKv snapshot".into()));
        }
        let mut a = [0u8; 8];
        a.copy_from_slice(&data[..8]);
        let n = u64::from_le_bytes(a);
        a.copy_from_slice(&data[8..16]);
        let h = u64::from_le_bytes(a);
        self.kv.restore(&data[16..])?;
        *self.seq.lock().expect("seq lock") = (n, h);
        Ok(())
    }
}

/// Segment size of the WAL-backed test nodes.
const WAL_SEGMENT_BYTES: u64 = 16 << 10;

/// (applied command count, rolling hash) of one group.
type SeqCell = Arc<Mutex<(u64, u64)>>;

#[derive(Default, Clone)]
struct Registry {
    kv: Arc<Mutex<HashMap<GroupId, KvReader>>>,
    seq: Arc<Mutex<HashMap<GroupId, SeqCell>>>,
}

impl Registry {
    fn factory(&self) -> Box<dyn nodedb_multiraft::StateMachineFactory> {
        let reg = self.clone();
        Box::new(
            move |g: GroupId, _k: StateMachineKind| -> Result<Box<dyn StateMachine>, SmError> {
                let kv = KvStateMachine::new();
                let seq = Arc::new(Mutex::new((0u64, 0u64)));
                reg.kv.lock().expect("lock").insert(g, kv.reader());
                reg.seq.lock().expect("lock").insert(g, Arc::clone(&seq));
                Ok(Box::new(SeqKv { kv, seq }))
            },
        )
    }
    fn seq(&self, g: GroupId) -> (u64, u64) {
        let m = self.seq.lock().expect("lock");
        m.get(&g)
            .map(|s| *s.lock().expect("lock"))
            .unwrap_or((0, 0))
    }
    fn kv(&self, g: GroupId) -> KvReader {
        self.kv.lock().expect("lock")[&g].clone()
    }
}

enum Sink {
    Mem(MemLogSink),
    Wal(std::path::PathBuf),
}

type Node = SimNode<Sink, Registry>;
type Cluster = SimCluster<Sink, Registry>;

impl Cluster {
    /// `n` nodes (ids 1..=n), each founding voter of `groups` KV groups 1..=groups.
    fn new(n: u64, groups: u64, tweak: impl Fn(&mut MultiRaftConfig), wal: bool) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let net = SimNetwork::new(42, 100_000);
        let mut nodes = BTreeMap::new();
        let peers: Vec<NodeId> = (1..=n).map(NodeId).collect();
        for id in 1..=n {
            let mut cfg = MultiRaftConfig::new(NodeId(id), dir.path().join(format!("n{id}")));
            tweak(&mut cfg);
            let sink = if wal {
                Sink::Wal(cfg.data_dir.join("raft"))
            } else {
                Sink::Mem(MemLogSink::new())
            };
            let mut node = Node {
                core: None,
                sink,
                reg: Registry::default(),
                cfg,
            };
            node.open(&net);
            let core = node.core.as_mut().expect("open");
            for g in 1..=groups {
                core.add_group(
                    GroupId(g),
                    GroupRole::Voter {
                        peers: peers.clone(),
                    },
                    KV_STATE_MACHINE,
                )
                .expect("add group");
            }
            nodes.insert(NodeId(id), node);
        }
        Cluster { net, nodes, dir }
    }

    /// A new node `id` (in-memory log) with an empty learner replica of `g`, not yet in its
    /// configuration: the leader still has to add it.
    fn start_learner(&mut self, id: NodeId, g: GroupId) {
        let mut node = Node {
            core: None,
            sink: Sink::Mem(MemLogSink::new()),
            reg: Registry::default(),
            cfg: MultiRaftConfig::new(id, self.dir.path().join(format!("n{}", id.0))),
        };
        node.open(&self.net);
        node.core
            .as_mut()
            .expect("up")
            .add_group(g, GroupRole::Learner, KV_STATE_MACHINE)
            .expect("learner group");
        self.nodes.insert(id, node);
    }

    fn leader_of(&self, g: GroupId) -> Option<NodeId> {
        let leaders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter_map(|(id, n)| n.core.as_ref().filter(|c| c.is_leader(g)).map(|_| *id))
            .collect();
        // Two leaders may coexist briefly in different terms; the highest term wins.
        leaders.into_iter().max_by_key(|id| {
            self.nodes[id]
                .core
                .as_ref()
                .and_then(|c| c.status(g).ok())
                .map(|s| s.term)
        })
    }

    fn elect_all(&mut self, groups: u64) {
        let ok = self.drive_until(400, |c| {
            (1..=groups).all(|g| c.leader_of(GroupId(g)).is_some())
        });
        assert!(ok, "not every group elected a leader within 400 ticks");
    }

    /// Proposes through the current leader and drives until answered.
    fn propose(&mut self, g: GroupId, cmds: Vec<Vec<u8>>) -> Result<ProposeOutcome, RaftError> {
        let leader = self.leader_of(g).ok_or(RaftError::NotLeader {
            group: g,
            leader_hint: None,
        })?;
        let (tx, mut rx) = oneshot::channel();
        self.core(leader).propose(g, &cmds, tx);
        for _ in 0..100 {
            self.pump();
            if let Ok(r) = rx.try_recv() {
                return r;
            }
            self.tick();
        }
        panic!("proposal to {g} not answered within 100 ticks");
    }

    fn live(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.core.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node");
        node.core = None;
        if let Sink::Mem(m) = &node.sink {
            m.crash();
        }
        self.net.set_down(id, true);
    }

    fn restart(&mut self, id: NodeId) {
        self.net.set_down(id, false);
        let net = self.net.clone();
        self.nodes.get_mut(&id).expect("node").open(&net);
    }

    /// (applied commands, rolling hash) of `g` on every live node agree.
    fn converged(&self, g: GroupId) -> bool {
        let seqs: Vec<(u64, u64)> = self
            .live()
            .iter()
            .map(|id| self.nodes[id].reg.seq(g))
            .collect();
        seqs.windows(2).all(|w| w[0] == w[1])
    }
}

impl Node {
    fn open(&mut self, net: &SimNetwork) {
        let mut core = self.try_open(net).expect("core open");
        core.set_inline_snapshot_sends(true);
        self.core = Some(core);
    }

    fn try_open(&mut self, net: &SimNetwork) -> Result<MultiRaftCore, EngineError> {
        let sink: Box<dyn LogSink> = match &self.sink {
            Sink::Mem(m) => Box::new(m.clone()),
            Sink::Wal(dir) => Box::new(
                WalSink::open(
                    dir,
                    nodedb_wal::WalOptions {
                        // Small segments so rolls and compaction happen within a test.
                        segment_bytes_max: WAL_SEGMENT_BYTES,
                        write_buffer_bytes: 4096,
                        ..nodedb_wal::WalOptions::default()
                    },
                )
                .expect("wal open"),
            ),
        };
        MultiRaftCore::open(
            self.cfg.clone(),
            sink,
            Arc::new(net.endpoint(self.cfg.node_id)),
            self.reg.factory(),
            Arc::new(Metrics::default()),
        )
    }
}

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

#[test]
fn lagging_follower_receives_a_chunked_snapshot_and_converges() {
    // Small thresholds so compaction happens quickly and the state spans many chunks.
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
    assert_eq!(c.nodes[&lagger].reg.kv(g).len(), 300);
    assert_eq!(
        c.nodes[&lagger].reg.kv(g).digest(),
        c.nodes[&leader].reg.kv(g).digest()
    );
    // The follower can restart from its own snapshot + log.
    c.crash(lagger);
    c.restart(lagger);
    assert!(
        c.nodes[&lagger].reg.kv(g).len() >= 250,
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
