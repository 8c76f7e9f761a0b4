//! Control-message payloads (kinds 1–15): MessagePack maps with NAMED fields (`to_vec_named`), so
//! Python's `msgpack` reads and writes the same bytes and a field can be added without a format
//! break (unknown fields are ignored, missing optional fields take their default).
//!
//! Schemas (field: type) — the Python side (`nodedb_cluster.wire`) mirrors these exactly:
//! - Ping / Pong: `node_id: u64, nonce: u64`
//! - JoinRequest: `node_id: u64, listen_addr: str, wire_version: u32, spki_pin: bin | nil,
//!   swim_addr: str | nil, join_token: str | nil (96 hex characters)`
//! - JoinResponse: `success: bool, error: str, cluster_id: str, state: bin | nil (the metadata
//!   group's full state as the formation layer encodes it; opaque here), nodes: [JoinNode],
//!   routing: RoutingSnapshot | nil, cluster_secret: bin | nil (to an admitted node only),
//!   permanent: bool (a rejection no retry can cure; absent = false)`
//!   - JoinNode: `node_id: u64, addr: str, state: u8 (docs/WIRE.md NodeState), wire_version: u32,
//!     spki_pin: bin | nil`
//!   - RoutingSnapshot: `epoch: u64, vshard_to_group: [u32; 1024], groups: [GroupMembers]`
//!   - GroupMembers: `group_id: u32, leader: u64 (0 = unknown), members: [u64], learners: [u64]`
//! - Error: `code: str, message: str`
//! - StatusRequest / StatusResponse, MetadataPropose / MetadataProposeResponse (kinds 6-9): owned
//!   by the formation layer (`python/nodedb_cluster/node.py`), which defines their maps; so are
//!   JoinTokenRequest / JoinTokenResponse (10-11, `python/nodedb_cluster/formation/admission.py`)
//!   and AuditRequest / AuditResponse (12-13, `python/nodedb_cluster/metadata/audit.py`).

use serde::{de::DeserializeOwned, Deserialize, Deserializer, Serialize};

/// A control payload could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("cannot decode {message} payload: {reason}")]
    Decode {
        message: &'static str,
        reason: String,
    },
    #[error("cannot encode {message} payload: {reason}")]
    Encode {
        message: &'static str,
        reason: String,
    },
}

/// Encode/decode helpers shared by every control message.
pub trait ControlMessage: Serialize + DeserializeOwned {
    const NAME: &'static str;

    fn to_msgpack(&self) -> Result<Vec<u8>, ControlError> {
        rmp_serde::to_vec_named(self).map_err(|e| ControlError::Encode {
            message: Self::NAME,
            reason: e.to_string(),
        })
    }

