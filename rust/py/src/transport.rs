//! Python face of `nodedb-transport`. Every awaitable is a Rust future run on the shared tokio
//! runtime (no GIL held while it waits or does I/O); results are handed back to the calling
//! asyncio loop. Inbound frames without a Rust handler go to the Python handler given to
//! `serve()`, awaited on the loop that called `serve()`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nodedb_transport::credentials::issue_node_credentials as issue;
use nodedb_transport::{
    generate_cluster_credentials as generate, Credentials, FrameHandler, HandlerError,
    HandlerFuture, InboundFrame, MessageKind, NodeId, OutboundFrame, SpkiPin, Transport,
    TransportConfig,
};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use pyo3_async_runtimes::TaskLocals;

use crate::errors::{cluster_error, transport_error, transport_error_with};
use crate::wire::kind_of;

/// Requests `send_rpc_many` keeps in flight at once (bounds memory and stream usage).
const RPC_MANY_INFLIGHT_MAX: usize = 256;

fn parse_addr(py: Python<'_>, text: &str) -> PyResult<SocketAddr> {
    text.parse::<SocketAddr>()
        .map_err(|e| cluster_error(py, "InvalidAddress", (text, e.to_string())))
}

fn duration(py: Python<'_>, field: &str, secs: f64) -> PyResult<Duration> {
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err(cluster_error(
            py,
            "ConfigError",
            (field, format!("{secs} s is not in (0, 86400]")),
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn pin_of(py: Python<'_>, pin: Option<&[u8]>) -> PyResult<Option<SpkiPin>> {
    pin.map(|bytes| SpkiPin::from_slice(bytes).map_err(|e| transport_error_with(py, e)))
        .transpose()
}

/// `(kind, payload)` as a Python tuple `(int, bytes)`.
struct Reply(OutboundFrame);

impl<'py> IntoPyObject<'py> for Reply {
    type Target = PyTuple;
    type Output = Bound<'py, PyTuple>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
        (self.0.kind.number(), PyBytes::new(py, &self.0.payload)).into_pyobject(py)
    }
}

/// Explicit credentials: `Credentials.mtls(ca, cert, key)` or `Credentials.insecure()`.
#[pyclass(frozen, name = "Credentials", module = "nodedb_cluster_core")]
pub struct PyCredentials {
    inner: Credentials,
}

#[pymethods]
impl PyCredentials {
    /// Mutual TLS from three PEM files (cluster CA, node certificate, node key).
    #[staticmethod]
    fn mtls(py: Python<'_>, ca: PathBuf, cert: PathBuf, key: PathBuf) -> PyResult<Self> {
        let inner = py
            .detach(|| Credentials::mtls_from_files(&ca, &cert, &key))
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

/// Who sent an inbound frame.
#[pyclass(frozen, name = "Peer", module = "nodedb_cluster_core")]
pub struct PyPeer {
    addr: String,
    spki_pin: Option<[u8; 32]>,
}

#[pymethods]
impl PyPeer {
    #[getter]
    fn addr(&self) -> &str {
        &self.addr
    }

    #[getter]
    fn spki_pin<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.spki_pin.map(|pin| PyBytes::new(py, &pin))
    }

    fn __repr__(&self) -> String {
        format!(
            "Peer(addr={:?}, pinned={})",
            self.addr,
            self.spki_pin.is_some()
        )
    }
}

/// The fallback handler: awaits `handler(peer, kind, payload)` on the captured asyncio loop.
struct PyHandler {
    callback: Py<PyAny>,
    locals: TaskLocals,
}

fn handler_error(py: Python<'_>, err: &PyErr) -> HandlerError {
    let value = err.value(py);
    let code = value
        .getattr("code")
        .ok()
        .and_then(|code| code.extract::<String>().ok())
        .unwrap_or_else(|| {
            value
                .get_type()
                .name()
                .map_or_else(|_| "handler_failed".into(), |n| n.to_string())
        });
    HandlerError::new(code, value.to_string())
}

impl FrameHandler for PyHandler {
    fn handle(&self, frame: InboundFrame) -> HandlerFuture {
        let (callback, locals) =
            Python::attach(|py| (self.callback.clone_ref(py), self.locals.clone()));
        Box::pin(async move {
            let kind = frame.kind;
            let awaiting = Python::attach(|py| -> PyResult<_> {
                let peer = PyPeer {
                    addr: frame.peer.addr.to_string(),
                    spki_pin: frame.peer.spki_pin.map(|pin| pin.0),
                };
                let args = (peer, kind.number(), PyBytes::new(py, &frame.payload));
                let coroutine = callback.call1(py, args)?;
                pyo3_async_runtimes::into_future_with_locals(&locals, coroutine.into_bound(py))
            });
            let awaiting = awaiting.map_err(|e| Python::attach(|py| handler_error(py, &e)))?;
            let result = awaiting.await;
            Python::attach(|py| {
                let value = result.map_err(|e| handler_error(py, &e))?;
                let value = value.bind(py);
                if value.is_none() {
                    return Ok(None);
                }
                let (reply_kind, payload): (u16, Vec<u8>) = value.extract().map_err(|_| {
                    HandlerError::new(
                        "bad_handler_reply",
                        format!(
                            "handler for {kind} must return (kind: int, payload: bytes) or None"
                        ),
                    )
                })?;
                let reply_kind = MessageKind::from_u16(reply_kind).map_err(|_| {
                    HandlerError::new(
                        "bad_handler_reply",
                        format!("reply kind {reply_kind} is not in the kind table"),
                    )
                })?;
                Ok(Some(OutboundFrame {
                    kind: reply_kind,
                    payload: Bytes::from(payload),
                }))
            })
        })
    }
}

/// One QUIC endpoint bound to a real UDP port.
#[pyclass(frozen, name = "Transport", module = "nodedb_cluster_core")]
pub struct PyTransport {
    inner: Arc<Transport>,
}

#[pymethods]
impl PyTransport {
    // Python keyword arguments, one per setting: the count is the API, not a smell.
    #[allow(clippy::too_many_arguments)]
    #[new]
    #[pyo3(signature = (node_id, listen_addr, credentials, rpc_timeout = 5.0, connect_timeout = 5.0,
                        keep_alive_interval = 1.0, idle_timeout = 5.0))]
    fn new(
        py: Python<'_>,
        node_id: u64,
        listen_addr: &str,
        credentials: &PyCredentials,
        rpc_timeout: f64,
        connect_timeout: f64,
        keep_alive_interval: f64,
        idle_timeout: f64,
    ) -> PyResult<Self> {
        let addr = parse_addr(py, listen_addr)?;
        let config = TransportConfig {
            rpc_timeout: duration(py, "rpc_timeout", rpc_timeout)?,
            connect_timeout: duration(py, "connect_timeout", connect_timeout)?,
            keep_alive_interval: duration(py, "keep_alive_interval", keep_alive_interval)?,
            idle_timeout: duration(py, "idle_timeout", idle_timeout)?,
            ..TransportConfig::default()
        };
        let credentials = credentials.inner.clone();
        let transport = py
            .detach(|| {
                let _runtime = pyo3_async_runtimes::tokio::get_runtime().enter();
                Transport::bind(NodeId(node_id), addr, credentials, config)
            })
            .map_err(|e| transport_error_with(py, e))?;
        Ok(PyTransport {
            inner: Arc::new(transport),
        })
    }

    #[getter]
    fn node_id(&self) -> u64 {
        self.inner.node_id().0
    }

    #[getter]
    fn local_addr(&self) -> String {
        self.inner.local_addr().to_string()
    }

    #[getter]
    fn spki_pin<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.inner.spki_pin().map(|pin| PyBytes::new(py, &pin.0))
    }

    #[pyo3(signature = (node_id, addr, spki_pin = None))]
    fn register_peer(
        &self,
        py: Python<'_>,
        node_id: u64,
        addr: &str,
        spki_pin: Option<&[u8]>,
    ) -> PyResult<()> {
        let addr = parse_addr(py, addr)?;
        self.inner
            .register_peer(NodeId(node_id), addr, pin_of(py, spki_pin)?);
        Ok(())
    }

    fn unregister_peer(&self, node_id: u64) -> bool {
        self.inner.unregister_peer(NodeId(node_id))
    }

    fn send_rpc<'py>(
        &self,
        py: Python<'py>,
        node_id: u64,
        kind: u16,
        payload: &[u8],
    ) -> PyResult<Bound<'py, PyAny>> {
        let kind = kind_of(py, kind)?;
        let payload = Bytes::copy_from_slice(payload);
        let transport = self.inner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            transport
                .send_rpc(NodeId(node_id), kind, payload)
                .await
                .map(Reply)
                .map_err(transport_error)
        })
    }

    fn send_rpc_to_addr<'py>(
        &self,
        py: Python<'py>,
        addr: &str,
        kind: u16,
        payload: &[u8],
    ) -> PyResult<Bound<'py, PyAny>> {
        let addr = parse_addr(py, addr)?;
        let kind = kind_of(py, kind)?;
        let payload = Bytes::copy_from_slice(payload);
        let transport = self.inner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            transport
                .send_rpc_to_addr(addr, kind, payload)
                .await
                .map(Reply)
                .map_err(transport_error)
        })
    }

    /// Many requests to one peer, concurrently (at most RPC_MANY_INFLIGHT_MAX in flight), in one
    /// boundary crossing. Replies in request order; the first failure is raised.
    fn send_rpc_many<'py>(
        &self,
        py: Python<'py>,
        node_id: u64,
        kind: u16,
        payloads: Vec<Vec<u8>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kind = kind_of(py, kind)?;
        let transport = self.inner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let count = payloads.len();
            let mut replies: Vec<Option<OutboundFrame>> = vec![None; count];
            let mut tasks = tokio::task::JoinSet::new();
            let mut pending = payloads.into_iter().enumerate();
            let mut first_error = None;
            loop {
                while tasks.len() < RPC_MANY_INFLIGHT_MAX {
                    let Some((index, payload)) = pending.next() else {
                        break;
                    };
                    let transport = transport.clone();
                    tasks.spawn(async move {
                        (
                            index,
                            transport
                                .send_rpc(NodeId(node_id), kind, Bytes::from(payload))
                                .await,
                        )
                    });
                }
                let Some(joined) = tasks.join_next().await else {
                    break;
                };
                match joined {
                    Ok((index, Ok(frame))) => replies[index] = Some(frame),
                    Ok((_, Err(err))) => {
                        first_error.get_or_insert(err);
                    }
                    Err(join_err) => {
                        return Err(PyRuntimeError::new_err(format!(
                            "send_rpc_many task failed: {join_err}"
                        )))
                    }
                }
            }
            if let Some(err) = first_error {
                return Err(transport_error(err));
            }
            Ok(replies.into_iter().flatten().map(Reply).collect::<Vec<_>>())
        })
    }

    /// One frame, no reply (unidirectional stream).
    fn send_oneway<'py>(
        &self,
        py: Python<'py>,
        node_id: u64,
        kind: u16,
        payload: &[u8],
    ) -> PyResult<Bound<'py, PyAny>> {
        let kind = kind_of(py, kind)?;
        let payload = Bytes::copy_from_slice(payload);
        let transport = self.inner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            transport
                .send_oneway(NodeId(node_id), kind, payload)
                .await
                .map_err(transport_error)
        })
    }

    /// Route every kind without a Rust handler to `handler(peer, kind, payload)`, an async
    /// callable returning `(kind, payload)` (or None for one-way frames). Must be called from a
    /// running asyncio loop: the handler runs on that loop. `None` removes the handler.
    fn serve(&self, py: Python<'_>, handler: Option<Py<PyAny>>) -> PyResult<()> {
        let Some(callback) = handler else {
            self.inner.set_fallback_handler(None);
            return Ok(());
        };
        let locals = pyo3_async_runtimes::tokio::get_current_locals(py).map_err(|e| {
            PyRuntimeError::new_err(format!("serve() needs a running asyncio loop: {e}"))
        })?;
        self.inner
            .set_fallback_handler(Some(Arc::new(PyHandler { callback, locals })));
        Ok(())
    }

    /// Close every connection and release the port (a new transport can bind it at once).
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let transport = self.inner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            transport.close().await;
            Ok(())
        })
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (name, value) in self.inner.metrics() {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }

    /// Stable id of the pooled connection to `addr`, or None (tests: connection reuse).
    fn pooled_connection_id(&self, py: Python<'_>, addr: &str) -> PyResult<Option<usize>> {
        Ok(self.inner.pooled_connection_id(parse_addr(py, addr)?))
    }

    /// TESTS ONLY: write raw bytes on a new stream of the pooled connection to `addr`. Returns
    /// `(kind, payload)` if the peer answered with a frame, or the int stream-reset code.
    fn _send_raw_to_addr<'py>(
        &self,
        py: Python<'py>,
        addr: &str,
        data: &[u8],
    ) -> PyResult<Bound<'py, PyAny>> {
        let addr = parse_addr(py, addr)?;
        let data = Bytes::copy_from_slice(data);
        let transport = self.inner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let answer = transport
                .send_raw_to_addr(addr, data)
                .await
                .map_err(transport_error)?;
            Python::attach(|py| -> PyResult<Py<PyAny>> {
                Ok(match answer {
                    Ok(frame) => Reply(frame).into_pyobject(py)?.into_any().unbind(),
                    Err(code) => code.into_pyobject(py)?.into_any().unbind(),
                })
            })
        })
    }
}

