//! `PeerHealth` and `serve_budget_ms` for Python callers (`KvRouter`): translation only; the
//! rule is `nodedb_kv::peer_health`.

use std::sync::Mutex;
use std::time::Instant;

use nodedb_kv::peer_health::{
    monotonic_s, serve_budget_ms, PeerHealth, ATTEMPT_TIMEOUT_MAX_S, ATTEMPT_TIMEOUT_MIN_S,
    DOWN_HOLD_S, DOWN_NODES_MAX, SERVE_MARGIN_MS_MAX, SLOWEST_HALF_LIFE_S, SLOWEST_MULT,
};
use pyo3::prelude::*;

/// `nodedb_cluster_core.PeerHealth(clock=None)`: the same rule for Python callers; `clock` is
/// a callable returning monotonic seconds (tests), else the process's monotonic clock.
#[pyclass(frozen, name = "PeerHealth", module = "nodedb_cluster_core")]
pub struct PyPeerHealth {
    inner: Mutex<PeerHealth>,
    clock: Option<Py<PyAny>>,
}

impl PyPeerHealth {
    fn now_s(&self, py: Python<'_>) -> PyResult<f64> {
        match &self.clock {
            Some(clock) => clock.call0(py)?.extract(py),
            None => Ok(monotonic_s(Instant::now())),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut PeerHealth) -> T) -> T {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut inner)
    }
}

#[pymethods]
impl PyPeerHealth {
    #[new]
    #[pyo3(signature = (clock = None))]
    fn new(clock: Option<Py<PyAny>>) -> Self {
        PyPeerHealth {
            inner: Mutex::new(PeerHealth::default()),
            clock,
        }
    }

    fn answered(&self, py: Python<'_>, elapsed_s: f64) -> PyResult<()> {
        let now = self.now_s(py)?;
        self.with(|h| h.answered(elapsed_s, now));
        Ok(())
    }

    fn attempt_timeout_s(&self, py: Python<'_>) -> PyResult<f64> {
        let now = self.now_s(py)?;
        Ok(self.with(|h| h.attempt_timeout_s(now)))
    }

    fn failed(&self, py: Python<'_>, node_id: u64) -> PyResult<()> {
        let now = self.now_s(py)?;
        self.with(|h| h.failed(node_id, now));
        Ok(())
    }

    fn set_dead(&self, node_id: u64, dead: bool) {
        self.with(|h| h.set_dead(node_id, dead));
    }

    fn avoid(&self, py: Python<'_>, node_id: u64) -> PyResult<bool> {
        let now = self.now_s(py)?;
        Ok(self.with(|h| h.avoid(node_id, now)))
    }

    fn preferred(&self, py: Python<'_>, nodes: Vec<u64>) -> PyResult<Vec<u64>> {
        let now = self.now_s(py)?;
        Ok(self.with(|h| h.preferred(&nodes, now)))
    }
}

/// `nodedb_cluster_core.serve_budget_ms(t_ms)`: see [`serve_budget_ms`].
#[pyfunction(name = "serve_budget_ms")]
fn py_serve_budget_ms(t_ms: u64) -> u64 {
    serve_budget_ms(t_ms)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPeerHealth>()?;
    m.add("ATTEMPT_TIMEOUT_MIN_S", ATTEMPT_TIMEOUT_MIN_S)?;
    m.add("ATTEMPT_TIMEOUT_MAX_S", ATTEMPT_TIMEOUT_MAX_S)?;
    m.add("SLOWEST_MULT", SLOWEST_MULT)?;
    m.add("SLOWEST_HALF_LIFE_S", SLOWEST_HALF_LIFE_S)?;
    m.add("DOWN_HOLD_S", DOWN_HOLD_S)?;
    m.add("DOWN_NODES_MAX", DOWN_NODES_MAX)?;
    m.add("SERVE_MARGIN_MS_MAX", SERVE_MARGIN_MS_MAX)?;
    m.add_function(wrap_pyfunction!(py_serve_budget_ms, m)?)?;
    Ok(())
}
