//! The binding's adapter of a host (Python) state machine to the engine's `StateMachine`
//! trait: group 0's metadata machine always, and data groups an embedding host plugs in.

use nodedb_multiraft::error::SmError;
use nodedb_multiraft::state_machine::Command;
use nodedb_multiraft::{GroupId, StateMachine, StateMachineKind};
use pyo3::exceptions::PyRuntimeError;
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
    fn apply_batch(&mut self, commands: &[Command<'_>]) -> Vec<Vec<u8>> {
        Python::attach(|py| {
            let entries: Vec<(u64, Bound<'_, PyBytes>)> = commands
                .iter()
                .map(|c| (c.index, PyBytes::new(py, c.data)))
                .collect();
            let out = self
                .obj
                .bind(py)
                .call_method1("apply_batch", (entries,))
                .and_then(|r| r.extract::<Vec<Vec<u8>>>());
            match out {
                Ok(results) if results.len() == commands.len() => results,
                Ok(results) => {
                    let msg = format!(
                        "state machine of group {} returned {} results for {} entries",
                        self.group.0,
                        results.len(),
                        commands.len()
                    );
                    PyRuntimeError::new_err(msg.clone()).write_unraisable(py, None);
                    vec![error_result(&msg); commands.len()]
                }
                Err(err) => {
                    // A raising apply is a bug in the Python state machine: reported, and every
                    // entry of the batch gets an error result (the log moves on; the proposer
                    // sees the error as its result).
                    let msg = format!("apply_batch of group {} raised: {err}", self.group.0);
                    err.write_unraisable(py, None);
                    vec![error_result(&msg); commands.len()]
                }
            }
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

/// Result bytes of an entry a Python state machine failed to apply: 0xFF + UTF-8 reason.
fn error_result(reason: &str) -> Vec<u8> {
    let mut v = vec![0xFF];
    v.extend_from_slice(reason.as_bytes());
    v
}
