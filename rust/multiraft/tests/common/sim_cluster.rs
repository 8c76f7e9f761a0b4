//! The simulated cluster of the engine's tests (and nodedb-kv's, which include this file):
//! several `MultiRaftCore`s over a `SimNetwork`, driven by hand (tick, deliver, round) — no
//! threads, no clock, bounded loops. Generic over each node's log (`S`) and the registry its
//! state machines report to (`R`).

use std::collections::BTreeMap;

use nodedb_multiraft::network::SimNetwork;
use nodedb_multiraft::{MultiRaftConfig, MultiRaftCore, NodeId};

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
