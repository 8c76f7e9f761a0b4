//! Proposals on the serving node: each group's share of a `propose_many` (or the one group of a
//! `propose`) goes to the group's batcher (group commit); a probe's share that finds no usable
//! leader here waits for one (issue 13, failover tail).

use std::borrow::Cow;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use nodedb_multiraft::error::RaftError;
use nodedb_multiraft::{GroupId, MultiRaft, NodeId};
use nodedb_transport::HandlerResult;

use super::group_commit::{Batcher, Submitted};
use super::reply_room::REPLY_VALUE_BYTES_MAX;
use super::{any_refused, by_group, classify, encode, reply_of, KvServer};
use crate::command::KvResult;
use crate::peer_health::serve_budget_ms;
use crate::session_table::RESULT_KEPT_BYTES_MAX;

pub(super) struct GroupShare {
    group: u64,
    idx: Vec<usize>,
    submitted: Submitted,
    /// A probe's share: its batcher and commands, to propose again if this node comes to lead.
    again: Option<(Arc<Batcher>, Vec<Vec<u8>>)>,
}

/// A probe's wait for a leader (its `wl`: the nodes the client avoids).
pub(super) struct Park {
    engine: Weak<MultiRaft>,
    avoid: Vec<NodeId>,
    deadline: Instant,
}

impl Park {
    /// A NotLeader answer the probe may wait out: no leader known here, or only one the
    /// client avoids (it will be replaced).
    fn waits_for(&self, hint: Option<NodeId>) -> bool {
        hint.is_none_or(|h| self.avoid.contains(&h))
    }
}

impl KvServer {
    /// Split by group, submit each share to its batcher. With `wait_leader` (a probe) each
    /// share keeps its commands and batcher, to be proposed again here if this node becomes
    /// the leader while the share waits ([`answer`]).
    pub(super) fn submit(
        &self,
        gs: &[u64],
        cmds: Vec<Vec<u8>>,
        t: u64,
        wait_leader: Option<Vec<NodeId>>,
    ) -> (usize, Vec<GroupShare>, Option<Park>) {
        let deadline = Instant::now() + Duration::from_millis(serve_budget_ms(t));
        let total = cmds.len();
        let mut cmds: Vec<Option<Vec<u8>>> = cmds.into_iter().map(Some).collect();
        let park = wait_leader.map(|avoid| Park {
            engine: self.engine.clone(),
            avoid,
            deadline,
        });
        let shares = by_group(gs)
            .into_iter()
            .map(|(g, idx)| {
                let share: Vec<Vec<u8>> = idx
                    .iter()
                    .map(|&i| cmds[i].take().unwrap_or_default())
                    .collect();
                let batcher = self.batcher(g);
                let again = park.as_ref().map(|_| (Arc::clone(&batcher), share.clone()));
                let submitted = batcher.submit(share, deadline);
                GroupShare {
                    group: g,
                    idx,
                    submitted,
                    again,
                }
            })
            .collect();
        (total, shares, park)
    }
}

