//! The values the core's API takes and gives: replies, outcomes, roles, status.

use raft::StateRole;
use tokio::sync::oneshot;

use crate::error::RaftError;
use crate::ids::{GroupId, NodeId};

/// How one request is answered: exactly once, from the driver thread. A oneshot sender for
/// async Rust callers; the Python binding settles its asyncio future directly (no extra hop).
pub struct Reply<T>(Box<dyn FnOnce(Result<T, RaftError>) + Send>);

impl<T> Reply<T> {
    pub fn new(f: impl FnOnce(Result<T, RaftError>) + Send + 'static) -> Self {
        Reply(Box::new(f))
    }
    /// Answers the request (a dropped receiver is fine: the caller gave up).
    pub fn send(self, r: Result<T, RaftError>) {
        (self.0)(r)
    }
}

impl<T: Send + 'static> From<oneshot::Sender<Result<T, RaftError>>> for Reply<T> {
    fn from(tx: oneshot::Sender<Result<T, RaftError>>) -> Self {
        Reply::new(move |r| {
            let _ = tx.send(r);
        })
    }
}

/// Where a read may read: once applied through `index`. `by_lease`: the leader answered from
/// the caller's read lease, not after a quorum round, so it confirms no new lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPoint {
    pub index: u64,
    pub by_lease: bool,
}

/// A proposal's outcome: the entry's index and one state-machine result per command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposeOutcome {
    pub index: u64,
    pub results: Vec<Vec<u8>>,
}

/// How a group starts on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRole {
    /// A founding voter: every founding member is created with the same `peers` (this node
    /// included) and no log.
    Voter { peers: Vec<NodeId> },
    /// Joins an existing group: starts empty and learns log/snapshot and membership from the
    /// leader, after the control plane added it as a learner there (`ConfChange`).
    Learner,
}

/// A raft role, as reported in status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl From<StateRole> for Role {
    fn from(r: StateRole) -> Self {
        match r {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// A group's state on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: GroupId,
    pub role: Role,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Non-empty while a joint configuration is in effect (the voters being replaced).
    pub voters_outgoing: Vec<NodeId>,
    /// On the leader: the highest log index known replicated on each member (itself included);
    /// empty elsewhere. A learner whose `matched` reached the leader's commit has caught up.
    pub matched: Vec<(NodeId, u64)>,
}

/// A membership change, expressed as raft-rs ConfChangeV2 steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    AddLearner(NodeId),
    /// Promote a learner (or add a new voter) — with others in one joint change if many.
    AddVoter(NodeId),
    Remove(NodeId),
}
