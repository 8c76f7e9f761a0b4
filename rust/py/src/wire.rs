//! Python face of `nodedb-wire`: the frame codec (for tests and tools; the transport frames in
//! Rust), the kind table, and a schema check of control payloads written by Python's msgpack.

use nodedb_wire::control::ControlMessage;
use nodedb_wire::{
    decode_frame as decode, encode_frame as encode, ErrorMsg, HostAnswer, HostRequest, JoinRequest,
    JoinResponse, KindStatus, MessageKind, Ping, Pong, FORMAT_VERSION, HEADER_BYTES, KINDS,
    PAYLOAD_BYTES_MAX, WIRE_VERSION, WIRE_VERSION_MIN,
};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::{cluster_error, frame_error};

pub(crate) fn kind_of(py: Python<'_>, number: u16) -> PyResult<MessageKind> {
    MessageKind::from_u16(number).map_err(|row| {
        let err = match row {
            Some(row) => nodedb_wire::FrameError::RetiredKind {
                kind: row.number,
                name: row.name,
            },
            None => nodedb_wire::FrameError::UnknownKind { kind: number },
        };
        frame_error(py, &err)
    })
}

/// `kind` + `payload` → one frame (header then payload).
#[pyfunction]
fn encode_frame<'py>(py: Python<'py>, kind: u16, payload: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let kind = kind_of(py, kind)?;
    let bytes = encode(kind, payload).map_err(|e| frame_error(py, &e))?;
    Ok(PyBytes::new(py, &bytes))
}

/// One whole frame → `(kind, payload)`; malformed input raises `FrameError` with its `code`.
#[pyfunction]
fn decode_frame<'py>(py: Python<'py>, data: &[u8]) -> PyResult<(u16, Bound<'py, PyBytes>)> {
    let frame = decode(data).map_err(|e| frame_error(py, &e))?;
    Ok((frame.kind.number(), PyBytes::new(py, &frame.payload)))
}

/// The kind table: `[(number, name, active)]`.
#[pyfunction]
fn message_kinds() -> Vec<(u16, &'static str, bool)> {
    KINDS
        .iter()
        .map(|row| (row.number, row.name, row.status == KindStatus::Active))
        .collect()
}

/// Decode a control payload with the Rust schema of `kind` and re-encode it (named fields).
/// Proves Python-written payloads are readable by Rust; raises `FrameError("bad_payload")`.
#[pyfunction]
fn check_control_payload<'py>(
    py: Python<'py>,
    kind: u16,
    payload: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    fn round<M: ControlMessage>(payload: &[u8]) -> Result<Vec<u8>, String> {
        let message = M::from_msgpack(payload).map_err(|e| e.to_string())?;
        message.to_msgpack().map_err(|e| e.to_string())
    }
    let kind = kind_of(py, kind)?;
    let result = match kind {
        MessageKind::PING => round::<Ping>(payload),
        MessageKind::PONG => round::<Pong>(payload),
        MessageKind::JOIN_REQUEST => round::<JoinRequest>(payload),
        MessageKind::JOIN_RESPONSE => round::<JoinResponse>(payload),
        MessageKind::ERROR => round::<ErrorMsg>(payload),
        MessageKind::HOST_PROPOSE => HostRequest::decode(payload)
            .and_then(|request| match request {
                HostRequest::One(one) => one.to_msgpack(),
                HostRequest::Batch(batch) => batch.to_msgpack(),
            })
            .map_err(|e| e.to_string()),
        MessageKind::HOST_PROPOSE_RESPONSE => round::<HostAnswer>(payload),
        other => Err(format!("{other} is not a control message")),
    };
    match result {
        Ok(bytes) => Ok(PyBytes::new(py, &bytes)),
        Err(reason) => Err(cluster_error(py, "FrameError", ("bad_payload", reason))),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("FORMAT_VERSION", FORMAT_VERSION)?;
    m.add("HEADER_BYTES", HEADER_BYTES)?;
    m.add("HOST_ITEMS_MAX", nodedb_wire::HOST_ITEMS_MAX)?;
    m.add("HOST_VERSION", nodedb_wire::HOST_VERSION)?;
    m.add("PAYLOAD_BYTES_MAX", PAYLOAD_BYTES_MAX)?;
    m.add("WIRE_VERSION", WIRE_VERSION)?;
    m.add("WIRE_VERSION_MIN", WIRE_VERSION_MIN)?;
    m.add_function(wrap_pyfunction!(encode_frame, m)?)?;
    m.add_function(wrap_pyfunction!(decode_frame, m)?)?;
    m.add_function(wrap_pyfunction!(message_kinds, m)?)?;
    m.add_function(wrap_pyfunction!(check_control_payload, m)?)?;
    Ok(())
}
