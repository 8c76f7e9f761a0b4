//! Python face of `nodedb-transport`. Every operation runs as a task on the transport's own tokio
//! runtime (no GIL held while it waits or does I/O) and resolves an asyncio future through the
//! loop bridge (`bridge.rs`). Inbound frames without a Rust handler go to the dispatch callable
//! given to `serve()`, called on the owning loop from `drain()`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use nodedb_transport::crl::read_crl_files;
use nodedb_transport::{refusal_reason, Identity, PeerIdentity, PeerInfo, Refusal};
use nodedb_transport::{runtime_workers, RUNTIME_WORKERS_ENV};
use nodedb_transport::{
    FrameHandler, HandlerError, HandlerFuture, HandlerResult, InboundFrame, MessageKind, NodeId,
    OutboundFrame, SpkiPin, Transport, TransportConfig, TransportError,
};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use tokio::sync::oneshot;

use crate::bridge::LoopBridge;
use crate::credentials::PyCredentials;
use crate::errors::{cluster_error, transport_error_with};
use crate::wire::kind_of;

/// The worker count of the process-wide runtime: `nodedb_transport::runtime_workers` for the
/// CPUs this process may use and the environment's override.
fn transport_workers() -> Result<usize, String> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let text = std::env::var(RUNTIME_WORKERS_ENV).ok();
    runtime_workers(text.as_deref(), cpus)
}

/// The process-wide transport runtime (built on first use).
pub(crate) fn transport_runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    let built = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(transport_workers()?)
            .thread_name("nodedb-transport")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    built
        .as_ref()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the transport runtime: {e}")))
}

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

/// Who sent an inbound frame.
#[pyclass(frozen, name = "Peer", module = "nodedb_cluster_core")]
pub struct PyPeer {
    addr: String,
    spki_pin: Option<[u8; 32]>,
    identity: Arc<PeerIdentity>,
    cert_addresses: Arc<[String]>,
}

fn verified(identity: &PeerIdentity) -> Option<&Identity> {
    match identity {
        PeerIdentity::Verified(id) => Some(id),
        PeerIdentity::Unauthenticated | PeerIdentity::Unidentified(_) => None,
    }
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

    /// The IP addresses and DNS names the peer's certificate names; None on an insecure
    /// transport.
    #[getter]
    fn cert_addresses(&self) -> Option<Vec<String>> {
        verified(&self.identity).map(|_| self.cert_addresses.to_vec())
    }

    /// The verified certificate identity URI; None on an insecure transport.
    #[getter]
    fn identity(&self) -> Option<String> {
        verified(&self.identity).map(Identity::uri)
    }

    /// "node", "admin" or "client"; None on an insecure transport.
    #[getter]
    fn role(&self) -> Option<&'static str> {
        verified(&self.identity).map(|id| id.role.name())
    }

    /// The node id the certificate proves (node role only).
    #[getter]
    fn node_id(&self) -> Option<u64> {
        self.identity.node_id()
    }

    fn __repr__(&self) -> String {
        format!("Peer(addr={:?}, identity={})", self.addr, self.identity)
    }
}

/// Answers one inbound request from Python: `reply(kind, payload)` or `fail(code, message)`,
/// once. Dropped unanswered → the requester gets Error "no_reply".
#[pyclass(frozen, name = "Responder", module = "nodedb_cluster_core")]
pub struct PyResponder {
    sender: Mutex<Option<oneshot::Sender<HandlerResult>>>,
    kind: MessageKind,
}

impl PyResponder {
    fn send(&self, result: HandlerResult) -> bool {
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        // The requester may have timed out meanwhile: then nobody listens, which is fine.
        sender.is_some_and(|sender| sender.send(result).is_ok())
    }
}

#[pymethods]
impl PyResponder {
    /// Send the reply frame; False if already answered or the request timed out.
    fn reply(&self, py: Python<'_>, kind: u16, payload: &[u8]) -> PyResult<bool> {
        let kind = kind_of(py, kind)?;
        let frame = OutboundFrame {
            kind,
            payload: Bytes::copy_from_slice(payload),
        };
        Ok(self.send(Ok(Some(frame))))
    }

