//! Reads at every level on the serving node: each group's share of a request is decided at
//! once ([`Freshness`]: local now, or after a shared ReadIndex round) and then answered from
//! the local state; the follower-read refresher keeps groups confirmed while follower reads
//! come in.
//!
//! A share's round starts when the request arrives (every group of a request at once), and the
//! request then waits for its shares in turn: the groups' rounds overlap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use nodedb_multiraft::error::RaftError;
use nodedb_multiraft::{GroupId, MultiRaft};
use nodedb_wire::ReadLevel;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::freshness::{Decision, Freshness, REFRESH_INTERVAL, REFRESH_ROUND_TIMEOUT};
use super::group_commit::{clocks, entry, Clocks, GroupCtx, ReadShare};
use super::reply_room::{NoRoom, ReplyRoom};
use super::request::ReadAt;
use super::ServeOptions;
use crate::groups::KvGroups;
use crate::keys_read::{read_keys, Found};

/// Remembered read shares, at most (the map is cleared past it; running rounds finish).
const SHARES_MAX: usize = 4096;

/// Why a group's share of a read got no values.
#[derive(Debug)]
pub(super) enum ReadFail {
    /// This node does not run the KV of the group: (leader hint or 0).
    NotHere(u64),
    /// A follower read whose replica could not be confirmed within its staleness: age in s.
    Stale(f64),
    Raft(RaftError),
    /// No room for a value in the node's replies in flight, or (for a requester that takes no
    /// partial answer) in the reply.
    NoRoom(NoRoom),
}

/// A group's share of a read as far as the reply had room: the values of its first keys, in
/// order, and whether the reply was full before the rest.
pub(super) struct Values {
    pub found: Vec<Found>,
    pub full: bool,
}

/// A group's share of a read, decided: values now, or after a round.
pub(super) struct Pending {
    group: u64,
    wait: Wait,
}

impl Pending {
    pub(super) fn group(&self) -> u64 {
        self.group
    }
}

enum Wait {
    Local,
    NotHere(u64),
    Round {
        receiver: oneshot::Receiver<Result<(), RaftError>>,
        /// A follower read's age when it was decided: refused with it if the round fails.
        stale_age_s: Option<f64>,
    },
}

/// The read side of a node's KV server.
pub(super) struct ReadPath {
    engine: Weak<MultiRaft>,
    groups: KvGroups,
    runtime: Handle,
    clocks: Clocks,
    shares: Mutex<HashMap<u64, Arc<ReadShare>>>,
}

impl ReadPath {
    pub(super) fn new(
        engine: Weak<MultiRaft>,
        groups: KvGroups,
        runtime: Handle,
        clocks: Clocks,
    ) -> Arc<Self> {
        Arc::new(ReadPath {
            engine,
            groups,
            runtime,
            clocks,
            shares: Mutex::new(HashMap::new()),
        })
    }

    /// What `group`'s batcher or read share works with on this node.
    pub(super) fn ctx(&self, group: u64) -> GroupCtx {
        GroupCtx {
            group: GroupId(group),
            engine: self.engine.clone(),
            runtime: self.runtime.clone(),
            clocks: Arc::clone(&self.clocks),
            groups: self.groups.clone(),
        }
    }

    fn share(&self, group: u64) -> Arc<ReadShare> {
        entry(&self.shares, group, SHARES_MAX, || {
            ReadShare::new(self.ctx(group))
        })
    }

    /// The leader of `group` this node knows, or 0; never this node, which has just found it
    /// cannot serve the group (group 0, or a host's group, which it may lead): a requester sent
    /// back to it asked again, and again (attack probe, session 31).
    pub(super) fn hint(&self, group: u64) -> u64 {
        self.engine
            .upgrade()
            .and_then(|e| e.leader(GroupId(group)).filter(|n| *n != e.node_id()))
            .map_or(0, |n| n.0)
    }

    /// Decide `group`'s share of a read at `at`, answered by `deadline`; starts its round now
    /// if it needs one.
    pub(super) fn start(self: &Arc<Self>, group: u64, at: ReadAt, deadline: Instant) -> Pending {
        if self.groups.reader(GroupId(group)).is_none() {
            return Pending {
                group,
                wait: Wait::NotHere(self.hint(group)),
            };
        }
        let now = Instant::now();
        let (decision, follower) = self.decide(group, at, now);
        let wait = match decision {
            Decision::Local => Wait::Local,
            Decision::Confirm { bound, age_s } => {
                let until = bound
                    .and_then(|b| now.checked_add(b))
                    .map_or(deadline, |b| b.min(deadline));
                Wait::Round {
                    receiver: self.share(group).wait(until),
                    stale_age_s: follower.then_some(age_s),
                }
            }
        };
        Pending { group, wait }
    }

