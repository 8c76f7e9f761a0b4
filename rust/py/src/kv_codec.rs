//! `kv_command`, `kv_session`, `kv_result`: the KV command codec (`nodedb_kv::command`) for
//! Python callers (tests, tools); `kv_routing_request` / `kv_routing_answer` and
//! `kv_read_here_request` / `kv_results_answer`: the few KV_REQUESTs Python sends itself (a
//! `Client` asking for routing, a read of one node's replica), in the schema of
//! `nodedb_wire::kv`. Translation only: Python never builds a KV map.

use std::borrow::Cow;

use nodedb_kv::routing::VSHARDS;
use nodedb_kv::{KvCommand, KvResult, VShardStep};
use nodedb_wire::{KvRequest, KvResponse, ReadLevel, ReadOne};
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
/// | ("duplicate", None) | ("paused", None) | ("moved", group as u64 little-endian)
/// | ("invalid", reason bytes).
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
        KvResult::Paused => ("paused", None),
        KvResult::Moved { group } => ("moved", b(Some(group.to_le_bytes().to_vec()))),
        KvResult::Invalid { reason } => ("invalid", b(Some(reason.into_bytes()))),
    })
}

/// Encodes one step of vShard move `move_id` for a "kv" group (`nodedb_kv::vshard`): op is
/// "incoming" (group = the source), "track", "freeze", "release" (group = the target),
/// "unfreeze", "activate" or "drop". ValueError for a bad op or vShard.
#[pyfunction]
#[pyo3(signature = (op, vshard, group = 0, move_id = 0))]
fn kv_vshard_command<'py>(
    py: Python<'py>,
    op: &str,
    vshard: i64,
    group: u64,
    move_id: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    let step = VShardStep::parse(op).ok_or_else(|| {
        pyo3::exceptions::PyValueError::new_err(format!("unknown vshard op {op:?}"))
    })?;
    let vshard = u32::try_from(vshard)
        .ok()
        .filter(|&v| (v as usize) < VSHARDS)
        .ok_or_else(|| {
            pyo3::exceptions::PyValueError::new_err(format!(
                "vshard {vshard} is not in 0..{VSHARDS}"
            ))
        })?;
    let cmd = KvCommand::VShard {
        step,
        vshard,
        group,
        move_id,
    };
    Ok(PyBytes::new(py, &cmd.encode()))
}

/// None if `result` is a success (`ok`, `not_found`, `cas_mismatch`); else raises:
/// `VShardPaused`, `VShardMoved(group)`, `InvalidRequest(reason)` (refused, or undecodable),
/// `OutcomeUnknown` (a session write answered before).
#[pyfunction]
fn kv_check_result(py: Python<'_>, result: &[u8]) -> PyResult<()> {
    match KvResult::decode(result).map_err(|e| invalid(py, format!("kv result: {e}")))? {
        KvResult::Ok { .. } | KvResult::NotFound | KvResult::CasMismatch { .. } => Ok(()),
        KvResult::Paused => Err(cluster_error(py, "VShardPaused", (0u64, None::<u32>))),
        KvResult::Moved { group } => Err(cluster_error(py, "VShardMoved", (group,))),
        KvResult::Duplicate => Err(cluster_error(py, "OutcomeUnknown", (0u64,))),
        KvResult::Invalid { reason } => Err(invalid(py, reason)),
    }
}

fn invalid(py: Python<'_>, err: impl std::fmt::Display) -> PyErr {
    cluster_error(py, "InvalidRequest", (err.to_string(),))
}

/// The KV_REQUEST asking a node for routing (what a `Client` needs to reach leaders).
#[pyfunction]
fn kv_routing_request(py: Python<'_>) -> PyResult<Bound<'_, PyBytes>> {
    let bytes = KvRequest::Routing.encode().map_err(|e| invalid(py, e))?;
    Ok(PyBytes::new(py, &bytes))
}

/// Its answer: `(routing table bytes, [(node_id, "ip:port", spki pin or None)])`;
/// `InvalidRequest` for any other answer.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn kv_routing_answer<'py>(
    py: Python<'py>,
    payload: &[u8],
) -> PyResult<(
    Bound<'py, PyBytes>,
    Vec<(u64, String, Option<Bound<'py, PyBytes>>)>,
)> {
    match KvResponse::decode(payload).map_err(|e| invalid(py, e))? {
        KvResponse::Routing { routing, nodes } => Ok((
            PyBytes::new(py, &routing),
            nodes
                .into_iter()
                .map(|n| (n.0, n.1, n.2.map(|pin| PyBytes::new(py, &pin))))
                .collect(),
        )),
        _ => Err(invalid(py, "the node answered without routing")),
    }
}

/// A read of `keys` of `group` at `level` on the receiving node only (forwarded: never sent
/// on), e.g. to check one replica after a failover.
#[pyfunction]
fn kv_read_here_request<'py>(
    py: Python<'py>,
    group: u64,
    keys: Vec<Vec<u8>>,
    level: &str,
    stale_s: f64,
    timeout_ms: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    let level = ReadLevel::parse(level)
        .ok_or_else(|| invalid(py, format!("unknown read level {level:?}")))?;
    let request = KvRequest::Read(ReadOne {
        group,
        keys: keys.into_iter().map(Cow::Owned).collect(),
        level,
        stale_s,
        forwarded: true,
        timeout_ms,
        caps: 0, // `kv_results_answer` reads no refusals: a refused read is an error
    });
    let bytes = request.encode().map_err(|e| invalid(py, e))?;
    Ok(PyBytes::new(py, &bytes))
}

/// The values of a results answer (`None` for an absent key); `InvalidRequest` naming what the
/// node answered instead (not leader, stale, failed groups).
#[pyfunction]
fn kv_results_answer<'py>(
    py: Python<'py>,
    payload: &[u8],
) -> PyResult<Vec<Option<Bound<'py, PyBytes>>>> {
    match KvResponse::decode(payload).map_err(|e| invalid(py, e))? {
        KvResponse::Results(r)
            if r.not_leader.is_empty() && r.unknown.is_empty() && r.stale.is_empty() =>
        {
            Ok(r.results
                .into_iter()
                .map(|v| v.map(|v| PyBytes::new(py, &v)))
                .collect())
        }
        other => Err(invalid(
            py,
            format!("the node did not serve the read: {other:?}"),
        )),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(kv_routing_request, m)?)?;
    m.add_function(wrap_pyfunction!(kv_routing_answer, m)?)?;
    m.add_function(wrap_pyfunction!(kv_read_here_request, m)?)?;
    m.add_function(wrap_pyfunction!(kv_results_answer, m)?)?;
    m.add_function(wrap_pyfunction!(kv_command, m)?)?;
    m.add_function(wrap_pyfunction!(kv_session, m)?)?;
    m.add_function(wrap_pyfunction!(kv_result, m)?)?;
    m.add_function(wrap_pyfunction!(kv_vshard_command, m)?)?;
    m.add_function(wrap_pyfunction!(kv_check_result, m)?)?;
    Ok(())
}
