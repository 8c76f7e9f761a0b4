//! Rust errors → the classes of `nodedb_cluster.errors`, 1:1 (one place, so the mapping is
//! reviewable). Falls back to a RuntimeError naming the class if that module cannot be imported.

use nodedb_transport::TransportError;
use nodedb_wire::FrameError;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// Instantiate `nodedb_cluster.errors.<class>(*args)` as a PyErr.
pub fn cluster_error<'py, A>(py: Python<'py>, class: &str, args: A) -> PyErr
where
    A: pyo3::call::PyCallArgs<'py>,
{
    let made = py
        .import("nodedb_cluster.errors")
        .and_then(|module| module.getattr(class))
        .and_then(|cls| cls.call1(args));
    match made {
        Ok(instance) => PyErr::from_value(instance),
        Err(err) => PyRuntimeError::new_err(format!(
            "nodedb_cluster.errors.{class} unavailable ({err}); original error lost"
        )),
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