    /// Answer with an Error message {code, message}.
    fn fail(&self, code: String, message: String) -> bool {
        self.send(Err(HandlerError::new(code, message)))
    }

    /// Acknowledge a one-way frame (no reply is sent).
    fn done(&self) -> bool {
        self.send(Ok(None))
    }

    #[getter]
    fn kind(&self) -> u16 {
        self.kind.number()
    }
}

/// The fallback handler: queues `dispatch(responder, peer, kind, payload)` for the loop thread
/// and awaits the responder's answer. No GIL is taken on the tokio side.
struct PyHandler {
    dispatch: Arc<Py<PyAny>>,
    bridge: Arc<LoopBridge>,
}

impl FrameHandler for PyHandler {
    fn handle(&self, frame: InboundFrame) -> HandlerFuture {
        let (sender, receiver) = oneshot::channel();
        let dispatch = self.dispatch.clone();
        let kind = frame.kind;
        self.bridge.push(Box::new(move |py| {
            let responder = PyResponder {
                sender: Mutex::new(Some(sender)),
                kind,
            };
            let peer = PyPeer {
                addr: frame.peer.addr.to_string(),
                spki_pin: frame.peer.spki_pin.map(|pin| pin.0),
                identity: frame.peer.identity.clone(),
                cert_addresses: frame.peer.cert_addresses.clone(),
            };
            let args = (
                responder,
                peer,
                kind.number(),
                PyBytes::new(py, &frame.payload),
            );
            if let Err(err) = dispatch.call1(py, args) {
                // The responder went into the call and is dropped with it: the requester gets
                // "no_reply"; the failure itself is reported here, not swallowed.
                err.write_unraisable(py, None);
            }
        }));
        Box::pin(async move {
            match receiver.await {
                Ok(result) => result,
                Err(_) => Err(HandlerError::new(
                    "no_reply",
                    format!("the Python handler for {kind} dropped the request"),
                )),
            }
        })
    }
}

fn reply_to_py(py: Python<'_>, frame: OutboundFrame) -> PyResult<Py<PyAny>> {
    Ok(Reply(frame).into_pyobject(py)?.into_any().unbind())
}

fn unit_to_py(py: Python<'_>, _: ()) -> PyResult<Py<PyAny>> {
    Ok(py.None())
}

/// One QUIC endpoint bound to a real UDP port. Async operations take an asyncio future created
/// on the transport's loop and resolve it through the loop bridge (see `bridge_fd`/`drain`).
#[pyclass(frozen, name = "Transport", module = "nodedb_cluster_core")]
pub struct PyTransport {
    inner: Arc<Transport>,
    bridge: Arc<LoopBridge>,
    runtime: &'static tokio::runtime::Runtime,
}

impl PyTransport {
    /// The shared transport, for other bindings on the same endpoint (the raft engine
    /// registers its Rust handlers for kinds 16–18 on it).
    pub(crate) fn shared(&self) -> Arc<Transport> {
        self.inner.clone()
    }

    /// The loop bridge of a binding over this transport: this transport's own when `share` (the
    /// node's owning loop then watches one fd for all of them), else a new one.
    pub(crate) fn bridge_for(&self, share: bool) -> PyResult<Arc<LoopBridge>> {
        if share {
            return Ok(Arc::clone(&self.bridge));
        }
        LoopBridge::new()
            .map(Arc::new)
            .map_err(|e| PyRuntimeError::new_err(format!("cannot create the loop bridge: {e}")))
    }

