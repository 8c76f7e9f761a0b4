"""A running cluster member: the composition of catalog, transport, Raft engine and metadata.

`Node` owns its parts and their order of shutdown, answers the control RPCs (ping, join, status,
metadata proposals forwarded by other members) through one dispatch table, and runs the
membership reconciler. How a node *becomes* a member (bootstrap, join, restart) is
`nodedb_cluster.formation.start`; this module is what it becomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import msgpack

from nodedb_cluster import wire

if TYPE_CHECKING:
    from nodedb_cluster.bench import EmbeddedLoad
from nodedb_cluster.catalog import Catalog
from nodedb_cluster.config import ClusterConfig
from nodedb_cluster.errors import (
    CatalogNoSpace,
    ClusterError,
    EngineStopped,
    NotLeader,
    PermissionDenied,
    RaftNotLeader,
    Timeout,
    UnknownGroup,
)
from nodedb_cluster.formation.admission import JoinAdmission
from nodedb_cluster.kv import LEASE_FRACTION, KvRouter, decode_doc, encode_request
from nodedb_cluster.lifecycle import Failed, LifecycleTracker
from nodedb_cluster.membership import MemberChanged, MemberState, SwimNode
from nodedb_cluster.membership.secret import read_cluster_secret
from nodedb_cluster.metadata.applier import MetadataState
from nodedb_cluster.metadata.audit import AUDIT_FILE_NAME, AuditLog
from nodedb_cluster.metadata.commands import DemoteGroupVoter, MetadataEntry, SettingValue
from nodedb_cluster.metadata.group import MetadataGroup, decode_result
from nodedb_cluster.metadata.placement import plan_promotion
from nodedb_cluster.raft import GroupStatus, RaftEngine, StateMachineKind
from nodedb_cluster.reconcile import (
    Action,
    AddLearner,
    CreateGroup,
    DropGroup,
    LocalGroup,
    PromoteVoter,
    ProposeDemotion,
    ProposePromotion,
    RemoveMember,
    TransferLeader,
    plan_reconcile,
)
from nodedb_cluster.routing.table import METADATA_GROUP_ID
from nodedb_cluster.transport import Peer, Reply, Transport

log = logging.getLogger(__name__)

RECONCILE_INTERVAL_S: Final = 0.5
"""The reconciler also runs on every metadata change; the timer catches what changes in Raft
alone (a learner catching up, a new leader) at a pace that keeps promotion well under a second."""
REFUSAL_LOG_INTERVAL_S: Final = 1.0
"""How often refused-request lines queued by the transport are written to the log."""
METADATA_FORWARD_ATTEMPTS_MAX: Final = 3
"""A metadata proposal follows at most this many leader changes before giving up."""

ControlHandler = Callable[[Peer, bytes], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """What `Node.status()` reports: one consistent look at this member."""

    node_id: int
    lifecycle: str
    cluster_id: str
    topology_version: int
    routing_epoch: int
    metadata_applied_index: int
    nodes: tuple[tuple[int, str, str], ...]
    """(node id, address, state name) for every node in the topology."""
    groups: tuple[GroupStatus, ...]
    vshards_per_group: dict[int, int]
    settings: dict[str, SettingValue]
    kv_digests: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    """(applied index, key count, digest) per local KV replica: equal on two nodes = same state
    (the fault harness compares them across replicas after healing)."""
    members: tuple[tuple[int, str, int], ...] = ()
    """SWIM's view: (node id, swim state name, incarnation) per other node; () without SWIM."""
    no_space: str | None = None
    """Set while the node is NO_SPACE (writes refused, reads served): why; `Node.no_space`."""

    def to_doc(self) -> dict[str, object]:
        return {
            "node_id": self.node_id,
            "lifecycle": self.lifecycle,
            "cluster_id": self.cluster_id,
            "topology_version": self.topology_version,
            "routing_epoch": self.routing_epoch,
            "metadata_applied_index": self.metadata_applied_index,
            "nodes": [list(n) for n in self.nodes],
            "settings": dict(self.settings),
            "members": [list(m) for m in self.members],
            "no_space": self.no_space,
            "groups": [
                {
                    "group_id": g.group_id,
                    "role": g.role,
                    "leader": g.leader_id or 0,
                    "term": g.term,
                    "commit": g.commit_index,
                    "applied": g.applied_index,
                    "voters": list(g.voters),
                    "learners": list(g.learners),
                    "vshards": self.vshards_per_group.get(g.group_id, 0),
                    "kv": list(self.kv_digests.get(g.group_id, ())),
                }
                for g in self.groups
            ],
        }


