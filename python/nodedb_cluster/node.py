"""A running cluster member: the composition of catalog, transport, Raft engine and metadata.

`Node` owns its parts, wires them to each other and stops them in order. The parts do the work:
control RPCs are answered through `control.ControlDispatch` by the part that owns each kind
(join admission, metadata forwarding, status, audit, KV), the reconciler drives replicas towards
the routing table (`reconciler.py`), SWIM watches the members (`swim_wiring.py`). How a node
*becomes* a member (bootstrap, join, restart) is `nodedb_cluster.formation.start`; this module
is what it becomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import Callable

import nodedb_cluster_core as _core

from nodedb_cluster import wire
from nodedb_cluster.catalog import Catalog
from nodedb_cluster.config import ClusterConfig
from nodedb_cluster.control import (
    ControlDispatch,
    bench_load_refusal,
    log_refusals,
    ping_handler,
)
from nodedb_cluster.embedding import DataGroups
from nodedb_cluster.errors import CatalogNoSpace, ClusterError, EngineStopped, NotEmbedded
from nodedb_cluster.formation.admission import JoinAdmission
from nodedb_cluster.formation.credentials import reload_crl
from nodedb_cluster.formation.retired import status_sender, until_retired
from nodedb_cluster.kv import TIMEOUT_S_DEFAULT, Kv
from nodedb_cluster.leaders import log_leader_changes
from nodedb_cluster.lifecycle import Failed, LifecycleTracker, Ready, Retired
from nodedb_cluster.logsetup import forward_core_logs
from nodedb_cluster.membership import MemberChanged, MemberState, SwimNode
from nodedb_cluster.metadata.applier import MetadataState
from nodedb_cluster.metadata.audit import AUDIT_FILE_NAME, AuditLog
from nodedb_cluster.metadata.commands import AddNode, MetadataEntry
from nodedb_cluster.metadata.forward import MetadataProposer
from nodedb_cluster.metadata.group import MetadataGroup
from nodedb_cluster.metadata.rebalance import Limits
from nodedb_cluster.placement_control import PlacementControl
from nodedb_cluster.raft import RaftEngine, StateMachineKind
from nodedb_cluster.rebalancer import RebalancePolicy, Rebalancer
from nodedb_cluster.reconcile import Action
from nodedb_cluster.reconciler import ReconcilePolicy, Reconciler
from nodedb_cluster.routing.table import METADATA_GROUP_ID, RoutingTable
from nodedb_cluster.status import NodeIdentity, NodeStatus, collect_status, status_handler
from nodedb_cluster.swim_wiring import SwimWiring
from nodedb_cluster.topology import NodeState
from nodedb_cluster.transport import Peer, Reply, Transport
from nodedb_cluster.vshard_mover import CoreVShards, GroupSteps, MovePacer, VShardMover

log = logging.getLogger(__name__)

OWN_ENTRY_RETRY_S = (1.0, 5.0)
"""A restarted member retries recording its addresses every 1 s, backing off to 5 s, until
group 0 applies them or the node stops: until then a moved node's peers dial its old address."""
OWN_ENTRY_WARN_EVERY = 12
"""Of the failed attempts to record them, the first and every this many are logged as warnings."""
AUDIT_FLUSH_S = 2.0
"""How long an audit request waits for applied lines still being saved (a full disk: answered
without them)."""


