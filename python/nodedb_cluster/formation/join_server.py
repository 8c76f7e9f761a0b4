"""The join server's decision (JOIN.md "Join (server side)"), as a pure function.

`decide_join` looks at one JoinRequest and this node's view of the cluster and says what to do:
reject (with the exact redirect text when another node leads the metadata group), answer with the
current state (an idempotent re-join), or propose one metadata entry that admits the node and makes
it a learner where placement wants it. The shell (in the node) carries the proposal through group 0,
waits until it is applied (bounded), and replies with the state that results.
"""

from __future__ import annotations

from dataclasses import dataclass

from nodedb_cluster.addr import SocketAddr, parse_socket_addr
from nodedb_cluster.errors import InvalidAddress
from nodedb_cluster.formation.leader_hint import format_not_leader
from nodedb_cluster.metadata.commands import AddNode, MetadataEntry
from nodedb_cluster.metadata.placement import plan_join
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.topology import SPKI_PIN_BYTES, NodeInfo, NodeState, Topology

NOT_LEADER_UNKNOWN = "not leader; leader unknown"


@dataclass(frozen=True, slots=True)
class JoinView:
    """What this node knows when a join request arrives."""

    is_metadata_leader: bool
    metadata_leader_addr: SocketAddr | None
    topology: Topology
    routing: RoutingTable
    replication_factor: int
    wire_version_min: int
    wire_version_max: int


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer `success=False` with exactly this text."""

    text: str


@dataclass(frozen=True, slots=True)
class AlreadyMember:
    """The node id is known with the same address: reply with the current state, propose nothing."""


@dataclass(frozen=True, slots=True)
class Admit:
    """Propose `entry` through the metadata group, wait until applied, then reply."""

    entry: MetadataEntry
    node: NodeInfo


JoinDecision = Reject | AlreadyMember | Admit


def decide_join(
    node_id: int,
    listen_addr: str,
    wire_version: int,
    spki_pin: bytes | None,
    view: JoinView,
    swim_addr: str | None = None,
) -> JoinDecision:
    """The decision for one join request, in the order JOIN.md lists the checks."""
    if not view.is_metadata_leader:
        if view.metadata_leader_addr is None:
            return Reject(NOT_LEADER_UNKNOWN)
        return Reject(format_not_leader(view.metadata_leader_addr))
    try:
        addr = parse_socket_addr(listen_addr)
    except InvalidAddress as e:
        return Reject(f"invalid listen address: {e}")
    if not view.wire_version_min <= wire_version <= view.wire_version_max:
        return Reject(
            f"wire version {wire_version} is not supported: this node speaks "
            f"{view.wire_version_min}..{view.wire_version_max}"
        )
    if not 1 <= node_id < 2**64:
        return Reject(f"invalid node id {node_id}")
    swim: SocketAddr | None = None
    if swim_addr is not None:
        try:
            swim = parse_socket_addr(swim_addr)
        except InvalidAddress as e:
            return Reject(f"invalid SWIM address: {e}")
    if spki_pin is not None and len(spki_pin) != SPKI_PIN_BYTES:
        return Reject(f"spki_pin must be {SPKI_PIN_BYTES} bytes, got {len(spki_pin)}")
    known = view.topology.get(node_id)
    if known is not None:
        if known.addr != addr:
            return Reject(f"node id {node_id} is already in use by {known.addr}")
        return AlreadyMember()
    holder = view.topology.by_addr(addr)
    if holder is not None:
        return Reject(f"address {addr} already belongs to node {holder.node_id}")
    node = NodeInfo(node_id, addr, NodeState.ACTIVE, wire_version, spki_pin, swim)
    changes = plan_join(view.routing, node_id, view.replication_factor)
    return Admit(MetadataEntry((AddNode(node), *changes)), node)