/// Generate a cluster CA and one leaf per `(node_name, sans)` in `dir` (files 0600).
/// Returns `[(ca_cert, cert, key)]` paths.
#[pyfunction]
fn generate_cluster_credentials(
    py: Python<'_>,
    dir: PathBuf,
    cluster_name: String,
    nodes: Vec<(String, Vec<String>)>,
) -> PyResult<Vec<(PathBuf, PathBuf, PathBuf)>> {
    let files = py
        .detach(|| generate(&dir, &cluster_name, &nodes))
        .map_err(|e| transport_error_with(py, e))?;
    Ok(files
        .into_iter()
        .map(|f| (f.ca_cert, f.cert, f.key))
        .collect())
}

/// Issue one more node leaf from an existing CA. Returns `(ca_cert, cert, key)` paths.
#[pyfunction]
fn issue_node_credentials(
    py: Python<'_>,
    ca_cert: PathBuf,
    ca_key: PathBuf,
    node_name: String,
    sans: Vec<String>,
    dir: PathBuf,
) -> PyResult<(PathBuf, PathBuf, PathBuf)> {
    let files = py
        .detach(|| issue(&ca_cert, &ca_key, &node_name, &sans, &dir))
        .map_err(|e| transport_error_with(py, e))?;
    Ok((files.ca_cert, files.cert, files.key))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add(
        "ALPN",
        std::str::from_utf8(nodedb_transport::ALPN).unwrap_or("nodedb-cluster/1"),
    )?;
    m.add_class::<PyCredentials>()?;
    m.add_class::<PyPeer>()?;
    m.add_class::<PyTransport>()?;
    m.add_function(wrap_pyfunction!(generate_cluster_credentials, m)?)?;
    m.add_function(wrap_pyfunction!(issue_node_credentials, m)?)?;
    Ok(())
}
