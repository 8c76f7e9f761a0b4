"""`start_cluster`: a config becomes a running member by restart, bootstrap or join (docs/JOIN.md).

The path is chosen by `decide_formation`; the lifecycle shows every phase. Order is load-bearing:
the catalog is written before any Raft state exists (so a crash after it restarts from the
catalog), groups are created after (a bootstrap cut short between the two is finished by the
restart: `bootstrap_mark`), and peers are registered last. Any failure ends the lifecycle Failed
with the concrete error and releases what was opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import secrets
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from nodedb_cluster import wire
from nodedb_cluster.addr import SocketAddr
from nodedb_cluster.catalog import Catalog
from nodedb_cluster.catalog.layout import CLUSTER_SECRET_BYTES
from nodedb_cluster.config import ClusterConfig
from nodedb_cluster.errors import (
    CatalogError,
    ClusterError,
    ConfigError,
    CorruptLog,
    CorruptSnapshot,
    EngineStopped,
    FormationStopped,
)
from nodedb_cluster.formation.bootstrap_mark import clear_mark, mark_path, read_mark, write_mark
from nodedb_cluster.formation.credentials import check_node_credentials, check_pinned_key
from nodedb_cluster.formation.decide import FormationPath, decide_formation
from nodedb_cluster.formation.join_client import join_sender, run_join
from nodedb_cluster.formation.log_identity import (
    LogIdentity,
    LogIdentityError,
    Verdict,
    discard_raft_state,
    has_raft_log,
    identity_path,
    read_identity,
    write_identity,
)
from nodedb_cluster.formation.log_identity import decide as decide_log_identity
from nodedb_cluster.formation.retired import peers_verdict, retired_refusal, status_sender
from nodedb_cluster.lifecycle import (
    Bootstrapping,
    Failed,
    Joining,
    LifecycleTracker,
    Ready,
    Restarting,
    Starting,
    Transition,
)
from nodedb_cluster.membership import bind_udp
from nodedb_cluster.metadata.applier import MetadataState
from nodedb_cluster.metadata.cluster_settings import adopt, check_data_kind, founded_with
from nodedb_cluster.metadata.commands import SettingValue
from nodedb_cluster.metadata.group import MetadataGroup, decode_state
from nodedb_cluster.metadata.vshard_moves import VShardMoves
from nodedb_cluster.node import Node
from nodedb_cluster.raft import RaftEngine, RaftSettings, StateMachine, StateMachineKind
from nodedb_cluster.routing.table import METADATA_GROUP_ID, RoutingTable
from nodedb_cluster.status import forming_handler
from nodedb_cluster.topology import NodeInfo, NodeState, Topology
from nodedb_cluster.transport import Credentials, Insecure, Mtls, Transport

log = logging.getLogger(__name__)
R = TypeVar("R")

DataStateMachineFactory = Callable[[int], StateMachine]
"""group_id -> a Python state machine for that data group (None: the built-in KV machine)."""

CATALOG_OPEN_TIMEOUT_S: Final = 30.0


async def start_cluster(
    config: ClusterConfig,
    state_machine: DataStateMachineFactory | None = None,
    tracker: LifecycleTracker | None = None,
    stop: asyncio.Event | None = None,
) -> Node:
    """Start this node and return it once Ready; raise the last concrete error if it fails.
    `stop` set while the node still tries to join (the join retries can take minutes) ends the
    start with `FormationStopped`; the other paths are short and run to their end."""
    tracker = tracker or LifecycleTracker()
    join_attempts = _count_join_attempts(tracker)
    catalog = await asyncio.to_thread(Catalog.open, config.data_dir)
    transport: Transport | None = None
    swim_socket: socket.socket | None = None
    parts: _Parts | None = None
    node: Node | None = None
    try:
        await asyncio.to_thread(_check_log_identity, config, catalog)
        path = decide_formation(config, catalog.is_bootstrapped())
        if path is not FormationPath.RESTART:  # a bootstrap cut short before its catalog
            await asyncio.to_thread(clear_mark, config.data_dir)
        check_node_credentials(config, time.time())  # key modes, identity, expiry
        transport = Transport(
            config.node_id,
            config.listen_addr,
            credentials_of(config),
            rpc_timeout=config.rpc_timeout_ms / 1000,
        )
        transport.serve(forming_handler(config.node_id, tracker))  # until the node serves
        if config.swim_udp_addr is not None:  # a port in use fails here, before any formation
            swim_socket = bind_udp(config.swim_udp_addr)
        kind: StateMachineKind = "kv" if state_machine is None else "python"
        parts = _Parts(config, tracker, catalog, transport, kind, state_machine, stop)
        match path:
            case FormationPath.RESTART:
                tracker.transition(Restarting(), detail=str(config.data_dir))
                node = await _restart(parts)
            case FormationPath.BOOTSTRAP:
                tracker.transition(Bootstrapping(), detail=str(config.listen_addr))
                node = await _bootstrap(parts)
            case FormationPath.JOIN:
                join_started = time.monotonic()
                node = await _join(parts)
                node.join_durations_s.append(time.monotonic() - join_started)
        node.join_attempts = join_attempts
        if node.failure is not None:  # the engine stopped while the node was forming
            raise EngineStopped(node.failure)
        node.serve()
        node.start_reconciler()
        socket_for_swim, swim_socket = swim_socket, None  # start_membership owns it now
        await node.start_membership(socket_for_swim)  # SWIM, when config.swim_udp_addr is set
        tracker.transition(Ready(len(node.metadata.topology.nodes())), detail=path.value)
        return node
    except BaseException as e:
        if swim_socket is not None:
            swim_socket.close()
        if not isinstance(tracker.state, Failed):
            reason = str(e) or type(e).__name__
            tracker.transition(Failed(reason, error=e), detail="start_cluster")
        if node is None and parts is not None:
            node = parts.made  # the path failed after making it: its engine may be open
        if node is not None:
            await node.shutdown()
            if node.failure is not None and isinstance(e, ClusterError):
                # What the formation step saw ("engine dropped the request") follows from why
                # the engine stopped: say that instead.
                raise EngineStopped(node.failure) from e
        else:
            if transport is not None:
                await transport.close()
            await asyncio.to_thread(catalog.close)
        raise


def _check_log_identity(config: ClusterConfig, catalog: Catalog) -> None:
    """Catalog and Raft log must belong to the same cluster and node (`log_identity`); a log
    without a catalog is never formed over. Acts on the verdict: stamp, or move aside."""
    data_dir = config.data_dir
    cluster_id = catalog.cluster_id()
    ours = None if cluster_id is None else LogIdentity(cluster_id, config.node_id)
    try:
        theirs = read_identity(data_dir)
    except LogIdentityError:
        if not config.rejoin:
            raise
        theirs, verdict = None, Verdict.DISCARD
    else:
        verdict = decide_log_identity(
            ours,
            theirs,
            has_raft_log(data_dir),
            rejoin=config.rejoin,
            force_bootstrap=config.force_bootstrap,
            catalog_path=catalog.path,
            data_dir=data_dir,
            log_opened=catalog.raft_log_opened(),
        )
    match verdict:
        case Verdict.PROCEED:
            return
        case Verdict.STAMP:
            assert ours is not None
            write_identity(data_dir, ours)
            log.info("recorded the Raft log's identity (%s) in %s", ours, identity_path(data_dir))
        case Verdict.DISCARD:
            moved = discard_raft_state(data_dir)
            log.warning(
                "moved this node's Raft state (log of %s) aside to %s (delete it once it is no "
                "longer needed); %s",
                theirs or "unknown identity",
                moved,
                "rejoining as a fresh replica" if config.rejoin else "bootstrapping a new cluster",
            )
            if ours is not None:
                write_identity(data_dir, ours)


def _count_join_attempts(tracker: LifecycleTracker) -> list[int]:
    """A one-cell counter of Joining transitions, for the `join_attempts` metric."""
    counter = [0]

    def observe(transition: Transition) -> None:
        if isinstance(transition.next, Joining):
            counter[0] += 1

    tracker.add_observer(observe)
    return counter


def credentials_of(config: ClusterConfig) -> Credentials:
    if config.insecure_transport:
        return Insecure()
    ca, cert, key = config.tls_ca_path, config.tls_cert_path, config.tls_key_path
    if ca is None or cert is None or key is None:  # ClusterConfig refuses this; keep mypy honest
        raise ClusterError("mTLS needs tls_ca_path, tls_cert_path and tls_key_path")
    crls = () if config.tls_crl_path is None else (config.tls_crl_path,)
    return Mtls(ca, cert, key, crls)


def raft_settings_of(config: ClusterConfig) -> RaftSettings:
    return RaftSettings(
        tick_interval_ms=config.tick_interval_ms,
        heartbeat_ticks=config.heartbeat_ticks,
        election_ticks=config.election_timeout_min_ticks,
        install_snapshot_chunk_bytes=config.install_snapshot_chunk_bytes,
        orphan_partial_max_age_secs=config.orphan_partial_max_age_secs,
        rejoin=config.rejoin,
        driver_stall_max_ms=config.driver_stall_max_ms,
    )


@dataclass(slots=True)
class _Parts:
    """What every formation path starts from, and the node it made (for the cleanup when the
    path fails after that: its engine holds the log's lock until shut down)."""

    config: ClusterConfig
    tracker: LifecycleTracker
    catalog: Catalog
    transport: Transport
    kind: StateMachineKind
    data_sm: DataStateMachineFactory | None
    stop: asyncio.Event | None
    made: Node | None = None

    def node(self, cluster_id: str, settings: Mapping[str, object]) -> Node:
        """The node, its config taking the cluster's recorded settings (`cluster_settings`)."""
        check_data_kind(self.config.node_id, self.kind, settings)
        config = adopt(self.config, settings)
        self.made = Node(config, self.tracker, self.catalog, self.transport, cluster_id, self.kind)
        return self.made


async def _open_engine(
    node: Node, initial: MetadataState, data_sm: DataStateMachineFactory | None
) -> RaftEngine:
    """The engine with group 0 applied by `MetadataGroup` and data groups by `data_sm` or KV."""
    loop = asyncio.get_running_loop()
    metadata = MetadataGroup(
        initial,
        _persist_to(node.catalog),
        loop,
        node.on_metadata_change,
        node.audit.append,
        on_no_space=node.on_catalog_no_space,
    )
    node.attach_metadata(metadata)

    def factory(group_id: int) -> StateMachine:
        if group_id == METADATA_GROUP_ID:
            return metadata
        if data_sm is None:
            raise CatalogError(f"group {group_id} asks for a Python state machine; none given")
        return data_sm(group_id)

    config = node.config
    open_engine = functools.partial(
        RaftEngine,
        config.node_id,
        config.data_dir,
        node.transport,
        factory,
        raft_settings_of(config),
    )
    try:
        engine = await asyncio.to_thread(open_engine)
    except (CorruptLog, CorruptSnapshot) as e:
        if not config.rejoin:
            raise
        # --rejoin: a log damaged before its tail is moved aside whole; every group is then
        # rejoined as a fresh replica (reconcile: ProposeDemotion, then CreateGroup).
        moved = await asyncio.to_thread(discard_raft_state, config.data_dir)
        log.warning("%s; moved the Raft state aside to %s, rejoining as a fresh replica", e, moved)
        identity = LogIdentity(node.cluster_id, config.node_id)
        await asyncio.to_thread(write_identity, config.data_dir, identity)
        engine = await asyncio.to_thread(open_engine)
    # The log exists now (its directory synced as it was made): from here a start that finds
    # none refuses, as a lost log (formation/log_identity.py).
    await asyncio.to_thread(node.catalog.mark_raft_log_opened)
    node.attach_engine(engine)
    return engine


async def _unless_stopped(joining: Awaitable[R], stop: asyncio.Event | None) -> R:
    """`joining`'s outcome, or `FormationStopped` once `stop` is set first (the join is
    cancelled: it has only sent requests and waited, nothing is written yet)."""
    if stop is None:
        return await joining
    join = asyncio.ensure_future(joining)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((join, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not join.done():  # stopped, or this start itself cancelled
            join.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await join
    if join.cancelled():
        raise FormationStopped()
    return join.result()


def _persist_to(catalog: Catalog) -> Callable[[MetadataState], None]:
    def persist(state: MetadataState) -> None:
        catalog.save_metadata_state(
            state.topology,
            state.routing,
            state.settings,
            state.applied_index,
            state.vshard_moves.encode(),
        )

    return persist


def _settings(raw: dict[str, object]) -> dict[str, SettingValue]:
    return {k: v for k, v in raw.items() if isinstance(v, str | int | float | bool)}


def _self_info(config: ClusterConfig, transport: Transport, groups: tuple[int, ...]) -> NodeInfo:
    return NodeInfo(
        config.node_id,
        config.listen_addr,
        NodeState.ACTIVE,
        wire.WIRE_VERSION,
        transport.spki_pin,
        config.swim_udp_addr,
        groups,
    )


async def _bootstrap(parts: _Parts) -> Node:
    config, catalog, transport = parts.config, parts.catalog, parts.transport
    cluster_id = uuid.uuid4().hex
    secret = secrets.token_bytes(CLUSTER_SECRET_BYTES)  # keys join tokens and SWIM; never logged
    routing = RoutingTable.bootstrap(config.num_groups, config.node_id)
    topology = Topology([_self_info(config, transport, routing.group_ids)])
    # The mark, the log's identity, then the catalog: a crash from here on restarts instead of
    # bootstrapping a second cluster, and that restart creates the groups this one did not.
    await asyncio.to_thread(write_mark, config.data_dir, cluster_id)
    await asyncio.to_thread(
        write_identity, config.data_dir, LogIdentity(cluster_id, config.node_id)
    )
    settings = founded_with(config, parts.kind)
    await asyncio.to_thread(catalog.save_formation, cluster_id, topology, routing, secret, settings)
    node = parts.node(cluster_id, settings)
    initial = MetadataState(topology, routing, settings, 0)
    engine = await _open_engine(node, initial, parts.data_sm)
    await _found_groups(node, engine, routing)
    log.info("bootstrapped cluster %s with %d data groups", cluster_id, config.num_groups)
    return node


async def _found_groups(node: Node, engine: RaftEngine, routing: RoutingTable) -> None:
    """Create each group of the bootstrap `routing` that the log does not hold, this node its
    one voter, and elect it; then remove the bootstrap's mark."""
    have = set(await engine.groups())
    for group_id in routing.group_ids:
        if group_id in have or routing.route(group_id).voters != (node.config.node_id,):
            continue
        await engine.add_group(group_id, [node.config.node_id], node.group_kind(group_id))
        await engine.campaign(group_id)  # a sole voter elects itself now, not after a timeout
    await asyncio.to_thread(clear_mark, node.config.data_dir)


async def _restart(parts: _Parts) -> Node:
    config, catalog = parts.config, parts.catalog
    formation = await asyncio.to_thread(catalog.load_formation)
    if formation is None:  # decide_formation saw a cluster id: only a concurrent wipe gets here
        raise CatalogError(f"catalog {catalog.path} lost its cluster id during restart")
    settings = await asyncio.to_thread(catalog.load_settings)
    applied = await asyncio.to_thread(catalog.load_metadata_applied_index)
    moves = await asyncio.to_thread(catalog.load_vshard_moves)
    initial = MetadataState(
        formation.topology,
        formation.routing,
        _settings(settings),
        applied,
        VShardMoves() if moves is None else VShardMoves.decode(moves),
    )
    own = formation.topology.get(config.node_id)
    if own is not None and own.state is NodeState.DECOMMISSIONED:
        refusal = retired_refusal(config.node_id, own.state, f"catalog {catalog.path}")
        assert refusal is not None
        raise refusal
    if own is not None and own.state is NodeState.DRAINING:  # it may have finished meanwhile
        send_status = status_sender(parts.transport.send_rpc_to_addr)
        refusal = await peers_verdict(config.node_id, formation.topology.nodes(), send_status)
        if refusal is not None:
            raise refusal
    data_groups = len(formation.routing.group_ids) - 1
    if config.num_groups > data_groups:
        log.warning(
            "num_groups %d is read when a cluster is bootstrapped only; this one has %d data "
            "groups: `nodedb-cluster add-groups` adds more",
            config.num_groups,
            data_groups,
        )
    pinned = None if own is None else own.spki_pin
    check_pinned_key(config, pinned, parts.transport.spki_pin, catalog.path)
    if own is not None and own.addr != config.listen_addr:
        _check_move(config, own.addr, formation.topology, catalog.path)
    node = parts.node(formation.cluster_id, initial.settings)
    node.register_peers(initial)
    # Peers still hold connections to our previous process: dialling them now makes them drop
    # those at once, so their Raft traffic (a leader's appends, a candidate's votes) reaches us.
    parts.transport.dial_peers()
    engine = await _open_engine(node, initial, parts.data_sm)  # every group, from the log
    for group_id in await engine.groups():
        if (await engine.status(group_id)).voters == (config.node_id,):
            await engine.campaign(group_id)  # a sole voter need not wait out an election timeout
    unfinished = await asyncio.to_thread(read_mark, config.data_dir)
    if unfinished is not None:
        if unfinished != formation.cluster_id:
            raise CatalogError(
                f"{mark_path(config.data_dir)} marks an unfinished bootstrap of cluster "
                f"{unfinished}, but catalog {catalog.path} is of cluster {formation.cluster_id}; "
                "refusing to start: delete the mark if every group of the routing exists here"
            )
        log.warning("the bootstrap of cluster %s did not finish: creating its groups", unfinished)
        await _found_groups(node, engine, formation.routing)
    await node.reconcile_once()  # groups routing gave us while we were down
    log.info("restarted node %d of cluster %s", config.node_id, formation.cluster_id)
    return node


def _check_move(
    config: ClusterConfig, recorded: SocketAddr, topology: Topology, path: Path
) -> None:
    """A member restarted at another address (a re-IPed host, a rescheduled pod) records it
    once it serves (`Node._record_own_addresses`; until group 0 applies it, its peers dial the
    old one). Refused if another member holds the new address."""
    holder = topology.by_addr(config.listen_addr)
    if holder is not None:
        raise ConfigError(
            "listen_addr",
            f"{config.listen_addr} belongs to node {holder.node_id} (catalog {path}); the "
            f"cluster knows node {config.node_id} at {recorded}",
        )
    log.warning(
        "node %d restarts at %s; the cluster knows it at %s: recording the new address "
        "through the metadata group (its peers reach it there once applied)",
        config.node_id,
        config.listen_addr,
        recorded,
    )


async def _join(parts: _Parts) -> Node:
    config, catalog, transport = parts.config, parts.catalog, parts.transport
    request = wire.JoinRequest(
        node_id=config.node_id,
        listen_addr=str(config.listen_addr),
        wire_version=wire.WIRE_VERSION,
        spki_pin=transport.spki_pin,
        swim_addr=None if config.swim_udp_addr is None else str(config.swim_udp_addr),
        join_token=config.join_token,
    )
    send = join_sender(transport, request)  # a fresh connection per request (docs/JOIN.md)
    tracker = parts.tracker
    if tracker.state != Starting():
        raise ClusterError(f"join from lifecycle {tracker.state}")
    # A node cannot join through itself: its own address in the seed list is skipped.
    seeds = [a for a in config.seed_nodes if a != config.listen_addr]
    response = await _unless_stopped(run_join(seeds, config.join_retry, send, tracker), parts.stop)
    state = decode_state(response.state)
    # Before anything is saved: the same node started the cluster's way joins again (its id
    # with its pinned key is answered as a member).
    check_data_kind(config.node_id, parts.kind, state.settings)
    # 1. Topology (own entry forced Active) and routing from the response.
    own = state.topology.get(config.node_id)
    topology = state.topology.copy()
    if own is not None and own.state is not NodeState.ACTIVE:
        topology.update(dataclasses.replace(own, state=NodeState.ACTIVE))
    state = dataclasses.replace(state, topology=topology)
    # 2. The log's identity and the catalog (with the cluster secret, when the admitting node
    # sent one) before any Raft state.
    await asyncio.to_thread(
        write_identity, config.data_dir, LogIdentity(response.cluster_id, config.node_id)
    )
    await asyncio.to_thread(
        catalog.save_formation,
        response.cluster_id,
        state.topology,
        state.routing,
        response.cluster_secret,
    )
    await asyncio.to_thread(_persist_to(catalog), state)
    node = parts.node(response.cluster_id, state.settings)
    # 3. The peers (Raft is taken only from registered members), 4. the groups this node
    # belongs to (empty learners the leaders fill).
    node.register_peers(state)
    transport.dial_peers()  # a rejoining node: peers drop connections to its previous process
    await _open_engine(node, state, parts.data_sm)
    await node.reconcile_once()
    log.info("joined cluster %s as node %d", response.cluster_id, config.node_id)
    return node
