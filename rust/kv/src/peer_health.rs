//! `PeerHealth`: which nodes a KV router should avoid, and how long to wait for one answer.
//! ONE implementation for the client core ([`crate::client`]) and `KvRouter` (Python, through
//! the binding's `PeerHealth` class, re-exported by `nodedb_cluster.peer_health`).
//!
//! Failover from the caller's side is "stop waiting for the dead leader, find the new one". The
//! new leader exists one election after the crash, so waiting longer than the longest election
//! timeout only delays the caller, and waiting much less than the slowest healthy answer turns a
//! loaded cluster into a storm of retries: one attempt is bounded by a multiple of the slowest
//! recent answer, clamped to [`ATTEMPT_TIMEOUT_MIN_S`, `ATTEMPT_TIMEOUT_MAX_S`]. A node that
//! failed to answer is tried after the others for `DOWN_HOLD_S`; one SWIM declared dead, until
//! SWIM sees it alive again.
//!
//! Pure: every call takes `now` in monotonic seconds, so tests drive time by hand.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::time::Instant;

/// Below the shortest election timeout (0.5 s): the next attempt is ready when a leader is.
pub const ATTEMPT_TIMEOUT_MIN_S: f64 = 0.3;
/// The longest election timeout: by then a dead leader's group has elected another.
pub const ATTEMPT_TIMEOUT_MAX_S: f64 = 1.0;
/// An attempt waits at least this multiple of the slowest recent answer.
pub const SLOWEST_MULT: f64 = 3.0;
/// An attempt carrying a large request also gets the time to move its bytes at this rate, on
/// top of the bound above: a write crosses the network twice (to the leader, then from it to
/// its followers) and is fsynced on each, and a request that takes long to send is not a dead
/// leader. (Without it a 40 MiB put on a fresh client, bounded by 0.3 s, was retried until its
/// deadline and every attempt marked its leader down.) Far below what loopback or a LAN carries.
pub const TRANSFER_BYTES_PER_S_MIN: f64 = 16.0 * 1024.0 * 1024.0;
/// The remembered slowest answer halves every this many seconds (a load spike fades).
pub const SLOWEST_HALF_LIFE_S: f64 = 2.0;
/// A node that failed to answer is tried after the others for this long: about one election,
/// after which its groups have another leader if it was dead.
pub const DOWN_HOLD_S: f64 = 1.0;
/// Bound on remembered down nodes (forgotten all at once past it).
pub const DOWN_NODES_MAX: usize = 4096;
/// A serving node answers this long before the requester's attempt bound ("t") runs out, at
/// most (an eighth of the bound below 400 ms): the answer must arrive before the requester
/// gives up.
pub const SERVE_MARGIN_MS_MAX: u64 = 50;

/// The time an attempt is given, besides its answer bound, to move a request of `bytes`.
pub fn transfer_allowance_s(bytes: usize) -> f64 {
    bytes as f64 / TRANSFER_BYTES_PER_S_MIN
}

/// How long a node serving a request with attempt bound `t_ms` may wait before answering:
/// a little less than `t_ms`, so that a request that waited out an election, or a slow
/// commit, comes back as an answer (not leader / outcome unknown: retried at once) instead
/// of a timeout, which would mark a live node as down (`PeerHealth::failed`) and hold it back
/// for `DOWN_HOLD_S`. Never below 1 ms.
pub fn serve_budget_ms(t_ms: u64) -> u64 {
    let margin = (t_ms / 8).min(SERVE_MARGIN_MS_MAX);
    t_ms.saturating_sub(margin).max(1)
}

/// `at` in seconds from a process-wide origin (the first call), negative before it: the
/// default clock of `PeerHealth`.
pub fn monotonic_s(at: Instant) -> f64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    match at.checked_duration_since(origin) {
        Some(after) => after.as_secs_f64(),
        None => -origin.duration_since(at).as_secs_f64(),
    }
}

#[derive(Debug, Default, Clone)]
pub struct PeerHealth {
    down_until_s: HashMap<u64, f64>,
    dead: HashSet<u64>,
    slowest_s: f64,
    slowest_at_s: f64,
}

impl PeerHealth {
    /// A peer answered after `elapsed_s`.
    pub fn answered(&mut self, elapsed_s: f64, now_s: f64) {
        if elapsed_s >= self.decayed_slowest_s(now_s) {
            self.slowest_s = elapsed_s;
            self.slowest_at_s = now_s;
        }
    }

    /// How long one attempt may wait for its answer, in seconds.
    pub fn attempt_timeout_s(&self, now_s: f64) -> f64 {
        let scaled = SLOWEST_MULT * self.decayed_slowest_s(now_s);
        scaled.clamp(ATTEMPT_TIMEOUT_MIN_S, ATTEMPT_TIMEOUT_MAX_S)
    }

