//! `KvClient`: the Python face of the KV client core (`nodedb_kv::client`). Translation only:
//! arguments in, a [`Completion`] that resolves the caller's asyncio future through the loop
//! bridge, answers and errors out (errors.rs maps every error).

use std::sync::Arc;

use nodedb_kv::client::{
    deadline_in, Answer, Completion, Failure, KvClient, KvError, ReadAt, Request, TIMEOUT_S_MAX,
};
use nodedb_kv::routing::{Route, Routing};
use nodedb_kv::session::random_client_id;
use nodedb_wire::ReadLevel;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyList};

use crate::bridge::{settle, LoopBridge, UnresolvedCall};
use crate::errors::{cluster_error, failure_error, submit_error};
use crate::raft::PyRaftEngine;
use crate::transport::{transport_runtime, PyTransport};

/// Resolves one call's asyncio future on its loop (through the bridge), then uncounts it.
struct LoopCompletion {
    future: Py<PyAny>,
    bridge: Arc<LoopBridge>,
    call: UnresolvedCall,
}

impl Completion for LoopCompletion {
    fn complete(self: Box<Self>, outcome: Result<Answer, Failure>) {
        let LoopCompletion {
            future,
            bridge,
            call,
        } = *self;
        bridge.push(Box::new(move |py| {
            let value = match outcome {
                Ok(answer) => answer_to_py(py, answer),
                Err(failure) => Err(failure_error(py, failure)),
            };
            settle(py, &future, value);
            drop(call);
        }));
    }
}

fn opt_bytes(py: Python<'_>, value: Option<Vec<u8>>) -> Py<PyAny> {
    match value {
        Some(v) => PyBytes::new(py, &v).into_any().unbind(),
        None => py.None(),
    }
}

fn answer_to_py(py: Python<'_>, answer: Answer) -> PyResult<Py<PyAny>> {
    let flag = |b: bool| PyBool::new(py, b).to_owned().into_any().unbind();
    Ok(match answer {
        Answer::Value(v) => opt_bytes(py, v),
        Answer::Values(values) => {
            let values: Vec<Py<PyAny>> = values.into_iter().map(|v| opt_bytes(py, v)).collect();
            PyList::new(py, values)?.into_any().unbind()
        }
        Answer::Written { refused: None } => py.None(),
        // A write the state machine refused did not apply: never answered as a success.
        Answer::Written {
            refused: Some(reason),
        } => return Err(cluster_error(py, "InvalidRequest", (reason,))),
        Answer::Deleted { existed } => flag(existed),
        Answer::Swapped { applied } => flag(applied),
    })
}

/// `KvClient(transport, node_id, timeout_s=5.0, client_id=None)`: see `nodedb_kv::client`.
/// Every call method takes an asyncio future created on the owning loop (which watches
/// `bridge_fd()` with `drain`) and returns True when the caller must schedule `flush()` (once
/// per loop iteration: everything queued until then shares its requests).
#[pyclass(frozen, name = "KvClient", module = "nodedb_cluster_core")]
pub struct PyKvClient {
    core: Arc<KvClient>,
    bridge: Arc<LoopBridge>,
    runtime: &'static tokio::runtime::Runtime,
    timeout_s: f64,
}

impl PyKvClient {
    /// Queue one call; raise at once when it cannot start.
    fn submit(
        &self,
        py: Python<'_>,
        request: Request,
        timeout_s: Option<f64>,
        future: Py<PyAny>,
    ) -> PyResult<bool> {
        let deadline = deadline_in(timeout_s.unwrap_or(self.timeout_s))
            .map_err(|error| failure_error(py, Failure { group: 0, error }))?;
        let completion = Box::new(LoopCompletion {
            future,
            bridge: Arc::clone(&self.bridge),
            call: self.bridge.unresolved_call(),
        });
        self.core
            .submit(request, deadline, completion)
            .map_err(|e| submit_error(py, e))
    }

    /// The shared core (`kv_load.rs` drives it from the runtime).
    pub(crate) fn core(&self) -> Arc<KvClient> {
        Arc::clone(&self.core)
    }

    pub(crate) fn runtime(&self) -> &'static tokio::runtime::Runtime {
        self.runtime
    }

    pub(crate) fn bridge(&self) -> &Arc<LoopBridge> {
        &self.bridge
    }
}

