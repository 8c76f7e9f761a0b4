//! The retry rules of one failed attempt (kv.py `KvRouter._attempts`, the reference): what it
//! teaches about the cluster, whether the item is tried again, and when. Pure: the client core
//! ([`super`]) applies the lesson to its state and schedules the retry.
//!
//! - NotLeader: learn the hint; go again at once while it names a leader (at most
//!   `NAMED_LEADER_RETRIES_MAX` times in a row), else after a pause.
//! - Unknown outcome (leadership lost, timeout): retried only when allowed (reads always;
//!   writes when unknown outcomes are retried, exactly-once through the session), and the node
//!   that timed out is held back.
//! - Transient transport errors (unreachable, handshake, closed, unknown peer, a remote error
//!   other than the two below) and malformed replies: hold the node back, try another member.
//! - InvalidRequest, NoSpace, QuotaExceeded and UnsupportedVersion from the server, and every
//!   local error: never retried.
//! - An item whose last attempts in a row found no leader, one per member the routing table
//!   names for its group ([`LeaderSearch`]), asks for a fresh routing table: the group's
//!   replicas may all have moved to nodes the table does not name (issue 16).
//! - An item whose last attempts ran out of time gets a longer bound for the next
//!   ([`backed_off`]): the bound assumes a transfer rate, and a slower link must still carry a
//!   large request, which every retry sends again.

use std::time::Duration;

use nodedb_transport::TransportError;

use super::error::{KvError, INVALID_REQUEST, NO_SPACE, QUOTA_EXCEEDED, UNSUPPORTED_VERSION};

/// Pause before retry n (then the last value), cut short by the deadline (kv.py).
pub const RETRY_BACKOFF_MS: [u64; 5] = [5, 10, 20, 50, 100];
/// Pause before the first retry of an item its vShard's state refused (Paused), doubled per
/// refusal up to [`REFUSED_PAUSE_MAX`]: a move pauses a vShard for tens of milliseconds, and a
/// retry that sleeps past its end adds to the pause the caller sees (a 16 ms cap added up to
/// 16 ms to each move's p99 in `benches/compare/migrate.py`); a refused retry costs the source
/// group one small entry.
pub const REFUSED_PAUSE_FIRST: Duration = Duration::from_millis(1);
pub const REFUSED_PAUSE_MAX: Duration = Duration::from_millis(4);
/// Moved answers an item follows at once, in a row; past them it is paced as Paused (two
/// groups each naming the other must not spin).
pub const MOVED_AT_ONCE_MAX: u32 = 3;
/// Retries that go at once when NotLeader named a leader, per item (kv.py: `attempt < 3`).
pub const NAMED_LEADER_RETRIES_MAX: usize = 3;

/// Doublings of an attempt's bound after its items' timeouts, at most (16x).
pub const TIMEOUT_DOUBLINGS_MAX: u32 = 4;

/// Whether an attempt ran out of time (its own bound, or another attempt's to the same node).
pub fn is_timeout(err: &KvError) -> bool {
    matches!(
        err,
        KvError::Timeout { .. } | KvError::Net(TransportError::Timeout { .. })
    )
}

/// The bound of an attempt whose items ran out of time `timeouts` times (on any node; an
/// answer in between does not reset it, as a TCP sender keeps its backed-off timer until
/// data is acknowledged): `base`, doubled for each, at most [`TIMEOUT_DOUBLINGS_MAX`] times. Without it a put of 8 MiB
/// over a link of 100 Mbit/s (below the rate `transfer_allowance_s` assumes) timed out on every
/// attempt, each sending the 8 MiB again, until its deadline.
pub fn backed_off(base: Duration, timeouts: u32) -> Duration {
    base.saturating_mul(1u32 << timeouts.min(TIMEOUT_DOUBLINGS_MAX))
}

/// The fewest members a group's search counts ([`LeaderSearch`]) before asking for a fresh
/// table (a table naming no member of the group still gets its one try).
const LEADER_SEARCH_MEMBERS_MIN: usize = 1;

/// What a failed attempt teaches about the group's leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lesson {
    /// Nothing (the item is not retried, or the failure says nothing about the cluster).
    Nothing,
    /// The group's leader is this node (0 = none known).
    Leader(u64),
    /// Forget the group's leader; this node (0 = none) did not answer: try the others first.
    Failed(u64),
}

/// The verdict on one failed attempt to `target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub retry: bool,
    pub lesson: Lesson,
}

