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

/// One reply for many requests: `slot(i)` answers request `i`, and the reply gets every
/// answer, in order, once the last one arrives. Used to propose several entries in one call
/// and answer them together (`MultiRaft::propose_each_for_with`).
pub struct Gather<T> {
    state: std::sync::Mutex<GatherState<T>>,
}

struct GatherState<T> {
    answers: Vec<Option<Result<T, RaftError>>>,
    left: usize,
    reply: Option<Reply<Vec<Result<T, RaftError>>>>,
}

impl<T: Send + 'static> Gather<T> {
    /// A gather of `n` answers; `n == 0` answers at once with none.
    pub fn new(n: usize, reply: Reply<Vec<Result<T, RaftError>>>) -> std::sync::Arc<Self> {
        let reply = if n == 0 {
            reply.send(Ok(Vec::new()));
            None
        } else {
            Some(reply)
        };
        std::sync::Arc::new(Gather {
            state: std::sync::Mutex::new(GatherState {
                answers: (0..n).map(|_| None).collect(),
                left: n,
                reply,
            }),
        })
    }

    /// The reply of request `i`; the last of the `n` to be sent sends the whole.
    pub fn slot(self: &std::sync::Arc<Self>, i: usize) -> Reply<T> {
        let gather = std::sync::Arc::clone(self);
        Reply::new(move |answer| {
            let done = {
                let mut state = gather.state.lock().unwrap_or_else(|p| p.into_inner());
                let Some(place) = state.answers.get_mut(i) else {
                    return;
                };
                if place.is_some() {
                    return; // a slot answers once
                }
                *place = Some(answer);
                state.left -= 1;
                if state.left > 0 {
                    return;
                }
                let answers = std::mem::take(&mut state.answers);
                state.reply.take().map(|reply| (reply, answers))
            };
            if let Some((reply, answers)) = done {
                let answers = answers.into_iter().flatten().collect();
                reply.send(Ok(answers));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    type Answers<T> = std::sync::mpsc::Receiver<Vec<Result<T, RaftError>>>;

    fn collected<T: Send + 'static>(n: usize) -> (std::sync::Arc<Gather<T>>, Answers<T>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let gather = Gather::new(
            n,
            Reply::new(move |r: Result<Vec<Result<T, RaftError>>, RaftError>| {
                let _ = tx.send(r.expect("a gather never fails as a whole"));
            }),
        );
        (gather, rx)
    }

    #[test]
    fn a_gather_answers_once_in_request_order_after_the_last_slot() {
        let (gather, rx) = collected::<u64>(3);
        let slots: Vec<_> = (0..3).map(|i| gather.slot(i)).collect();
        let mut slots = slots.into_iter();
        let (a, b, c) = (
            slots.next().unwrap(),
            slots.next().unwrap(),
            slots.next().unwrap(),
        );
        c.send(Ok(30));
        a.send(Err(RaftError::Busy { reason: "full" }));
        assert!(rx.try_recv().is_err(), "not before the last slot");
        b.send(Ok(20));
        let answers = rx.try_recv().expect("answered");
        assert!(matches!(answers[0], Err(RaftError::Busy { .. })));
        assert_eq!(answers[1].as_ref().ok(), Some(&20));
        assert_eq!(answers[2].as_ref().ok(), Some(&30));
        assert!(rx.try_recv().is_err(), "once");
    }

    #[test]
    fn a_gather_of_nothing_answers_at_once() {
        let (_gather, rx) = collected::<u64>(0);
        assert!(rx.try_recv().expect("answered").is_empty());
    }
}