#[pymethods]
impl PyKvClient {
    #[new]
    #[pyo3(signature = (transport, node_id, timeout_s = 5.0, client_id = None, share_bridge = false))]
    fn new(
        py: Python<'_>,
        transport: &PyTransport,
        node_id: u64,
        timeout_s: f64,
        client_id: Option<u64>,
        share_bridge: bool,
    ) -> PyResult<Self> {
        if !(timeout_s.is_finite() && timeout_s > 0.0 && timeout_s <= TIMEOUT_S_MAX) {
            let reason = format!("{timeout_s} s is not in (0, {TIMEOUT_S_MAX}]");
            return Err(cluster_error(py, "ConfigError", ("timeout_s", reason)));
        }
        let bridge = transport.bridge_for(share_bridge)?;
        let runtime = transport_runtime()?;
        let client_id = client_id.unwrap_or_else(random_client_id);
        let core = KvClient::new(
            transport.shared(),
            runtime.handle().clone(),
            node_id,
            client_id,
        );
        Ok(PyKvClient {
            core,
            bridge,
            runtime,
            timeout_s,
        })
    }

    /// Serve this node's own share in process through `engine`'s KV server (the engine must
    /// serve KV requests: `serve_kv_requests`): a client inside a node then reaches the groups
    /// it leads or serves (proposals, reads at every level) without the network.
    fn serve_locally(&self, py: Python<'_>, engine: &PyRaftEngine) -> PyResult<()> {
        let server = engine.kv_server().ok_or_else(|| {
            let text = "the engine serves no KV requests: call serve_kv_requests first";
            cluster_error(py, "ClusterError", (text,))
        })?;
        self.core.serve_locally(&server);
        Ok(())
    }

    /// The fd the owning asyncio loop must watch: `loop.add_reader(c.bridge_fd(), c.drain)`.
    fn bridge_fd(&self) -> i32 {
        self.bridge.fd()
    }

    /// Resolve finished calls (loop thread only). Returns how many bridge tasks ran.
    fn drain(&self, py: Python<'_>) -> usize {
        self.bridge.drain(py)
    }

    /// Resolve `future` (with None, on its loop) once a group answers Moved, or none of a
    /// group's members finds a leader (paced): the routing table is stale and the caller should fetch a fresh one (`nodedb_kv::client::KvClient::
    /// watch_routing`). At once if it already is; one watcher at a time.
    fn watch_routing(&self, future: Py<PyAny>) {
        let bridge = Arc::clone(&self.bridge);
        self.core.watch_routing(Box::new(move || {
            bridge.push(Box::new(move |py| settle(py, &future, Ok(py.None()))));
        }));
    }

    /// Whether the routing table went stale (Moved, or a leaderless group) since the last
    /// `set_routing`.
    fn routing_stale(&self) -> bool {
        self.core.routing_stale()
    }

    /// Install routing: `vshard_to_group` (1024 group ids) and `(group, leader or 0, voters)`
    /// per group. Learned leaders are kept.
    fn set_routing(
        &self,
        py: Python<'_>,
        vshard_to_group: Vec<u64>,
        routes: Vec<(u64, u64, Vec<u64>)>,
    ) -> PyResult<()> {
        let routes = routes
            .into_iter()
            .map(|(group, leader, voters)| (group, Route { leader, voters }));
        let routing = Routing::new(vshard_to_group, routes)
            .map_err(|e| cluster_error(py, "InvalidRequest", (e.to_string(),)))?;
        self.core.set_routing(routing);
        Ok(())
    }

    #[getter]
    fn retry_unknown_writes(&self) -> bool {
        self.core.retry_unknown_writes()
    }

    #[setter]
    fn set_retry_unknown_writes(&self, value: bool) {
        self.core.set_retry_unknown_writes(value);
    }

    /// This client's session id (exactly-once writes).
    #[getter]
    fn client_id(&self) -> u64 {
        self.core.client_id()
    }

    /// The lowest write seq this client still waits for.
    #[getter]
    fn acked_below(&self) -> u64 {
        self.core.acked_below()
    }

    /// Writes handed out and not finished.
    #[getter]
    fn writes_in_flight(&self) -> usize {
        self.core.writes_in_flight()
    }

