//! Refused requests: counted by (kind, reason), and turned into log lines at most once per
//! (peer, kind, reason) per [`LOG_INTERVAL`] with the count of those suppressed meanwhile.
//!
//! Lines queue here (bounded) and the host drains them into its own log (they are not also
//! `tracing` events, which would log each twice): the transport's threads never call into the
//! host (no interpreter lock on the I/O path), and a peer that floods forbidden frames costs a
//! counter increment per frame, not a log line ([`RateLimiter`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nodedb_hostlog::{Bounded, RateLimiter};
use nodedb_wire::MessageKind;

/// At most one line per (peer, kind, reason) per this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Lines waiting for the host; older ones are dropped (and counted) past this.
pub const PENDING_LINES_MAX: usize = 256;
/// Distinct (peer, kind, reason) keys remembered for rate limiting before old ones are forgotten.
const KEYS_MAX: usize = 4096;

/// Every refusal reason (stable metric labels). The transport decides `role` and `no_identity`
/// from the kind table; the Raft handler `sender_mismatch` and `unknown_sender`; the host's
/// handlers the rest.
pub const REASONS: &[&str] = &[
    "role",
    "no_identity",
    "sender_mismatch",
    "unknown_sender",
    "bench_load_disabled",
    "join_identity_mismatch",
    "join_token_missing",
    "join_token_malformed",
    "join_token_forged",
    "join_token_expired",
    "join_token_wrong_node",
    "join_no_secret",
    "join_key_mismatch",
    "join_retired",
    "join_address_not_named",
];

/// `name` as the static label in [`REASONS`].
pub fn refusal_reason(name: &str) -> Option<&'static str> {
    REASONS.iter().copied().find(|r| *r == name)
}

/// One log line's worth of refusals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalLine {
    /// The peer's identity as the transport knows it (URI, `unidentified`, ...).
    pub peer: String,
    pub addr: SocketAddr,
    pub kind: MessageKind,
    pub reason: &'static str,
    pub message: String,
    /// Refusals of the same (peer, kind, reason) since the previous line that were not logged.
    pub suppressed: u64,
}

struct State {
    counts: BTreeMap<(MessageKind, &'static str), u64>,
    limiter: RateLimiter<(String, MessageKind, &'static str)>,
    pending: Bounded<RefusalLine>,
}

/// Counts and rate-limited lines of refused requests.
pub struct RefusalLog {
    state: Mutex<State>,
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog {
            state: Mutex::new(State {
                counts: BTreeMap::new(),
                limiter: RateLimiter::new(LOG_INTERVAL, KEYS_MAX),
                pending: Bounded::new(PENDING_LINES_MAX),
            }),
        }
    }
}

impl RefusalLog {
    pub fn record(
        &self,
        peer: String,
        addr: SocketAddr,
        kind: MessageKind,
        reason: &'static str,
        message: String,
    ) {
        self.record_at(Instant::now(), peer, addr, kind, reason, message);
    }

    fn record_at(
        &self,
        now: Instant,
        peer: String,
        addr: SocketAddr,
        kind: MessageKind,
        reason: &'static str,
        message: String,
    ) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *state.counts.entry((kind, reason)).or_default() += 1;
        let Some(suppressed) = state.limiter.admit((peer.clone(), kind, reason), now) else {
            return;
        };
        state.pending.push(RefusalLine {
            peer,
            addr,
            kind,
            reason,
            message,
            suppressed,
        });
    }

    /// Lines not yet handed out, oldest first.
    pub fn take_lines(&self) -> Vec<RefusalLine> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.pending.take()
    }

    /// Refusals so far by (kind, reason).
    pub fn counts(&self) -> Vec<(MessageKind, &'static str, u64)> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .counts
            .iter()
            .map(|((kind, reason), n)| (*kind, *reason, *n))
            .collect()
    }

    /// Lines dropped because the host did not drain them in time.
    pub fn lines_dropped(&self) -> u64 {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.pending.dropped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn one_line_per_interval_with_the_suppressed_count() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        let record = |at: Instant, peer: &str| {
            log.record_at(
                at,
                peer.into(),
                addr(),
                MessageKind::RAFT_BATCH,
                "role",
                "no".into(),
            )
        };
        for i in 0..5 {
            record(t0 + Duration::from_millis(i), "a");
        }
        record(t0, "b");
        let lines = log.take_lines();
        assert_eq!(lines.len(), 2, "one per peer: {lines:?}");
        assert_eq!(lines[0].suppressed, 0);
        record(t0 + LOG_INTERVAL, "a");
        let lines = log.take_lines();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].suppressed, 4, "the four inside the first interval");
        assert_eq!(log.counts(), vec![(MessageKind::RAFT_BATCH, "role", 7)]);
    }

    #[test]
    fn pending_lines_are_bounded() {
        let log = RefusalLog::default();
        for i in 0..PENDING_LINES_MAX + 10 {
            log.record(
                format!("peer{i}"),
                addr(),
                MessageKind::PING,
                "role",
                String::new(),
            );
        }
        assert_eq!(log.take_lines().len(), PENDING_LINES_MAX);
        assert_eq!(log.lines_dropped(), 10);
    }
}
