//! Multi-Raft engine: many raft-rs groups on one node behind one tick, one log fsync per round
//! and one frame per peer per round.
//!
//! Layers (each a seam with an in-memory implementation for tests):
//! - [`storage::GroupStorage`]: raft-rs `Storage` of one group, rebuilt from the log;
//! - [`log_sink::LogSink`]: the node's durable log (over `nodedb-wal`: [`wal_sink::WalSink`];
//!   in memory: [`log_sink::MemLogSink`]);
//! - [`network::RaftNetwork`]: frames to peers (over `nodedb-transport`; in memory:
//!   [`network::SimNetwork`]);
//! - [`state_machine::StateMachine`]: what committed commands are applied to (the KV state
//!   machine of `nodedb-kv`, or a host's through the binding), named by an opaque
//!   [`state_machine::StateMachineKind`] tag;
//! - [`core::MultiRaftCore`]: all groups, driven by explicit calls (deterministic tests);
//! - [`driver::MultiRaft`]: the thread that drives the core in time, with the async API.

pub mod codec;
pub mod config;
pub mod core;
pub mod driver;
pub mod error;
mod group;
pub mod host_serve;
pub mod ids;
pub mod lease_board;
pub mod log_sink;
pub mod lost_tail;
pub mod metrics;
pub mod network;
pub mod no_space;
pub mod raft_log;
pub mod snapshot;
mod snapshot_worker;
pub mod state_machine;
pub mod storage;
pub mod transport_net;
pub mod wal_sink;

pub use crate::codec::Frame;
pub use crate::config::MultiRaftConfig;
pub use crate::core::{
    GroupRole, GroupStatus, MembershipChange, MultiRaftCore, ProposeOutcome, ReadPoint, Role,
};
pub use crate::driver::{Inbound, MultiRaft};
pub use crate::error::{EngineError, RaftError};
pub use crate::group::ReadLease;
pub use crate::host_serve::HostProposeServer;
pub use crate::ids::{GroupId, NodeId};
pub use crate::lease_board::LeaseBoard;
pub use crate::log_sink::{LogRepair, LogSink, MemLogSink, SpaceStatus};
pub use crate::lost_tail::{LostTail, LostTailPolicy};
pub use crate::metrics::Metrics;
pub use crate::network::{RaftNetwork, SimNetwork};
pub use crate::state_machine::{
    DecodedState, SnapshotDecoder, SnapshotView, StateMachine, StateMachineFactory,
    StateMachineKind,
};
pub use crate::transport_net::TransportNetwork;
pub use crate::wal_sink::WalSink;
