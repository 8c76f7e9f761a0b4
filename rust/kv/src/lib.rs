//! The replicated KV of nodedb-cluster, in Rust and without Python: the state machine and the
//! command codec its log carries, and (one concept per module) everything a node or a client
//! needs to serve and reach it.
//!
//! The engine (`nodedb-multiraft`) knows no KV: a group runs the KV because it was created
//! with [`KV_STATE_MACHINE`] and the node's factory builds a [`KvStateMachine`] for that tag.
//!
//! - [`command`], [`state_machine`]: the log's bytes and what applies them (on disk: frozen);
//! - [`partition`], [`snapshot`]: the state's per-vShard map and its snapshot view and bytes;
//! - [`vshard`], [`migration`]: a vShard's states while it moves between groups, and its copy;
//! - [`routing`]: key → vShard → group → leader and voters;
//! - [`session`], [`peer_health`]: a client's write session and whom it avoids;
//! - [`session_table`]: the sessions a group remembers (exactly-once on the server's side);
//! - [`client`]: the client core (lanes, batching, retries; results through `Completion`);
//! - [`serve`], [`groups`]: a node's KV_REQUEST fast path and its KV groups;
//! - [`keys_read`]: many keys read with the group's lock held for O(vShards);
//! - [`load`]: the native load generator.
//!
//! The wire messages are `nodedb_wire::kv`'s.

pub mod client;
pub mod command;
pub mod groups;
mod inline;
pub mod keys_read;
pub mod load;
pub mod migration;
pub mod partition;
pub mod peer_health;
pub mod routing;
pub mod serve;
pub mod session;
pub mod session_table;
pub mod shard;
pub mod snapshot;
pub mod state_machine;
pub mod vshard;

use nodedb_multiraft::StateMachineKind;

pub use crate::command::{Import, ImportedSession, KvCommand, KvResult, VShardStep, KEY_BYTES_MAX};
pub use crate::session_table::{ClientSession, SessionTable, SESSIONS_MAX, SESSION_RESULTS_MAX};
pub use crate::snapshot::KvSnapshotView;
pub use crate::state_machine::{KvReader, KvState, KvStateMachine, KvSummary};
pub use crate::vshard::{Refusal, VShardMark, VShardState};

/// The tag of a group that runs the KV state machine, recorded in every node's log since the
/// first release (as the engine's old `StateMachineKind::Kv = 1`): never changes.
pub const KV_STATE_MACHINE: StateMachineKind = StateMachineKind::new(1, "Kv");
