//! What a node knows of how current its replicas are, and the decisions made on it: no I/O,
//! the clock passed in (kv.py's `_read_local`, `_on_confirmed`, `_on_committed` and
//! `_refresh_loop`, the reference until it was deleted).
//!
//! - A ReadIndex request that was *sent* at `t` and came back proves this node's state was
//!   current at `t` ("confirmed"). One a quorum answered (a ReadIndex round, or a proposal of
//!   this node that committed) proves more when this node led the group from `t` on: with
//!   check-quorum and pre-vote no other node can be elected before `t` +
//!   `election_timeout_min`. The read lease offered to the engine is `LEASE_FRACTION` of that,
//!   so a 10 % difference in clock rates between nodes cannot make it outlive the real bound;
//!   the engine checks the leadership (`MultiRaftCore::read_index_leased`). A read the engine
//!   answered from the lease confirms, but earns no lease: a lease never extends itself.
//! - `linearizable` and `lease` reads offer that lease (unless `ServeOptions::lease` is off).
//! - `follower`: served locally if confirmed within `stale_s`; else one ReadIndex round bounded
//!   by `stale_s`, and if that fails the read is refused as stale with its age.
//! - While follower reads arrive, a refresher keeps every local group confirmed (so followers
//!   serve them locally under load rather than one ReadIndex each).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nodedb_multiraft::ReadLease;

/// Lease = this fraction of the minimum election timeout: covers a 10 % clock-rate difference.
pub const LEASE_FRACTION: f64 = 0.9;
/// How often a node serving follower reads re-confirms its groups.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(200);
/// The refresher stops when no follower read came for this long.
pub const REFRESH_IDLE_STOP: Duration = Duration::from_secs(10);
/// A refresher round's bound (5 refresh intervals, as kv.py).
pub const REFRESH_ROUND_TIMEOUT: Duration = Duration::from_secs(1);
/// Groups whose clocks are remembered, at most (past it they are forgotten: the next lease or
/// follower read takes a ReadIndex round, never weaker).
const GROUPS_MAX: usize = 4096;

/// What a follower read does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Read the local state now.
    Local,
    /// Take a ReadIndex round first, bounded by `bound` (None: the request's own budget). On
    /// failure the read is refused as stale with `age_s`.
    Confirm { bound: Option<Duration>, age_s: f64 },
}

#[derive(Debug, Clone, Copy, Default)]
struct Clocks {
    /// The send time of the latest request a quorum confirmed (ReadIndex or own commit).
    confirmed: Option<Instant>,
    /// The send time of the latest request a *quorum* answered (a commit or a ReadIndex round
    /// that was not answered from a lease): where the lease offered to the engine starts.
    quorum_at: Option<Instant>,
}

/// The serving node's confirmation clocks of its groups.
#[derive(Debug)]
pub struct Freshness {
    lease: Duration,
    /// Ages of groups never confirmed are counted from here (the server's start).
    origin: Instant,
    groups: HashMap<u64, Clocks>,
    follower_read_at: Option<Instant>,
    refreshing: bool,
    /// Linearizable reads may use the lease (`ServeOptions::lease`).
    linearizable_lease: bool,
}

impl Freshness {
    /// Clocks for a node whose minimum election timeout is `election_timeout_min`.
    pub fn new(election_timeout_min: Duration, origin: Instant) -> Self {
        Freshness {
            lease: election_timeout_min.mul_f64(LEASE_FRACTION),
            origin,
            groups: HashMap::new(),
            follower_read_at: None,
            refreshing: false,
            linearizable_lease: true,
        }
    }

    pub fn lease_duration(&self) -> Duration {
        self.lease
    }

    fn clocks(&mut self, group: u64) -> &mut Clocks {
        if self.groups.len() >= GROUPS_MAX && !self.groups.contains_key(&group) {
            self.groups.clear();
        }
        self.groups.entry(group).or_default()
    }

    /// A ReadIndex request of `group` sent at `sent_at` came back; `by_quorum`: a quorum
    /// answered it (not the leader's lease, which must not extend itself).
    pub fn confirmed(&mut self, group: u64, sent_at: Instant, by_quorum: bool) {
        let clocks = self.clocks(group);
        clocks.confirmed = Some(clocks.confirmed.map_or(sent_at, |c| c.max(sent_at)));
        if by_quorum {
            clocks.quorum_at = Some(clocks.quorum_at.map_or(sent_at, |c| c.max(sent_at)));
        }
    }