/// Judge `err` from an attempt to `target`; `may_retry_unknown`: the item may be retried
/// when its outcome is unknown (a read, or a write under a session that retries).
pub fn judge(err: &KvError, target: u64, may_retry_unknown: bool) -> Verdict {
    let unknown = |node: u64| Verdict {
        retry: may_retry_unknown,
        lesson: if may_retry_unknown {
            Lesson::Failed(node)
        } else {
            Lesson::Nothing
        },
    };
    let give_up = Verdict {
        retry: false,
        lesson: Lesson::Nothing,
    };
    match err {
        KvError::NotLeader { hint } => Verdict {
            retry: true,
            lesson: Lesson::Leader(*hint),
        },
        KvError::LeadershipLost => unknown(0),
        KvError::Timeout { .. } | KvError::Net(TransportError::Timeout { .. }) => unknown(target),
        // The request itself is bad (or newer than the server), or the leader's disk is full
        // or its group at its quota (a definite refusal until space is freed): no other node
        // or attempt will take it.
        KvError::Net(TransportError::Remote { code, .. })
            if code == INVALID_REQUEST
                || code == NO_SPACE
                || code == QUOTA_EXCEEDED
                || code == UNSUPPORTED_VERSION =>
        {
            give_up
        }
        KvError::Net(
            TransportError::Unreachable { .. }
            | TransportError::Handshake { .. }
            | TransportError::Closed
            | TransportError::UnknownPeer { .. }
            | TransportError::Remote { .. },
        )
        | KvError::Malformed(_) => Verdict {
            retry: true,
            lesson: Lesson::Failed(target),
        },
        _ => give_up,
    }
}

/// When a retried item goes again: at once, or after a pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    AtOnce,
    After(Duration),
}

/// When the retry of an item that failed its attempt number `attempt` (0-based) with `err`
/// goes, with `left` until its deadline.
pub fn when(attempt: usize, err: &KvError, left: Duration) -> When {
    let named = matches!(err, KvError::NotLeader { hint } if *hint != 0);
    if named && attempt + 1 < NAMED_LEADER_RETRIES_MAX {
        return When::AtOnce;
    }
    let pause = Duration::from_millis(RETRY_BACKOFF_MS[attempt.min(RETRY_BACKOFF_MS.len() - 1)]);
    When::After(pause.min(left))
}

/// When an item refused `refused_before` times already by its vShard's state goes again,
/// with `left` until its deadline: 1 ms, doubling, at most 4 ms.
pub fn when_refused(refused_before: u32, left: Duration) -> When {
    let pause = REFUSED_PAUSE_FIRST
        .saturating_mul(1u32 << refused_before.min(8))
        .min(REFUSED_PAUSE_MAX);
    When::After(pause.min(left))
}

/// Whether a failed attempt found no leader of its group where the client looked: the target
/// does not lead it (NotLeader, whatever leader it names: a replica that left the group may
/// name one that left too), does not host it (an unknown group answers NotLeader, none), or
/// could not be reached. LeadershipLost is not: that target led the group a moment ago.
pub fn found_no_leader(err: &KvError) -> bool {
    matches!(
        err,
        KvError::NotLeader { .. }
            | KvError::Timeout { .. }
            | KvError::Net(
                TransportError::Timeout { .. }
                    | TransportError::Unreachable { .. }
                    | TransportError::Handshake { .. }
                    | TransportError::Closed
                    | TransportError::UnknownPeer { .. }
            )
    )
}

/// One item's search for its group's leader: the attempts in a row that found none
/// ([`found_no_leader`]). Once they number the members the routing table names for the group,
/// every member had its turn (the client tries them in turn) and none led it or knew a leader
/// that answered: the table is likely stale (the group's replicas moved to nodes it does not
/// name), and the client asks for a fresh one. Pure: the caller rate-limits the asking.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LeaderSearch {
    misses: u32,
}

impl LeaderSearch {
    /// A failed attempt answered `err`, with `members` replicas of the group in the routing
    /// table: true when a fresh table is due (the count starts over then).
    pub fn failed(&mut self, err: &KvError, members: usize) -> bool {
        if !found_no_leader(err) {
            self.misses = 0;
            return false;
        }
        self.misses = self.misses.saturating_add(1);
        let due = self.misses as usize >= members.max(LEADER_SEARCH_MEMBERS_MIN);
        if due {
            self.misses = 0;
        }
        due
    }

