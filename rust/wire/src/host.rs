//! HOST_PROPOSE / HOST_PROPOSE_RESPONSE (kinds 36 / 37): one command for a data group that runs
//! the embedding host's state machine, forwarded one hop to the group's leader.
//!
//! Only the node role may send HOST_PROPOSE: a host state machine trusts what its own cluster
//! proposes, so a client or admin certificate must not be able to put commands into its log.
//! The receiver proposes on groups it leads and never forwards again: a receiver that is not the
//! leader answers `not_leader` with its hint, and the sender retries there within its deadline.
//!
//! Payloads are MessagePack maps with named fields, like the control messages. Versions: `v`,
//! absent = 1 ([`HOST_VERSION`]); a newer version is refused as undecodable rather than
//! half-understood, and unknown fields are ignored.

use serde::{Deserialize, Serialize};

use crate::control::ControlMessage;

/// The host-proposal message version this build speaks (and the meaning of an absent `v`).
pub const HOST_VERSION: u32 = 1;

fn is_current(v: &u32) -> bool {
    *v == HOST_VERSION
}

fn current() -> u32 {
    HOST_VERSION
}

/// A command for `group`, to be proposed by its leader within `timeout_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPropose {
    #[serde(default = "current", skip_serializing_if = "is_current")]
    pub v: u32,
    pub group: u64,
    #[serde(with = "serde_bytes")]
    pub command: Vec<u8>,
    pub timeout_ms: u64,
}

/// What became of a forwarded command. Failures that are not about leadership (a full disk, a
/// group that runs no host state machine, a malformed request) travel as ERROR frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum HostProposeResponse {
    /// Committed at `index` and applied: `result` is what the state machine returned for it.
    Applied {
        index: u64,
        #[serde(with = "serde_bytes")]
        result: Vec<u8>,
    },
    /// The receiver does not lead the group; `leader` is its hint, if it has one.
    NotLeader { leader: Option<u64> },
    /// Proposed, but leadership was lost or the deadline passed before it was applied: it may
    /// or may not be in the log. Not retried by the sender (a host command carries no session).
    Unknown { reason: String },
}

impl ControlMessage for HostPropose {
    const NAME: &'static str = "HostPropose";
}
impl ControlMessage for HostProposeResponse {
    const NAME: &'static str = "HostProposeResponse";
}

impl HostPropose {
    /// Decode, refusing a version newer than this build's.
    pub fn decode(bytes: &[u8]) -> Result<HostPropose, crate::ControlError> {
        let message = HostPropose::from_msgpack(bytes)?;
        if message.v > HOST_VERSION {
            return Err(crate::ControlError::Decode {
                message: HostPropose::NAME,
                reason: format!(
                    "version {} is newer than this build's {HOST_VERSION}: upgrade this node",
                    message.v
                ),
            });
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_and_writes_no_version_while_it_is_1() {
        let request = HostPropose {
            v: HOST_VERSION,
            group: 3,
            command: b"incr x".to_vec(),
            timeout_ms: 5000,
        };
        let bytes = request.to_msgpack().expect("encode");
        assert_eq!(HostPropose::decode(&bytes).expect("decode"), request);
        assert!(!bytes.windows(2).any(|w| w == [0xa1, b'v']), "no `v` key");
    }

    #[test]
    fn a_newer_version_is_refused_and_says_so() {
        let bytes = HostPropose {
            v: HOST_VERSION + 1,
            group: 1,
            command: vec![],
            timeout_ms: 1,
        }
        .to_msgpack()
        .expect("encode");
        let err = HostPropose::decode(&bytes).expect_err("newer");
        assert!(err.to_string().contains("newer"), "{err}");
    }

    #[test]
    fn every_outcome_round_trips_with_its_tag() {
        for response in [
            HostProposeResponse::Applied {
                index: 9,
                result: b"ok".to_vec(),
            },
            HostProposeResponse::NotLeader { leader: Some(2) },
            HostProposeResponse::NotLeader { leader: None },
            HostProposeResponse::Unknown {
                reason: "leadership lost".into(),
            },
        ] {
            let bytes = response.to_msgpack().expect("encode");
            assert_eq!(
                HostProposeResponse::from_msgpack(&bytes).expect("decode"),
                response
            );
        }
    }

    #[test]
    fn garbage_and_missing_fields_are_typed_errors() {
        assert!(HostPropose::decode(b"\xc1").is_err());
        assert!(HostPropose::decode(b"").is_err());
        let no_command = rmp_serde::to_vec_named(&OnlyGroup {
            group: 1,
            timeout_ms: 5,
        })
        .expect("encode");
        assert!(HostPropose::decode(&no_command).is_err());
    }

    #[derive(Serialize)]
    struct OnlyGroup {
        group: u64,
        timeout_ms: u64,
    }
}
