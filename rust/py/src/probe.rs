//! DIAGNOSTICS: the bridging alternative the project did not take, kept so the choice stays
//! measured (`benches/bench_bridge.py`): a Rust future handed to asyncio by pyo3-async-runtimes
//! (its own tokio runtime; completion via `call_soon_threadsafe` with the GIL taken on a tokio
//! thread), against `Transport.probe_bridge()` (our loop bridge: no tokio thread takes the GIL).
use pyo3::prelude::*;

/// An awaitable that completes after one trip through pyo3-async-runtimes' tokio runtime.
#[pyfunction]
fn _probe_async_runtimes(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    pyo3_async_runtimes::tokio::future_into_py(py, async { Ok(()) })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_probe_async_runtimes, m)?)?;
    Ok(())
}
