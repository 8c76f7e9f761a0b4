//! Rust errors → Python exception classes, 1:1, in one place so the mapping is reviewable; the
//! only file of the binding that imports a Python module. Falls back to a RuntimeError naming
//! the class if the module cannot be imported.

use nodedb_kv::client::error::{NO_SPACE, QUOTA_EXCEEDED};
use nodedb_kv::client::{Failure, KvError, SubmitError};
use nodedb_multiraft::error::{EngineError, RaftError, SinkError, SnapshotError};
use nodedb_transport::TransportError;
use nodedb_wire::FrameError;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// The cluster's exception classes, the KV's (`StaleRead`, `Unavailable`, `OutcomeUnknown`)
/// included: the one module every Rust error maps into.
const ERRORS_MODULE: &str = "nodedb_cluster.errors";

/// Instantiate `<module>.<class>(*args)` as a PyErr.
fn python_error<'py, A>(py: Python<'py>, module: &str, class: &str, args: A) -> PyErr
where
    A: pyo3::call::PyCallArgs<'py>,
{
    let made = py
        .import(module)
        .and_then(|m| m.getattr(class))
        .and_then(|cls| cls.call1(args));
    match made {
        Ok(instance) => PyErr::from_value(instance),
        Err(err) => PyRuntimeError::new_err(format!(
            "{module}.{class} unavailable ({err}); original error lost"
        )),
    }
}

/// Instantiate `nodedb_cluster.errors.<class>(*args)` as a PyErr.
pub fn cluster_error<'py, A>(py: Python<'py>, class: &str, args: A) -> PyErr
where
    A: pyo3::call::PyCallArgs<'py>,
{
    python_error(py, ERRORS_MODULE, class, args)
}

/// A KV call's failure (`nodedb_kv::client`).
pub fn failure_error(py: Python<'_>, failure: Failure) -> PyErr {
    let Failure { group, error } = failure;
    match error {
        KvError::NotLeader { hint } => {
            cluster_error(py, "RaftNotLeader", (group, (hint != 0).then_some(hint)))
        }
        KvError::LeadershipLost => cluster_error(py, "LeadershipLost", (group, None::<u64>)),
        KvError::Timeout { target, timeout_ms } => cluster_error(
            py,
            "Timeout",
            (format!("kv request to node {target}"), timeout_ms),
        ),
        KvError::Net(TransportError::Remote { code, message }) if code == NO_SPACE => {
            cluster_error(py, "NoSpace", (message,)) // the message is the data dir
        }
        KvError::Net(TransportError::Remote { code, message }) if code == QUOTA_EXCEEDED => {
            cluster_error(py, "QuotaExceeded", (group, message))
        }
        KvError::Net(err) => transport_error_with(py, err),
        KvError::Malformed(text) => cluster_error(py, "RemoteError", ("malformed", text)),
        KvError::Stale { age_s, max_s } => cluster_error(py, "StaleRead", (group, age_s, max_s)),
        KvError::Unavailable(reason) => cluster_error(py, "Unavailable", (group, reason)),
        KvError::Invalid(reason) => cluster_error(py, "InvalidRequest", (reason,)),
        KvError::OutcomeUnknown => cluster_error(py, "OutcomeUnknown", (group,)),
        KvError::Paused { vshard } => cluster_error(py, "VShardPaused", (group, Some(vshard))),
        KvError::Busy(reason) => cluster_error(py, "Busy", (reason,)),
        KvError::Closed => cluster_error(py, "TransportClosed", ()),
    }
}

/// Why a KV call could not start.
pub fn submit_error(py: Python<'_>, err: SubmitError) -> PyErr {
    match err {
        SubmitError::Closed => cluster_error(py, "TransportClosed", ()),
        SubmitError::NotConnected(text) => cluster_error(py, "ClusterError", (text,)),
        SubmitError::Item(failure) => failure_error(py, failure),
    }
}

pub fn frame_error(py: Python<'_>, err: &FrameError) -> PyErr {
    cluster_error(py, "FrameError", (err.code(), err.to_string()))
}

