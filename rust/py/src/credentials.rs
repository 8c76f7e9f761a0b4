//! `Credentials` and the credential tools (generate a cluster CA and leaves, issue, revoke,
//! inspect) of `nodedb-transport`, for Python. Translation only.

use std::path::PathBuf;

use nodedb_transport::issue::{
    generate_cluster_credentials_with as generate, issue_node_credentials as issue, LeafSpec,
};
use nodedb_transport::{Credentials, Identity};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::transport_error_with;

/// Explicit credentials: `Credentials.mtls(ca, cert, key)` or `Credentials.insecure()`.
#[pyclass(frozen, name = "Credentials", module = "nodedb_cluster_core")]
pub struct PyCredentials {
    pub(crate) inner: Credentials,
}

#[pymethods]
impl PyCredentials {
    /// Mutual TLS from three PEM files (cluster CA, node certificate, node key), plus optional
    /// certificate revocation lists (PEM files signed by the CA).
    #[staticmethod]
    #[pyo3(signature = (ca, cert, key, crls = Vec::new()))]
    fn mtls(
        py: Python<'_>,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
        crls: Vec<PathBuf>,
    ) -> PyResult<Self> {
        let inner = py
            .detach(|| Credentials::mtls_from_files_with_crls(&ca, &cert, &key, &crls))
            .map_err(|e| transport_error_with(py, e))?;
        Ok(PyCredentials { inner })
    }

    /// No authentication. Logged as a warning and counted in metrics.
    #[staticmethod]
    fn insecure() -> Self {
        PyCredentials {
            inner: Credentials::Insecure,
        }
    }

    #[getter]
    fn is_insecure(&self) -> bool {
        matches!(self.inner, Credentials::Insecure)
    }

    /// SHA-256 of this identity's SubjectPublicKeyInfo (None when insecure).
    fn spki_pin<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let pin = self
            .inner
            .spki_pin()
            .map_err(|e| transport_error_with(py, e))?;
        Ok(pin.map(|pin| PyBytes::new(py, &pin.0)))
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }
}

/// Generate a cluster CA (`ca.pem`, `ca-key/ca.key`) and one leaf per `(role, name, sans)` in
/// `dir`, each valid `days`. Returns `[(ca_cert, cert, key)]` paths, in order.
#[pyfunction]
fn generate_cluster_credentials(
    py: Python<'_>,
    dir: PathBuf,
    cluster_name: String,
    leaves: Vec<(String, String, Vec<String>)>,
    days: u32,
) -> PyResult<Vec<(PathBuf, PathBuf, PathBuf)>> {
    let files = py
        .detach(|| {
            let specs = leaves
                .into_iter()
                .map(|(role, name, sans)| LeafSpec::with_role(&role, &name, sans))
                .collect::<Result<Vec<_>, _>>()?;
            generate(&dir, &cluster_name, &specs, days)
        })
        .map_err(|e| transport_error_with(py, e))?;
    Ok(files
        .into_iter()
        .map(|f| (f.ca_cert, f.cert, f.key))
        .collect())
}

/// Issue one more leaf `(role, name, sans)` from an existing CA, valid `days`. Returns
/// `(ca_cert, cert, key)` paths.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn issue_node_credentials(
    py: Python<'_>,
    ca_cert: PathBuf,
    ca_key: PathBuf,
    role: String,
    name: String,
    sans: Vec<String>,
    days: u32,
    dir: PathBuf,
) -> PyResult<(PathBuf, PathBuf, PathBuf)> {
    let files = py
        .detach(|| {
            let spec = LeafSpec::with_role(&role, &name, sans)?;
            issue(&ca_cert, &ca_key, &spec, days, &dir)
        })
        .map_err(|e| transport_error_with(py, e))?;
    Ok((files.ca_cert, files.cert, files.key))
}

/// Renew the leaf at `cert` over its key at `key` (kept: peers pin it), valid `days`, naming
/// `sans` (None: the addresses it names). Returns `(ca_cert, cert, key)` paths.
#[pyfunction]
#[pyo3(signature = (ca_cert, ca_key, cert, key, days, sans=None))]
fn renew_node_credentials(
    py: Python<'_>,
    ca_cert: PathBuf,
    ca_key: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    days: u32,
    sans: Option<Vec<String>>,
) -> PyResult<(PathBuf, PathBuf, PathBuf)> {
    let files = py
        .detach(|| {
            nodedb_transport::renew_node_credentials(&ca_cert, &ca_key, &cert, &key, days, sans)
        })
        .map_err(|e| transport_error_with(py, e))?;
    Ok((files.ca_cert, files.cert, files.key))
}

/// Revoke the given leaf certificates in the CRL at `out` (PEM), keeping the entries already in
/// it. Returns `(crl_number, revoked_total, newly_revoked)`.
#[pyfunction]
fn revoke_node_credentials(
    py: Python<'_>,
    ca_cert: PathBuf,
    ca_key: PathBuf,
    revoked: Vec<PathBuf>,
    out: PathBuf,
) -> PyResult<(u64, usize, usize)> {
    let summary = py
        .detach(|| nodedb_transport::revoke_node_credentials(&ca_cert, &ca_key, &revoked, &out))
        .map_err(|e| transport_error_with(py, e))?;
    Ok((
        summary.crl_number,
        summary.revoked_total,
        summary.newly_revoked,
    ))
}

/// When the certificate in the PEM file at `path` expires, in seconds since the Unix epoch.
#[pyfunction]
fn certificate_not_after(py: Python<'_>, path: PathBuf) -> PyResult<i64> {
    py.detach(|| nodedb_transport::issue::certificate_not_after(&path))
        .map_err(|e| transport_error_with(py, e))
}

/// The IP addresses and DNS names a certificate (PEM file) names.
#[pyfunction]
fn certificate_addresses(py: Python<'_>, path: PathBuf) -> PyResult<Vec<String>> {
    py.detach(|| nodedb_transport::certificate_addresses(&path))
        .map_err(|e| transport_error_with(py, e))
}

/// The identity in a certificate (PEM file): `(uri, role, name, node_id or None)`; a
/// CredentialsError names the file when it has none.
#[pyfunction]
fn cert_identity(
    py: Python<'_>,
    path: PathBuf,
) -> PyResult<(String, &'static str, String, Option<u64>)> {
    let id = Identity::from_cert_pem_file(&path).map_err(|e| transport_error_with(py, e))?;
    Ok((id.uri(), id.role.name(), id.name, id.node_id))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCredentials>()?;
    m.add_function(wrap_pyfunction!(generate_cluster_credentials, m)?)?;
    m.add_function(wrap_pyfunction!(issue_node_credentials, m)?)?;
    m.add_function(wrap_pyfunction!(renew_node_credentials, m)?)?;
    m.add_function(wrap_pyfunction!(revoke_node_credentials, m)?)?;
    m.add_function(wrap_pyfunction!(certificate_not_after, m)?)?;
    m.add_function(wrap_pyfunction!(certificate_addresses, m)?)?;
    m.add_function(wrap_pyfunction!(cert_identity, m)?)?;
    Ok(())
}
