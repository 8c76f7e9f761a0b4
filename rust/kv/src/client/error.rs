//! Why a KV call failed: plain Rust values; the binding maps each onto a Python exception
//! (rust/py/src/errors.rs), a Rust caller reads [`KvError::describe`].

use nodedb_transport::TransportError;

/// The Error-message code of a leader in NO_SPACE (the engine's code for it, which the serving
/// side, [`crate::serve`], sends): its message is the data dir; never retried.
pub use nodedb_multiraft::error::CODE_NO_SPACE as NO_SPACE;
/// The Error-message code of a write into a group at its quota (`ServeOptions::quota_bytes`);
/// its message says so; never retried (every replica holds the same bytes).
pub const QUOTA_EXCEEDED: &str = "QuotaExceeded";
/// The Error-message code of a request no node or attempt will take (the engine's code for an
/// invalid request, which servers also send for one they cannot read).
pub use nodedb_multiraft::error::CODE_INVALID_REQUEST as INVALID_REQUEST;
/// The Error-message code of a request of a newer KV version than the server speaks: no
/// attempt helps until the server is upgraded.
pub const UNSUPPORTED_VERSION: &str = "UnsupportedVersion";

/// Why an item failed (one attempt, or for good).
#[derive(Clone, Debug)]
pub enum KvError {
    /// The target does not lead the group; `hint` is the leader it knows (0 = none).
    NotLeader {
        hint: u64,
    },
    /// LeadershipLost on the server: the outcome is unknown.
    LeadershipLost,
    /// This attempt's bound passed without a reply (outcome unknown).
    Timeout {
        target: u64,
        timeout_ms: u64,
    },
    Net(TransportError),
    /// The reply did not decode as a KV_RESPONSE.
    Malformed(String),
    Stale {
        age_s: f64,
        max_s: f64,
    },
    Unavailable(String),
    Invalid(String),
    /// A retried write whose first copy's result the state machine no longer has.
    OutcomeUnknown,
    /// The key's vShard was paused for a move (at the deadline: the call timed out).
    Paused {
        vshard: u32,
    },
    Busy(String),
    Closed,
}

impl KvError {
    /// The attempt ran out of time (as opposed to being refused): the node may be down.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            KvError::Timeout { .. }
                | KvError::Net(TransportError::Timeout { .. })
                | KvError::Paused { .. }
        )
    }

    /// No answer came from the node at all (timed out, unreachable, no handshake): it may be
    /// down, or listen at another address now (a member restarted elsewhere).
    pub fn is_no_answer(&self) -> bool {
        matches!(
            self,
            KvError::Timeout { .. }
                | KvError::Net(
                    TransportError::Timeout { .. }
                        | TransportError::Unreachable { .. }
                        | TransportError::Handshake { .. }
                )
        )
    }

    /// One line for a Rust caller (the native load's `first_error`).
    pub fn describe(&self, group: u64) -> String {
        match self {
            KvError::NotLeader { hint: 0 } => format!("group {group}: not leader, none known"),
            KvError::NotLeader { hint } => format!("group {group}: not leader (leader {hint})"),
            KvError::LeadershipLost => format!("group {group}: leadership lost"),
            KvError::Timeout { target, timeout_ms } => {
                format!("kv request to node {target} timed out after {timeout_ms} ms")
            }
            KvError::Net(err) => err.to_string(),
            KvError::Malformed(text) => format!("malformed kv response: {text}"),
            KvError::Stale { age_s, .. } => format!("group {group}: stale by {age_s:.3} s"),
            KvError::Unavailable(reason) => reason.clone(),
            KvError::Invalid(reason) => reason.clone(),
            KvError::OutcomeUnknown => format!("group {group}: write outcome unknown"),
            KvError::Paused { vshard } => {
                format!("group {group}: vshard {vshard} paused for a move until the deadline")
            }
            KvError::Busy(reason) => reason.clone(),
            KvError::Closed => "client closed".into(),
        }
    }
}

/// A call's failure: the group of the item that failed (0 when none applies), and why.
#[derive(Clone, Debug)]
pub struct Failure {
    pub group: u64,
    pub error: KvError,
}

impl Failure {
    pub fn describe(&self) -> String {
        self.error.describe(self.group)
    }
}

/// Why a call could not start.
#[derive(Debug)]
pub enum SubmitError {
    Closed,
    /// No routing yet (the client has not connected).
    NotConnected(String),
    Item(Failure),
}

impl SubmitError {
    pub fn describe(&self) -> String {
        match self {
            SubmitError::Closed => "client closed".into(),
            SubmitError::NotConnected(text) => text.clone(),
            SubmitError::Item(failure) => failure.describe(),
        }
    }
}