    /// A refusal names the field that is wrong (`items[2].group: invalid type: …`).
    fn from_msgpack(bytes: &[u8]) -> Result<Self, ControlError> {
        let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
        serde_path_to_error::deserialize(&mut de).map_err(|e| ControlError::Decode {
            message: Self::NAME,
            reason: e.to_string(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    pub node_id: u64,
    pub nonce: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    pub node_id: u64,
    pub nonce: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub node_id: u64,
    pub listen_addr: String,
    pub wire_version: u32,
    /// SHA-256 of the joining node's SubjectPublicKeyInfo, when it runs mTLS.
    #[serde(default, with = "serde_bytes_opt")]
    pub spki_pin: Option<Vec<u8>>,
    /// The joiner's SWIM UDP address, when it runs SWIM (an added field: absent = None).
    #[serde(default)]
    pub swim_addr: Option<String>,
    /// The operator's join token (an added field: absent = None).
    #[serde(default)]
    pub join_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinNode {
    pub node_id: u64,
    pub addr: String,
    pub state: u8,
    pub wire_version: u32,
    #[serde(default, with = "serde_bytes_opt")]
    pub spki_pin: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMembers {
    pub group_id: u32,
    /// 0 when no leader is known.
    #[serde(default)]
    pub leader: u64,
    pub members: Vec<u64>,
    #[serde(default)]
    pub learners: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingSnapshot {
    pub epoch: u64,
    pub vshard_to_group: Vec<u32>,
    pub groups: Vec<GroupMembers>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    pub success: bool,
    /// Empty on success; on rejection the reason, e.g. `not leader; retry at <host:port>`.
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub cluster_id: String,
    /// The metadata group's state (topology, routing, settings) as the formation layer encodes
    /// it; Rust carries it without interpreting it.
    #[serde(default, with = "serde_bytes_opt")]
    pub state: Option<Vec<u8>>,
    #[serde(default)]
    pub nodes: Vec<JoinNode>,
    #[serde(default)]
    pub routing: Option<RoutingSnapshot>,
    /// The cluster secret, to an admitted node only (an added field: absent = None).
    #[serde(default, with = "serde_bytes_opt")]
    pub cluster_secret: Option<Vec<u8>>,
    /// A rejection that no retry can cure (an added field: absent = false).
    #[serde(default)]
    pub permanent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    pub code: String,
    pub message: String,
}

impl ControlMessage for Ping {
    const NAME: &'static str = "Ping";
}
impl ControlMessage for Pong {
    const NAME: &'static str = "Pong";
}
impl ControlMessage for JoinRequest {
    const NAME: &'static str = "JoinRequest";
}
impl ControlMessage for JoinResponse {
    const NAME: &'static str = "JoinResponse";
}
impl ControlMessage for ErrorMsg {
    const NAME: &'static str = "Error";
}

/// `Option<Vec<u8>>` as msgpack `bin` (not an array of ints), `nil` when absent.
pub(crate) mod serde_bytes_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => s.serialize_bytes(bytes),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let value: Option<serde_bytes::ByteBuf> = Option::deserialize(d)?;
        Ok(value.map(serde_bytes::ByteBuf::into_vec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_request_round_trip_and_named_fields() {
        let req = JoinRequest {
            node_id: 7,
            listen_addr: "127.0.0.1:9400".into(),
            wire_version: 1,
            spki_pin: Some(vec![0xAB; 32]),
            swim_addr: Some("127.0.0.1:9500".into()),
            join_token: None,
        };
        let bytes = req.to_msgpack().unwrap();
        // Named fields: the key text is in the payload.
        assert!(bytes.windows(11).any(|w| w == b"listen_addr"));
        assert_eq!(JoinRequest::from_msgpack(&bytes).unwrap(), req);
    }

    #[test]
    fn join_response_optional_fields_default() {
        // {"success": false, "error": "no"} written by hand (fixmap of 2).
        let mut bytes = vec![0x82, 0xA7];
        bytes.extend_from_slice(b"success");
        bytes.push(0xC2);
        bytes.push(0xA5);
        bytes.extend_from_slice(b"error");
        bytes.push(0xA2);
        bytes.extend_from_slice(b"no");
        let resp = JoinResponse::from_msgpack(&bytes).unwrap();
        assert!(!resp.success);
        assert_eq!(resp.error, "no");
        assert!(resp.nodes.is_empty() && resp.routing.is_none());
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let err = Ping::from_msgpack(&[0xC1, 0xFF]).unwrap_err();
        assert!(matches!(
            err,
            ControlError::Decode {
                message: "Ping",
                ..
            }
        ));
    }
}

/// A `bin` field, refusing a `str` (which `serde_bytes` would take as its UTF-8): a peer that
/// sends text where bytes belong is malformed, not lenient. Serialized as `serde_bytes`.
pub mod strict_bytes {
    use super::Deserializer;
    use serde::de::{Error, Visitor};

    pub use serde_bytes::serialize;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bin;
        impl Visitor<'_> for Bin {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("binary bytes")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(Bin)
    }
}