    /// A leader answered (a result, or its vShard's refusal): the search is over.
    pub fn found(&mut self) {
        self.misses = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_timeout_doubles_the_next_bound_up_to_sixteen_times() {
        let base = Duration::from_millis(300);
        assert_eq!(backed_off(base, 0), base);
        assert_eq!(backed_off(base, 1), Duration::from_millis(600));
        assert_eq!(backed_off(base, 3), Duration::from_millis(2400));
        assert_eq!(backed_off(base, 4), Duration::from_millis(4800));
        assert_eq!(backed_off(base, 40), Duration::from_millis(4800));
        assert!(is_timeout(&KvError::Timeout {
            target: 1,
            timeout_ms: 5
        }));
        assert!(!is_timeout(&KvError::NotLeader { hint: 0 }));
    }

    #[test]
    fn a_fresh_table_is_due_once_every_member_found_no_leader_in_a_row() {
        let none = KvError::NotLeader { hint: 0 };
        let named = KvError::NotLeader { hint: 9 };
        let unreachable = KvError::Net(TransportError::UnknownPeer {
            node_id: nodedb_transport::NodeId(9),
        });
        let timeout = KvError::Timeout {
            target: 2,
            timeout_ms: 300,
        };
        // Three members: not due until the third answer without a leader in a row.
        let mut s = LeaderSearch::default();
        assert!(!s.failed(&none, 3));
        assert!(!s.failed(&named, 3));
        assert!(s.failed(&unreachable, 3), "every member had its turn");
        // Counted again from zero: the next round of three.
        assert!(!s.failed(&timeout, 3));
        assert!(!s.failed(&none, 3));
        assert!(s.failed(&none, 3));
        // A leader that answered (LeadershipLost: it led a moment ago) starts the count over.
        assert!(!s.failed(&none, 3));
        assert!(!s.failed(&KvError::LeadershipLost, 3));
        assert!(!s.failed(&none, 3));
        assert!(!s.failed(&none, 3));
        assert!(s.failed(&none, 3));
        // So does a refusal or a result (`found`).
        assert!(!s.failed(&none, 2));
        s.found();
        assert!(!s.failed(&none, 2));
        assert!(s.failed(&none, 2));
        // A table naming no member of the group: due at the first miss.
        assert!(s.failed(&none, 0));
        // Answers that say nothing about where the leader is never make it due.
        let stale = KvError::Stale {
            age_s: 2.0,
            max_s: 1.0,
        };
        let mut s = LeaderSearch::default();
        for _ in 0..10 {
            assert!(!s.failed(&stale, 1));
        }
    }

    #[test]
    fn a_refused_item_backs_off_from_1_ms_doubling_to_4_ms() {
        let left = Duration::from_secs(1);
        let ms = |n| match when_refused(n, left) {
            When::After(p) => p.as_millis(),
            When::AtOnce => 0,
        };
        assert_eq!(
            (0..7).map(ms).collect::<Vec<_>>(),
            vec![1, 2, 4, 4, 4, 4, 4]
        );
        assert_eq!(ms(u32::MAX), 4);
        assert_eq!(
            when_refused(3, Duration::from_millis(2)),
            When::After(Duration::from_millis(2)),
            "cut short by the deadline"
        );
    }

    fn remote(code: &str) -> KvError {
        KvError::Net(TransportError::Remote {
            code: code.into(),
            message: "m".into(),
        })
    }

    #[test]
    fn not_leader_teaches_the_leader_and_is_always_retried() {
        for may in [false, true] {
            let v = judge(&KvError::NotLeader { hint: 3 }, 2, may);
            assert_eq!(
                v,
                Verdict {
                    retry: true,
                    lesson: Lesson::Leader(3)
                }
            );
        }
    }

    #[test]
    fn unknown_outcomes_are_retried_only_when_allowed() {
        let timeout = KvError::Timeout {
            target: 2,
            timeout_ms: 300,
        };
        assert_eq!(
            judge(&timeout, 2, true),
            Verdict {
                retry: true,
                lesson: Lesson::Failed(2)
            },
            "the node that timed out is held back"
        );
        assert_eq!(
            judge(&KvError::LeadershipLost, 2, true),
            Verdict {
                retry: true,
                lesson: Lesson::Failed(0)
            },
            "it answered: forget the leader, hold nobody back"
        );
        for err in [timeout, KvError::LeadershipLost] {
            assert_eq!(
                judge(&err, 2, false),
                Verdict {
                    retry: false,
                    lesson: Lesson::Nothing
                },
                "a write whose retry could apply twice surfaces the unknown outcome"
            );
        }
    }

    #[test]
    fn transient_errors_try_another_member_and_refusals_are_final() {
        let transient = [
            KvError::Net(TransportError::Closed),
            KvError::Net(TransportError::UnknownPeer {
                node_id: nodedb_transport::NodeId(4),
            }),
            remote("Busy"),
            KvError::Malformed("x".into()),
        ];
        for err in transient {
            assert_eq!(
                judge(&err, 4, false),
                Verdict {
                    retry: true,
                    lesson: Lesson::Failed(4)
                },
                "{err:?}"
            );
        }
        for err in [
            remote(INVALID_REQUEST),
            remote(NO_SPACE),
            remote(QUOTA_EXCEEDED),
            remote(UNSUPPORTED_VERSION),
            KvError::Invalid("bad".into()),
            KvError::OutcomeUnknown,
            KvError::Closed,
            KvError::Stale {
                age_s: 2.0,
                max_s: 1.0,
            },
        ] {
            assert!(!judge(&err, 4, true).retry, "{err:?}");
        }
    }

    #[test]
    fn a_named_leader_is_tried_at_once_twice_then_with_backoff() {
        let named = KvError::NotLeader { hint: 3 };
        let left = Duration::from_secs(5);
        assert_eq!(when(0, &named, left), When::AtOnce);
        assert_eq!(when(1, &named, left), When::AtOnce);
        assert_eq!(
            when(2, &named, left),
            When::After(Duration::from_millis(20))
        );
        let none = KvError::NotLeader { hint: 0 };
        assert_eq!(when(0, &none, left), When::After(Duration::from_millis(5)));
        assert_eq!(
            when(9, &none, left),
            When::After(Duration::from_millis(100))
        );
        assert_eq!(
            when(9, &none, Duration::from_millis(7)),
            When::After(Duration::from_millis(7)),
            "cut short by the deadline"
        );
    }
}
