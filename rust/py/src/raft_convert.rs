//! The engine's types as Python takes them (statuses, histograms, timeouts, state machine kinds,
//! replies that settle asyncio futures, its timing rules for a config): translation only.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nodedb_kv::KV_STATE_MACHINE;
use nodedb_multiraft::config::{check_timings, DEFAULT_DRIVER_STALL_MAX};
use nodedb_multiraft::core::Reply;
use nodedb_multiraft::error::RaftError;
use nodedb_multiraft::{GroupStatus, Role, StateMachineKind};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::bridge::{settle, LoopBridge, UnresolvedCall};
use crate::errors::{cluster_error, engine_error, raft_error};
use crate::host_state_machine::HOST_STATE_MACHINE;

/// Upper bound for every timeout a caller passes (a day): a typo cannot park a future forever.
const TIMEOUT_MS_MAX: u64 = 86_400_000;

pub(crate) fn timeout(py: Python<'_>, ms: u64) -> PyResult<Duration> {
    if ms == 0 || ms > TIMEOUT_MS_MAX {
        return Err(cluster_error(
            py,
            "ConfigError",
            ("timeout_ms", format!("{ms} is not in 1..={TIMEOUT_MS_MAX}")),
        ));
    }
    Ok(Duration::from_millis(ms))
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Follower => "follower",
        Role::PreCandidate => "pre_candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

pub(crate) fn status_to_py(py: Python<'_>, s: GroupStatus) -> PyResult<Py<PyAny>> {
    let d = PyDict::new(py);
    d.set_item("group_id", s.group.0)?;
    d.set_item("role", role_name(s.role))?;
    d.set_item("term", s.term)?;
    d.set_item("leader_id", s.leader.map(|n| n.0))?;
    d.set_item("commit_index", s.commit_index)?;
    d.set_item("applied_index", s.applied_index)?;
    d.set_item("last_index", s.last_index)?;
    d.set_item("snapshot_index", s.snapshot_index)?;
    d.set_item("voters", s.voters.iter().map(|n| n.0).collect::<Vec<_>>())?;
    d.set_item(
        "learners",
        s.learners.iter().map(|n| n.0).collect::<Vec<_>>(),
    )?;
    d.set_item(
        "matched",
        s.matched.iter().map(|(n, i)| (n.0, *i)).collect::<Vec<_>>(),
    )?;
    d.set_item(
        "voters_outgoing",
        s.voters_outgoing.iter().map(|n| n.0).collect::<Vec<_>>(),
    )?;
    Ok(d.into_any().unbind())
}

/// A histogram as Python takes it: `(name, bounds_s, cumulative counts, sum_s, count)`.
pub(crate) type HistogramRow = (&'static str, Vec<f64>, Vec<u64>, f64, u64);

pub(crate) fn histogram_row(
    name: &'static str,
    s: nodedb_multiraft::metrics::HistogramSnapshot,
) -> HistogramRow {
    (name, s.bounds_s, s.cumulative, s.sum_s, s.count)
}

pub(crate) fn none(py: Python<'_>, _: ()) -> PyResult<Py<PyAny>> {
    Ok(py.None())
}

/// A `Reply` that settles `future` straight from the driver thread through the loop bridge
/// (no runtime hop on the hot path), raced by a timer on `runtime` that settles it with
/// `Timeout`; whichever comes first wins, the other does nothing.
pub(crate) fn bridge_reply<T: Send + 'static>(
    runtime: &'static tokio::runtime::Runtime,
    bridge: &Arc<LoopBridge>,
    future: Py<PyAny>,
    op: &'static str,
    timeout: Duration,
    to_py: fn(Python<'_>, T) -> PyResult<Py<PyAny>>,
) -> Reply<T> {
    let future = Arc::new(future);
    // The one owed call: whichever of the two takes it settles the future, the other
    // finds it gone and does nothing.
    let pending = Arc::new(Mutex::new(Some(bridge.unresolved_call())));
    let (timer_pending, timer_bridge, timer_future) =
        (Arc::clone(&pending), bridge.clone(), Arc::clone(&future));
    runtime.spawn(async move {
        tokio::time::sleep(timeout).await;
        if let Some(call) = take_pending(&timer_pending) {
            let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            timer_bridge.push(Box::new(move |py| {
                let err = raft_error(py, RaftError::Timeout { op, timeout_ms });
                settle(py, &timer_future, Err(err));
                drop(call);
            }));
        }
    });
    let bridge = bridge.clone();
    Reply::new(move |result: Result<T, RaftError>| {
        if let Some(call) = take_pending(&pending) {
            bridge.push(Box::new(move |py| {
                let value = match result {
                    Ok(value) => to_py(py, value),
                    Err(err) => Err(raft_error(py, err)),
                };
                settle(py, &future, value);
                drop(call);
            }));
        }
    })
}

/// The owed call of a `bridge_reply`, to the first of its reply and its timer that asks.
fn take_pending(pending: &Mutex<Option<UnresolvedCall>>) -> Option<UnresolvedCall> {
    pending.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// `"kv"` or `"python"`, the state machine kinds a group can run.
pub(crate) fn kind_of(py: Python<'_>, kind: &str) -> PyResult<StateMachineKind> {
    match kind {
        "kv" => Ok(KV_STATE_MACHINE),
        "python" => Ok(HOST_STATE_MACHINE),
        other => Err(cluster_error(
            py,
            "ConfigError",
            ("kind", format!("{other:?} is not \"kv\" or \"python\"")),
        )),
    }
}

/// The engine's timing rules for a config file's values (`ClusterConfig.validate`): a
/// `ConfigError` naming the engine's field, for the config to name its own key.
#[pyfunction]
#[pyo3(signature = (tick_interval_ms, heartbeat_ticks, election_ticks, driver_stall_max_ms = None))]
pub fn check_raft_timings(
    py: Python<'_>,
    tick_interval_ms: u64,
    heartbeat_ticks: usize,
    election_ticks: usize,
    driver_stall_max_ms: Option<u64>,
) -> PyResult<()> {
    let stall = driver_stall_max_ms.map_or(DEFAULT_DRIVER_STALL_MAX, Duration::from_millis);
    let tick = Duration::from_millis(tick_interval_ms);
    check_timings(tick, heartbeat_ticks, election_ticks, stall).map_err(|e| engine_error(py, e))
}