    /// `keys` of `group` read at `at` in the calling thread, when this node may answer them now
    /// without a round (the same decision as [`Self::start`]'s); None when it may not, or when a
    /// key's vShard is not served by `group` here now: the caller sends a request instead.
    pub(super) fn read_now(
        self: &Arc<Self>,
        group: u64,
        at: ReadAt,
        keys: &[&[u8]],
    ) -> Option<Vec<Option<Vec<u8>>>> {
        self.groups.reader(GroupId(group))?;
        match self.decide(group, at, Instant::now()).0 {
            // The state is taken, and read, after the decision (as `finish` does): see
            // `MultiRaft::lease_read` for why that order makes a leased read linearizable.
            Decision::Local => {
                let reader = self.groups.reader(GroupId(group))?;
                let (found, _) = read_keys(&reader, keys, |_| Ok::<(), ()>(()));
                found.into_iter().map(Result::ok).collect()
            }
            Decision::Confirm { .. } => None,
        }
    }

    /// Whether `group` may be read here at `now` at once, or only after a round; and whether
    /// the read is a follower read (its age is its refusal if the round fails).
    fn decide(self: &Arc<Self>, group: u64, at: ReadAt, now: Instant) -> (Decision, bool) {
        let mut clocks = clocks(&self.clocks);
        match at.level {
            // `lease` is `linearizable` since the leader's engine checks the lease
            // (freshness.rs); it was a weaker, server-only decision before.
            ReadLevel::Linearizable | ReadLevel::Lease => {
                // A leader whose lease holds reads here, now, without the driver
                // (`MultiRaft::lease_read`); it confirms, but earns no lease.
                let local = clocks.linearizable_lease(group).is_some_and(|lease| {
                    self.engine
                        .upgrade()
                        .is_some_and(|e| e.lease_read(GroupId(group), lease, now))
                });
                if local {
                    clocks.confirmed(group, now, false);
                }
                let decision = if local {
                    Decision::Local
                } else {
                    Decision::Confirm {
                        bound: None,
                        age_s: 0.0,
                    }
                };
                (decision, false)
            }
            ReadLevel::Follower => {
                if clocks.note_follower_read(now) {
                    self.start_refresher();
                }
                (clocks.follower_read(group, now, at.stale_s), true)
            }
        }
    }

    /// The values of `keys` once `pending` may read (None per absent key; a key whose vShard
    /// this group does not serve now, why), each given room in `room` before it is copied
    /// ([`read_keys`]: the group's lock is held for O(vShards)), until the reply is full.
    pub(super) async fn finish(
        &self,
        pending: Pending,
        keys: &[&[u8]],
        room: &mut ReplyRoom,
    ) -> Result<Values, ReadFail> {
        match pending.wait {
            Wait::Local => {}
            Wait::NotHere(hint) => return Err(ReadFail::NotHere(hint)),
            Wait::Round {
                receiver,
                stale_age_s,
            } => {
                let outcome = receiver.await.unwrap_or_else(|_| {
                    Err(RaftError::Stopped {
                        reason: "read round dropped".into(),
                    })
                });
                match (outcome, stale_age_s) {
                    (Ok(()), _) => {}
                    (
                        Err(
                            RaftError::Timeout { .. }
                            | RaftError::NotLeader { .. }
                            | RaftError::LeadershipLost { .. },
                        ),
                        Some(age_s),
                    ) => return Err(ReadFail::Stale(age_s)),
                    (Err(err), _) => return Err(ReadFail::Raft(err)),
                }
            }
        }
        let Some(reader) = self.groups.reader(GroupId(pending.group)) else {
            return Err(ReadFail::NotHere(self.hint(pending.group))); // removed meanwhile
        };
        let (found, stop) = read_keys(&reader, keys, |bytes| room.take(bytes));
        let full = match stop {
            None => false,
            Some(NoRoom::Reply) => true,
            Some(why @ NoRoom::Node) => return Err(ReadFail::NoRoom(why)),
        };
        room.settle().map_err(ReadFail::NoRoom)?;
        Ok(Values { found, full })
    }

    /// While follower reads come in, confirm every local group not confirmed within
    /// [`REFRESH_INTERVAL`], every [`REFRESH_INTERVAL`]; one task at most, holding the read
    /// path weakly (it ends with the server).
    fn start_refresher(self: &Arc<Self>) {
        let path = Arc::downgrade(self);
        self.runtime.spawn(async move { refresh(path).await });
    }
}

async fn refresh(path: Weak<ReadPath>) {
    loop {
        let receivers = {
            let Some(path) = path.upgrade() else {
                return;
            };
            let now = Instant::now();
            let local = path.groups.ids();
            let Some(due) = clocks(&path.clocks).refresh_due(&local, now) else {
                return;
            };
            let until = now + REFRESH_ROUND_TIMEOUT;
            due.into_iter()
                .map(|g| path.share(g).wait(until))
                .collect::<Vec<_>>()
        };
        for receiver in receivers {
            if let Ok(Err(RaftError::Stopped { .. })) | Err(_) = receiver.await {
                if let Some(path) = path.upgrade() {
                    clocks(&path.clocks).refresher_stopped();
                }
                return;
            }
        }
        tokio::time::sleep(REFRESH_INTERVAL).await; // a period, not a synchronisation
    }
}

/// A fresh set of clocks for a node whose minimum election timeout is `election_timeout_min`.
pub(super) fn new_clocks(election_timeout_min: Duration, options: ServeOptions) -> Clocks {
    let mut freshness = Freshness::new(election_timeout_min, Instant::now());
    freshness.set_linearizable_lease(options.lease);
    Arc::new(Mutex::new(freshness))
}
