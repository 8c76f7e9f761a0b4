//! Typed errors. `RaftError` is what a caller of propose / read_index / conf change sees and maps
//! 1:1 onto Python exceptions; `EngineError` is what opening the engine or a group can fail with.

use std::path::PathBuf;

use thiserror::Error;

use crate::ids::{GroupId, NodeId};
use crate::lost_tail::LostTail;

/// Why a request to a group did not succeed. Each variant says whether a retry can help.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RaftError {
    /// This node does not lead the group; retry at `leader_hint` when known.
    #[error("not leader of {group}; leader hint {leader_hint:?}")]
    NotLeader {
        group: GroupId,
        leader_hint: Option<NodeId>,
    },
    /// The deadline passed; the proposal may still commit later (ambiguous outcome).
    #[error("{op} timed out after {timeout_ms} ms")]
    Timeout { op: &'static str, timeout_ms: u64 },
    /// No such group on this node.
    #[error("group {group} not found on this node")]
    GroupNotFound { group: GroupId },
    /// A bounded queue or raft's uncommitted-size limit is full; retry after back-off.
    #[error("busy: {reason}")]
    Busy { reason: &'static str },
    /// The leader stepped down (or the entry was overwritten) before the entry applied: the
    /// outcome is unknown, the write may or may not have committed.
    #[error("leadership of {group} lost before apply; new leader hint {leader_hint:?}")]
    LeadershipLost {
        group: GroupId,
        leader_hint: Option<NodeId>,
    },
    /// The engine is shutting down or stopped after a fatal storage error.
    #[error("engine stopped: {reason}")]
    Stopped { reason: String },
    /// The request itself is malformed (e.g. an invalid conf change); retrying cannot help.
    #[error("invalid request: {reason}")]
    Invalid { reason: String },
    /// The node is in its NO_SPACE state: the disk holding `data_dir` is full, or below the
    /// log's free-space reserve. Writes (proposals, membership changes) are refused; reads are
    /// still served. Not for the client to retry: the state ends by itself, with no restart,
    /// once space is freed on that disk.
    #[error(
        "no space left on the device holding {}: writes are refused until space is freed \
         there, then resume by themselves (no restart needed); reads are still served",
        data_dir.display()
    )]
    NoSpace { data_dir: PathBuf },
}

/// [`RaftError::code`] of `NoSpace`: a requester tells it apart (never retried; its message is
/// the data dir).
pub const CODE_NO_SPACE: &str = "NoSpace";
/// [`RaftError::code`] of `Invalid`, which servers also send for a request they cannot read.
pub const CODE_INVALID_REQUEST: &str = "InvalidRequest";

impl RaftError {
    /// The name every node and the binding give this failure: the `nodedb_cluster.errors`
    /// class a requester raises again, sent as an Error frame's or a failed outcome's `code`
    /// (KV_REQUEST, HOST_PROPOSE) and instantiated by the binding. One table for all of them.
    pub fn code(&self) -> &'static str {
        match self {
            RaftError::NotLeader { .. } => "RaftNotLeader",
            RaftError::Timeout { .. } => "Timeout",
            RaftError::GroupNotFound { .. } => "UnknownGroup",
            RaftError::Busy { .. } => "Busy",
            RaftError::LeadershipLost { .. } => "LeadershipLost",
            RaftError::Stopped { .. } => "EngineStopped",
            RaftError::Invalid { .. } => CODE_INVALID_REQUEST,
            RaftError::NoSpace { .. } => CODE_NO_SPACE,
        }
    }

    /// The text sent with [`RaftError::code`]: the data dir for `NoSpace` (what
    /// `errors.NoSpace(data_dir)` is built from again on the other side), else the message.
    pub fn wire_message(&self) -> String {
        match self {
            RaftError::NoSpace { data_dir } => data_dir.display().to_string(),
            other => other.to_string(),
        }
    }
}

/// The Error frame a server answers a failed request with: the engine's code and its text.
impl From<RaftError> for nodedb_transport::HandlerError {
    fn from(err: RaftError) -> Self {
        nodedb_transport::HandlerError::new(err.code(), err.wire_message())
    }
}

