//! The simulated cluster of the engine's tests (and nodedb-kv's, which include this file):
//! several `MultiRaftCore`s over a `SimNetwork`, driven by hand (tick, deliver, round) — no
//! threads, no clock, bounded loops. Generic over each node's log (`S`) and the registry its
//! state machines report to (`R`).

use std::collections::BTreeMap;
use std::sync::Arc;

use nodedb_multiraft::core::ProposeOutcome;
use nodedb_multiraft::error::RaftError;
use nodedb_multiraft::log_sink::MemLogSink;
use nodedb_multiraft::network::SimNetwork;
use nodedb_multiraft::{
    GroupId, GroupRole, Metrics, MultiRaftConfig, MultiRaftCore, NodeId, StateMachineFactory,
    StateMachineKind,
};
use tokio::sync::oneshot;

/// One node of a [`SimCluster`]: its core (`None` while it is down), its log (`S`), where its
/// state machines register for the test to read them (`R`), and its configuration.
pub struct SimNode<S, R> {
    pub core: Option<MultiRaftCore>,
    pub sink: S,
    pub reg: R,
    pub cfg: MultiRaftConfig,
}

/// Several `MultiRaftCore`s over a `SimNetwork`, driven by hand (tick, deliver, round): no
/// threads, no clock, bounded loops. A round error fails the test.
pub struct SimCluster<S, R> {
    pub net: SimNetwork,
    pub nodes: BTreeMap<NodeId, SimNode<S, R>>,
    /// Where the nodes keep their data.
    pub dir: tempfile::TempDir,
}

impl<S, R> SimCluster<S, R> {
    pub fn core(&mut self, id: NodeId) -> &mut MultiRaftCore {
        self.nodes
            .get_mut(&id)
            .and_then(|n| n.core.as_mut())
            .expect("node is up")
    }

    /// Delivers frames and runs rounds until nothing moves (bounded).
    pub fn pump(&mut self) {
        for _ in 0..200 {
            let mut moved = false;
            for (id, node) in self.nodes.iter_mut() {
                let Some(core) = node.core.as_mut() else {
                    continue;
                };
                for f in self.net.drain(*id) {
                    moved = true;
                    core.step_frame(f);
                }
                if core.round().expect("round") > 0 {
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    pub fn tick(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(c) = node.core.as_mut() {
                c.tick();
            }
        }
        self.pump();
    }

    /// Ticks until `cond` holds; false after `ticks_max` ticks.
    pub fn drive_until(
        &mut self,
        ticks_max: usize,
        mut cond: impl FnMut(&mut SimCluster<S, R>) -> bool,
    ) -> bool {
        for _ in 0..ticks_max {
            self.pump();
            if cond(self) {
                return true;
            }
            self.tick();
        }
        cond(self)
    }
}

impl<R> SimCluster<MemLogSink, R> {
    /// `n` nodes (ids 1..=n) on in-memory logs, each a founding voter of `group` running
    /// `kind`; `node(log)` prepares a node's log and gives its registry and factory.
    pub fn founding(
        n: u64,
        group: GroupId,
        kind: StateMachineKind,
        node: impl FnMut(&MemLogSink) -> (R, Box<dyn StateMachineFactory>),
    ) -> Self {
        Self::founding_with(n, group, kind, |_| {}, node)
    }

    /// [`SimCluster::founding`] with every node's configuration changed by `tweak`.
    pub fn founding_with(
        n: u64,
        group: GroupId,
        kind: StateMachineKind,
        tweak: impl Fn(&mut MultiRaftConfig),
        mut node: impl FnMut(&MemLogSink) -> (R, Box<dyn StateMachineFactory>),
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let net = SimNetwork::new(7, 100_000);
        let peers: Vec<NodeId> = (1..=n).map(NodeId).collect();
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let mut cfg = MultiRaftConfig::new(NodeId(id), dir.path().join(format!("n{id}")));
            tweak(&mut cfg);
            let sink = MemLogSink::new();
            let (reg, factory) = node(&sink);
            let mut core = MultiRaftCore::open(
                cfg.clone(),
                Box::new(sink.clone()),
                Arc::new(net.endpoint(NodeId(id))),
                factory,
                Arc::new(Metrics::default()),
            )
            .expect("open");
            let role = GroupRole::Voter {
                peers: peers.clone(),
            };
            core.add_group(group, role, kind).expect("add group");
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
        SimCluster { net, nodes, dir }
    }
}

impl<S, R> SimCluster<S, R> {
    /// A live node that leads `group` now, if any.
    pub fn a_leader(&self, group: GroupId) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|(_, n)| n.core.as_ref().is_some_and(|c| c.is_leader(group)))
            .map(|(id, _)| *id)
    }

    /// Drives until `group` has a leader and its followers know it; that leader.
    pub fn elect(&mut self, group: GroupId) -> NodeId {
        let elected = self.drive_until(400, |c| c.a_leader(group).is_some());
        assert!(elected, "{group}: no leader within 400 ticks");
        self.drive_until(20, |_| false); // followers learn the leader
        self.a_leader(group).expect("leader")
    }

    /// Proposes `cmds` to `group` through node `at` (written for `kind`, when given) and
    /// drives until answered (100 ticks at most).
    pub fn propose_via(
        &mut self,
        at: NodeId,
        kind: Option<StateMachineKind>,
        group: GroupId,
        cmds: &[Vec<u8>],
    ) -> Result<ProposeOutcome, RaftError> {
        let (tx, mut rx) = oneshot::channel();
        self.core(at).propose_for(kind, group, cmds, tx);
        for _ in 0..100 {
            self.pump();
            if let Ok(outcome) = rx.try_recv() {
                return outcome;
            }
            self.tick();
        }
        panic!("proposal to {group} not answered within 100 ticks");
    }
}
