//! Python face of `nodedb-multiraft`: `RaftEngine`, one per node, over the node's `Transport`.
//!
//! Python sees batches, never raft messages: it proposes one payload or a batch, awaits
//! (index, result(s)), reads status, and — for groups with a Python state machine (group 0
//! always) — has `apply_batch(entries)` called with committed entries in batches. Raft frames
//! (kinds 16–18) are handled inside Rust by the transport's Rust handlers.
//!
//! Awaitables follow the transport binding: Python creates an asyncio future, Rust runs the work
//! on the shared tokio runtime (no GIL held while waiting) and settles the future through this
//! engine's loop bridge. A Python state machine is called on the engine's driver thread with
//! the GIL taken only for that call.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use nodedb_kv::groups::KvGroups;
use nodedb_kv::serve::{KvServer, ServeOptions};
use nodedb_kv::{KvReader, KV_STATE_MACHINE};
use nodedb_multiraft::core::{ProposeOutcome, Reply};
use nodedb_multiraft::error::{RaftError, SmError};
use nodedb_multiraft::{
    GroupId, GroupRole, HostProposeServer, LostTailPolicy, MembershipChange, MultiRaft,
    MultiRaftConfig, NodeId, StateMachine, StateMachineKind, TransportNetwork, WalSink,
};
use nodedb_transport::{MessageKind, Transport};
use nodedb_wire::KvNode;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::bridge::LoopBridge;
use crate::errors::{cluster_error, engine_error, raft_error};
use crate::host_state_machine::{PyStateMachine, HOST_STATE_MACHINE};
use crate::raft_convert::{
    bridge_reply, histogram_row, kind_of, none, status_to_py, timeout, HistogramRow,
};
use crate::transport::{transport_runtime, PyTransport};

/// Frames queued per peer by the raft network adapter before drops (raft retransmits).
const PEER_QUEUE_FRAMES: usize = 1024;
/// One node's Multi-Raft engine.
#[pyclass(frozen, name = "RaftEngine", module = "nodedb_cluster_core")]
pub struct PyRaftEngine {
    engine: Arc<MultiRaft>,
    kv_groups: KvGroups,
    bridge: Arc<LoopBridge>,
    /// The transport's runtime: request hops, raft frame pumps and QUIC stay on one runtime.
    runtime: &'static tokio::runtime::Runtime,
    /// The kinds `serve_kv_requests` / `serve_host_proposals` answer here, and on which
    /// transport (unregistered on close).
    served: Mutex<Vec<(Weak<Transport>, MessageKind)>>,
    /// The KV server `serve_kv_requests` registered: a `KvClient` in this node serves its own
    /// share through it (`KvClient.serve_locally`). Dropped on close.
    kv_server: Mutex<Option<Arc<KvServer>>>,
}

impl PyRaftEngine {
    fn served(&self, transport: &Arc<Transport>, kind: MessageKind) {
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        served.push((Arc::downgrade(transport), kind));
    }