/// Failures of the durable log seam.
#[derive(Debug, Error)]
pub enum SinkError {
    #[error("log I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt log {path} at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("log record undecodable: {0}")]
    Decode(#[from] DecodeError),
    #[error("log backend error: {0}")]
    Backend(String),
    /// The disk holding the log (`dir`) is full (the WAL's `NoSpace`): nothing of the failed
    /// write counts and the log is not poisoned; what was appended stays buffered and the same
    /// call succeeds once space is freed. The engine stalls instead of stopping.
    #[error("{reason}")]
    NoSpace { dir: PathBuf, reason: String },
}

impl SinkError {
    /// A full disk (retry once space is freed), not a broken log.
    pub fn is_no_space(&self) -> bool {
        matches!(self, SinkError::NoSpace { .. })
    }
}

/// A byte string from disk or network that does not decode. Never a panic.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("truncated: need {need_bytes} bytes at offset {offset}, have {have_bytes}")]
    Truncated {
        offset: usize,
        need_bytes: usize,
        have_bytes: usize,
    },
    #[error("unsupported format version {0}")]
    Version(u8),
    #[error("unknown tag {tag} for {what}")]
    UnknownTag { what: &'static str, tag: u8 },
    #[error("length {len} of {what} exceeds limit {limit}")]
    TooLong {
        what: &'static str,
        len: u64,
        limit: u64,
    },
    #[error("protobuf: {0}")]
    Protobuf(String),
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// State machine failures (snapshot/restore); apply itself never fails, it returns per-entry
/// results, because a committed entry must be applied identically on every node.
#[derive(Debug, Error)]
pub enum SmError {
    #[error("state machine snapshot undecodable: {0}")]
    Decode(String),
    #[error("state machine: {0}")]
    Other(String),
}

/// Snapshot file and transfer failures.
#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("snapshot I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot checksum mismatch on {path}: expected {expected:#x}, got {actual:#x}")]
    Checksum {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("snapshot chunk out of order: expected offset {expected}, got {got}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("snapshot chunk overflows declared size {total_bytes}")]
    Overflow { total_bytes: u64 },
    #[error("snapshot {0} not found")]
    Missing(String),
    #[error(transparent)]
    Sm(#[from] SmError),
    #[error("snapshot {path} not restored: {source}")]
    Restore { path: PathBuf, source: SmError },
}

/// Opening the engine or managing a group failed.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("invalid config field {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("group {0} already exists")]
    GroupExists(GroupId),
    #[error("group {0} not found")]
    GroupNotFound(GroupId),
    #[error("recovered state of {group} is inconsistent: {reason}")]
    Recovery { group: GroupId, reason: String },
    #[error("engine stopped: {0}")]
    Stopped(String),
    #[error("engine thread: {0}")]
    Thread(String),
    /// Groups whose log ends before their persisted commit index, or before the commit index a
    /// leader says this node acknowledged: entries this node acknowledged are gone (see
    /// `lost_tail`). At open nothing was changed; at run time the engine stops.
    #[error(
        "the raft log in {location} lost entries this node acknowledged: {}; this node's copy \
         of those groups cannot be trusted, so it will not serve. Start it with --rejoin to \
         discard that copy and have the leaders re-replicate it",
        lost.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    LostTail {
        lost: Vec<LostTail>,
        location: String,
    },
    /// Refused in the NO_SPACE state (see [`RaftError::NoSpace`]).
    #[error("no space left on the device holding {}", data_dir.display())]
    NoSpace { data_dir: PathBuf },
    /// The state machine could not apply committed entries (see
    /// [`crate::StateMachine::apply_batch`]); the engine stops.
    #[error(
        "the state machine of {group} failed to apply entries {first}..={last}: {reason}; this \
         node stops rather than let its copy of the group differ from the other replicas"
    )]
    Apply {
        group: GroupId,
        first: u64,
        last: u64,
        reason: String,
    },
}

impl EngineError {
    /// A full disk (the log's `NoSpace`, a snapshot file that hit ENOSPC, or a refusal in the
    /// NO_SPACE state): the engine stays up and retries, it does not stop.
    pub fn is_no_space(&self) -> bool {
        match self {
            EngineError::NoSpace { .. } => true,
            EngineError::Sink(e) => e.is_no_space(),
            EngineError::Snapshot(SnapshotError::Io { source, .. }) => {
                nodedb_wal::is_no_space(source)
            }
            _ => false,
        }
    }
}
