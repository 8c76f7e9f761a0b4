//! `run_native_load` / `NativeLoad`: the Python face of the native load generator
//! (`nodedb_kv::load`). Translation only.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nodedb_kv::load::{self, Counts, LoadResult, LoadSpec};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::bridge::spawn_settle;
use crate::errors::cluster_error;
use crate::kv_client::PyKvClient;

/// A running native load: `counts` while it runs; its future gets the result.
#[pyclass(frozen, name = "NativeLoad", module = "nodedb_cluster_core")]
pub struct PyNativeLoad {
    counts: Arc<Counts>,
}

#[pymethods]
impl PyNativeLoad {
    /// (writes, reads, errors) so far.
    #[getter]
    fn counts(&self) -> (u64, u64, u64) {
        let c = &self.counts;
        (
            c.writes.load(Ordering::Relaxed),
            c.reads.load(Ordering::Relaxed),
            c.errors.load(Ordering::Relaxed),
        )
    }
}

/// `run_native_load(client, clients, duration_s, value_bytes, keyspace, read_fraction, seed,
/// timeout_s, future)`: starts the run on the client's runtime; `future` (of the loop the
/// client is attached to) gets `{"writes", "reads", "errors", "first_error", "latencies_us"
/// (uint32 little-endian bytes, one per successful operation), "elapsed_s"}`.
// Python keyword arguments, one per setting of the run: the count is the API, not a smell.
#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (client, clients, duration_s, value_bytes, keyspace, read_fraction, seed, timeout_s, future))]
fn run_native_load(
    py: Python<'_>,
    client: &PyKvClient,
    clients: usize,
    duration_s: f64,
    value_bytes: usize,
    keyspace: u64,
    read_fraction: f64,
    seed: u64,
    timeout_s: f64,
    future: Py<PyAny>,
) -> PyResult<PyNativeLoad> {
    let spec = LoadSpec::new(
        clients,
        duration_s,
        value_bytes,
        keyspace,
        read_fraction,
        seed,
        timeout_s,
    )
    .map_err(|e| cluster_error(py, "ConfigError", (e.field, e.reason)))?;
    let counts = Arc::new(Counts::default());
    let core = client.core();
    let run_counts = Arc::clone(&counts);
    let work = async move {
        let result = load::run(core, spec, Arc::clone(&run_counts)).await;
        Ok::<_, Infallible>(Finished {
            result,
            counts: run_counts,
        })
    };
    spawn_settle(
        client.runtime(),
        client.bridge(),
        future,
        work,
        to_py,
        |_, never| match never {},
    );
    Ok(PyNativeLoad { counts })
}

/// What the run's future is resolved with.
struct Finished {
    result: LoadResult,
    counts: Arc<Counts>,
}

fn to_py(py: Python<'_>, finished: Finished) -> PyResult<Py<PyAny>> {
    let Finished { result, counts } = finished;
    let doc = PyDict::new(py);
    doc.set_item("writes", counts.writes.load(Ordering::Relaxed))?;
    doc.set_item("reads", counts.reads.load(Ordering::Relaxed))?;
    doc.set_item("errors", counts.errors.load(Ordering::Relaxed))?;
    doc.set_item("first_error", result.first_error)?;
    let lat: Vec<u8> = result
        .latencies_us
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    doc.set_item("latencies_us", PyBytes::new(py, &lat))?;
    doc.set_item("elapsed_s", result.elapsed_s)?;
    Ok(doc.into_any().unbind())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyNativeLoad>()?;
    m.add_function(wrap_pyfunction!(run_native_load, m)?)?;
    Ok(())
}
