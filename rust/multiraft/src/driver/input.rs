//! The driver's inputs: every command and inbound frame the engine's thread takes, and how it
//! handles or refuses each one.

use super::*;
use crate::core::Gather;

pub(super) enum Input {
    Frame(Frame),
    Propose {
        /// When set, refused unless the group runs this state machine.
        kind: Option<StateMachineKind>,
        group: GroupId,
        commands: Vec<Vec<u8>>,
        reply: Reply<ProposeOutcome>,
    },
    /// Each command its own entry (`MultiRaft::propose_each_for_with`).
    ProposeEach {
        kind: Option<StateMachineKind>,
        group: GroupId,
        commands: Vec<Vec<u8>>,
        reply: Reply<Vec<Result<ProposeOutcome, RaftError>>>,
    },
    ReadIndex {
        group: GroupId,
        /// The caller's read lease, if it holds one (`MultiRaftCore::read_index_leased`).
        lease: Option<ReadLease>,
        /// How long the read may wait for its confirmation (None: the engine's bound).
        timeout: Option<Duration>,
        reply: Reply<ReadPoint>,
    },
    Membership {
        group: GroupId,
        changes: Vec<MembershipChange>,
        reply: Reply<Vec<NodeId>>,
    },
    TransferLeader {
        group: GroupId,
        to: NodeId,
        reply: Reply<()>,
    },
    Status {
        group: GroupId,
        reply: Reply<GroupStatus>,
    },
    ListGroups {
        reply: Reply<Vec<GroupId>>,
    },
    Statuses {
        reply: Reply<Vec<GroupStatus>>,
    },
    AddGroup {
        group: GroupId,
        role: GroupRole,
        kind: StateMachineKind,
        reply: Reply<()>,
    },
    RemoveGroup {
        group: GroupId,
        reply: Reply<()>,
    },
    SnapshotNow {
        group: GroupId,
        reply: Reply<()>,
    },
    Campaign {
        group: GroupId,
        reply: Reply<()>,
    },
    Shutdown,
}

/// An engine error of a request into what its caller sees; a full disk is `NoSpace` naming
/// the node's data dir.
fn engine_err(core: &MultiRaftCore, e: EngineError) -> RaftError {
    match e {
        EngineError::GroupNotFound(group) => RaftError::GroupNotFound { group },
        e if e.is_no_space() => RaftError::NoSpace {
            data_dir: core.config().data_dir.clone(),
        },
        other => RaftError::Invalid {
            reason: other.to_string(),
        },
    }
}

/// Returns true on Shutdown.
pub(super) fn handle(core: &mut MultiRaftCore, input: Input, shared: &Shared) -> bool {
    if matches!(input, Input::Frame(_)) {
        shared.inbound_queued.fetch_sub(1, Ordering::AcqRel);
    } else if !matches!(input, Input::Shutdown) {
        shared.commands_queued.fetch_sub(1, Ordering::AcqRel);
    }
    match input {
        Input::Frame(f) => core.step_frame(f),
        Input::Propose {
            kind,
            group,
            commands,
            reply,
        } => core.propose_for(kind, group, &commands, reply),
        Input::ProposeEach {
            kind,
            group,
            commands,
            reply,
        } => {
            let gather = Gather::new(commands.len(), reply);
            let replies = (0..commands.len()).map(|i| gather.slot(i)).collect();
            core.propose_each_for(kind, group, commands, replies);
        }
        Input::ReadIndex {
            group,
            lease,
            timeout,
            reply,
        } => core.read_index_leased(group, lease, timeout, reply),
        Input::Membership {
            group,
            changes,
            reply,
        } => core.change_membership(group, &changes, reply),
        Input::TransferLeader { group, to, reply } => {
            reply.send(core.transfer_leader(group, to));
        }
        Input::Status { group, reply } => {
            reply.send(core.status(group));
        }
        Input::ListGroups { reply } => {
            reply.send(Ok(core.group_ids()));
        }
        Input::Statuses { reply } => {
            reply.send(Ok(core.statuses()));
        }
        Input::AddGroup {
            group,
            role,
            kind,
            reply,
        } => {
            let r = core.add_group(group, role, kind);
            reply.send(r.map_err(|e| engine_err(core, e)));
        }
        Input::RemoveGroup { group, reply } => {
            let r = core.remove_group(group);
            reply.send(r.map_err(|e| engine_err(core, e)));
        }
        Input::SnapshotNow { group, reply } => {
            let r = core.snapshot_group(group);
            reply.send(r.map_err(|e| engine_err(core, e)));
        }
        Input::Campaign { group, reply } => {
            reply.send(core.campaign(group));
        }
        Input::Shutdown => return true,
    }
    false
}

pub(super) fn refuse(input: Input, reason: &str) {
    refuse_with(
        input,
        RaftError::Stopped {
            reason: reason.to_string(),
        },
    );
}

/// Answers a command that will never run with `e`.
pub(super) fn refuse_with(input: Input, e: RaftError) {
    match input {
        Input::Propose { reply, .. } => reply.send(Err(e)),
        Input::ProposeEach { reply, .. } => reply.send(Err(e)),
        Input::ReadIndex { reply, .. } => reply.send(Err(e)),
        Input::Membership { reply, .. } => reply.send(Err(e)),
        Input::TransferLeader { reply, .. } => reply.send(Err(e)),
        Input::Status { reply, .. } => reply.send(Err(e)),
        Input::Statuses { reply } => reply.send(Err(e)),
        Input::ListGroups { reply } => reply.send(Err(e)),
        Input::AddGroup { reply, .. } => reply.send(Err(e)),
        Input::RemoveGroup { reply, .. } => reply.send(Err(e)),
        Input::SnapshotNow { reply, .. } => reply.send(Err(e)),
        Input::Campaign { reply, .. } => reply.send(Err(e)),
        Input::Frame(_) | Input::Shutdown => {}
    }
}
