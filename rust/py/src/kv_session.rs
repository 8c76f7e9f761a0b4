//! `WriteSession` for Python callers (`KvRouter`): translation only; the rule is
//! `nodedb_kv::session`.

use std::sync::Mutex;

use nodedb_kv::session::{random_client_id, SessionState};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// `WriteSession(client_id=None)`: `wrap(commands) -> (seqs, wrapped)`, `finish(seqs)`,
/// `acked_below`, `in_flight`, `client_id` (random when not given).
#[pyclass(frozen, name = "WriteSession", module = "nodedb_cluster_core")]
pub struct PyWriteSession {
    state: Mutex<SessionState>,
}

impl PyWriteSession {
    fn state(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl PyWriteSession {
    #[new]
    #[pyo3(signature = (client_id = None))]
    fn new(client_id: Option<u64>) -> Self {
        PyWriteSession {
            state: Mutex::new(SessionState::new(
                client_id.unwrap_or_else(random_client_id),
            )),
        }
    }

    #[getter]
    fn client_id(&self) -> u64 {
        self.state().client_id()
    }

    #[getter]
    fn acked_below(&self) -> u64 {
        self.state().acked_below()
    }

    #[getter]
    fn in_flight(&self) -> usize {
        self.state().in_flight()
    }

    /// Give each encoded command the next seq; the caller must `finish` every seq.
    fn wrap<'py>(
        &self,
        py: Python<'py>,
        commands: Vec<Vec<u8>>,
    ) -> (Vec<u64>, Vec<Bound<'py, PyBytes>>) {
        let mut state = self.state();
        let (first, floor) = state.open_seqs(commands.len());
        let seqs: Vec<u64> = (first..first + commands.len() as u64).collect();
        let wrapped = seqs
            .iter()
            .zip(&commands)
            .map(|(&seq, cmd)| PyBytes::new(py, &state.wrap_one(seq, floor, cmd)))
            .collect();
        (seqs, wrapped)
    }

    /// The caller has these seqs' outcomes (or gave up on them).
    fn finish(&self, seqs: Vec<u64>) {
        self.state().finish(seqs);
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyWriteSession>()
}