    /// A proposal of this node into `group` sent at `sent_at` committed (a quorum took it).
    pub fn committed(&mut self, group: u64, sent_at: Instant) {
        self.confirmed(group, sent_at, true);
    }

    /// Seconds since `group` was last confirmed here (since the server started if never).
    pub fn age_s(&self, group: u64, now: Instant) -> f64 {
        let since = self
            .groups
            .get(&group)
            .and_then(|c| c.confirmed)
            .unwrap_or(self.origin);
        now.saturating_duration_since(since).as_secs_f64()
    }

    pub fn set_linearizable_lease(&mut self, on: bool) {
        self.linearizable_lease = on;
    }

    /// The lease a linearizable read of `group` offers the engine (None when they may not
    /// use one). Earned by any request a quorum answered, a ReadIndex round included: the
    /// engine honours it only if this node led the group from the request's send time on, and
    /// then the round was its own (a follower's round confirms another leader). A read the
    /// engine answered from the lease earns nothing: a lease never extends itself.
    pub fn linearizable_lease(&self, group: u64) -> Option<ReadLease> {
        if !self.linearizable_lease {
            return None;
        }
        let from = self.groups.get(&group).and_then(|c| c.quorum_at)?;
        Some(ReadLease {
            from,
            until: from.checked_add(self.lease)?,
        })
    }

    /// A `follower` read of `group` at `now` that accepts `stale_s` seconds of staleness
    /// (finite and not negative: the request parser refuses anything else).
    pub fn follower_read(&self, group: u64, now: Instant, stale_s: f64) -> Decision {
        let age_s = self.age_s(group, now);
        if age_s <= stale_s {
            return Decision::Local;
        }
        // At least 1 ms (kv.py's `max(1, int(stale_s * 1000))`); a bound beyond any request's
        // budget is no bound.
        let bound = Duration::try_from_secs_f64(stale_s)
            .ok()
            .map(|d| d.max(Duration::from_millis(1)));
        Decision::Confirm { bound, age_s }
    }

    /// A follower read arrived at `now`; true when the caller must start the refresher (none
    /// runs).
    pub fn note_follower_read(&mut self, now: Instant) -> bool {
        self.follower_read_at = Some(now);
        !std::mem::replace(&mut self.refreshing, true)
    }

    /// The refresher's step at `now` over the node's `local` groups: None when it must stop (no
    /// follower read for [`REFRESH_IDLE_STOP`]; a later follower read starts it again), else
    /// the groups to confirm now (not confirmed within [`REFRESH_INTERVAL`]).
    pub fn refresh_due(&mut self, local: &[u64], now: Instant) -> Option<Vec<u64>> {
        let active = self
            .follower_read_at
            .is_some_and(|at| now.saturating_duration_since(at) < REFRESH_IDLE_STOP);
        if !active {
            self.refreshing = false;
            return None;
        }
        let interval = REFRESH_INTERVAL.as_secs_f64();
        Some(
            local
                .iter()
                .copied()
                .filter(|&g| self.age_s(g, now) > interval)
                .collect(),
        )
    }

