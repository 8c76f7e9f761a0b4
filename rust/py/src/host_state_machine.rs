//! The binding's adapter of a host (Python) state machine to the engine's `StateMachine`
//! trait: group 0's metadata machine always, and data groups an embedding host plugs in.

use nodedb_multiraft::error::SmError;
use nodedb_multiraft::state_machine::Command;
use nodedb_multiraft::{GroupId, StateMachine, StateMachineKind};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// The tag of a group applied by the host (Python) through [`PyStateMachine`], recorded in
/// every node's log since the first release (as the engine's old `StateMachineKind::Python`).
pub(crate) const HOST_STATE_MACHINE: StateMachineKind = StateMachineKind::new(2, "Python");

/// A group applied by Python: `obj.apply_batch([(index, bytes), ...]) -> [bytes, ...]`,
/// `obj.snapshot() -> bytes`, `obj.restore(bytes) -> None`.
pub(crate) struct PyStateMachine {
    pub(crate) group: GroupId,
    pub(crate) obj: Py<PyAny>,
}

impl StateMachine for PyStateMachine {
    /// A raising `apply_batch` (the host's own storage failed, a bug) becomes the engine's
    /// `SmError`: the engine stops (see `StateMachine::apply_batch`). The reason names the
    /// exception and where it was raised.
    fn apply_batch(&mut self, commands: &[Command<'_>]) -> Result<Vec<Vec<u8>>, SmError> {
        Python::attach(|py| {
            let entries: Vec<(u64, Bound<'_, PyBytes>)> = commands
                .iter()
                .map(|c| (c.index, PyBytes::new(py, c.data)))
                .collect();
            let out = self
                .obj
                .bind(py)
                .call_method1("apply_batch", (entries,))
                .map_err(|err| {
                    SmError::Other(format!("apply_batch raised {}", described(py, &err)))
                })?;
            out.extract::<Vec<Vec<u8>>>().map_err(|err| {
                SmError::Other(format!("apply_batch returned no list of bytes: {err}"))
            })
        })
    }

    fn snapshot(&self) -> Result<Vec<u8>, SmError> {
        Python::attach(|py| {
            self.obj
                .bind(py)
                .call_method0("snapshot")
                .and_then(|r| r.extract::<Vec<u8>>())
                .map_err(|e| SmError::Other(format!("snapshot() of group {}: {e}", self.group.0)))
        })
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), SmError> {
        Python::attach(|py| {
            self.obj
                .bind(py)
                .call_method1("restore", (PyBytes::new(py, data),))
                .map(|_| ())
                .map_err(|e| SmError::Other(format!("restore() of group {}: {e}", self.group.0)))
        })
    }
}

/// `Type: message (file:line in function)`, the innermost frame of the exception's traceback.
fn described(py: Python<'_>, err: &PyErr) -> String {
    let mut frame = err.traceback(py).map(|tb| tb.into_any());
    while let Some(next) = frame
        .as_ref()
        .and_then(|tb| tb.getattr("tb_next").ok())
        .filter(|next| !next.is_none())
    {
        frame = Some(next);
    }
    let place = frame.and_then(|tb| {
        let line: u32 = tb.getattr("tb_lineno").ok()?.extract().ok()?;
        let code = tb.getattr("tb_frame").ok()?.getattr("f_code").ok()?;
        let file: String = code.getattr("co_filename").ok()?.extract().ok()?;
        let name: String = code.getattr("co_name").ok()?.extract().ok()?;
        Some(format!(" ({file}:{line} in {name})"))
    });
    format!("{err}{}", place.unwrap_or_default())
}
