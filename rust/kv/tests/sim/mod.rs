//! The simulated-cluster harness of `sim_cluster.rs` and `sim_cluster_faults.rs`: KV groups
//! whose state machine also hashes the exact applied sequence, on memory or WAL logs.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::common::{SimCluster, SimNode};
use nodedb_kv::{KvReader, KvStateMachine, KV_STATE_MACHINE};
use nodedb_multiraft::core::ProposeOutcome;
use nodedb_multiraft::error::{EngineError, RaftError, SmError};
use nodedb_multiraft::log_sink::{LogSink, MemLogSink};
use nodedb_multiraft::network::SimNetwork;
use nodedb_multiraft::state_machine::{Command, StateMachine, StateMachineKind};
use nodedb_multiraft::wal_sink::WalSink;
use nodedb_multiraft::{GroupId, GroupRole, Metrics, MultiRaftConfig, MultiRaftCore, NodeId};

/// KV plus a rolling hash of the exact applied (index, command) sequence: equal hashes on two
/// nodes mean they applied the same commands in the same order.
pub(crate) struct SeqKv {
    pub(crate) kv: KvStateMachine,
    pub(crate) seq: Arc<Mutex<(u64, u64)>>,
}

impl StateMachine for SeqKv {
    fn apply_batch(&mut self, commands: &[Command<'_>]) -> Result<Vec<Vec<u8>>, SmError> {
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
pub(crate) const WAL_SEGMENT_BYTES: u64 = 16 << 10;

/// (applied command count, rolling hash) of one group.
pub(crate) type SeqCell = Arc<Mutex<(u64, u64)>>;

#[derive(Default, Clone)]
pub(crate) struct Registry {
    pub(crate) kv: Arc<Mutex<HashMap<GroupId, KvReader>>>,
    pub(crate) seq: Arc<Mutex<HashMap<GroupId, SeqCell>>>,
}

impl Registry {
    pub(crate) fn factory(&self) -> Box<dyn nodedb_multiraft::StateMachineFactory> {
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
    pub(crate) fn seq(&self, g: GroupId) -> (u64, u64) {
        let m = self.seq.lock().expect("lock");
        m.get(&g)
            .map(|s| *s.lock().expect("lock"))
            .unwrap_or((0, 0))
    }
    pub(crate) fn kv(&self, g: GroupId) -> KvReader {
        self.kv.lock().expect("lock")[&g].clone()
    }
}

pub(crate) enum Sink {
    Mem(MemLogSink),
    Wal(std::path::PathBuf),
}

pub(crate) type Node = SimNode<Sink, Registry>;
pub(crate) type Cluster = SimCluster<Sink, Registry>;

impl Cluster {
    /// `n` nodes (ids 1..=n), each founding voter of `groups` KV groups 1..=groups.
    pub(crate) fn new(
        n: u64,
        groups: u64,
        tweak: impl Fn(&mut MultiRaftConfig),
        wal: bool,
    ) -> Cluster {
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
    pub(crate) fn start_learner(&mut self, id: NodeId, g: GroupId) {
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

    pub(crate) fn leader_of(&self, g: GroupId) -> Option<NodeId> {
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

    pub(crate) fn elect_all(&mut self, groups: u64) {
        let ok = self.drive_until(400, |c| {
            (1..=groups).all(|g| c.leader_of(GroupId(g)).is_some())
        });
        assert!(ok, "not every group elected a leader within 400 ticks");
    }

    /// Proposes through the current leader and drives until answered.
    pub(crate) fn propose(
        &mut self,
        g: GroupId,
        cmds: Vec<Vec<u8>>,
    ) -> Result<ProposeOutcome, RaftError> {
        let leader = self.leader_of(g).ok_or(RaftError::NotLeader {
            group: g,
            leader_hint: None,
        })?;
        self.propose_via(leader, None, g, &cmds)
    }

    pub(crate) fn live(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.core.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    pub(crate) fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node");
        node.core = None;
        if let Sink::Mem(m) = &node.sink {
            m.crash();
        }
        self.net.set_down(id, true);
    }

    pub(crate) fn restart(&mut self, id: NodeId) {
        self.net.set_down(id, false);
        let net = self.net.clone();
        self.nodes.get_mut(&id).expect("node").open(&net);
    }

    /// (applied commands, rolling hash) of `g` on every live node agree.
    pub(crate) fn converged(&self, g: GroupId) -> bool {
        let seqs: Vec<(u64, u64)> = self
            .live()
            .iter()
            .map(|id| self.nodes[id].reg.seq(g))
            .collect();
        seqs.windows(2).all(|w| w[0] == w[1])
    }
}

impl Node {
    pub(crate) fn open(&mut self, net: &SimNetwork) {
        let mut core = self.try_open(net).expect("core open");
        core.set_inline_snapshot_work(true);
        self.core = Some(core);
    }

    pub(crate) fn try_open(&mut self, net: &SimNetwork) -> Result<MultiRaftCore, EngineError> {
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