def encode_metadata_propose(entry: bytes, forwarded: bool) -> bytes:
    """The METADATA_PROPOSE payload: the entry, and whether a member already forwarded it."""
    return bytes(msgpack.packb({"entry": entry, "forwarded": forwarded}, use_bin_type=True))


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
        self._kv: KvRouter | None = None
        self._load: EmbeddedLoad | None = None
        self._metadata: MetadataGroup | None = None
        self._data_group_kind: StateMachineKind = data_group_kind
        self._reconcile_wakeup = asyncio.Event()
        self._reconciler: asyncio.Task[None] | None = None
        self._refusal_logger: asyncio.Task[None] | None = None
        self._engine_watch: asyncio.Task[None] | None = None
        self.failed = asyncio.Event()
        """Set when the node can no longer serve (its Raft engine stopped on its own): the
        lifecycle is Failed with the reason in `failure`, and the node shuts itself down. The
        `start` command exits non-zero on it, so a supervisor restarts the process."""
        self.failure: str | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._peers: set[int] = set()
        """Node ids registered with the transport (the topology's other nodes)."""
        self._closed = False
        self.join_attempts: list[int] = [0]
        """Joining transitions before Ready (a cell shared with the lifecycle observer)."""
        self.membership: SwimNode | None = None
        """SWIM failure detector (config.swim_udp_addr); None when SWIM is off."""
        self._member_dead_hooks: list[Callable[[int], None]] = []
        self.admission = JoinAdmission(config, catalog)
        """Join decisions, join tokens and their counters (formation/admission.py)."""
        self.audit = AuditLog(config.data_dir / AUDIT_FILE_NAME)
        """Applied membership and settings changes (metadata/audit.py)."""
        self._handlers: dict[int, ControlHandler] = {
            wire.MessageKind.PING: self._on_ping,
            wire.MessageKind.JOIN_REQUEST: self._on_join,
            wire.MessageKind.STATUS_REQUEST: self._on_status,
            wire.MessageKind.METADATA_PROPOSE: self._on_metadata_propose,
            wire.MessageKind.KV_REQUEST: self._on_kv,
            wire.MessageKind.BENCH_LOAD: self._on_bench_load,
            wire.MessageKind.JOIN_TOKEN_REQUEST: self.admission.on_join_token_request,
            wire.MessageKind.AUDIT_REQUEST: self.audit.handle_request,
        }

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
        self._engine_watch = asyncio.ensure_future(self._watch_engine(engine))
        lease_s = self.config.election_timeout_min_ms / 1000 * LEASE_FRACTION
        self._kv = KvRouter(
            self.config.node_id, self.transport, lambda: self.metadata.routing, engine, lease_s
        )

    @property
    def kv(self) -> KvRouter:
        """The replicated KV API: `await node.kv.put(key, value)`, `get`, `delete`, `cas`,
        `put_many`, `get_many` (nodedb_cluster.kv)."""
        if self._kv is None or self._closed:
            raise EngineStopped("the node is not running")
        return self._kv

    def serve(self) -> None:
        """Answer control RPCs from now on (raft frames are answered inside the engine; so is
        KV_REQUEST `propose_many`, the hot write path: rust/py/src/kv_serve.rs)."""
        self.transport.serve(self._dispatch)
        if self._refusal_logger is None:
            self._refusal_logger = asyncio.ensure_future(self._log_refusals())
        if self.engine is not None:
            self.engine.serve_kv_requests(self.transport)

    def start_reconciler(self) -> None:
        self._reconciler = asyncio.ensure_future(self._reconcile_loop())

    def group_kind(self, group_id: int) -> StateMachineKind:
        return "python" if group_id == METADATA_GROUP_ID else self._data_group_kind

    # --- state --------------------------------------------------------------------------------

    @property
    def metadata(self) -> MetadataState:
        if self._metadata is None:
            raise EngineStopped("the metadata group is not running")
        return self._metadata.machine.state

    def on_metadata_change(self, state: MetadataState) -> None:
        """On the event loop after group 0 applied something: peers, then reconcile."""
        self.register_peers(state)
        self._seed_membership(state)
        self._reconcile_wakeup.set()

    def register_peers(self, state: MetadataState) -> None:
        """The transport's peers are the topology's other nodes: a node removed from it is
        unregistered, so its certificate no longer takes part in Raft (`unknown_sender`)."""
        members = {n.node_id for n in state.topology.nodes()} - {self.config.node_id}
        for node in state.topology.nodes():
            if node.node_id in members:
                self.transport.register_peer(node.node_id, node.addr, node.spki_pin)
        for gone in self._peers - members:
            self.transport.unregister_peer(gone)
        self._peers = members

    async def status(self) -> NodeStatus:
        state = self.metadata
        engine = self._require_engine()
        groups = []
        kv_digests: dict[int, tuple[int, int, int]] = {}
        for group_id in await engine.groups():
            with contextlib.suppress(UnknownGroup):
                groups.append(await engine.status(group_id))
            if self.group_kind(group_id) == "kv":
                with contextlib.suppress(UnknownGroup):
                    kv_digests[group_id] = engine.kv_digest(group_id)
        counts: dict[int, int] = {}
        for group_id in state.routing.vshard_to_group.tolist():
            counts[group_id] = counts.get(group_id, 0) + 1
        return NodeStatus(
            node_id=self.config.node_id,
            lifecycle=self.lifecycle.state.label,
            cluster_id=self.cluster_id,
            topology_version=state.topology.version,
            routing_epoch=state.routing.epoch,
            metadata_applied_index=state.applied_index,
            nodes=tuple((n.node_id, str(n.addr), n.state.name) for n in state.topology.nodes()),
            groups=tuple(groups),
            vshards_per_group=counts,
            settings=dict(state.settings),
            kv_digests=kv_digests,
            members=self._members_view(),
            no_space=self.no_space(),
        )

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
        """Read `tls_crl_path` again and put it in force (the `start` command does on SIGHUP):
        new handshakes are checked against it and live connections of peers it revokes are
        closed. Returns how many were closed. A file that cannot be read or parsed raises
        `CredentialsError` (logged here) and the CRL in force stays."""
        path = self.config.tls_crl_path
        if self.config.insecure_transport:
            return 0
        try:
            closed = self.transport.set_crls([] if path is None else [path])
        except ClusterError as e:
            log.error(
                "node %d: CRL %s not reloaded, the one in force stays: %s",
                self.config.node_id,
                path,
                e,
            )
            raise
        log.info(
            "node %d: CRL %s reloaded; %d connection(s) of revoked peers closed",
            self.config.node_id,
            path,
            closed,
        )
        return closed

    # --- metadata proposals -------------------------------------------------------------------

    async def propose_metadata(self, entry: MetadataEntry) -> str | None:
        """Replicate `entry` through group 0 from any member (forwarded to its leader); returns
        None once applied, or the reason the state machine refused it."""
        engine = self._require_engine()
        if entry.proposer is None:  # the audit log names who proposed: this node, by default
            entry = dataclasses.replace(entry, proposer=self.transport.identity)
        data = entry.encode()
        timeout_ms = self.config.rpc_timeout_ms
        last: ClusterError = Timeout("metadata proposal", timeout_ms)
        for attempt in range(METADATA_FORWARD_ATTEMPTS_MAX):
            try:
                status: GroupStatus | None = await engine.status(METADATA_GROUP_ID)
            except UnknownGroup:
                status = None  # no replica of group 0 here (rejoining): ask a member of it
            if status is not None and status.role == "leader":
                proposed = await engine.propose(METADATA_GROUP_ID, data, timeout_ms)
                return decode_result(proposed.result)
            if status is not None:
                if not status.leader_id:
                    raise NotLeader(None, "metadata group has no leader")
                target, forwarded = status.leader_id, True
            else:
                voters = self.metadata.routing.route(METADATA_GROUP_ID).voters
                others = [v for v in voters if v != self.config.node_id]
                if not others:
                    raise NotLeader(None, "no other member of the metadata group to ask")
                target, forwarded = others[attempt % len(others)], False  # it forwards once
            try:
                _kind, payload = await self.transport.send_rpc(
                    target,
                    wire.MessageKind.METADATA_PROPOSE,
                    encode_metadata_propose(data, forwarded=forwarded),
                )
            except NotLeader as e:
                last = e
                continue
            result = msgpack.unpackb(payload, raw=False)
            if not isinstance(result, dict):
                raise ClusterError("malformed metadata-propose reply")
            if result.get("not_leader"):
                last = NotLeader(None, "forwarded proposal reached a former leader")
                continue
            reason = result.get("refused")
            return reason if isinstance(reason, str) else None
        raise last

    # --- control RPCs -------------------------------------------------------------------------

    async def _dispatch(self, peer: Peer, kind: int, payload: bytes) -> Reply | None:
        handler = self._handlers.get(kind)
        if handler is None:
            raise ClusterError(f"no handler for message kind {kind}")
        return await handler(peer, payload)

    async def _on_ping(self, peer: Peer, payload: bytes) -> Reply:
        ping = wire.Ping.decode(payload)
        return wire.MessageKind.PONG, wire.Pong(self.config.node_id, ping.nonce).encode()

    async def _on_status(self, peer: Peer, payload: bytes) -> Reply:
        status = await self.status()
        packed = msgpack.packb(status.to_doc(), use_bin_type=True)
        return wire.MessageKind.STATUS_RESPONSE, bytes(packed)

    async def _on_metadata_propose(self, peer: Peer, payload: bytes) -> Reply:
        """A client's proposal is forwarded to the leader once; a forwarded one is not again."""
        request = msgpack.unpackb(payload, raw=False)
        entry = request.get("entry") if isinstance(request, dict) else None
        if not isinstance(entry, bytes):
            raise ClusterError("metadata-propose payload must be a map with bytes 'entry'")
        doc: dict[str, object]
        if request.get("forwarded"):
            engine = self._require_engine()
            try:
                proposed = await engine.propose(
                    METADATA_GROUP_ID, entry, self.config.rpc_timeout_ms
                )
            except RaftNotLeader:
                doc = {"not_leader": True}
            else:
                doc = {"refused": decode_result(proposed.result)}
        else:
            doc = {"refused": await self.propose_metadata(MetadataEntry.decode(entry))}
        return wire.MessageKind.METADATA_PROPOSE_RESPONSE, bytes(msgpack.packb(doc))

    async def _on_kv(self, peer: Peer, payload: bytes) -> Reply:
        """KV requests: "routing" (what a `Client` needs to reach leaders) or one operation."""
        request = decode_doc(payload, "kv request")
        if request.get("op") == "routing":
            state = self.metadata
            doc = {
                "routing": state.routing.encode(),
                "nodes": [[n.node_id, str(n.addr), n.spki_pin] for n in state.topology.nodes()],
            }
            return wire.MessageKind.KV_RESPONSE, encode_request(doc)
        return wire.MessageKind.KV_RESPONSE, await self.kv.serve(request)

    async def _on_bench_load(self, peer: Peer, payload: bytes) -> Reply:
        """`nodedb-cluster bench --placement embedded`: load generated inside this node, only
        where the operator allowed it (the kind table already limits it to admins and nodes)."""
        if not self.config.allow_bench_load:
            text = "bench load is disabled on this node (start it with --allow-bench-load)"
            self.transport.record_refusal(
                peer, wire.MessageKind.BENCH_LOAD, "bench_load_disabled", text
            )
            raise PermissionDenied(text)
        if self._load is None:
            from nodedb_cluster.bench import EmbeddedLoad

            self._load = EmbeddedLoad()
        request = decode_doc(payload, "bench load request")
        answer = await self._load.handle(self.kv, request)
        return wire.MessageKind.BENCH_LOAD_RESPONSE, encode_request(answer)

    async def _on_join(self, peer: Peer, payload: bytes) -> Reply:
        request = wire.JoinRequest.decode(payload)
        response = await self.admission.admit(self, request, peer)
        return wire.MessageKind.JOIN_RESPONSE, response.encode()

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

    async def _log_refusals(self) -> None:
        """Log the transport's refused requests at WARN (already rate-limited there: one line
        per peer, kind and reason per 10 s, with the number suppressed)."""
        while not self._closed:
            for line in self.transport.take_refusal_lines():
                more = f" (+{line.suppressed} more since the last line)" if line.suppressed else ""
                log.warning(
                    "refused %s from %s at %s [%s]: %s%s",
                    line.kind,
                    line.peer,
                    line.addr,
                    line.reason,
                    line.message,
                    more,
                )
            await asyncio.sleep(REFUSAL_LOG_INTERVAL_S)

    # --- reconciler ---------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconcile_wakeup.wait(), RECONCILE_INTERVAL_S)
            self._reconcile_wakeup.clear()
            try:
                await self.reconcile_once()
            except EngineStopped:
                return
            except ClusterError as e:
                log.info("reconcile round incomplete: %s", e)
            except Exception:  # a control loop that dies silently leaves the cluster half-built
                log.exception("reconcile round failed; retrying next round")

    async def reconcile_once(self) -> list[Action]:
        """One round: plan from the routing table and the engine's view, then act."""
        engine = self._require_engine()
        local: dict[int, LocalGroup] = {}
        for group_id in await engine.groups():
            with contextlib.suppress(UnknownGroup):
                s = await engine.status(group_id)
                local[group_id] = LocalGroup(
                    group_id,
                    s.role == "leader",
                    s.voters,
                    s.learners,
                    s.commit_index,
                    dict(s.matched),
                    s.leader_id or 0,
                )
        state = self.metadata
        actions = plan_reconcile(
            self.config.node_id,
            state.routing,
            local,
            self.config.replication_factor,
            self.config.balance_leaders,
        )
        bound_s = 2 * self.config.rpc_timeout_ms / 1000
        for action in actions:
            try:
                async with asyncio.timeout(bound_s):
                    await self._act(action)
            except ClusterError as e:
                log.info("reconcile %s failed: %s", action, e)
            except TimeoutError:
                log.warning("reconcile %s not done within %.1f s; next round", action, bound_s)
        return actions

    async def _act(self, action: Action) -> None:
        engine = self._require_engine()
        log.info("reconcile: %s", action)
        match action:
            case CreateGroup(group_id=g):
                await engine.add_group(g, None, self.group_kind(g))
            case DropGroup(group_id=g):
                await engine.remove_group(g)
            case AddLearner(group_id=g, node_id=n):
                await engine.add_learner(g, n)
            case PromoteVoter(group_id=g, node_id=n):
                await engine.promote(g, n)
            case ProposeDemotion(group_id=g):
                me = self.config.node_id
                refused = await self.propose_metadata(MetadataEntry((DemoteGroupVoter(g, me),)))
                if refused is not None:
                    log.info("demotion of %d in group %d refused: %s", me, g, refused)
                    return
                # Applied in group 0: routing lists this node as a learner of g. The empty
                # replica is created now rather than when this node's routing shows it, which
                # it learns through its own replica of group 0 (perhaps the one missing).
                await engine.add_group(g, None, self.group_kind(g))
            case RemoveMember(group_id=g, node_id=n):
                await engine.remove_node(g, n)
            case TransferLeader(group_id=g, to_node_id=n):
                await engine.transfer_leader(g, n)
            case ProposePromotion(group_id=g, node_id=n):
                change = plan_promotion(self.metadata.routing, g, n, self.config.replication_factor)
                if change is not None:
                    refused = await self.propose_metadata(MetadataEntry((change,)))
                    if refused is not None:
                        log.info("promotion of %d in group %d refused: %s", n, g, refused)

    # --- shutdown -----------------------------------------------------------------------------

    # --- SWIM membership (issue 7; nodedb_cluster.membership) ----------------------------------

    async def start_membership(self) -> None:
        """Run SWIM on config.swim_udp_addr with config.swim's timings (no-op when the address is
        unset), seeded from the topology."""
        if self.config.swim_udp_addr is None or self.membership is not None:
            return
        stored = await self.admission.secret()  # the catalog's; cluster_secret_path overrides
        secret = await asyncio.to_thread(read_cluster_secret, self.config, stored)
        swim = SwimNode(self.config.node_id, self.config.swim_udp_addr, self.config.swim, secret)
        swim.subscribe(self._on_member_changed)
        await swim.start()
        self.membership = swim
        self._seed_membership(self.metadata)

    def add_member_dead_hook(self, hook: Callable[[int], None]) -> None:
        """Call `hook(node_id)` on the loop whenever SWIM declares a node dead (must not block)."""
        self._member_dead_hooks.append(hook)

    def on_member_dead(self, node_id: int) -> None:
        """SWIM declared `node_id` dead: forget it as the leader of any group (the KV router then
        asks the group's other members instead of waiting out a dead leader), then run hooks."""
        if self._kv is not None and self._metadata is not None:
            for group_id in self.metadata.routing.group_ids:
                if self._kv.leader_hint(group_id) == node_id:
                    self._kv.learn_leader(group_id, None)
        for hook in self._member_dead_hooks:
            try:
                hook(node_id)
            except Exception:  # one observer's bug must not stop the others
                log.exception("member-dead hook %r failed for node %d", hook, node_id)

    def _on_member_changed(self, event: MemberChanged) -> None:
        log.info(
            "swim: node %d is %s (incarnation %d)",
            event.node_id,
            event.state.name,
            event.incarnation,
        )
        if self._kv is not None:
            self._kv.health.set_dead(
                event.node_id, event.state in (MemberState.DEAD, MemberState.LEFT)
            )
        if event.state is MemberState.DEAD:
            self.on_member_dead(event.node_id)

    def _seed_membership(self, state: MetadataState) -> None:
        if self.membership is None:
            return
        for node in state.topology.nodes():
            if node.node_id != self.config.node_id and node.swim_addr is not None:
                self.membership.add_member(node.node_id, node.swim_addr)

    def _members_view(self) -> tuple[tuple[int, str, int], ...]:
        if self.membership is None:
            return ()
        return tuple((m.node_id, m.state.name, m.incarnation) for m in self.membership.members())

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
        for task in (self._reconciler, self._refusal_logger, self._engine_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.membership is not None:
            await self.membership.close()
        if self._kv is not None:
            await self._kv.close()
        if self.engine is not None:
            await self.engine.close()
        await self.transport.close()
        await asyncio.to_thread(self.catalog.close)