    /// The refresher ended for another reason (the engine stopped).
    pub fn refresher_stopped(&mut self) {
        self.refreshing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_lease_holds_from_the_send_time_of_a_commit_for_09_election_timeouts() {
        let t0 = Instant::now();
        let mut f = Freshness::new(ms(500), t0);
        assert_eq!(f.lease_duration(), ms(450));
        assert_eq!(
            f.linearizable_lease(1),
            None,
            "never confirmed here: ReadIndex"
        );
        f.committed(1, t0 + ms(100));
        let lease = f.linearizable_lease(1).expect("a commit earns one");
        assert_eq!((lease.from, lease.until), (t0 + ms(100), t0 + ms(550)));
        // An older commit coming back late never moves the lease back.
        f.committed(1, t0 + ms(50));
        assert_eq!(f.linearizable_lease(1), Some(lease));
    }

    #[test]
    fn linearizable_reads_offer_the_engine_a_lease_from_any_confirmation_unless_turned_off() {
        let t0 = Instant::now();
        let mut f = Freshness::new(ms(500), t0);
        assert_eq!(f.linearizable_lease(1), None, "nothing confirmed yet");
        f.confirmed(1, t0 + ms(100), true);
        let lease = f.linearizable_lease(1).expect("a round earns one");
        assert_eq!((lease.from, lease.until), (t0 + ms(100), t0 + ms(550)));
        f.committed(1, t0 + ms(200));
        assert_eq!(f.linearizable_lease(1).map(|l| l.from), Some(t0 + ms(200)));
        f.confirmed(1, t0 + ms(150), true); // an older round coming back late moves nothing
        assert_eq!(f.linearizable_lease(1).map(|l| l.from), Some(t0 + ms(200)));
        // A read answered from the lease confirms the replica current but earns no lease.
        f.confirmed(1, t0 + ms(600), false);
        assert_eq!(f.linearizable_lease(1).map(|l| l.from), Some(t0 + ms(200)));
        assert_eq!(f.age_s(1, t0 + ms(600)), 0.0);
        assert_eq!(f.linearizable_lease(2), None, "per group");
        f.set_linearizable_lease(false);
        assert_eq!(f.linearizable_lease(1), None);
    }

    #[test]
    fn a_follower_read_is_local_within_its_staleness_else_one_bounded_round() {
        let t0 = Instant::now();
        let mut f = Freshness::new(ms(500), t0);
        f.confirmed(3, t0 + ms(1000), true);
        assert_eq!(f.follower_read(3, t0 + ms(1500), 0.5), Decision::Local);
        match f.follower_read(3, t0 + ms(1700), 0.5) {
            Decision::Confirm { bound, age_s } => {
                assert_eq!(bound, Some(ms(500)));
                assert!((age_s - 0.7).abs() < 1e-9);
            }
            other => panic!("expected a round, got {other:?}"),
        }
        // Never confirmed: the age counts from the server's start; a zero bound is 1 ms.
        match f.follower_read(4, t0 + ms(2000), 0.0) {
            Decision::Confirm { bound, age_s } => {
                assert_eq!(bound, Some(ms(1)));
                assert!((age_s - 2.0).abs() < 1e-9);
            }
            other => panic!("expected a round, got {other:?}"),
        }
        // A commit confirms too.
        f.committed(4, t0 + ms(2000));
        assert_eq!(f.follower_read(4, t0 + ms(2100), 0.5), Decision::Local);
        // An enormous staleness is no bound.
        assert!(matches!(
            f.follower_read(5, t0 + ms(1), 1e300),
            Decision::Local
        ));
    }

    #[test]
    fn the_refresher_runs_while_follower_reads_come_and_confirms_only_stale_groups() {
        let t0 = Instant::now();
        let mut f = Freshness::new(ms(500), t0);
        assert_eq!(f.refresh_due(&[1], t0), None, "no follower read yet");
        assert!(f.note_follower_read(t0), "the first read starts it");
        assert!(!f.note_follower_read(t0 + ms(1)), "one refresher at a time");
        f.confirmed(1, t0 + ms(100), true);
        assert_eq!(f.refresh_due(&[1, 2], t0 + ms(250)), Some(vec![2]));
        assert_eq!(f.refresh_due(&[1, 2], t0 + ms(400)), Some(vec![1, 2]));
        let idle = t0 + ms(1) + REFRESH_IDLE_STOP;
        assert_eq!(f.refresh_due(&[1, 2], idle), None, "stops when idle");
        assert!(f.note_follower_read(idle), "and starts again");
        f.refresher_stopped();
        assert!(f.note_follower_read(idle), "after the engine stopped it");
    }

    #[test]
    fn forgotten_groups_fall_back_to_read_index() {
        let t0 = Instant::now();
        let mut f = Freshness::new(ms(500), t0);
        for g in 0..GROUPS_MAX as u64 {
            f.committed(g, t0);
        }
        f.committed(u64::MAX, t0);
        assert_eq!(f.linearizable_lease(0), None);
        assert!(f.linearizable_lease(u64::MAX).is_some());
    }
}
