//! Identifier newtypes: a node id and a group id are never confused with an index or a count.

use std::fmt;

/// A node's Raft id. Raft reserves 0 ("no node"), so valid ids start at 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

/// A Raft group. Group 0 is the metadata group; data groups are 1..N.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub u64);

impl NodeId {
    /// Raft's "no node" id: what raft-rs reports as the leader when none is known.
    pub const NONE: NodeId = NodeId(0);

    /// `None` for raft-rs's 0 ("unknown"), else the id.
    pub fn from_raft(id: u64) -> Option<NodeId> {
        (id != 0).then_some(NodeId(id))
    }
}

impl GroupId {
    /// The metadata group: always applied by Python.
    pub const METADATA: GroupId = GroupId(0);
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}
