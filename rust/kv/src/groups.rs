//! The KV groups of one node: the state-machine factory's KV half, and a reader of each
//! group's state for reads served after a ReadIndex round (no trip through the driver).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use nodedb_multiraft::GroupId;

use crate::state_machine::{KvReader, KvStateMachine};

/// Shared by the node's state-machine factory (which registers every KV group it creates)
/// and the serving side (which reads them).
#[derive(Clone, Default)]
pub struct KvGroups {
    readers: Arc<Mutex<HashMap<GroupId, KvReader>>>,
}

impl KvGroups {
    fn readers(&self) -> MutexGuard<'_, HashMap<GroupId, KvReader>> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new KV state machine for `group`, registered for reads (replacing an earlier one of
    /// the same group: the engine re-creates a group's machine when it restores a snapshot).
    pub fn create(&self, group: GroupId) -> KvStateMachine {
        let kv = KvStateMachine::new();
        self.readers().insert(group, kv.reader());
        kv
    }

    /// The reader of `group`, if it runs the KV on this node.
    pub fn reader(&self, group: GroupId) -> Option<KvReader> {
        self.readers().get(&group).cloned()
    }

    /// The groups that run the KV on this node (the ones its follower-read refresher keeps
    /// confirmed).
    pub fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.readers().keys().map(|g| g.0).collect();
        ids.sort_unstable();
        ids
    }

    /// Forget `group` (removed from this node).
    pub fn remove(&self, group: GroupId) {
        self.readers().remove(&group);
    }
}
