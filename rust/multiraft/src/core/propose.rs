//! Proposals: commands into a group's log, each entry answered once it is applied here.
//!
//! A call proposes one entry holding many commands (`propose_for`: the KV server's group
//! commit, whose state machine answers per command) or many entries of one command each
//! (`propose_each_for`: a host's concurrent proposals, whose state machine sees one index per
//! command). Either way the entries go to raft in ONE proposal message: one append and one
//! broadcast to the followers, however many entries.

use raft::prelude::{Entry, Message, MessageType};
use raft::StateRole;

use super::{MultiRaftCore, ProposeOutcome, Reply};
use crate::codec::{encode_commands, entry_refusal};
use crate::error::RaftError;
use crate::group::{Group, PendingProposal};
use crate::ids::{GroupId, NodeId};
use crate::metrics::Metrics;
use crate::state_machine::StateMachineKind;

impl MultiRaftCore {
    /// Proposes one entry holding `commands`; `reply` gets (index, one result per command)
    /// after commit and apply, or a typed error.
    pub fn propose(
        &mut self,
        gid: GroupId,
        commands: &[Vec<u8>],
        reply: impl Into<Reply<ProposeOutcome>>,
    ) {
        self.propose_for(None, gid, commands, reply);
    }

    /// [`MultiRaftCore::propose`] of commands written for the `kind` state machine: refused
    /// unless the group runs that one. A request path that speaks one state machine's language
    /// (the KV protocol) must not feed another group's log — group 0's metadata machine, or a
    /// host's — with bytes that group would take for its own commands.
    pub fn propose_for(
        &mut self,
        kind: Option<StateMachineKind>,
        gid: GroupId,
        commands: &[Vec<u8>],
        reply: impl Into<Reply<ProposeOutcome>>,
    ) {
        let reply = reply.into();
        if let Some(reason) = entry_refusal(commands) {
            self.refused(reply, RaftError::Invalid { reason });
            return;
        }
        self.propose_entries(kind, gid, vec![(encode_commands(commands), reply)]);
    }

    /// Each of `commands` as its own entry, `replies[i]` answering `commands[i]`; all in one
    /// raft proposal. A command no entry can hold is refused alone.
    pub fn propose_each_for(
        &mut self,
        kind: Option<StateMachineKind>,
        gid: GroupId,
        commands: Vec<Vec<u8>>,
        replies: Vec<Reply<ProposeOutcome>>,
    ) {
        let mut entries = Vec::with_capacity(commands.len());
        for (command, reply) in commands.into_iter().zip(replies) {
            let one = [command];
            match entry_refusal(&one) {
                Some(reason) => self.refused(reply, RaftError::Invalid { reason }),
                None => entries.push((encode_commands(&one), reply)),
            }
        }
        if !entries.is_empty() {
            self.propose_entries(kind, gid, entries);
        }
    }

    /// `entries` (encoded entry data, its reply) appended in order by one raft proposal. A
    /// refusal of the group (not leader, no space, another state machine) answers all; past the
    /// group's room for pending proposals the rest are answered `Busy`, alone.
    fn propose_entries(
        &mut self,
        kind: Option<StateMachineKind>,
        gid: GroupId,
        mut entries: Vec<(Vec<u8>, Reply<ProposeOutcome>)>,
    ) {
        let limit = self.cfg.pending_proposals_max;
        let no_space = self.disk.refuses_writes().then(|| self.data_dir());
        let room = (|| {
            let g = self.group_mut(gid)?;
            if let Some(kind) = kind {
                if g.meta.sm_kind != kind.tag() {
                    return Err(RaftError::Invalid {
                        reason: format!("group {} does not run {kind}", gid.0),
                    });
                }
            }
            writable_leader(g, gid, no_space.as_deref())?;
            Ok(limit.saturating_sub(g.proposals.len()))
        })();
        let over = match room {
            Ok(room) => entries.split_off(room.min(entries.len())),
            Err(e) => {
                for (_, reply) in entries {
                    self.refused(reply, e.clone());
                }
                return;
            }
        };
        for (_, reply) in over {
            let reason = "too many pending proposals in this group";
            self.refused(reply, RaftError::Busy { reason });
        }
        if entries.is_empty() {
            return;
        }
        let count = entries.len();
        let (datas, replies): (Vec<_>, Vec<_>) = entries.into_iter().unzip();
        let r = (|| -> Result<(u64, u64), RaftError> {
            let g = self.group_mut(gid)?;
            let before = g.raw.raft.raft_log.last_index();
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgPropose);
            m.from = g.raw.raft.id;
            m.set_entries(
                datas
                    .into_iter()
                    .map(|data| Entry {
                        data: data.into(),
                        ..Entry::default()
                    })
                    .collect::<Vec<_>>()
                    .into(),
            );
            g.raw.raft.step(m).map_err(|_| RaftError::Busy {
                reason: "raft dropped the proposal (uncommitted limit or leader transfer)",
            })?;
            let last = g.raw.raft.raft_log.last_index();
            debug_assert_eq!(last, before + count as u64);
            Ok((before + 1, g.raw.raft.term))
        })();
        match r {
            Ok((first, term)) => {
                Metrics::add(&self.metrics.proposals, count as u64);
                if let Some(g) = self.groups.get_mut(&gid) {
                    let started = std::time::Instant::now();
                    for (index, reply) in (first..).zip(replies) {
                        g.proposals.push_back(PendingProposal {
                            index,
                            term,
                            started,
                            reply,
                        });
                    }
                }
            }
            Err(e) => {
                for reply in replies {
                    self.refused(reply, e.clone());
                }
            }
        }
    }

    fn refused(&self, reply: Reply<ProposeOutcome>, e: RaftError) {
        if matches!(e, RaftError::Busy { .. }) {
            Metrics::inc(&self.metrics.proposals_busy);
        }
        if matches!(e, RaftError::NoSpace { .. }) {
            Metrics::inc(&self.metrics.proposals_no_space);
        }
        reply.send(Err(e));
    }
}

/// Whether `g` may take a new entry here: it must lead (else `NotLeader` with its hint) and
/// the disk must have room (`no_space`: NO_SPACE or a stalled round; every entry is a write
/// every member must persist). A follower names the leader first, whose disk may have room.
pub(super) fn writable_leader(
    g: &Group,
    gid: GroupId,
    no_space: Option<&std::path::Path>,
) -> Result<(), RaftError> {
    if g.raw.raft.state != StateRole::Leader {
        return Err(RaftError::NotLeader {
            group: gid,
            leader_hint: NodeId::from_raft(g.raw.raft.leader_id),
        });
    }
    if let Some(data_dir) = no_space {
        return Err(RaftError::NoSpace {
            data_dir: data_dir.to_path_buf(),
        });
    }
    Ok(())
}
