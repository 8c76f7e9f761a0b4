//! The Rust log records queued by `nodedb-hostlog`, handed to Python: the host's loop drains
//! them (`nodedb_cluster.logsetup`), so no Rust thread ever takes the GIL to log.
use nodedb_hostlog::Level;
use pyo3::prelude::*;

/// (unix time, Python level number, component, message, [(field, value)], left out before it).
type PyRecord = (f64, u32, String, String, Vec<(String, String)>, u64);

/// Queue Rust records at Python level `level` and above from now on (above CRITICAL: none);
/// the first call routes `tracing`, `log` and raft-rs's slog into the queue.
#[pyfunction]
fn set_log_level(level: i64) {
    nodedb_hostlog::set_max_level(Level::from_host_number(level));
}

/// Every queued record, oldest first.
#[pyfunction]
fn take_log_records() -> Vec<PyRecord> {
    nodedb_hostlog::take()
        .into_iter()
        .map(|r| {
            (
                r.unix_time,
                r.level.host_number(),
                r.component,
                r.message,
                r.fields,
                r.suppressed,
            )
        })
        .collect()
}

/// Records dropped because the queue was full (the host drained too slowly).
#[pyfunction]
fn log_records_dropped() -> u64 {
    nodedb_hostlog::dropped()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(set_log_level, m)?)?;
    m.add_function(wrap_pyfunction!(take_log_records, m)?)?;
    m.add_function(wrap_pyfunction!(log_records_dropped, m)?)?;
    Ok(())
}
