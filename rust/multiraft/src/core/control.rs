//! Control of one group: membership changes, leader transfer, campaigns, status.

use super::propose::writable_leader;
use super::*;

impl MultiRaftCore {
    /// Proposes a membership change (ConfChangeV2; several changes enter a joint config that
    /// raft leaves automatically). `reply` gets the voters after it applied.
    pub fn change_membership(
        &mut self,
        gid: GroupId,
        changes: &[MembershipChange],
        reply: impl Into<Reply<Vec<NodeId>>>,
    ) {
        let reply = reply.into();
        let no_space = self.disk.refuses_writes().then(|| self.data_dir());
        let r = (|| {
            let g = self.group_mut(gid)?;
            // A conf change is an entry every member must persist, a shrinking one too.
            writable_leader(g, gid, no_space.as_deref())?;
            if changes.is_empty() || changes.iter().any(|c| node_of(c).0 == 0) {
                return Err(RaftError::Invalid {
                    reason: format!("bad membership change {changes:?}"),
                });
            }
            let mut cc = ConfChangeV2::default();
            cc.set_changes(
                changes
                    .iter()
                    .map(|c| {
                        let mut s = raft::prelude::ConfChangeSingle::default();
                        let (t, n) = match c {
                            MembershipChange::AddLearner(n) => {
                                (raft::prelude::ConfChangeType::AddLearnerNode, n)
                            }
                            MembershipChange::AddVoter(n) => {
                                (raft::prelude::ConfChangeType::AddNode, n)
                            }
                            MembershipChange::Remove(n) => {
                                (raft::prelude::ConfChangeType::RemoveNode, n)
                            }
                        };
                        s.set_change_type(t);
                        s.node_id = n.0;
                        s
                    })
                    .collect::<Vec<_>>()
                    .into(),
            );
            g.raw
                .propose_conf_change(Vec::new(), cc)
                .map_err(|e| RaftError::Invalid {
                    reason: format!("conf change refused: {e}"),
                })?;
            Ok((g.raw.raft.raft_log.last_index(), g.raw.raft.term))
        })();
        match r {
            Ok((index, term)) => {
                if let Some(g) = self.groups.get_mut(&gid) {
                    g.confs.push_back(PendingConf { index, term, reply });
                }
            }
            Err(e) => {
                if matches!(e, RaftError::NoSpace { .. }) {
                    Metrics::inc(&self.metrics.proposals_no_space);
                }
                reply.send(Err(e));
            }
        }
    }

    /// Asks the leader to hand leadership to `to` (raft's MsgTransferLeader).
    pub fn transfer_leader(&mut self, gid: GroupId, to: NodeId) -> Result<(), RaftError> {
        if self.disk.stalled() {
            return Err(RaftError::Busy { reason: STALLED });
        }
        let g = self.group_mut(gid)?;
        if g.raw.raft.state != StateRole::Leader {
            return Err(RaftError::NotLeader {
                group: gid,
                leader_hint: NodeId::from_raft(g.raw.raft.leader_id),
            });
        }
        g.lease_revoked_term = g.raw.raft.term;
        g.raw.transfer_leader(to.0);
        Ok(())
    }

    /// Starts an election now (tests and operator tools; normally the tick does this).
    pub fn campaign(&mut self, gid: GroupId) -> Result<(), RaftError> {
        if self.disk.stalled() {
            return Err(RaftError::Busy { reason: STALLED });
        }
        let g = self.group_mut(gid)?;
        g.raw.campaign().map_err(|e| RaftError::Invalid {
            reason: e.to_string(),
        })
    }

    /// The status of every group this node runs, in group order (one driver request for
    /// what would be one per group).
    pub fn statuses(&self) -> Vec<GroupStatus> {
        self.group_ids()
            .into_iter()
            .filter_map(|gid| self.status(gid).ok())
            .collect()
    }

    pub fn status(&self, gid: GroupId) -> Result<GroupStatus, RaftError> {
        let g = self
            .groups
            .get(&gid)
            .ok_or(RaftError::GroupNotFound { group: gid })?;
        let r = &g.raw.raft;
        let cs = r.store().conf_state();
        Ok(GroupStatus {
            group: gid,
            role: r.state.into(),
            term: r.term,
            leader: NodeId::from_raft(r.leader_id),
            commit_index: r.raft_log.committed,
            applied_index: g.applied_index,
            last_index: r.raft_log.last_index(),
            snapshot_index: r.store().snapshot_meta().index,
            voters: sorted_ids(&cs.voters),
            learners: sorted_ids(&cs.learners),
            voters_outgoing: sorted_ids(&cs.voters_outgoing),
            matched: if r.state == StateRole::Leader {
                let mut m: Vec<(NodeId, u64)> = r
                    .prs()
                    .iter()
                    .map(|(id, pr)| (NodeId(*id), pr.matched))
                    .collect();
                m.sort_unstable();
                m
            } else {
                Vec::new()
            },
        })
    }

    /// TEST HOOK: this node's randomized election timeout of `gid`, in ticks (raft-rs draws it
    /// at random on every term change); lets deterministic tests order candidates.
    #[doc(hidden)]
    pub fn set_election_timeout_ticks(&mut self, gid: GroupId, ticks: usize) {
        if let Some(g) = self.groups.get_mut(&gid) {
            g.raw.raft.set_randomized_election_timeout(ticks);
        }
    }

    /// Every group whose known leader or term changed since the last call, as (group, leader,
    /// term), oldest first (leader 0: none known, or the group was removed): the driver
    /// publishes them (`MultiRaft::wait_leader`).
    pub fn take_leader_changes(&mut self) -> Vec<(GroupId, u64, u64)> {
        std::mem::take(&mut self.leader_changes)
    }

    /// Does this node lead `gid`?
    pub fn is_leader(&self, gid: GroupId) -> bool {
        self.groups
            .get(&gid)
            .is_some_and(|g| g.raw.raft.state == StateRole::Leader)
    }
}