    /// Run `work` on the runtime; resolve `future` on the loop thread (see `bridge::spawn_settle`).
    fn spawn_settle<F, T>(
        &self,
        future: Py<PyAny>,
        work: F,
        to_py: fn(Python<'_>, T) -> PyResult<Py<PyAny>>,
    ) where
        F: Future<Output = Result<T, TransportError>> + Send + 'static,
        T: Send + 'static,
    {
        crate::bridge::spawn_settle(
            self.runtime,
            &self.bridge,
            future,
            work,
            to_py,
            transport_error_with,
        );
    }

    /// One request to an address (`send` picks the transport call), resolved on the loop.
    fn to_addr<S, F>(
        &self,
        py: Python<'_>,
        addr: &str,
        kind: u16,
        payload: &[u8],
        future: Py<PyAny>,
        send: S,
    ) -> PyResult<()>
    where
        S: FnOnce(Arc<Transport>, SocketAddr, MessageKind, Bytes) -> F,
        F: Future<Output = Result<OutboundFrame, TransportError>> + Send + 'static,
    {
        let addr = parse_addr(py, addr)?;
        let kind = kind_of(py, kind)?;
        let payload = Bytes::copy_from_slice(payload);
        let work = send(self.inner.clone(), addr, kind, payload);
        self.spawn_settle(future, work, reply_to_py);
        Ok(())
    }
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
        let runtime = transport_runtime()?;
        let transport = py
            .detach(|| {
                let _runtime = runtime.enter();
                Transport::bind(NodeId(node_id), addr, credentials, config)
            })
            .map_err(|e| transport_error_with(py, e))?;
        let bridge = LoopBridge::new()
            .map_err(|e| PyRuntimeError::new_err(format!("cannot create the loop bridge: {e}")))?;
        Ok(PyTransport {
            inner: Arc::new(transport),
            bridge: Arc::new(bridge),
            runtime,
        })
    }

    /// The fd the owning asyncio loop must watch: `loop.add_reader(t.bridge_fd(), t.drain)`.
    fn bridge_fd(&self) -> i32 {
        self.bridge.fd()
    }

    /// Run queued completions and inbound dispatches (loop thread only). Returns how many ran.
    fn drain(&self, py: Python<'_>) -> usize {
        self.bridge.drain(py)
    }

    /// Calls whose futures are not settled yet (the owner keeps watching the bridge until this
    /// is 0 after `close`).
    #[getter]
    fn calls_unresolved(&self) -> usize {
        self.bridge.unresolved()
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

    /// This node's certificate identity URI (None when insecure).
    #[getter]
    fn identity(&self) -> Option<String> {
        self.inner.identity().map(Identity::uri)
    }

    /// Requests refused before their handler: {(kind name, reason): count}.
    fn refusal_counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (kind, reason, count) in self.inner.refusals().counts() {
            dict.set_item((kind.name(), reason), count)?;
        }
        Ok(dict)
    }

    /// Rate-limited refusal lines not yet logged, oldest first:
    /// [(peer identity, peer addr, kind name, reason, message, suppressed)].
    #[allow(clippy::type_complexity)]
    fn take_refusal_lines(&self) -> Vec<(String, String, &'static str, &'static str, String, u64)> {
        self.inner
            .refusals()
            .take_lines()
            .into_iter()
            .map(|l| {
                (
                    l.peer,
                    l.addr.to_string(),
                    l.kind.name(),
                    l.reason,
                    l.message,
                    l.suppressed,
                )
            })
            .collect()
    }

    /// Count and log a refusal decided in a Python handler (same counters and lines as the
    /// transport's own).
    fn record_refusal(
        &self,
        py: Python<'_>,
        peer: &PyPeer,
        kind: u16,
        reason: String,
        message: String,
    ) -> PyResult<()> {
        let kind = kind_of(py, kind)?;
        let info = PeerInfo {
            addr: parse_addr(py, &peer.addr)?,
            spki_pin: None,
            identity: peer.identity.clone(),
            cert_addresses: peer.cert_addresses.clone(),
        };
        let reason = refusal_reason(&reason)
            .ok_or_else(|| PyValueError::new_err(format!("unknown refusal reason {reason:?}")))?;
        self.inner
            .record_refusal(&info, kind, Refusal { reason, message });
        Ok(())
    }

