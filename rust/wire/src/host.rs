//! HOST_PROPOSE / HOST_PROPOSE_RESPONSE (kinds 36 / 37): commands for data groups that run the
//! embedding host's state machine, forwarded one hop to each group's leader.
//!
//! Only the node role may send HOST_PROPOSE: a host state machine trusts what its own cluster
//! proposes, so a client or admin certificate must not be able to put commands into its log.
//! The receiver proposes on groups it leads and never forwards again: a receiver that is not the
//! leader answers `not_leader` with its hint, and the sender retries there within its deadline.
//!
//! Payloads are MessagePack maps with named fields, like the control messages. Versions: `v`,
//! absent = 1 ([`HostPropose`], one command, one [`HostProposeResponse`]); 2
//! ([`HostProposeBatch`]: every command a node queued for one leader in one turn of its loop, one
//! [`HostOutcomes`] in the same order). A version newer than [`HOST_VERSION`] is refused as
//! undecodable rather than half-understood (a sender falls back to version 1 for a peer that
//! refuses 2), and unknown fields are ignored.

use serde::{Deserialize, Serialize};

use crate::control::{ControlError, ControlMessage};

/// The newest host-proposal message version this build speaks.
pub const HOST_VERSION: u32 = 2;
/// A batch's version, and the first build that reads it.
pub const HOST_BATCH_VERSION: u32 = 2;
/// The most commands one batch carries (a group's default room for pending proposals); a
/// sender with more sends several.
pub const HOST_ITEMS_MAX: usize = 65_536;

fn is_one(v: &u32) -> bool {
    *v == 1
}

fn one() -> u32 {
    1
}

/// Version 1: a command for `group`, to be proposed by its leader within `timeout_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPropose {
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub v: u32,
    pub group: u64,
    #[serde(with = "crate::control::strict_bytes")]
    pub command: Vec<u8>,
    pub timeout_ms: u64,
}

/// One command of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostItem {
    pub group: u64,
    #[serde(with = "crate::control::strict_bytes")]
    pub command: Vec<u8>,
}

/// Version 2: commands for one or more groups the receiver leads, each proposed within
/// `timeout_ms`; the commands of one group go into the log in this order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostProposeBatch {
    pub v: u32,
    pub timeout_ms: u64,
    pub items: Vec<HostItem>,
}

/// What became of a forwarded command. In version 1, failures that are not about leadership (a
/// full disk, a group that runs no host state machine, a malformed request) travel as ERROR
/// frames; in a batch, such a failure of one group's commands is their `failed` outcome, and
/// only a failure of the whole request (it does not decode, the sender may not send it) is an
/// ERROR frame.
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
    /// Not proposed (version 2 only): what an ERROR frame would have said, `code` and `message`.
    Failed { code: String, message: String },
}

/// The answer to a batch: one outcome per item, in the request's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostOutcomes {
    pub outcomes: Vec<HostProposeResponse>,
}

/// A HOST_PROPOSE payload of either version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRequest {
    One(HostPropose),
    Batch(HostProposeBatch),
}

/// A HOST_PROPOSE_RESPONSE payload of either version (what a sender may be answered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HostAnswer {
    Batch(HostOutcomes),
    One(HostProposeResponse),
}

impl ControlMessage for HostPropose {
    const NAME: &'static str = "HostPropose";
}
impl ControlMessage for HostProposeBatch {
    const NAME: &'static str = "HostPropose";
}
impl ControlMessage for HostProposeResponse {
    const NAME: &'static str = "HostProposeResponse";
}
impl ControlMessage for HostOutcomes {
    const NAME: &'static str = "HostProposeResponse";
}
impl ControlMessage for HostAnswer {
    const NAME: &'static str = "HostProposeResponse";
}

/// Only the version, read first to pick the schema.
#[derive(Deserialize)]
struct Version {
    #[serde(default = "one")]
    v: u32,
}

fn refused(reason: String) -> ControlError {
    ControlError::Decode {
        message: HostPropose::NAME,
        reason,
    }
}

impl HostRequest {
    /// Decode either version, refusing a version newer than this build's, a zero timeout and
    /// an empty batch.
    pub fn decode(bytes: &[u8]) -> Result<HostRequest, ControlError> {
        let Version { v } = rmp_serde::from_slice(bytes).map_err(|e| refused(e.to_string()))?;
        let request = match v {
            0 => return Err(refused("version 0 does not exist".into())),
            1 => HostRequest::One(HostPropose::from_msgpack(bytes)?),
            HOST_BATCH_VERSION => HostRequest::Batch(HostProposeBatch::from_msgpack(bytes)?),
            _ => {
                return Err(refused(format!(
                    "version {v} is newer than this build's {HOST_VERSION}: upgrade this node"
                )))
            }
        };
        if request.timeout_ms() == 0 {
            return Err(refused("timeout_ms must be positive".into()));
        }
        if let HostRequest::Batch(batch) = &request {
            if batch.items.is_empty() {
                return Err(refused("a batch has no items".into()));
            }
            if batch.items.len() > HOST_ITEMS_MAX {
                return Err(refused(format!(
                    "a batch of {} items; at most {HOST_ITEMS_MAX}",
                    batch.items.len()
                )));
            }
        }
        Ok(request)
    }

