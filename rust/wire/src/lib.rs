//! Frame codec, message-kind table and control-message schemas of nodedb-cluster (docs/WIRE.md).
//!
//! Pure code: no I/O, no clocks. The transport (crate `nodedb-transport`) reads a header, asks
//! [`FrameHeader::decode`] how long the payload is (after the bound check), reads exactly that many
//! bytes and calls [`FrameHeader::verify_payload`]; in-memory callers use [`decode_frame`].

pub mod control;
pub mod frame;
pub mod host;
pub mod kind;
pub mod kv;

pub use control::{
    ControlError, ErrorMsg, GroupMembers, JoinNode, JoinRequest, JoinResponse, Ping, Pong,
    RoutingSnapshot,
};
pub use frame::{
    decode_frame, encode_frame, Frame, FrameError, FrameHeader, FORMAT_VERSION, HEADER_BYTES,
    PAYLOAD_BYTES_MAX,
};
pub use host::{
    HostAnswer, HostItem, HostOutcomes, HostPropose, HostProposeBatch, HostProposeResponse,
    HostRequest, HOST_BATCH_VERSION, HOST_ITEMS_MAX, HOST_VERSION,
};
pub use kind::{KindRow, KindStatus, MessageKind, Role, Roles, KINDS};
pub use kv::{
    KvNode, KvRequest, KvResponse, KvResults, KvWireError, ProposeMany, ProposeOne, ReadLevel,
    ReadMany, ReadOne, KV_CAP_READ_OVER, KV_CAP_VSHARD_REDIRECTS, KV_ITEMS_MAX, KV_VERSION,
};

/// The node wire version that travels in JoinRequest (docs/WIRE.md "Versions").
pub const WIRE_VERSION: u32 = 1;
/// Oldest peer wire version this build talks to.
pub const WIRE_VERSION_MIN: u32 = 1;

/// A node's identity in the cluster (non-zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {}", self.0)
    }
}