    /// Put the CRL files `paths` in force (read now; empty = none): new handshakes are checked
    /// against them and live connections of revoked peers are closed. Returns how many were
    /// closed; a file that cannot be read or parsed raises CredentialsError and nothing changes.
    fn set_crls(&self, py: Python<'_>, paths: Vec<PathBuf>) -> PyResult<usize> {
        let transport = self.inner.clone();
        py.detach(|| transport.set_crls(read_crl_files(&paths)?))
            .map_err(|e| transport_error_with(py, e))
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

    /// Dial every registered peer not yet connected, in the background (see
    /// `Transport::dial_peers`).
    fn dial_peers(&self) {
        self.inner.dial_peers();
    }

    /// Tell every registered peer, in the background, that this node listens at its local
    /// address (see `Transport::announce_address`).
    fn announce_address(&self) {
        self.inner.announce_address();
    }

    /// The same to addresses no registered peer is known at (see
    /// `Transport::announce_address_to`).
    fn announce_address_to(&self, py: Python<'_>, addrs: Vec<String>) -> PyResult<()> {
        let addrs = addrs
            .iter()
            .map(|a| parse_addr(py, a))
            .collect::<PyResult<Vec<_>>>()?;
        self.inner.announce_address_to(&addrs);
        Ok(())
    }

    /// Resolve `future` with `(kind, payload)` of the reply; with `answer_within_ms`, the
    /// peer's handler may take that long (`Transport::send_rpc_within`).
    #[pyo3(signature = (node_id, kind, payload, future, answer_within_ms = None))]
    fn send_rpc(
        &self,
        py: Python<'_>,
        node_id: u64,
        kind: u16,
        payload: &[u8],
        future: Py<PyAny>,
        answer_within_ms: Option<u64>,
    ) -> PyResult<()> {
        let kind = kind_of(py, kind)?;
        let payload = Bytes::copy_from_slice(payload);
        let transport = self.inner.clone();
        let node_id = NodeId(node_id);
        self.spawn_settle(
            future,
            async move {
                match answer_within_ms {
                    None => transport.send_rpc(node_id, kind, payload).await,
                    Some(ms) => {
                        let within = Duration::from_millis(ms);
                        transport
                            .send_rpc_within(node_id, kind, payload, within)
                            .await
                    }
                }
            },
            reply_to_py,
        );
        Ok(())
    }

    fn send_rpc_to_addr(
        &self,
        py: Python<'_>,
        addr: &str,
        kind: u16,
        payload: &[u8],
        future: Py<PyAny>,
    ) -> PyResult<()> {
        self.to_addr(
            py,
            addr,
            kind,
            payload,
            future,
            |t, addr, kind, payload| async move { t.send_rpc_to_addr(addr, kind, payload).await },
        )
    }

    /// Like `send_rpc_to_addr`, on a connection dialled for this request alone and closed after
    /// it (never pooled): the join client's path (docs/JOIN.md).
    fn send_rpc_fresh(
        &self,
        py: Python<'_>,
        addr: &str,
        kind: u16,
        payload: &[u8],
        future: Py<PyAny>,
    ) -> PyResult<()> {
        self.to_addr(
            py,
            addr,
            kind,
            payload,
            future,
            |t, addr, kind, payload| async move { t.send_rpc_fresh(addr, kind, payload).await },
        )
    }

    /// Many requests to one peer, concurrently (at most RPC_MANY_INFLIGHT_MAX in flight), in one
    /// boundary crossing. Resolves with replies in request order; the first failure is raised.
    fn send_rpc_many(
        &self,
        py: Python<'_>,
        node_id: u64,
        kind: u16,
        payloads: Vec<Vec<u8>>,
        future: Py<PyAny>,
    ) -> PyResult<()> {
        let kind = kind_of(py, kind)?;
        let transport = self.inner.clone();
        let work = async move {
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
                        first_error.get_or_insert(TransportError::Unreachable {
                            addr: transport
                                .peer_addr(NodeId(node_id))
                                .unwrap_or(transport.local_addr()),
                            reason: format!("request task failed: {join_err}"),
                        });
                    }
                }
            }
            match first_error {
                Some(err) => Err(err),
                None => Ok(replies.into_iter().flatten().collect::<Vec<_>>()),
            }
        };
        self.spawn_settle(future, work, |py, frames: Vec<OutboundFrame>| {
            Ok(frames
                .into_iter()
                .map(Reply)
                .collect::<Vec<_>>()
                .into_pyobject(py)?
                .into_any()
                .unbind())
        });
        Ok(())
    }

    /// One frame, no reply (unidirectional stream); resolves with None once handed to QUIC.
    fn send_oneway(
        &self,
        py: Python<'_>,
        node_id: u64,
        kind: u16,
        payload: &[u8],
        future: Py<PyAny>,
    ) -> PyResult<()> {
        let kind = kind_of(py, kind)?;
        let payload = Bytes::copy_from_slice(payload);
        let transport = self.inner.clone();
        self.spawn_settle(
            future,
            async move { transport.send_oneway(NodeId(node_id), kind, payload).await },
            unit_to_py,
        );
        Ok(())
    }

    /// Route every kind without a Rust handler to `dispatch(responder, peer, kind, payload)`,
    /// called on the loop thread (from `drain`); it must not block and must answer through the
    /// responder (usually by starting a task). `None` removes it.
    fn serve(&self, dispatch: Option<Py<PyAny>>) {
        let handler = dispatch.map(|dispatch| {
            Arc::new(PyHandler {
                dispatch: Arc::new(dispatch),
                bridge: self.bridge.clone(),
            }) as Arc<dyn FrameHandler>
        });
        self.inner.set_fallback_handler(handler);
    }

    /// Answer `kind` in Rust with Pong carrying the request payload, without touching Python:
    /// a liveness probe that measures the transport alone (benchmarks use it as the server side).
    fn register_echo_handler(&self, py: Python<'_>, kind: u16) -> PyResult<()> {
        let kind = kind_of(py, kind)?;
        self.inner.register_handler(
            kind,
            nodedb_transport::handler_fn(|frame| async move {
                Ok(Some(OutboundFrame {
                    kind: MessageKind::PONG,
                    payload: frame.payload,
                }))
            }),
        );
        Ok(())
    }

    /// Close every connection and release the port (a new transport can bind it at once).
    fn close(&self, future: Py<PyAny>) {
        let transport = self.inner.clone();
        self.spawn_settle(
            future,
            async move {
                transport.close().await;
                Ok(())
            },
            unit_to_py,
        );
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

    /// Served-latency histograms by kind: `(kind, bounds_s, cumulative counts, sum_s, count)`.
    fn served_histograms(&self) -> Vec<crate::raft_convert::HistogramRow> {
        self.inner
            .served_histograms()
            .into_iter()
            .map(|(kind, s)| crate::raft_convert::histogram_row(kind, s))
            .collect()
    }

    /// DIAGNOSTICS: resolve `future` with None after one trip through the runtime and the loop
    /// bridge, no network: the floor under every request's latency (benchmarks report it).
    fn _probe_bridge(&self, future: Py<PyAny>) {
        self.spawn_settle(future, async move { Ok(()) }, unit_to_py);
    }

    /// Stable id of the pooled connection to `addr`, or None (tests: connection reuse).
    fn pooled_connection_id(&self, py: Python<'_>, addr: &str) -> PyResult<Option<usize>> {
        Ok(self.inner.pooled_connection_id(parse_addr(py, addr)?))
    }

    /// TESTS ONLY: write raw bytes on a new stream of the pooled connection to `addr`. Resolves
    /// with `(kind, payload)` if the peer answered with a frame, or the int stream-reset code.
    fn _send_raw_to_addr(
        &self,
        py: Python<'_>,
        addr: &str,
        data: &[u8],
        future: Py<PyAny>,
    ) -> PyResult<()> {
        let addr = parse_addr(py, addr)?;
        let data = Bytes::copy_from_slice(data);
        let transport = self.inner.clone();
        self.spawn_settle(
            future,
            async move { transport.send_raw_to_addr(addr, data, true).await },
            |py, answer| {
                Ok(match answer {
                    Ok(frame) => Reply(frame).into_pyobject(py)?.into_any().unbind(),
                    Err(code) => code.into_pyobject(py)?.into_any().unbind(),
                })
            },
        );
        Ok(())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add(
        "ALPN",
        std::str::from_utf8(nodedb_transport::ALPN).unwrap_or("nodedb-cluster/1"),
    )?;
    m.add_class::<PyPeer>()?;
    m.add_class::<PyResponder>()?;
    m.add_class::<PyTransport>()?;
    Ok(())
}