class Node:
    """One member of a formed cluster. Made by `start_cluster`; stop with `await shutdown()`."""

    def __init__(
        self,
        config: ClusterConfig,
        tracker: LifecycleTracker,
        catalog: Catalog,
        transport: Transport,
        cluster_id: str,
        data_group_kind: StateMachineKind,
    ) -> None:
        self.config = config
        self.lifecycle = tracker
        self.catalog = catalog
        self.transport = transport
        self.cluster_id = cluster_id
        self.engine: RaftEngine | None = None
        self._kv: Kv | None = None
        self._data: DataGroups | None = None
        self._metadata: MetadataGroup | None = None
        self._data_group_kind: StateMachineKind = data_group_kind
        self._tasks: list[asyncio.Task[None]] = []
        """Reconciler, refusal logger, Rust log forwarder, leader log, engine watch: cancelled
        first at shutdown."""
        self.failed = asyncio.Event()
        """Set when the node can no longer serve (its Raft engine stopped on its own): the
        lifecycle is Failed with the reason in `failure`, and the node shuts itself down. The
        `start` command exits non-zero on it, so a supervisor restarts the process."""
        self.failure: str | None = None
        self.retired = asyncio.Event()
        """Set once this node was decommissioned and holds no replica: the lifecycle is Retired
        with the reason in `retirement`, and the node shuts itself down (`start` exits 0)."""
        self.retirement: str | None = None
        self._retiring: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._peers: set[int] = set()
        """Node ids registered with the transport (the topology's other nodes)."""
        self._serving_kv = False
        """The engine's KV server is up (`serve`): routing pushed before then has nowhere to go,
        and `serve` pushes the state it starts from."""
        self._seen: MetadataState | None = None
        """The state `on_metadata_change` last acted on."""
        self._closed = False
        self.join_attempts: list[int] = [0]
        """Joining transitions before Ready (a cell shared with the lifecycle observer)."""
        self.join_durations_s: list[float] = []
        """How long this process took to join (JOIN path only): `nodedb_join_duration_seconds`."""

        self.admission = JoinAdmission(
            config, catalog, transport, cluster_id, self._require_engine, lambda: self.metadata
        )
        """Join decisions, join tokens and their counters (formation/admission.py)."""
        self.audit = AuditLog(config.data_dir / AUDIT_FILE_NAME)
        """Applied membership and settings changes (metadata/audit.py)."""
        self._proposer = MetadataProposer(
            config.node_id,
            self._require_engine,
            transport,
            self._routing,
            config.rpc_timeout_ms,
        )
        policy = ReconcilePolicy(
            config.node_id,
            config.replication_factor,
            config.balance_leaders,
            config.rpc_timeout_ms,
        )
        self.rebalancer = Rebalancer(
            RebalancePolicy(
                config.node_id,
                config.replication_factor,
                config.rebalance_interval_ms / 1000,
                config.dead_node_grace_ms / 1000,
                config.rpc_timeout_ms,
                Limits(
                    imbalance_threshold=config.rebalance_imbalance_percent / 100,
                    moves_per_plan_max=config.rebalance_moves_max,
                    concurrent_moves_max=config.rebalance_concurrent_moves_max,
                    vshards_movable=data_group_kind == "kv",
                ),
            ),
            self._require_engine,
            self._routing,
            lambda: self.metadata.topology,
            self._proposer.propose,
            vshard_moves=lambda: list(self.metadata.vshard_moves),
            vshard_bytes=self._vshard_bytes,
        )
        """Replica placement over time: onto new nodes, off draining and long-dead ones."""
        self._reconciler = Reconciler(
            policy,
            self._require_engine,
            self._routing,
            self.group_kind,
            self._proposer.propose,
            self.rebalancer.leaving,
            lambda: frozenset(m.target for m in self.metadata.vshard_moves),
        )
        self._vshard_steps = GroupSteps(
            config.node_id, self._require_engine, transport, self._routing, config.rpc_timeout_ms
        )
        self.vshard_mover = VShardMover(
            config.node_id,
            self._require_engine,
            lambda: self.metadata,
            self._proposer.propose,
            self._vshard_steps,
            CoreVShards(self._require_engine),
            config.vshard_move_pause_budget_ms / 1000,
            MovePacer(config.vshard_move_duty_percent),
        )
        """vShard moves between groups (the ones whose source group this node leads)."""
        self._swim = SwimWiring(config, self.admission.secret)
        self._swim.observe(self.rebalancer.on_member_changed)
        self.placement = PlacementControl(
            config, lambda: self.metadata, self.rebalancer, self._proposer.propose
        )
        """Decommission and rebalance on an admin's request (PLACEMENT_REQUEST)."""
        self.control = ControlDispatch()
        """Who answers which control RPC; tools may add kinds (the bench tool's BENCH_LOAD)."""
        handlers = {
            wire.MessageKind.PING: ping_handler(config.node_id),
            wire.MessageKind.JOIN_REQUEST: self.admission.on_join_request,
            wire.MessageKind.STATUS_REQUEST: status_handler(self.status),
            wire.MessageKind.METADATA_PROPOSE: self._proposer.on_propose,
            wire.MessageKind.BENCH_LOAD: bench_load_refusal(transport.record_refusal),
            wire.MessageKind.JOIN_TOKEN_REQUEST: self.admission.on_join_token_request,
            wire.MessageKind.AUDIT_REQUEST: self._on_audit_request,
            wire.MessageKind.HOST_PROPOSE: self._on_host_propose,
            wire.MessageKind.PLACEMENT_REQUEST: self.placement.on_request,
            wire.MessageKind.VSHARD_STEP: self._vshard_steps.on_step,
        }
        for kind, handler in handlers.items():
            self.control.register(kind, handler)

    # --- wiring (used by formation) ---------------------------------------------------------------

    def attach_metadata(self, group: MetadataGroup) -> None:
        self._metadata = group

    def attach_engine(self, engine: RaftEngine) -> None:
        self.engine = engine
        for group_id, commit_index, last_index in engine.discarded_groups():
            log.warning(
                "node %d: discarded its copy of group %d (its log ended at index %d, before the "
                "committed index %d): rejoining it as a learner the leader re-replicates",
                self.config.node_id,
                group_id,
                last_index,
                commit_index,
            )
        for repair in engine.recovery_repairs():  # once per engine open (issue 13 part 6)
            log.warning(
                "node %d: Raft log recovery repaired %s: discarded %d bytes of an incomplete "
                "write from byte offset %d (%s)",
                self.config.node_id,
                repair.file,
                repair.discarded_bytes,
                repair.offset_bytes,
                repair.reason,
            )
        self._tasks.append(asyncio.ensure_future(self._watch_engine(engine)))
        self._data = DataGroups(
            self.config.node_id,
            engine,
            self.transport,
            self._routing,
            host=self._data_group_kind == "python",
        )

    def serve(self) -> None:
        """Answer RPCs from now on: control kinds through `self.control`; raft frames inside the
        engine; every KV_REQUEST inside the Rust KV server (nodedb-kv), which also serves this
        node's own `node.kv` calls in process; on a host's node, every HOST_PROPOSE in the
        engine too (registered before serving, so none meets Python's refusal)."""
        if self._data is not None:
            self._data.serve_proposals()
        self.transport.serve(self.control)
        self._tasks.append(asyncio.ensure_future(log_refusals(self.transport)))
        self._tasks.append(asyncio.ensure_future(forward_core_logs()))
        if self.engine is not None:
            self._tasks.append(
                asyncio.ensure_future(log_leader_changes(self.engine, self.config.node_id))
            )
            self.engine.serve_kv_requests(
                self.transport,
                read_lease=self.config.read_lease,
                quota_bytes=self.config.kv_quota_bytes,
            )
            self._serving_kv = True
            self._push_kv_routing(self.metadata)
            self._attach_kv(self.engine)

    def start_reconciler(self) -> None:
        self._tasks.append(asyncio.ensure_future(self._reconciler.run()))
        self._tasks.append(asyncio.ensure_future(self.rebalancer.run()))
        if self._data_group_kind == "kv":
            self._tasks.append(asyncio.ensure_future(self.vshard_mover.run()))

    async def start_membership(self, sock: socket.socket | None = None) -> None:
        """Run SWIM on config.swim_udp_addr (no-op when unset; on `sock` when the caller bound
        it before forming), seeded from the topology; a member whose topology entry names
        other addresses (restarted at another listen address, SWIM turned on or moved) tells
        the cluster its addresses now, in the background."""
        await self._swim.start(lambda: self.metadata.topology, sock)
        self._tasks.append(asyncio.ensure_future(self._record_own_addresses()))

    async def _record_own_addresses(self) -> None:
        """Propose this node's listen and SWIM addresses until the topology holds them (the
        applier takes a member's new address only with the key pinned for it, and refuses one
        another member holds); retried with backoff until then, or until the node stops."""
        node_id, wanted = self.config.node_id, (self.config.listen_addr, self.config.swim_udp_addr)
        pause_s, pause_max_s = OWN_ENTRY_RETRY_S
        failures = 0
        while True:
            own = self.metadata.topology.get(node_id)
            if own is None or (own.addr, own.swim_addr) == wanted:
                return
            updated = dataclasses.replace(own, addr=wanted[0], swim_addr=wanted[1])
            if own.addr != wanted[0]:
                # Moved: peers reach it where it says until group 0 records it (PEER_ADDRESS),
                # told again each attempt for those that missed it (down, restarted). The seeds
                # too: if every member moved at once, none listens where the topology says,
                # and each may listen at one of them.
                self.transport.announce_address()
                self.transport.announce_address_to([str(a) for a in self.config.seed_nodes])
            try:
                refused = await self._proposer.propose(MetadataEntry((AddNode(updated),)))
            except ClusterError as e:
                refused = str(e)
            if refused is None:
                log.info("node %d: addresses %s (SWIM %s) recorded", node_id, *wanted)
                return
            level = logging.WARNING if failures % OWN_ENTRY_WARN_EVERY == 0 else logging.INFO
            log.log(level, "node %d: addresses not recorded yet: %s", node_id, refused)
            failures += 1
            await asyncio.sleep(pause_s)  # a pause between attempts, not a synchronisation
            pause_s = min(pause_s * 2, pause_max_s)

    def _vshard_bytes(self) -> dict[int, int] | None:
        """Bytes per vShard across every data group, read from this node's replicas; None unless
        it holds a replica of each (the rebalancer then leaves bytes alone)."""
        routing, engine = self.metadata.routing, self.engine
        data = [g for g in routing.group_ids if g != METADATA_GROUP_ID]
        if engine is None or self._data_group_kind != "kv":
            return None
        if set(data) - set(routing.groups_of_node(self.config.node_id)):
            return None
        sizes: dict[int, int] = {}
        try:
            for group in data:
                for vshard, _keys, size in engine.kv_vshard_stats(group):
                    sizes[vshard] = sizes.get(vshard, 0) + size
        except ClusterError:
            return None  # a replica not created yet, or gone meanwhile
        return sizes

    def group_kind(self, group_id: int) -> StateMachineKind:
        return "python" if group_id == METADATA_GROUP_ID else self._data_group_kind

    # --- the built-in KV (issue 14 part 5: the lead replaces this block) --------------------------

    def _attach_kv(self, engine: RaftEngine) -> None:
        """`node.kv`: a client core whose own share (groups this node leads) is served in
        process by the engine's KV server; SWIM's verdicts steer it off dead nodes."""
        core = _core.KvClient(self.transport._core, self.config.node_id, TIMEOUT_S_DEFAULT)
        core.serve_locally(engine._core)
        kv = Kv(core)
        kv.set_routing(self.metadata.routing)
        self._kv = kv

        def on_change(event: MemberChanged) -> None:
            kv.set_dead(event.node_id, event.state in (MemberState.DEAD, MemberState.LEFT))

        self._swim.observe(on_change)

    def _push_kv_routing(self, state: MetadataState) -> None:
        """What the KV server answers a `Client` asking for routing: the table and members.
        Group 0 may apply (and call here) while the engine opens, before `serve`."""
        if self.engine is not None and self._serving_kv:
            self.engine.set_kv_routing(
                state.routing.encode(),
                [(n.node_id, str(n.addr), n.spki_pin) for n in state.topology.nodes()],
            )

    @property
    def kv(self) -> Kv:
        """The replicated KV API: `await node.kv.put(key, value)`, `get`, `delete`, `cas`,
        `put_many`, `get_many` (nodedb_cluster.kv). `NotEmbedded` on a node whose data groups
        run the host's state machine: KV commands never reach the host's log."""
        if self._kv is None or self._closed:
            raise EngineStopped("the node is not running")
        if self._data_group_kind != "kv":
            raise NotEmbedded(
                "this node's data groups run the host's state machine (start_cluster(..., "
                "state_machine=...)): node.kv is off; propose through node.data"
            )
        return self._kv

    @property
    def data(self) -> DataGroups:
        """The embedding API (nodedb_cluster.embedding): `locate`, `propose`, `read_index`,
        `on_leader_change` on the data groups of a node that runs the host's state machine."""
        if self._data is None or self._closed:
            raise EngineStopped("the node is not running")
        return self._data

    async def _on_audit_request(self, peer: Peer, payload: bytes) -> Reply:
        """The audit log as of the request: what group 0 applied here before it is written
        first (the saver writes behind the apply, at most every 100 ms)."""
        if self._metadata is not None:
            await asyncio.to_thread(self._metadata.machine.flush, AUDIT_FLUSH_S)
        return await self.audit.handle_request(peer, payload)

    async def _on_host_propose(self, peer: Peer, payload: bytes) -> Reply:
        return await self.data.refuse_propose(peer, payload)

    # --- state --------------------------------------------------------------------------------

    @property
    def metadata(self) -> MetadataState:
        if self._metadata is None:
            raise EngineStopped("the metadata group is not running")
        return self._metadata.machine.state

    def _routing(self) -> RoutingTable:
        return self.metadata.routing

    def on_metadata_change(self, state: MetadataState) -> None:
        """On the event loop after group 0 applied something: peers, routing, then reconcile,
        each only when its input changed (a vShard move changes group 0's state twice on every
        node, and its begin changes neither the topology nor the routing). Nothing once the
        node shuts down: a change applied just before is queued behind the shutdown's first
        steps, and the engine it would reach may have stopped serving KV (CI, session 22)."""
        if self._closed:
            return
        seen = self._seen
        topology_changed = seen is None or seen.topology.version != state.topology.version
        routing_changed = seen is None or seen.routing.epoch != state.routing.epoch
        self._seen = state
        if topology_changed:
            self.register_peers(state)
            self._swim.seed(state.topology)
        if self._kv is not None and routing_changed:
            self._kv.set_routing(state.routing)
        if routing_changed or topology_changed:
            self._push_kv_routing(state)
        self._reconciler.metadata_changed()
        self.placement.metadata_changed()
        if state.vshard_moves or (seen is not None and seen.vshard_moves):
            self.vshard_mover.wake()
        own = state.topology.get(self.config.node_id)
        leaving = own is None or own.state in (NodeState.DRAINING, NodeState.DECOMMISSIONED)
        if leaving and (self._retiring is None or self._retiring.done()):
            self._retiring = asyncio.ensure_future(self._stop_once_retired())
            self._tasks.append(self._retiring)

    def register_peers(self, state: MetadataState) -> None:
        """The transport's peers are the topology's other nodes but the decommissioned: a node
        removed from it, or retired, is unregistered, so its certificate sends no member-only
        kind any more (`unknown_sender`): a machine recycled with its old node certificate on
        its disk must not speak Raft, propose metadata or step a vShard (attack probe,
        session 30). A retiring node holds no replica then, and its group 0 one is let go."""
        members = {
            n.node_id for n in state.topology.nodes() if n.state is not NodeState.DECOMMISSIONED
        } - {self.config.node_id}
        for node in state.topology.nodes():
            if node.node_id in members:
                self.transport.register_peer(node.node_id, node.addr, node.spki_pin)
        for gone in self._peers - members:
            self.transport.unregister_peer(gone)
        self._peers = members

    async def status(self) -> NodeStatus:
        state = self.metadata
        engine = self._require_engine()
        who = NodeIdentity(
            self.config.node_id,
            self.cluster_id,
            self.lifecycle.state.label,
            self._swim.view(),
            self.no_space(),
            self.config.kv_quota_bytes,
        )
        return await collect_status(who, state, engine, self.group_kind, self.vshard_mover.progress)

    def no_space(self) -> str | None:
        """Why this node is NO_SPACE, or None. Its Raft log's disk is below the free-space
        reserve (the engine refuses proposals with `NoSpace`, serves reads) or its catalog
        could not save the applied metadata for lack of space (retried). Both clear by
        themselves once space is freed."""
        if self.engine is not None and self.engine.no_space:
            raft_dir = self.config.data_dir / "raft"
            return f"the disk of {raft_dir} is below its free-space reserve: writes refused"
        if self._metadata is not None and self._metadata.machine.no_space_error is not None:
            return str(self._metadata.machine.no_space_error)
        return None

    def on_catalog_no_space(self, error: CatalogNoSpace | None) -> None:
        """The metadata applier's catalog saves started failing for lack of space, or landed
        again (on the loop)."""
        if error is not None:
            log.warning(
                "node %d is NO_SPACE: %s (retried until space is freed)", self.config.node_id, error
            )
        else:
            log.info("node %d: the catalog saves again (space was freed)", self.config.node_id)

    def metrics(self) -> dict[str, int]:
        counters = {f"transport_{k}": v for k, v in self.transport.metrics().items()}
        counters["no_space"] = int(self.no_space() is not None)
        counters["join_attempts"] = self.join_attempts[0]
        counters.update(self.admission.metrics())
        counters["audit_write_errors"] = self.audit.write_errors
        if self.engine is not None:
            counters.update({f"raft_{k}": v for k, v in self.engine.metrics().items()})
        return counters

    def reload_crl(self) -> int:
        """Put `tls_crl_path` in force again (the `start` command does on SIGHUP); how many live
        connections of revoked peers were closed (`formation.credentials.reload_crl`)."""
        return reload_crl(self.config, self.transport)

    # --- the parts' entry points --------------------------------------------------------------

    async def propose_metadata(self, entry: MetadataEntry) -> str | None:
        """Replicate `entry` through group 0 from any member (forwarded to its leader); returns
        None once applied, or the reason the state machine refused it."""
        return await self._proposer.propose(entry)

    async def reconcile_once(self) -> list[Action]:
        """One reconciler round now (formation runs one before the node is Ready)."""
        return await self._reconciler.reconcile_once()

    @property
    def membership(self) -> SwimNode | None:
        """SWIM failure detector (config.swim_udp_addr); None when SWIM is off."""
        return self._swim.swim

    def add_member_dead_hook(self, hook: Callable[[int], None]) -> None:
        """Call `hook(node_id)` on the loop whenever SWIM declares a node dead (must not block)."""
        self._swim.add_dead_hook(hook)

    # --- lifetime -----------------------------------------------------------------------------

    async def _watch_engine(self, engine: RaftEngine) -> None:
        """Fail fast: an engine that stopped without being asked to (a fatal log error, a
        panic on its driver thread) leaves a process that can only answer errors; say why once,
        mark the node Failed and stop it rather than linger."""
        reason = await engine.wait_stopped()
        if self._closed:
            return
        self.failure = reason
        log.error(
            "node %d: the Raft engine stopped (%s); the node stops", self.config.node_id, reason
        )
        if not isinstance(self.lifecycle.state, Failed):
            self.lifecycle.transition(Failed(f"raft engine stopped: {reason}"), "engine stopped")
        self.failed.set()
        await self.shutdown()

    async def _stop_once_retired(self) -> None:
        """A draining node stops by itself once retired and holding no replica: before, it
        served nothing and lingered until someone stopped it (formation/retired.py)."""
        node_id = self.config.node_id

        def own_state() -> NodeState | None:
            own = self.metadata.topology.get(node_id)
            return None if own is None else own.state

        try:
            reason = await until_retired(
                node_id,
                own_state,
                lambda: self._require_engine().groups(),
                self.metadata.topology.nodes,
                status_sender(self.transport.send_rpc_to_addr),
            )
        except EngineStopped:
            return
        if reason is None or self._closed:
            return
        self.retirement = reason
        log.warning("node %d: %s; it stops", node_id, reason)
        if isinstance(self.lifecycle.state, Ready):
            self.lifecycle.transition(Retired(reason), "decommissioned")
        self.retired.set()
        await self.shutdown()

    def _require_engine(self) -> RaftEngine:
        if self.engine is None or self._closed:
            raise EngineStopped("the node is not running")
        return self.engine

    async def shutdown(self) -> None:
        """Stop serving and release ports and files; the same data_dir can restart at once.
        Every call returns once the one shutdown is complete."""
        if self._stopping is None:
            self._closed = True
            self._stopping = asyncio.ensure_future(self._shutdown_once())
        await asyncio.shield(self._stopping)

    async def _shutdown_once(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._reconciler.close()
        # A node that failed does not announce a leave: its peers must see it DEAD, which
        # `status` flags and alerts on (operator probe, session 31: a dead disk read as a
        # graceful LEFT, and no alert fired).
        await self._swim.close(leave=self.failure is None)
        if self._kv is not None:
            await self._kv.close()
        if self._data is not None:
            await self._data.close()
        if self.engine is not None:
            await self.engine.close()
        await self.transport.close()
        if self._metadata is not None:  # the engine applies no more: write what is pending
            await asyncio.to_thread(self._metadata.machine.close)
        await asyncio.to_thread(self.catalog.close)