    pub fn timeout_ms(&self) -> u64 {
        match self {
            HostRequest::One(one) => one.timeout_ms,
            HostRequest::Batch(batch) => batch.timeout_ms,
        }
    }

    /// The version the answer must be written in.
    pub fn version(&self) -> u32 {
        match self {
            HostRequest::One(_) => 1,
            HostRequest::Batch(_) => HOST_BATCH_VERSION,
        }
    }

    /// `(group, command)` of every command, in order.
    pub fn into_items(self) -> Vec<(u64, Vec<u8>)> {
        match self {
            HostRequest::One(one) => vec![(one.group, one.command)],
            HostRequest::Batch(batch) => batch
                .items
                .into_iter()
                .map(|item| (item.group, item.command))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_and_writes_no_version_while_it_is_1() {
        let request = HostPropose {
            v: 1,
            group: 3,
            command: b"incr x".to_vec(),
            timeout_ms: 5000,
        };
        let bytes = request.to_msgpack().expect("encode");
        assert_eq!(
            HostRequest::decode(&bytes).expect("decode"),
            HostRequest::One(request)
        );
        assert!(!bytes.windows(2).any(|w| w == [0xa1, b'v']), "no `v` key");
    }

    #[test]
    fn a_newer_version_is_refused_and_says_so() {
        let bytes = HostProposeBatch {
            v: HOST_VERSION + 1,
            timeout_ms: 1,
            items: vec![],
        }
        .to_msgpack()
        .expect("encode");
        let err = HostRequest::decode(&bytes).expect_err("newer");
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
            HostProposeResponse::Failed {
                code: "NoSpace".into(),
                message: "/data".into(),
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
        assert!(HostRequest::decode(b"\xc1").is_err());
        assert!(HostRequest::decode(b"").is_err());
        let no_command = rmp_serde::to_vec_named(&OnlyGroup {
            group: 1,
            timeout_ms: 5,
        })
        .expect("encode");
        assert!(HostRequest::decode(&no_command).is_err());
    }

    #[test]
    fn a_batch_round_trips_in_order_and_its_answer_is_told_from_a_single_one() {
        let batch = HostProposeBatch {
            v: HOST_BATCH_VERSION,
            timeout_ms: 250,
            items: vec![
                HostItem {
                    group: 2,
                    command: b"a".to_vec(),
                },
                HostItem {
                    group: 1,
                    command: vec![],
                },
            ],
        };
        let request = HostRequest::decode(&batch.to_msgpack().expect("encode")).expect("decode");
        assert_eq!(request.version(), 2);
        assert_eq!(request.timeout_ms(), 250);
        assert_eq!(request.into_items(), vec![(2, b"a".to_vec()), (1, vec![])]);
        let many = HostOutcomes {
            outcomes: vec![HostProposeResponse::NotLeader { leader: None }],
        };
        let bytes = many.to_msgpack().expect("encode");
        assert_eq!(
            HostAnswer::from_msgpack(&bytes).expect("decode"),
            HostAnswer::Batch(many)
        );
        let one = HostProposeResponse::NotLeader { leader: Some(3) };
        let bytes = one.to_msgpack().expect("encode");
        assert_eq!(
            HostAnswer::from_msgpack(&bytes).expect("decode"),
            HostAnswer::One(one)
        );
    }

    #[test]
    fn an_empty_or_oversized_batch_a_zero_timeout_and_version_0_are_refused_naming_why() {
        let empty = HostProposeBatch {
            v: HOST_BATCH_VERSION,
            timeout_ms: 5,
            items: vec![],
        };
        let err = HostRequest::decode(&empty.to_msgpack().expect("encode")).expect_err("empty");
        assert!(err.to_string().contains("no items"), "{err}");
        let item = HostItem {
            group: 1,
            command: vec![],
        };
        let too_many = HostProposeBatch {
            items: vec![item; HOST_ITEMS_MAX + 1],
            ..empty
        };
        let err = HostRequest::decode(&too_many.to_msgpack().expect("encode")).expect_err("many");
        assert!(err.to_string().contains("at most 65536"), "{err}");
        let zero = HostPropose {
            v: 1,
            group: 1,
            command: vec![],
            timeout_ms: 0,
        };
        let err = HostRequest::decode(&zero.to_msgpack().expect("encode")).expect_err("zero");
        assert!(err.to_string().contains("timeout_ms"), "{err}");
        let v0 = HostPropose { v: 0, ..zero };
        assert!(HostRequest::decode(&v0.to_msgpack().expect("encode")).is_err());
    }

    #[derive(Serialize)]
    struct OnlyGroup {
        group: u64,
        timeout_ms: u64,
    }
}
