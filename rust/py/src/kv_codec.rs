//! `kv_command`, `kv_session`, `kv_result`: the KV command codec (`nodedb_kv::command`) for
//! Python callers (`KvRouter`, tests). Translation only.

use nodedb_kv::{KvCommand, KvResult};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::cluster_error;

/// Encodes a KV command for a "kv" group: op is "put" | "delete" | "cas" | "get";
/// `expected` (cas only) None = the key must be absent.
#[pyfunction]
#[pyo3(signature = (op, key, value = None, expected = None))]
fn kv_command<'py>(
    py: Python<'py>,
    op: &str,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    expected: Option<Vec<u8>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let need_value = |v: Option<Vec<u8>>| {
        v.ok_or_else(|| cluster_error(py, "InvalidRequest", (format!("{op} needs a value"),)))
    };
    let cmd = match op {
        "put" => KvCommand::Put {
            key,
            value: need_value(value)?,
        },
        "delete" => KvCommand::Delete { key },
        "cas" => KvCommand::Cas {
            key,
            expected,
            value: need_value(value)?,
        },
        "get" => KvCommand::Get { key },
        other => {
            return Err(cluster_error(
                py,
                "InvalidRequest",
                (format!("unknown kv op {other:?}"),),
            ))
        }
    };
    Ok(PyBytes::new(py, &cmd.encode()))
}

/// Wraps an encoded KV command in client session `client` as its write `seq` (exactly-once:
/// the state machine applies one copy of each (client, seq)); `acked_below`: the lowest seq the
/// client still waits for.
#[pyfunction]
fn kv_session<'py>(
    py: Python<'py>,
    client: u64,
    seq: u64,
    acked_below: u64,
    inner: &[u8],
) -> Bound<'py, PyBytes> {
    PyBytes::new(
        py,
        &KvCommand::encode_session(client, seq, acked_below, inner),
    )
}

/// Decodes a KV result: ("ok", value | None) | ("not_found", None) | ("cas_mismatch", current)
/// | ("duplicate", None) | ("invalid", reason bytes).
#[pyfunction]
fn kv_result<'py>(
    py: Python<'py>,
    data: &[u8],
) -> PyResult<(&'static str, Option<Bound<'py, PyBytes>>)> {
    let r = KvResult::decode(data)
        .map_err(|e| cluster_error(py, "InvalidRequest", (format!("kv result: {e}"),)))?;
    let b = |v: Option<Vec<u8>>| v.map(|v| PyBytes::new(py, &v));
    Ok(match r {
        KvResult::Ok { value } => ("ok", b(value)),
        KvResult::NotFound => ("not_found", None),
        KvResult::CasMismatch { current } => ("cas_mismatch", b(current)),
        KvResult::Duplicate => ("duplicate", None),
        KvResult::Invalid { reason } => ("invalid", b(Some(reason.into_bytes()))),
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(kv_command, m)?)?;
    m.add_function(wrap_pyfunction!(kv_session, m)?)?;
    m.add_function(wrap_pyfunction!(kv_result, m)?)?;
    Ok(())
}
