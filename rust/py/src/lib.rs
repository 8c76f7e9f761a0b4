//! The only pyo3 module: the Python face of the Rust data plane.
use pyo3::prelude::*;

mod bridge;
mod credentials;
mod errors;
mod host_state_machine;
mod hostlog;
mod kv_client;
mod kv_codec;
mod kv_load;
mod probe;
mod raft;
mod raft_convert;
mod transport;
mod wire;

/// "release" or "debug": benchmarks refuse to run on a debug build.
#[pyfunction]
fn build_profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

#[pymodule]
fn nodedb_cluster_core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(build_profile, m)?)?;
    wire::register(m)?;
    credentials::register(m)?;
    transport::register(m)?;
    raft::register(m)?;
    kv_codec::register(m)?;
    kv_client::register(m)?;
    kv_load::register(m)?;
    probe::register(m)?;
    hostlog::register(m)?;
    Ok(())
}
