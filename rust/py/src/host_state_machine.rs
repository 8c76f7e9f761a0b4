//! The binding's adapter of a host (Python) state machine to the engine's `StateMachine`
//! trait: group 0's metadata machine always, and data groups an embedding host plugs in.

use std::io::Write;

use nodedb_multiraft::error::SmError;
use nodedb_multiraft::state_machine::{
    install_buffered, BufferedDecoder, Command, DecodedState, SnapshotBytes, SnapshotDecoder,
    SnapshotView,
};
use nodedb_multiraft::{GroupId, StateMachine, StateMachineKind};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// The tag of a group applied by the host (Python) through [`PyStateMachine`], recorded in
/// every node's log since the first release (as the engine's old `StateMachineKind::Python`).
pub(crate) const HOST_STATE_MACHINE: StateMachineKind = StateMachineKind::new(2, "Python");

/// A group applied by Python: `obj.apply_batch([(index, bytes), ...]) -> [bytes, ...]`,
/// `obj.snapshot() -> bytes`, `obj.restore(bytes) -> None`, and optionally
/// `obj.snapshot_view() -> writer`, a cheap capture whose `writer() -> bytes` runs later on the
/// snapshot thread, and `obj.decode_snapshot(bytes) -> state` (on the snapshot thread) with
/// `obj.install(state)` (a swap on the driver thread) in place of `restore` for a received
/// snapshot.
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
            out.extract::<Vec<Vec<u8>>>()
                .map_err(|_| SmError::Other(not_a_list_of_bytes(&out)))
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

    /// With `snapshot_view` the host captures its state here (cheap: references, a
    /// copy-on-write handle) and serializes it on the snapshot thread while this thread goes on
    /// ticking and applying (hashicorp/raft's `FSMSnapshot.Persist`): a large state no longer
    /// stops every group's heartbeats. Without it, `snapshot()` here, as before.
    fn snapshot_view(&self) -> Result<Box<dyn SnapshotView>, SmError> {
        Python::attach(|py| {
            let obj = self.obj.bind(py);
            let group = self.group.0;
            let has_view = obj
                .hasattr("snapshot_view")
                .map_err(|e| SmError::Other(format!("snapshot_view of group {group}: {e}")))?;
            if !has_view {
                return Ok(Box::new(SnapshotBytes(self.snapshot()?)) as Box<dyn SnapshotView>);
            }
            let writer = obj.call_method0("snapshot_view").map_err(|e| {
                SmError::Other(format!(
                    "snapshot_view() of group {group} raised {}",
                    described(py, &e)
                ))
            })?;
            if !writer.is_callable() {
                return Err(SmError::Other(format!(
                    "snapshot_view() of group {group} returned no callable"
                )));
            }
            Ok(Box::new(PyWriter {
                group,
                writer: writer.unbind(),
            }) as Box<dyn SnapshotView>)
        })
    }

    /// With `decode_snapshot` and `install`, a snapshot received from the leader is decoded on
    /// the snapshot thread and only swapped in here; without them, `restore` here as before.
    fn snapshot_decoder(&self) -> Box<dyn SnapshotDecoder> {
        let obj = Python::attach(|py| {
            let obj = self.obj.bind(py);
            let both = obj.hasattr("decode_snapshot").unwrap_or(false)
                && obj.hasattr("install").unwrap_or(false);
            both.then(|| self.obj.clone_ref(py))
        });
        match obj {
            Some(obj) => Box::new(PyDecoder {
                group: self.group.0,
                obj,
                bytes: Vec::new(),
            }),
            None => Box::new(BufferedDecoder::default()),
        }
    }

    fn install_decoded(&mut self, state: DecodedState) -> Result<(), SmError> {
        let group = self.group.0;
        let state = match state.downcast::<PyDecoded>() {
            Ok(decoded) => decoded,
            Err(buffered) => return install_buffered(self, buffered),
        };
        Python::attach(|py| {
            self.obj
                .bind(py)
                .call_method1("install", (state.0,))
                .map(|_| ())
                .map_err(|e| {
                    SmError::Other(format!(
                        "install() of group {group} raised {}",
                        described(py, &e)
                    ))
                })
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

/// The writer a host's `snapshot_view()` returned.
struct PyWriter {
    group: u64,
    writer: Py<PyAny>,
}

impl SnapshotView for PyWriter {
    /// The writer runs holding the GIL (the host's `apply_batch` waits for it in slices of the
    /// interpreter's switch interval); its bytes are copied out and written without it.
    fn write_to(self: Box<Self>, out: &mut dyn Write) -> Result<(), SmError> {
        let PyWriter { group, writer } = *self;
        let bytes = Python::attach(|py| {
            writer
                .bind(py)
                .call0()
                .map_err(|e| {
                    SmError::Other(format!(
                        "the snapshot writer of group {group} raised {}",
                        described(py, &e)
                    ))
                })?
                .extract::<Vec<u8>>()
                .map_err(|e| {
                    SmError::Other(format!(
                        "the snapshot writer of group {group} returned no bytes: {e}"
                    ))
                })
        })?;
        out.write_all(&bytes)
            .map_err(|e| SmError::Other(format!("writing a snapshot: {e}")))
    }
}

/// A received snapshot's bytes, gathered off the driver thread, then decoded there by the
/// host's `decode_snapshot`.
struct PyDecoder {
    group: u64,
    obj: Py<PyAny>,
    bytes: Vec<u8>,
}

/// What a host's `decode_snapshot` returned, for its `install`.
struct PyDecoded(Py<PyAny>);

impl SnapshotDecoder for PyDecoder {
    fn feed(&mut self, bytes: &[u8]) -> Result<(), SmError> {
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<DecodedState, SmError> {
        let PyDecoder { group, obj, bytes } = *self;
        Python::attach(|py| {
            obj.bind(py)
                .call_method1("decode_snapshot", (PyBytes::new(py, &bytes),))
                .map(|state| Box::new(PyDecoded(state.unbind())) as DecodedState)
                .map_err(|e| {
                    SmError::Other(format!(
                        "decode_snapshot() of group {group} raised {}",
                        described(py, &e)
                    ))
                })
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

/// What `apply_batch` returned instead of a list of bytes, in the host's own terms: its type,
/// or the position and type of the first result that is not bytes.
fn not_a_list_of_bytes(out: &Bound<'_, PyAny>) -> String {
    let type_of = |v: &Bound<'_, PyAny>| {
        v.get_type()
            .name()
            .map_or_else(|_| "?".to_string(), |n| n.to_string())
    };
    let Ok(items) = out.try_iter() else {
        return format!(
            "apply_batch returned a {}, not a list of bytes",
            type_of(out)
        );
    };
    for (i, item) in items.enumerate() {
        match item {
            Ok(v) if v.extract::<Vec<u8>>().is_ok() => {}
            Ok(v) => {
                return format!(
                    "apply_batch's result {i} is a {}, not bytes (one bytes per command)",
                    type_of(&v)
                )
            }
            Err(e) => return format!("apply_batch's results could not be read: {e}"),
        }
    }
    format!(
        "apply_batch returned a {}, not a list of bytes",
        type_of(out)
    )
}
