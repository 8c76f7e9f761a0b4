"""A node's status: what `Node.status()` and the STATUS_REQUEST RPC report, and how it is read.

Assembled from the engine (per-group Raft state, KV digests), the applied metadata (topology,
routing, settings) and SWIM's view; kept apart from the node so the RPC, the CLI and the metrics
exporter share one shape.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import msgpack

from nodedb_cluster import wire
from nodedb_cluster.control import ControlHandler
from nodedb_cluster.errors import NotServing, UnknownGroup
from nodedb_cluster.lifecycle import LifecycleTracker
from nodedb_cluster.metadata.applier import MetadataState
from nodedb_cluster.metadata.commands import SettingValue
from nodedb_cluster.metadata.placement import filling_groups, replica_counts
from nodedb_cluster.metadata.vshard_moves import VShardMove
from nodedb_cluster.raft import GroupStatus, RaftEngine, StateMachineKind
from nodedb_cluster.routing.table import METADATA_GROUP_ID
from nodedb_cluster.transport import Handler, Peer, Reply
from nodedb_cluster.vshard_mover import MoveProgress

SwimView = tuple[int, str, int, int | None]
"""One SWIM member as status reports it: (node id, ALIVE|SUSPECT|DEAD|LEFT, incarnation, ms since
a datagram from it last arrived, None if none ever did)."""


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
    kv_bytes: dict[int, int] = field(default_factory=dict)
    """Bytes of keys, values and cached session results per local KV replica."""
    kv_sessions: dict[int, tuple[int, int]] = field(default_factory=dict)
    """(sessions kept, sessions evicted since the replica started or restored) per KV group."""
    kv_quota_bytes: int = 0
    """`ClusterConfig.kv_quota_bytes` of this node (0: none): a group at it takes only deletes."""
    members: tuple[SwimView, ...] = ()
    """SWIM's view: (node id, state name, incarnation, ms since its last datagram or None) per
    other node; () without SWIM."""
    no_space: str | None = None
    """Set while the node is NO_SPACE (writes refused, reads served): why; `Node.no_space`."""
    placement: tuple[tuple[int, int, int], ...] = ()
    """(node id, data-group replicas, data-group leaderships) per node, from routing."""
    moving: tuple[tuple[int, tuple[int, ...]], ...] = ()
    """(data group, learners) for each group with a replica move or a join in flight."""
    vshard_moves: tuple[tuple[int, int, int, int, str, int, int], ...] = ()
    """(vShard, source, target, move id, phase, chunks imported, chunks) per vShard move in
    flight; phase and chunks only on the node that runs the move (the source's leader), else
    phase "elsewhere"."""
    elsewhere: tuple[tuple[int, int, tuple[int, ...], tuple[int, ...]], ...] = ()
    """(group, leader as routing records it or 0, voters, learners) for each group in the
    routing table that this node holds no replica of: the rest of the cluster, as group 0
    sees it."""

    def dead_nodes(self) -> set[int]:
        """The nodes SWIM declares DEAD: the topology still lists them ACTIVE and voting (only an
        operator removes a member), so status must say it."""
        return {m[0] for m in self.members if m[1] == "DEAD"}

    def to_doc(self) -> dict[str, object]:
        dead = self.dead_nodes()
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
            "kv_quota_bytes": self.kv_quota_bytes,
            "placement": [list(p) for p in self.placement],
            "moving": [[g, list(learners)] for g, learners in self.moving],
            "vshard_moves": [list(m) for m in self.vshard_moves],
            "elsewhere": [
                {
                    "group_id": g,
                    "leader": leader,
                    "voters": list(voters),
                    "learners": list(learners),
                    "vshards": self.vshards_per_group.get(g, 0),
                    "dead": _dead_among(dead, voters, learners),
                }
                for g, leader, voters, learners in self.elsewhere
            ],
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
                    "kv_bytes": self.kv_bytes.get(g.group_id),
                    "kv_sessions": list(self.kv_sessions.get(g.group_id, ())),
                    "dead": _dead_among(dead, g.voters, g.learners),
                }
                for g in self.groups
            ],
        }


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """The parts of a status that are not read from the engine or the metadata."""

    node_id: int
    cluster_id: str
    lifecycle: str
    members: tuple[SwimView, ...]
    no_space: str | None
    kv_quota_bytes: int = 0


async def collect_status(
    who: NodeIdentity,
    state: MetadataState,
    engine: RaftEngine,
    group_kind: Callable[[int], StateMachineKind],
    move_progress: Mapping[int, MoveProgress] | None = None,
) -> NodeStatus:
    """Read every local group's Raft state (a group removed meanwhile is left out);
    `move_progress`: the vShard moves this node runs, by vShard."""
    groups = await engine.statuses()
    kv_digests: dict[int, tuple[int, int, int]] = {}
    kv_bytes: dict[int, int] = {}
    kv_sessions: dict[int, tuple[int, int]] = {}
    for s in groups:
        if group_kind(s.group_id) == "kv":
            with contextlib.suppress(UnknownGroup):
                kv = engine.kv_summary(s.group_id)
                kv_digests[s.group_id] = kv.digest_triple()
                kv_bytes[s.group_id] = kv.usage_bytes
                kv_sessions[s.group_id] = (kv.sessions, kv.sessions_evicted)
    counts: dict[int, int] = {}
    for group_id in state.routing.vshard_to_group.tolist():
        counts[group_id] = counts.get(group_id, 0) + 1
    return NodeStatus(
        node_id=who.node_id,
        lifecycle=who.lifecycle,
        cluster_id=who.cluster_id,
        topology_version=state.topology.version,
        routing_epoch=state.routing.epoch,
        metadata_applied_index=state.applied_index,
        nodes=tuple((n.node_id, str(n.addr), n.state.name) for n in state.topology.nodes()),
        groups=tuple(groups),
        vshards_per_group=counts,
        settings=dict(state.settings),
        kv_digests=kv_digests,
        kv_bytes=kv_bytes,
        kv_sessions=kv_sessions,
        kv_quota_bytes=who.kv_quota_bytes,
        members=who.members,
        no_space=who.no_space,
        placement=placement_of(state),
        moving=tuple((g, state.routing.route(g).learners) for g in filling_groups(state.routing)),
        vshard_moves=tuple(
            _move_row(m, (move_progress or {}).get(m.vshard)) for m in state.vshard_moves
        ),
        elsewhere=elsewhere_of(state, {g.group_id for g in groups}),
    )


def _move_row(
    move: VShardMove, progress: MoveProgress | None
) -> tuple[int, int, int, int, str, int, int]:
    if progress is None or progress.move.move_id != move.move_id:
        return (move.vshard, move.source, move.target, move.move_id, "elsewhere", 0, 0)
    return (
        move.vshard,
        move.source,
        move.target,
        move.move_id,
        progress.phase,
        progress.chunks_done,
        progress.chunks,
    )


def _dead_among(dead: set[int], voters: tuple[int, ...], learners: tuple[int, ...]) -> list[int]:
    """The members of a group SWIM declares DEAD, ascending."""
    return sorted(dead.intersection((*voters, *learners)))


def elsewhere_of(
    state: MetadataState, local: set[int]
) -> tuple[tuple[int, int, tuple[int, ...], tuple[int, ...]], ...]:
    """The routing table's groups with no replica in `local`, each as `NodeStatus.elsewhere`."""
    routes = (state.routing.route(g) for g in state.routing.group_ids if g not in local)
    return tuple((r.group_id, r.leader, r.voters, r.learners) for r in routes)


def placement_of(state: MetadataState) -> tuple[tuple[int, int, int], ...]:
    """(node id, data-group replicas, data-group leaderships) per topology node."""
    routing = state.routing
    replicas = replica_counts(routing)
    leads = Counter(routing.route(g).leader for g in routing.group_ids if g != METADATA_GROUP_ID)
    return tuple((n.node_id, replicas[n.node_id], leads[n.node_id]) for n in state.topology.nodes())


def status_handler(status: Callable[[], Awaitable[NodeStatus]]) -> ControlHandler:
    """STATUS_REQUEST -> STATUS_RESPONSE: `status()` as a msgpack map (`NodeStatus.to_doc`)."""

    async def on_status(peer: Peer, payload: bytes) -> Reply:
        packed = msgpack.packb((await status()).to_doc(), use_bin_type=True)
        return wire.MessageKind.STATUS_RESPONSE, bytes(packed)

    return on_status


def forming_status(node_id: int, lifecycle: LifecycleTracker) -> NodeStatus:
    """What a node that is not Ready yet can say: who it is and how far its start got."""
    return NodeStatus(
        node_id=node_id,
        lifecycle=lifecycle.state.label,
        cluster_id="",
        topology_version=0,
        routing_epoch=0,
        metadata_applied_index=0,
        nodes=(),
        groups=(),
        vshards_per_group={},
        settings={},
    )


def forming_handler(node_id: int, lifecycle: LifecycleTracker) -> Handler:
    """What a node's transport answers from its bind until the node serves (`Node.serve`):
    `status` with the lifecycle (a join may wait minutes for its seeds, and says so), and
    `NotServing` to everything else."""

    async def current() -> NodeStatus:
        return forming_status(node_id, lifecycle)

    on_status = status_handler(current)

    async def answer(peer: Peer, kind: int, payload: bytes) -> Reply:
        if kind == wire.MessageKind.STATUS_REQUEST:
            return await on_status(peer, payload)
        raise NotServing(
            f"node {node_id} is {lifecycle.state.label}: it serves requests once it is ready"
        )

    return answer