    /// `node` did not answer in time (or could not be reached).
    pub fn failed(&mut self, node: u64, now_s: f64) {
        if self.down_until_s.len() >= DOWN_NODES_MAX {
            self.down_until_s.clear();
        }
        self.down_until_s.insert(node, now_s + DOWN_HOLD_S);
    }

    /// `node` was seen alive (elected leader since it failed to answer): no longer held back.
    /// A SWIM verdict of dead stands until SWIM changes it.
    pub fn revive(&mut self, node: u64) {
        self.down_until_s.remove(&node);
    }

    /// SWIM's verdict on `node`.
    pub fn set_dead(&mut self, node: u64, dead: bool) {
        if dead {
            self.dead.insert(node);
        } else {
            self.dead.remove(&node);
        }
    }

    /// True while `node` should be tried only when nothing else is left.
    pub fn avoid(&self, node: u64, now_s: f64) -> bool {
        self.dead.contains(&node) || self.down_until_s.get(&node).is_some_and(|&t| t > now_s)
    }

    /// The nodes to avoid now (at most `limit`, lowest ids first): a request sent to another
    /// member while no leader is known names them, and that member answers with a leader that
    /// is none of them as soon as it knows one ([`crate::serve`]).
    pub fn avoided(&self, now_s: f64, limit: usize) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .down_until_s
            .iter()
            .filter(|(_, &t)| t > now_s)
            .map(|(&n, _)| n)
            .chain(self.dead.iter().copied())
            .collect();
        out.sort_unstable();
        out.dedup();
        out.truncate(limit);
        out
    }

    /// `nodes` not to avoid, in order; all of them when every one is to be avoided.
    pub fn preferred(&self, nodes: &[u64], now_s: f64) -> Vec<u64> {
        let kept: Vec<u64> = nodes
            .iter()
            .copied()
            .filter(|&n| !self.avoid(n, now_s))
            .collect();
        if kept.is_empty() {
            nodes.to_vec()
        } else {
            kept
        }
    }

    fn decayed_slowest_s(&self, now_s: f64) -> f64 {
        let halvings = (now_s - self.slowest_at_s).max(0.0) / SLOWEST_HALF_LIFE_S;
        self.slowest_s * 0.5f64.powf(halvings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_follows_the_slowest_recent_answer_and_fades() {
        let mut h = PeerHealth::default();
        let t = 100.0;
        assert_eq!(h.attempt_timeout_s(t), ATTEMPT_TIMEOUT_MIN_S);
        h.answered(0.2, t);
        assert!((h.attempt_timeout_s(t) - SLOWEST_MULT * 0.2).abs() < 1e-9);
        h.answered(0.9, t);
        assert_eq!(h.attempt_timeout_s(t), ATTEMPT_TIMEOUT_MAX_S);
        assert_eq!(
            h.attempt_timeout_s(t + 10.0 * SLOWEST_HALF_LIFE_S),
            ATTEMPT_TIMEOUT_MIN_S
        );
    }

    #[test]
    fn a_large_request_gets_the_time_to_move_its_bytes() {
        assert_eq!(transfer_allowance_s(0), 0.0);
        assert!(
            transfer_allowance_s(64 << 10) < 0.005,
            "small requests: nothing to speak of"
        );
        assert!((transfer_allowance_s(16 << 20) - 1.0).abs() < 1e-9);
        assert!((transfer_allowance_s(40 << 20) - 2.5).abs() < 1e-9);
    }

    #[test]
    fn a_server_answers_before_the_requesters_bound() {
        assert_eq!(serve_budget_ms(300), 300 - 37);
        assert_eq!(serve_budget_ms(1000), 1000 - SERVE_MARGIN_MS_MAX);
        assert_eq!(serve_budget_ms(5000), 5000 - SERVE_MARGIN_MS_MAX);
        assert_eq!(serve_budget_ms(4), 4);
        assert_eq!(serve_budget_ms(1), 1);
        assert_eq!(serve_budget_ms(0), 1);
    }

    #[test]
    fn failed_nodes_are_held_back_and_all_avoided_means_all_tried() {
        let mut h = PeerHealth::default();
        h.failed(3, 10.0);
        assert!(h.avoid(3, 10.5));
        assert_eq!(h.preferred(&[1, 3], 10.5), vec![1]);
        assert!(!h.avoid(3, 10.0 + DOWN_HOLD_S + 0.001));
        h.set_dead(1, true);
        assert_eq!(h.preferred(&[1, 3], 10.5), vec![1, 3]);
        assert_eq!(h.avoided(10.5, 8), vec![1, 3]);
        assert_eq!(h.avoided(10.5, 1), vec![1]);
        assert_eq!(h.avoided(10.0 + DOWN_HOLD_S + 0.001, 8), vec![1]);
        h.revive(3);
        assert!(!h.avoid(3, 10.5), "seen alive: no longer held back");
        h.revive(1);
        assert!(h.avoid(1, 10.5), "SWIM's verdict stands");
    }
}
