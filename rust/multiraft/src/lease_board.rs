//! The read leases of the groups this node leads, as the driver last published them, for
//! readers on other threads: a linearizable read whose lease holds is answered from the local
//! state by the thread that received it, without a trip through the driver (TiKV's local
//! reader). One rule decides a lease, [`LeaseView::holds`], whether the driver checks it
//! (`MultiRaftCore::read_index_leased`) or a reader does ([`LeaseBoard::readable_now`]).
//!
//! Why a published view is enough:
//! - The lease is a time bound: no other node can be elected before it ends (check-quorum and
//!   pre-vote), whatever this node's driver learned since it published. The one exception, a
//!   leadership transfer, is published before any message of the round leaves: the driver
//!   publishes the view of every group with a Ready before it sends anything
//!   (`MultiRaftCore::round`), so no target gets its MsgTimeoutNow while a view still offers the
//!   lease.
//! - `committed` is published before a round sends anything, so it is at least every commit
//!   index another node or client has seen; `applied` is published once the entries are
//!   applied and before any of them is answered (`group::apply_run`). A view with
//!   `applied >= committed`, read after the read arrived, covers every write this node
//!   revealed before then; the lease, checked at an instant after the read arrived, rules out
//!   any other leader before then. So the local state read after the check holds every write
//!   anyone could have seen before the read arrived, and is a prefix of the log: linearizable
//!   (a pause after the check only lets later writes in).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::group::{leads_with_commit, Group, ReadLease};
use crate::ids::GroupId;

/// What a lease read of one group depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseView {
    /// When this node's current leadership began; None unless it leads with an entry of its
    /// term committed and has not started handing leadership away in its term.
    leading_since: Option<Instant>,
    committed: u64,
    applied: u64,
}

impl LeaseView {
    pub(crate) fn of(g: &Group) -> LeaseView {
        let serving = leads_with_commit(g)
            && g.raw.raft.lead_transferee.is_none()
            && g.lease_revoked_term != g.raw.raft.term;
        LeaseView {
            leading_since: if serving { g.leader_since } else { None },
            committed: g.raw.raft.raft_log.committed,
            applied: g.applied_index,
        }
    }

    /// May this node answer a read under `lease` at `now` without a quorum round? Only if
    /// the lease was earned while this node led continuously since, and has not ended.
    pub fn holds(&self, lease: ReadLease, now: Instant) -> bool {
        now < lease.until && self.leading_since.is_some_and(|since| since <= lease.from)
    }

    /// [`Self::holds`], and the local state covers every commit index published.
    pub fn readable_now(&self, lease: ReadLease, now: Instant) -> bool {
        self.holds(lease, now) && self.applied >= self.committed
    }

    /// Worth publishing: a view that could serve a lease read.
    fn leading(&self) -> bool {
        self.leading_since.is_some()
    }
}

/// Publishes `g`'s view to its engine's board if it changed since its last publication.
pub(crate) fn publish(g: &mut Group) {
    let view = LeaseView::of(g);
    if g.published_lease != Some(view) {
        g.published_lease = Some(view);
        g.lease_board.set(g.id, Some(view));
    }
}

/// The driver's published views of the groups this node leads.
#[derive(Debug, Default)]
pub struct LeaseBoard {
    views: Mutex<HashMap<GroupId, LeaseView>>,
}

impl LeaseBoard {
    fn views(&self) -> std::sync::MutexGuard<'_, HashMap<GroupId, LeaseView>> {
        self.views.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a read of `group` under `lease` be answered from the local state at `now`?
    pub fn readable_now(&self, group: GroupId, lease: ReadLease, now: Instant) -> bool {
        self.views()
            .get(&group)
            .is_some_and(|v| v.readable_now(lease, now))
    }

    /// Replaces the view of `group` (None: the group serves no lease read).
    pub(crate) fn set(&self, group: GroupId, view: Option<LeaseView>) {
        let mut views = self.views();
        match view.filter(LeaseView::leading) {
            Some(v) => views.insert(group, v),
            None => views.remove(&group),
        };
    }

    /// No lease read anywhere (the engine stopped).
    pub fn clear(&self) {
        self.views().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn view(since: Option<Instant>, committed: u64, applied: u64) -> LeaseView {
        LeaseView {
            leading_since: since,
            committed,
            applied,
        }
    }

    /// A lease earned at `t0` for a second, and an instant inside it.
    fn a_second_of_lease() -> (Instant, ReadLease, Instant) {
        let t0 = Instant::now();
        let lease = ReadLease {
            from: t0,
            until: t0 + Duration::from_secs(1),
        };
        (t0, lease, t0 + Duration::from_millis(1))
    }

    #[test]
    fn a_lease_holds_only_from_a_leadership_that_began_before_it_and_until_it_ends() {
        let t0 = Instant::now();
        let lease = ReadLease {
            from: t0 + Duration::from_millis(10),
            until: t0 + Duration::from_millis(100),
        };
        let led = view(Some(t0), 5, 5);
        assert!(led.holds(lease, t0 + Duration::from_millis(50)));
        assert!(!led.holds(lease, t0 + Duration::from_millis(100)), "ended");
        let later = view(Some(t0 + Duration::from_millis(20)), 5, 5);
        assert!(
            !later.holds(lease, t0 + Duration::from_millis(50)),
            "led since after from"
        );
        assert!(!view(None, 5, 5).holds(lease, t0 + Duration::from_millis(50)));
    }

    #[test]
    fn a_local_read_needs_everything_published_as_committed_applied() {
        let (t0, lease, now) = a_second_of_lease();
        assert!(view(Some(t0), 7, 7).readable_now(lease, now));
        assert!(!view(Some(t0), 8, 7).readable_now(lease, now));
    }

    #[test]
    fn the_board_keeps_only_views_that_lead() {
        let (t0, lease, now) = a_second_of_lease();
        let board = LeaseBoard::default();
        board.set(GroupId(1), Some(view(Some(t0), 3, 3)));
        assert!(board.readable_now(GroupId(1), lease, now));
        assert!(
            !board.readable_now(GroupId(2), lease, now),
            "never published"
        );
        board.set(GroupId(1), Some(view(None, 3, 3)));
        assert!(!board.readable_now(GroupId(1), lease, now), "stepped down");
        assert!(board.views().is_empty());
        board.set(GroupId(1), Some(view(Some(t0), 3, 3)));
        board.clear();
        assert!(
            !board.readable_now(GroupId(1), lease, now),
            "engine stopped"
        );
    }
}