    /// The KV server of `serve_kv_requests`, if it was called (and `close` was not).
    pub(crate) fn kv_server(&self) -> Option<Arc<KvServer>> {
        self.kv_server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// KV group `group_id`'s reader here, or UnknownGroup.
    fn kv_reader(&self, py: Python<'_>, group_id: u64) -> PyResult<KvReader> {
        self.kv_groups
            .reader(GroupId(group_id))
            .ok_or_else(|| cluster_error(py, "UnknownGroup", (group_id,)))
    }

    /// A `Reply` that settles `future` through this engine's loop bridge (`raft_convert`).
    fn bridge_reply<T: Send + 'static>(
        &self,
        future: Py<PyAny>,
        op: &'static str,
        timeout: Duration,
        to_py: fn(Python<'_>, T) -> PyResult<Py<PyAny>>,
    ) -> Reply<T> {
        bridge_reply(self.runtime, &self.bridge, future, op, timeout, to_py)
    }

    /// Run `work` on the runtime; resolve `future` on the loop thread (see `bridge::spawn_settle`).
    fn spawn_settle<F, T>(
        &self,
        future: Py<PyAny>,
        work: F,
        to_py: fn(Python<'_>, T) -> PyResult<Py<PyAny>>,
    ) where
        F: Future<Output = Result<T, RaftError>> + Send + 'static,
        T: Send + 'static,
    {
        crate::bridge::spawn_settle(self.runtime, &self.bridge, future, work, to_py, raft_error);
    }
}

#[pymethods]
impl PyRaftEngine {
    // Python keyword arguments, one per setting: the count is the API, not a smell.
    #[allow(clippy::too_many_arguments)]
    #[new]
    #[pyo3(signature = (node_id, data_dir, transport, state_machine_factory = None,
                        tick_interval_ms = 100, heartbeat_ticks = 1, election_ticks = 8,
                        snapshot_threshold_entries = 20_000, snapshot_threshold_bytes = 32 << 20,
                        install_snapshot_chunk_bytes = 4 << 20,
                        orphan_partial_max_age_secs = 300,
                        max_uncommitted_bytes = 32 << 20, rejoin = false,
                        free_space_reserve_bytes = None, share_bridge = false,
                        driver_stall_max_ms = None))]
    fn new(
        py: Python<'_>,
        node_id: u64,
        data_dir: PathBuf,
        transport: &PyTransport,
        state_machine_factory: Option<Py<PyAny>>,
        tick_interval_ms: u64,
        heartbeat_ticks: usize,
        election_ticks: usize,
        snapshot_threshold_entries: u64,
        snapshot_threshold_bytes: u64,
        install_snapshot_chunk_bytes: usize,
        orphan_partial_max_age_secs: u64,
        max_uncommitted_bytes: u64,
        rejoin: bool,
        free_space_reserve_bytes: Option<u64>,
        share_bridge: bool,
        driver_stall_max_ms: Option<u64>,
    ) -> PyResult<Self> {
        let mut cfg = MultiRaftConfig::new(NodeId(node_id), &data_dir);
        cfg.tick_interval = Duration::from_millis(tick_interval_ms);
        cfg.heartbeat_ticks = heartbeat_ticks;
        cfg.election_ticks = election_ticks;
        cfg.snapshot_threshold_entries = snapshot_threshold_entries;
        cfg.snapshot_threshold_bytes = snapshot_threshold_bytes;
        cfg.install_snapshot_chunk_bytes = install_snapshot_chunk_bytes;
        cfg.orphan_partial_max_age_secs = orphan_partial_max_age_secs;
        cfg.max_uncommitted_bytes = max_uncommitted_bytes;
        if rejoin {
            cfg.lost_tail = LostTailPolicy::Discard;
        }
        if let Some(ms) = driver_stall_max_ms {
            cfg.driver_stall_max = Duration::from_millis(ms);
        }
        cfg.validate().map_err(|e| engine_error(py, e))?;
        let kv_groups = KvGroups::default();
        let factory_groups = kv_groups.clone();
        let factory = Box::new(
            move |g: GroupId, kind: StateMachineKind| -> Result<Box<dyn StateMachine>, SmError> {
                if kind == KV_STATE_MACHINE {
                    return Ok(Box::new(factory_groups.create(g)));
                }
                if kind != HOST_STATE_MACHINE {
                    return Err(SmError::Other(format!("group {}: unknown {kind}", g.0)));
                }
                let Some(f) = &state_machine_factory else {
                    return Err(SmError::Other(format!(
                        "group {} needs a Python state machine but the engine has no \
                         state_machine_factory",
                        g.0
                    )));
                };
                let obj = Python::attach(|py| f.call1(py, (g.0,)))
                    .map_err(|e| SmError::Other(format!("state_machine_factory: {e}")))?;
                Ok(Box::new(PyStateMachine { group: g, obj }))
            },
        );
        let shared = transport.shared();
        let runtime = transport_runtime()?;
        let net = TransportNetwork::new(
            Arc::clone(&shared),
            runtime.handle().clone(),
            PEER_QUEUE_FRAMES,
        );
        let wal_dir = data_dir.join("raft");
        // Replay and recovery run without the GIL (a Python state machine's restore takes it).
        let engine = py
            .detach(|| {
                let options = nodedb_multiraft::wal_sink::WalOptions {
                    free_space_reserve: free_space_reserve_bytes,
                    ..nodedb_multiraft::wal_sink::WalOptions::default()
                };
                let sink = WalSink::open(&wal_dir, options)?;
                MultiRaft::start(cfg, Box::new(sink), net, factory)
            })
            .map_err(|e| engine_error(py, e))?;
        TransportNetwork::attach_inbound(&shared, engine.inbound());
        let bridge = transport.bridge_for(share_bridge)?;
        Ok(PyRaftEngine {
            engine: Arc::new(engine),
            kv_groups,
            bridge,
            runtime,
            served: Mutex::new(Vec::new()),
            kv_server: Mutex::new(None),
        })
    }

    /// The groups this engine forgot at open because their log lost its acknowledged tail
    /// (only when opened with `rejoin=True`): `(group_id, commit_index, last_index)` each.
    fn discarded_groups(&self) -> Vec<(u64, u64, u64)> {
        self.engine
            .discarded_groups()
            .iter()
            .map(|t| (t.group.0, t.commit_index, t.last_index))
            .collect()
    }

    /// True while the node is in its NO_SPACE state: writes refused with `NoSpace` until space
    /// is freed on the data dir's disk (then they resume by themselves); reads served.
    #[getter]
    fn no_space(&self) -> bool {
        self.engine.no_space()
    }

    /// The leader of `group_id` this node knows (itself included), or None.
    fn leader(&self, group_id: u64) -> Option<u64> {
        self.engine.leader(GroupId(group_id)).map(|n| n.0)
    }

    /// `(epoch, [(group_id, leader or None, term)])`: every group's leader as this node knows
    /// it; pass `epoch` to `wait_leaders_changed` to wait for the next change.
    fn leaders(&self) -> (u64, Vec<(u64, Option<u64>, u64)>) {
        let (epoch, leaders) = self.engine.leaders();
        let leaders = leaders
            .into_iter()
            .map(|(g, leader, term)| (g.0, leader.map(|n| n.0), term))
            .collect();
        (epoch, leaders)
    }

    /// Resolve `future` with the leader epoch once it differs from `since` (or after
    /// `timeout_ms`, with the same epoch, or when the engine stops).
    #[pyo3(signature = (since, future, timeout_ms = 5000))]
    fn wait_leaders_changed(
        &self,
        py: Python<'_>,
        since: u64,
        future: Py<PyAny>,
        timeout_ms: u64,
    ) -> PyResult<()> {
        let t = timeout(py, timeout_ms)?;
        let e = Arc::clone(&self.engine);
        self.spawn_settle(
            future,
            async move { Ok(e.leaders_changed(since, t).await) },
            |py, epoch: u64| Ok(epoch.into_pyobject(py)?.into_any().unbind()),
        );
        Ok(())
    }

    /// What the log's recovery repaired at open: one dict per torn tail discarded, `{"file":
    /// str, "offset_bytes": int, "discarded_bytes": int, "reason": str}` (empty: nothing).
    fn recovery_repairs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for r in self.engine.recovery_repairs() {
            let d = PyDict::new(py);
            d.set_item("file", r.file.display().to_string())?;
            d.set_item("offset_bytes", r.offset_bytes)?;
            d.set_item("discarded_bytes", r.discarded_bytes)?;
            d.set_item("reason", &r.reason)?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// The fd the owning asyncio loop must watch: `loop.add_reader(e.bridge_fd(), e.drain)`.
    fn bridge_fd(&self) -> i32 {
        self.bridge.fd()
    }

    /// Run queued completions (loop thread only). Returns how many ran.
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
        self.engine.node_id().0
    }

    /// Create a group here: `voters` = founding members (this node included), or `None` to
    /// join as an empty learner. `kind` is "kv" (built-in) or "python" (group 0 must be python).
    #[pyo3(signature = (group_id, voters, kind, future, timeout_ms = 5000))]
    fn add_group(
        &self,
        py: Python<'_>,
        group_id: u64,
        voters: Option<Vec<u64>>,
        kind: &str,
        future: Py<PyAny>,
        timeout_ms: u64,
    ) -> PyResult<()> {
        let kind = kind_of(py, kind)?;
        if group_id == GroupId::METADATA.0 && kind != HOST_STATE_MACHINE {
            return Err(cluster_error(
                py,
                "ConfigError",
                (
                    "kind",
                    "group 0 (metadata) is always applied by Python".to_string(),
                ),
            ));
        }
        let role = match voters {
            Some(v) => GroupRole::Voter {
                peers: v.into_iter().map(NodeId).collect(),
            },
            None => GroupRole::Learner,
        };
        let t = timeout(py, timeout_ms)?;
        let e = Arc::clone(&self.engine);
        self.spawn_settle(
            future,
            async move { e.add_group(GroupId(group_id), role, kind, t).await },
            none,
        );
        Ok(())
    }

    #[pyo3(signature = (group_id, future, timeout_ms = 5000))]
    fn remove_group(
        &self,
        py: Python<'_>,
        group_id: u64,
        future: Py<PyAny>,
        timeout_ms: u64,
    ) -> PyResult<()> {
        let t = timeout(py, timeout_ms)?;
        let e = Arc::clone(&self.engine);
        self.kv_groups.remove(GroupId(group_id));
        self.spawn_settle(
            future,
            async move { e.remove_group(GroupId(group_id), t).await },
            none,
        );
        Ok(())
    }

    /// Resolve `future` with `(index, result)` once `data` is committed and applied.
    fn propose(
        &self,
        py: Python<'_>,
        group_id: u64,
        data: Vec<u8>,
        timeout_ms: u64,
        future: Py<PyAny>,
    ) -> PyResult<()> {
        let t = timeout(py, timeout_ms)?;
        let reply = self.bridge_reply(future, "propose", t, |py, out: ProposeOutcome| {
            let result = out.results.into_iter().next().unwrap_or_default();
            Ok((out.index, PyBytes::new(py, &result))
                .into_pyobject(py)?
                .into_any()
                .unbind())
        });
        self.engine
            .propose_batch_with(GroupId(group_id), vec![data], reply);
        Ok(())
    }

    /// Many payloads as ONE entry: resolve with `(index, [result, ...])`. With `kind` ("kv"
    /// or "python"), refused (InvalidRequest) unless the group runs that state machine.
    #[pyo3(signature = (group_id, payloads, timeout_ms, future, kind = None))]
    fn propose_batch(
        &self,
        py: Python<'_>,
        group_id: u64,
        payloads: Vec<Vec<u8>>,
        timeout_ms: u64,
        future: Py<PyAny>,
        kind: Option<&str>,
    ) -> PyResult<()> {
        let kind = kind.map(|k| kind_of(py, k)).transpose()?;
        let t = timeout(py, timeout_ms)?;
        let reply = self.bridge_reply(future, "propose_batch", t, |py, out: ProposeOutcome| {
            let results = PyList::new(py, out.results.iter().map(|r| PyBytes::new(py, r)))?;
            Ok((out.index, results).into_pyobject(py)?.into_any().unbind())
        });
        self.engine
            .propose_for_with(kind, GroupId(group_id), payloads, reply);
        Ok(())
    }

    /// Each payload as its own entry, in one crossing: resolve with one item per payload, in
    /// order: `(index, result)`, or the exception that payload's proposal failed with.
    #[pyo3(signature = (group_id, payloads, timeout_ms, future, kind = None))]
    fn propose_each(
        &self,
        py: Python<'_>,
        group_id: u64,
        payloads: Vec<Vec<u8>>,
        timeout_ms: u64,
        future: Py<PyAny>,
        kind: Option<&str>,
    ) -> PyResult<()> {
        let kind = kind.map(|k| kind_of(py, k)).transpose()?;
        let t = timeout(py, timeout_ms)?;
        let reply = self.bridge_reply(future, "propose_each", t, |py, outs: Vec<_>| {
            let items = outs.into_iter().map(|out| match out {
                Ok(ProposeOutcome { index, results }) => {
                    let result = results.first().map(|r| PyBytes::new(py, r));
                    Ok((index, result).into_pyobject(py)?.into_any().unbind())
                }
                Err(err) => Ok(raft_error(py, err).into_value(py).into_any()),
            });
            Ok(
                PyList::new(py, items.collect::<PyResult<Vec<Py<PyAny>>>>()?)?
                    .into_any()
                    .unbind(),
            )
        });
        self.engine
            .propose_each_for_with(kind, GroupId(group_id), payloads, reply);
        Ok(())
    }

    /// Answer every KV_REQUEST of `transport` in Rust from now on (nodedb_kv::serve: group
    /// commit, reads at every level, routing from `set_kv_routing`, typed errors for bad
    /// input); none reaches Python. Undone by `close`.
    fn serve_kv_requests(&self, transport: &PyTransport, read_lease: bool, quota_bytes: u64) {
        let shared = transport.shared();
        let handler = Arc::new(KvServer::new(
            Arc::downgrade(&self.engine),
            self.kv_groups.clone(),
            self.runtime.handle().clone(),
            ServeOptions {
                lease: read_lease,
                quota_bytes,
            },
        ));
        shared.register_handler(MessageKind::KV_REQUEST, Arc::clone(&handler) as _);
        *self.kv_server.lock().unwrap_or_else(|p| p.into_inner()) = Some(handler);
        self.served(&shared, MessageKind::KV_REQUEST);
    }

    /// Answer every HOST_PROPOSE of `transport` in Rust from now on (nodedb_multiraft's
    /// `HostProposeServer`: each group's share proposed to the host's state machine, one
    /// outcome per command); none reaches Python. Undone by `close`.
    fn serve_host_proposals(&self, transport: &PyTransport) {
        let shared = transport.shared();
        let handler = HostProposeServer::new(Arc::downgrade(&self.engine), HOST_STATE_MACHINE);
        shared.register_handler(MessageKind::HOST_PROPOSE, Arc::new(handler));
        self.served(&shared, MessageKind::HOST_PROPOSE);
    }

    /// The routing snapshot KV_REQUEST `routing` is answered with: `routing` =
    /// `RoutingTable.encode()`, `nodes` = `(node_id, "ip:port", spki pin or None)` per member.
    /// Call on every metadata change; before the first call `routing` is answered with an
    /// Error the requester answers by asking another node. Needs `serve_kv_requests`.
    fn set_kv_routing(
        &self,
        py: Python<'_>,
        routing: &[u8],
        nodes: Vec<(u64, String, Option<Vec<u8>>)>,
    ) -> PyResult<()> {
        let server = self.kv_server().ok_or_else(|| {
            let text = "the engine serves no KV requests: call serve_kv_requests first";
            cluster_error(py, "ClusterError", (text,))
        })?;
        let nodes = nodes
            .into_iter()
            .map(|(id, addr, pin)| KvNode(id, addr, pin))
            .collect();
        server
            .set_routing(routing.to_vec(), nodes)
            .map_err(|e| cluster_error(py, "InvalidRequest", (e.to_string(),)))
    }

    /// Resolve with the read index once leadership is confirmed by a quorum and this node has
    /// applied through it (a local read after this is linearizable).
    fn read_index(
        &self,
        py: Python<'_>,
        group_id: u64,
        timeout_ms: u64,
        future: Py<PyAny>,
    ) -> PyResult<()> {
        let t = timeout(py, timeout_ms)?;
        let reply = self.bridge_reply(future, "read_index", t, |py, index: u64| {
            Ok(index.into_pyobject(py)?.into_any().unbind())
        });
        self.engine.read_index_with(GroupId(group_id), t, reply);
        Ok(())
    }

    #[pyo3(signature = (group_id, future, timeout_ms = 5000))]
    fn status(
        &self,
        py: Python<'_>,
        group_id: u64,
        future: Py<PyAny>,
        timeout_ms: u64,
    ) -> PyResult<()> {
        let t = timeout(py, timeout_ms)?;
        let e = Arc::clone(&self.engine);
        self.spawn_settle(
            future,
            async move { e.status(GroupId(group_id), t).await },
            status_to_py,
        );
        Ok(())
    }

    /// Every group's status (a list of `status` dicts), in one engine request.
    #[pyo3(signature = (future, timeout_ms = 5000))]
    fn statuses(&self, py: Python<'_>, future: Py<PyAny>, timeout_ms: u64) -> PyResult<()> {
        let t = timeout(py, timeout_ms)?;
        let e = Arc::clone(&self.engine);
        self.spawn_settle(future, async move { e.statuses(t).await }, |py, all| {
            let items = all
                .into_iter()
                .map(|s| status_to_py(py, s))
                .collect::<PyResult<Vec<_>>>()?;
            Ok(PyList::new(py, items)?.into_any().unbind())
        });
        Ok(())
    }

    /// Resolve `future` with the reason once the engine's driver thread has ended (shutdown,
    /// fatal log error, panic).
    fn wait_stopped(&self, future: Py<PyAny>) {
        let e = Arc::clone(&self.engine);
        self.spawn_settle(
            future,
            async move { Ok(e.stopped().await) },
            |py, reason| Ok(reason.into_pyobject(py)?.into_any().unbind()),
        );
    }

    #[pyo3(signature = (future, timeout_ms = 5000))]
    fn groups(&self, py: Python<'_>, future: Py<PyAny>, timeout_ms: u64) -> PyResult<()> {
        let t = timeout(py, timeout_ms)?;
        let e = Arc::clone(&self.engine);
        self.spawn_settle(future, async move { e.groups(t).await }, |py, gs| {
            Ok(gs
                .iter()
                .map(|g| g.0)
                .collect::<Vec<_>>()
                .into_pyobject(py)?
                .into_any()
                .unbind())
        });
        Ok(())
    }

    /// `changes`: [("add_learner" | "add_voter" | "remove", node_id), ...]; several at once go
    /// through a joint configuration. Resolves with the voters after the change applied.
    fn change_membership(
        &self,
        py: Python<'_>,
        group_id: u64,
        changes: Vec<(String, u64)>,
        timeout_ms: u64,
        future: Py<PyAny>,
    ) -> PyResult<()> {
        let mut parsed = Vec::with_capacity(changes.len());
        for (op, node) in changes {
            parsed.push(match op.as_str() {
                "add_learner" => MembershipChange::AddLearner(NodeId(node)),
                "add_voter" => MembershipChange::AddVoter(NodeId(node)),
                "remove" => MembershipChange::Remove(NodeId(node)),
                other => {
                    return Err(cluster_error(
                        py,
                        "InvalidRequest",
                        (format!("unknown membership change {other:?}"),),
                    ))
                }
            });
        }
        let t = timeout(py, timeout_ms)?;
        let e = Arc::clone(&self.engine);
        self.spawn_settle(
            future,
            async move { e.change_membership(GroupId(group_id), parsed, t).await },
            |py, voters| {
                Ok(voters
                    .iter()
                    .map(|n| n.0)
                    .collect::<Vec<_>>()
                    .into_pyobject(py)?
                    .into_any()
                    .unbind())
            },
        );
        Ok(())
    }

    fn transfer_leader(
        &self,
        py: Python<'_>,
        group_id: u64,
        to_node_id: u64,
        timeout_ms: u64,
        future: Py<PyAny>,
    ) -> PyResult<()> {
        let t = timeout(py, timeout_ms)?;
        let e = Arc::clone(&self.engine);
        self.spawn_settle(
            future,
            async move {
                e.transfer_leader(GroupId(group_id), NodeId(to_node_id), t)
                    .await
            },
            none,
        );
        Ok(())
    }

    /// Start an election in the group now (a sole founding voter elects itself at once).
    #[pyo3(signature = (group_id, future, timeout_ms = 5000))]
    fn campaign(
        &self,
        py: Python<'_>,
        group_id: u64,
        future: Py<PyAny>,
        timeout_ms: u64,
    ) -> PyResult<()> {
        let t = timeout(py, timeout_ms)?;
        let e = Arc::clone(&self.engine);
        self.spawn_settle(
            future,
            async move { e.campaign(GroupId(group_id), t).await },
            none,
        );
        Ok(())
    }

    #[pyo3(signature = (group_id, future, timeout_ms = 30000))]
    fn snapshot_now(
        &self,
        py: Python<'_>,
        group_id: u64,
        future: Py<PyAny>,
        timeout_ms: u64,
    ) -> PyResult<()> {
        let t = timeout(py, timeout_ms)?;
        let e = Arc::clone(&self.engine);
        self.spawn_settle(
            future,
            async move { e.snapshot_now(GroupId(group_id), t).await },
            none,
        );
        Ok(())
    }

    /// Local read of a KV group (no consensus: pair with `read_index` for linearizability).
    fn kv_get<'py>(
        &self,
        py: Python<'py>,
        group_id: u64,
        key: &[u8],
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let r = self.kv_reader(py, group_id)?;
        Ok(r.get(key).map(|v| PyBytes::new(py, &v)))
    }

    /// vShard `vshard` of this node's replica of KV group `group_id` as import commands for
    /// the target of move `move_id`, each at most `chunk_bytes` (`nodedb_kv::migration`): all
    /// its keys, or (`delta`) its keys written since tracking began and the group's sessions.
    #[pyo3(signature = (group_id, vshard, move_id, delta, chunk_bytes = 1 << 20))]
    fn kv_vshard_export<'py>(
        &self,
        py: Python<'py>,
        group_id: u64,
        vshard: u32,
        move_id: u64,
        delta: bool,
        chunk_bytes: usize,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let r = self.kv_reader(py, group_id)?;
        let chunks = py
            .detach(|| r.export_vshard(vshard, move_id, delta, chunk_bytes))
            .map_err(|reason| cluster_error(py, "InvalidRequest", (reason,)))?;
        Ok(chunks.iter().map(|c| PyBytes::new(py, c)).collect())
    }

    /// `(vshard, keys, bytes of keys and values)` of every vShard holding keys in this node's
    /// replica of KV group `group_id`.
    fn kv_vshard_stats(&self, py: Python<'_>, group_id: u64) -> PyResult<Vec<(u32, u64, u64)>> {
        let r = self.kv_reader(py, group_id)?;
        Ok(r.vshard_stats())
    }

    /// vshard → (state name, the other group of its move, move id) for every vShard of KV
    /// group `group_id` not in the plain state here.
    fn kv_vshard_states(
        &self,
        py: Python<'_>,
        group_id: u64,
    ) -> PyResult<std::collections::BTreeMap<u32, (&'static str, u64, u64)>> {
        let r = self.kv_reader(py, group_id)?;
        Ok(r.vshard_states()
            .into_iter()
            .map(|(v, name, group, move_id)| (v, (name, group, move_id)))
            .collect())
    }

    /// `(applied_index, keys, digest, usage_bytes, sessions, sessions_evicted)` of a KV group
    /// here ([`nodedb_kv::KvSummary`]), read at one moment.
    fn kv_summary(
        &self,
        py: Python<'_>,
        group_id: u64,
    ) -> PyResult<(u64, usize, u64, usize, usize, u64)> {
        let s = self.kv_reader(py, group_id)?.summary();
        Ok((
            s.applied_index,
            s.keys,
            s.digest,
            s.usage_bytes,
            s.sessions,
            s.sessions_evicted,
        ))
    }

    /// The engine's latency histograms: `(name, bounds_s, cumulative counts, sum_s, count)`.
    fn histograms(&self) -> Vec<HistogramRow> {
        let m = self.engine.metrics();
        m.histograms()
            .into_iter()
            .map(|(name, s)| histogram_row(name, s))
            .collect()
    }

    /// Leader changes seen, by group id.
    fn leader_changes(&self) -> std::collections::BTreeMap<u64, u64> {
        self.engine.metrics().leader_changes()
    }

    /// KV requests served here: `(op, result, count)` (empty before `serve_kv_requests`).
    fn kv_requests(&self) -> Vec<(&'static str, &'static str, u64)> {
        self.kv_server().map_or_else(Vec::new, |s| s.ops.snapshot())
    }

    fn metrics(&self) -> HashMap<&'static str, u64> {
        self.engine.metrics().counters().into_iter().collect()
    }

    /// Stop the engine: pending requests fail with EngineStopped. Blocks (without the GIL)
    /// until the driver thread exited.
    fn close(&self, py: Python<'_>) {
        let served = std::mem::take(&mut *self.served.lock().unwrap_or_else(|p| p.into_inner()));
        for (transport, kind) in served {
            if let Some(transport) = transport.upgrade() {
                transport.unregister_handler(kind);
            }
        }
        self.kv_server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let e = Arc::clone(&self.engine);
        py.detach(move || e.shutdown());
    }
}

impl Drop for PyRaftEngine {
    /// An engine dropped without `close()` stops here, with the GIL released while the driver
    /// thread winds down: it may be waiting for the GIL inside a Python state machine, and
    /// joining it while holding the GIL would deadlock.
    fn drop(&mut self) {
        let engine = Arc::clone(&self.engine);
        Python::attach(|py| py.detach(move || engine.shutdown()));
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(
        crate::raft_convert::check_raft_timings,
        m
    )?)?;
    m.add_class::<PyRaftEngine>()?;
    Ok(())
}