/// `propose_many`'s answer: results in place, NotLeader/unknown-group shares in "nlg",
/// unknown outcomes in "unk", any other failure fails the whole request. A share with a
/// refused command (Paused, Moved) goes in "unk" for a requester without `redirects`. A probe's share that
/// found no usable leader here waits for one (issue 13, failover tail): named in "nlg" as soon
/// as this node knows it (an avoided node only when elected during the wait), or proposed here
/// if that is this node; 0 when none came within the request's time.
pub(super) async fn answer(
    total: usize,
    shares: Vec<GroupShare>,
    park: Option<Park>,
    redirects: bool,
) -> HandlerResult {
    let mut reply = reply_of(total);
    for share in shares {
        let mut outcome = share.submitted.outcome().await;
        if let (Some(park), Some((batcher, cmds))) = (&park, share.again) {
            if let Err(RaftError::NotLeader { leader_hint, .. }) = &outcome {
                if park.waits_for(*leader_hint) {
                    match wait_for_leader(park, share.group).await {
                        Some((_, true)) => {
                            outcome = batcher.submit(cmds, park.deadline).outcome().await
                        }
                        Some((leader, false)) => {
                            reply.not_leader.push((share.group, leader.0));
                            continue;
                        }
                        None => {
                            // Still no usable leader: "none known", never the avoided one
                            // again (a probe's answer naming an avoided node means that node
                            // was elected since: the client may use it at once).
                            reply.not_leader.push((share.group, 0));
                            continue;
                        }
                    }
                }
            }
        }
        match outcome {
            Ok(results) if !redirects && any_refused(&results) => {
                reply.unknown.push(share.group); // see `refused_share`
            }
            Ok(results) => {
                for (i, r) in share.idx.into_iter().zip(results) {
                    reply.results[i] = Some(Cow::Owned(r));
                }
            }
            // A batch dropped unanswered is LeadershipLost: unknown, as a timeout.
            Err(err) => classify(&mut reply, share.group, err)?,
        }
    }
    fit_large_results(&mut reply.results);
    encode(reply)
}

/// Large results (a lost CAS's value) of several groups' shares, each share bounded by its
/// batch (`state_machine::RESULT_BATCH_BYTES_MAX`), past one reply's room are answered as
/// Duplicate (OutcomeUnknown to the client; such a command changed nothing), so the reply
/// still fits a frame.
fn fit_large_results(results: &mut [Option<Cow<'_, [u8]>>]) {
    let mut large = 0usize;
    for result in results.iter_mut().flatten() {
        if result.len() > RESULT_KEPT_BYTES_MAX {
            large += result.len();
            if large > REPLY_VALUE_BYTES_MAX {
                *result = Cow::Owned(KvResult::Duplicate.encode());
            }
        }
    }
}

/// The leader `park` waits for in `group`, and whether it is this node; None once its time is
/// up (or the engine is gone).
async fn wait_for_leader(park: &Park, group: u64) -> Option<(NodeId, bool)> {
    let engine = park.engine.upgrade()?;
    let left = park.deadline.saturating_duration_since(Instant::now());
    let leader = engine
        .wait_leader(GroupId(group), &park.avoid, left)
        .await?;
    Some((leader, leader == engine.node_id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_waits_only_for_a_leader_it_does_not_avoid() {
        let park = Park {
            engine: Weak::new(),
            avoid: vec![NodeId(3)],
            deadline: Instant::now(),
        };
        assert!(park.waits_for(None), "no leader known: wait for one");
        assert!(
            park.waits_for(Some(NodeId(3))),
            "only an avoided one: wait for another"
        );
        assert!(
            !park.waits_for(Some(NodeId(2))),
            "another leader: named at once"
        );
    }

    #[test]
    fn large_results_past_one_reply_are_answered_as_duplicate() {
        let big = KvResult::CasMismatch {
            current: Some(vec![1; 20 << 20]),
        }
        .encode();
        let small = KvResult::Ok { value: None }.encode();
        let mut results: Vec<Option<Cow<'_, [u8]>>> = vec![
            Some(Cow::Owned(big.clone())),
            Some(Cow::Owned(small.clone())),
            None,
            Some(Cow::Owned(big.clone())),
            Some(Cow::Owned(big.clone())),
            Some(Cow::Owned(big.clone())),
            Some(Cow::Owned(small.clone())),
        ];
        fit_large_results(&mut results);
        let duplicate = KvResult::Duplicate.encode();
        let got: Vec<Option<&[u8]>> = results.iter().map(|r| r.as_deref()).collect();
        assert_eq!(
            got,
            vec![
                Some(&big[..]),
                Some(&small[..]),
                None,
                Some(&big[..]),
                Some(&big[..]),
                Some(&duplicate[..]),
                Some(&small[..]),
            ]
        );
    }
}