    /// KV_REQUESTs sent (each carries every item queued for its target and lane).
    #[getter]
    fn requests_sent(&self) -> u64 {
        self.core.requests_sent()
    }

    /// Calls accepted whose futures are not resolved yet (the owner keeps watching the bridge
    /// until this is 0 after `close`).
    #[getter]
    fn calls_unresolved(&self) -> usize {
        self.bridge.unresolved()
    }

    fn group_of(&self, py: Python<'_>, key: &[u8]) -> PyResult<u64> {
        self.core
            .group_of(key)
            .map_err(|error| failure_error(py, Failure { group: 0, error }))
    }

    /// SWIM's verdict on `node_id` (True: dead or departed; False: alive again): see
    /// `nodedb_kv::client::KvClient::set_dead`.
    fn set_dead(&self, node_id: u64, dead: bool) {
        self.core.set_dead(node_id, dead);
    }

    /// The node this client would send `group`'s requests to now (0 = unknown).
    fn leader_hint(&self, group: u64) -> u64 {
        self.core.leader_hint(group)
    }

    #[pyo3(signature = (key, value, timeout_s, future))]
    fn put(
        &self,
        py: Python<'_>,
        key: &[u8],
        value: &[u8],
        timeout_s: Option<f64>,
        future: Py<PyAny>,
    ) -> PyResult<bool> {
        let request = Request::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        self.submit(py, request, timeout_s, future)
    }

    #[pyo3(signature = (key, timeout_s, future))]
    fn delete(
        &self,
        py: Python<'_>,
        key: &[u8],
        timeout_s: Option<f64>,
        future: Py<PyAny>,
    ) -> PyResult<bool> {
        let request = Request::Delete { key: key.to_vec() };
        self.submit(py, request, timeout_s, future)
    }

    #[pyo3(signature = (key, expected, new, timeout_s, future))]
    fn cas(
        &self,
        py: Python<'_>,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
        timeout_s: Option<f64>,
        future: Py<PyAny>,
    ) -> PyResult<bool> {
        let request = Request::Cas {
            key: key.to_vec(),
            expected: expected.map(<[u8]>::to_vec),
            value: new.to_vec(),
        };
        self.submit(py, request, timeout_s, future)
    }

    #[pyo3(signature = (items, timeout_s, future))]
    fn put_many(
        &self,
        py: Python<'_>,
        items: Vec<(Vec<u8>, Vec<u8>)>,
        timeout_s: Option<f64>,
        future: Py<PyAny>,
    ) -> PyResult<bool> {
        self.submit(py, Request::PutMany(items), timeout_s, future)
    }

    /// Values of `keys` (`single`: the future gets the one value, not a list).
    // Python keyword arguments, one per setting: the count is the API, not a smell.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (keys, level, max_staleness_s, timeout_s, future, single = false))]
    fn get_many(
        &self,
        py: Python<'_>,
        mut keys: Vec<Vec<u8>>,
        level: &str,
        max_staleness_s: f64,
        timeout_s: Option<f64>,
        future: Py<PyAny>,
        single: bool,
    ) -> PyResult<bool> {
        let Some(level) = ReadLevel::parse(level) else {
            let text = format!(
                "read level must be one of ('linearizable', 'lease', 'follower'), not {level:?}"
            );
            return Err(failure_error(
                py,
                Failure {
                    group: 0,
                    error: KvError::Invalid(text),
                },
            ));
        };
        let read = ReadAt {
            level,
            max_staleness_s,
        };
        let request = match keys.pop() {
            Some(key) if single && keys.is_empty() => Request::Get { key, read },
            last => {
                keys.extend(last);
                Request::GetMany { keys, read }
            }
        };
        if let Some(answer) = self.core.read_here(&request) {
            settle(py, &future, answer_to_py(py, answer));
            return Ok(false);
        }
        self.submit(py, request, timeout_s, future)
    }

    /// Send everything queued since the last flush: one KV_REQUEST per (target, lane) while
    /// slots are free (the rest follows as replies come back).
    fn flush(&self, py: Python<'_>) {
        py.detach(|| self.core.flush());
    }

    /// Fail every queued call with TransportClosed; calls in flight fail when their reply (or
    /// the transport's closing) comes back. Idempotent.
    fn close(&self) {
        self.core.close();
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyKvClient>()
}