pub fn transport_error_with(py: Python<'_>, err: TransportError) -> PyErr {
    match err {
        TransportError::Timeout { op, timeout } => {
            let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            cluster_error(py, "Timeout", (op, timeout_ms))
        }
        TransportError::Unreachable { addr, reason } => {
            cluster_error(py, "Unreachable", (addr.to_string(), reason))
        }
        TransportError::Handshake { addr, reason } => {
            cluster_error(py, "HandshakeError", (addr.to_string(), reason))
        }
        TransportError::UnknownPeer { node_id } => cluster_error(py, "UnknownPeer", (node_id.0,)),
        TransportError::Frame(err) => frame_error(py, &err),
        TransportError::PeerRejectedFrame { addr, code } => cluster_error(
            py,
            "FrameError",
            (
                code,
                format!("peer {addr} rejected our frame ({code}) and reset the stream"),
            ),
        ),
        TransportError::Remote { code, message } => {
            cluster_error(py, "RemoteError", (code, message))
        }
        TransportError::PermissionDenied { message } => {
            cluster_error(py, "PermissionDenied", (message,))
        }
        TransportError::Closed => cluster_error(py, "TransportClosed", ()),
        TransportError::Bind { addr, reason } => {
            cluster_error(py, "BindError", (addr.to_string(), reason))
        }
        TransportError::Credentials { reason } => cluster_error(py, "CredentialsError", (reason,)),
        TransportError::Config { reason } => {
            cluster_error(py, "ConfigError", ("transport", reason))
        }
    }
}

/// An engine call's failure: the class is the engine's code for it ([`RaftError::code`], the
/// same name peers send), the arguments each class's constructor takes.
pub fn raft_error(py: Python<'_>, err: RaftError) -> PyErr {
    let class = err.code();
    match err {
        RaftError::NotLeader { group, leader_hint }
        | RaftError::LeadershipLost { group, leader_hint } => {
            cluster_error(py, class, (group.0, leader_hint.map(|n| n.0)))
        }
        RaftError::Timeout { op, timeout_ms } => cluster_error(py, class, (op, timeout_ms)),
        RaftError::GroupNotFound { group } => cluster_error(py, class, (group.0,)),
        RaftError::Busy { reason } => cluster_error(py, class, (reason,)),
        RaftError::Stopped { reason } | RaftError::Invalid { reason } => {
            cluster_error(py, class, (reason,))
        }
        err @ RaftError::NoSpace { .. } => cluster_error(py, class, (err.wire_message(),)),
    }
}

/// The engine could not start or stop cleanly (config, log, disk).
pub fn engine_error(py: Python<'_>, err: EngineError) -> PyErr {
    match err {
        EngineError::Config { field, reason } => cluster_error(py, "ConfigError", (field, reason)),
        EngineError::Sink(SinkError::Corrupt {
            path,
            offset,
            reason,
        }) => cluster_error(
            py,
            "CorruptLog",
            (path.display().to_string(), offset, reason),
        ),
        EngineError::Snapshot(SnapshotError::Checksum {
            path,
            expected,
            actual,
        }) => cluster_error(
            py,
            "CorruptSnapshot",
            (
                path.display().to_string(),
                format!("its checksum is {actual:#x}, the log recorded {expected:#x}"),
            ),
        ),
        EngineError::Snapshot(SnapshotError::Missing(path)) => cluster_error(
            py,
            "CorruptSnapshot",
            (path, "the file is missing".to_string()),
        ),
        EngineError::LostTail { ref lost, .. } => {
            let groups: Vec<(u64, u64, u64)> = lost
                .iter()
                .map(|t| (t.group.0, t.commit_index, t.last_index))
                .collect();
            cluster_error(py, "LostLogTail", (err.to_string(), groups))
        }
        EngineError::NoSpace { data_dir } => {
            cluster_error(py, "NoSpace", (data_dir.display().to_string(),))
        }
        EngineError::Sink(SinkError::NoSpace { dir, .. }) => {
            cluster_error(py, "NoSpace", (dir.display().to_string(),))
        }
        other => cluster_error(py, "EngineStopped", (other.to_string(),)),
    }
}
