"""Cluster topology: which nodes exist, where they listen, what state they are in.

The topology travels in JoinResponses and is persisted in the catalog, so it has one wire form:
MessagePack with named fields (docs/WIRE.md), nodes sorted by id, fields in a fixed order, so the
same topology always encodes to the same bytes. Decoding trusts nothing: every field is type- and
range-checked and any defect is a `MalformedTopology` that says where. Unknown fields are ignored,
so a newer node may add one without breaking older readers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Final, Self

import msgpack

from nodedb_cluster.addr import SocketAddr, parse_socket_addr
from nodedb_cluster.errors import (
    InvalidAddress,
    MalformedTopology,
    TopologyError,
    UnknownNode,
    UnknownNodeState,
)

U64_MAX: Final = 2**64 - 1
WIRE_VERSION_MAX: Final = 2**16 - 1
"""Wire versions are u16 on the wire (JoinRequest, topology)."""
SPKI_PIN_BYTES: Final = 32
"""A pin is the SHA-256 of the peer's SubjectPublicKeyInfo (docs/WIRE.md)."""
NODES_MAX: Final = 4096
"""Far above any cluster we plan for; a bound so a hostile peer cannot make us allocate at will."""
RAFT_GROUPS_PER_NODE_MAX: Final = 1025
"""Group 0 plus at most 1024 data groups (ClusterConfig.num_groups <= 1024)."""
ENCODED_BYTES_MAX: Final = 16 * 1024 * 1024
"""4096 nodes with 1025 groups each stay well below this."""
TOPOLOGY_FORMAT: Final = 1
"""Version of the encoded layout; bumped only for a change old readers must not misread."""


class NodeState(IntEnum):
    """A node's membership state; the numbers are the stable wire codes of docs/WIRE.md."""

    JOINING = 0
    ACTIVE = 1
    DRAINING = 2
    DECOMMISSIONED = 3
    LEARNER = 4

    @classmethod
    def from_code(cls, code: int) -> NodeState:
        """The state for a wire code; anything outside the table raises `UnknownNodeState`."""
        if isinstance(code, bool) or not isinstance(code, int):
            raise UnknownNodeState(code)
        try:
            return cls(code)
        except ValueError:
            raise UnknownNodeState(code) from None


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One member of the cluster."""

    node_id: int
    """Non-zero u64, unique for the cluster's life."""
    addr: SocketAddr
    """QUIC listen address."""
    state: NodeState
    wire_version: int
    """The node's wire protocol version (u16)."""
    spki_pin: bytes | None = None
    """SHA-256 of the node's SubjectPublicKeyInfo under mTLS; None on insecure transport."""
    swim_addr: SocketAddr | None = None
    """SWIM UDP address, when the node runs SWIM."""
    raft_groups: tuple[int, ...] = ()
    """Raft groups the node is a member of (voter or learner), ascending, no duplicates."""

    def __post_init__(self) -> None:
        _check_u64("node_id", self.node_id, lo=1)
        if not isinstance(self.addr, SocketAddr):
            raise TopologyError(f"node {self.node_id}: addr must be a SocketAddr")
        if not isinstance(self.state, NodeState):
            raise TopologyError(f"node {self.node_id}: state must be a NodeState")
        _check_int_range("wire_version", self.wire_version, 0, WIRE_VERSION_MAX)
        if self.spki_pin is not None and (
            not isinstance(self.spki_pin, bytes) or len(self.spki_pin) != SPKI_PIN_BYTES
        ):
            raise TopologyError(f"node {self.node_id}: spki_pin must be {SPKI_PIN_BYTES} bytes")
        if self.swim_addr is not None and not isinstance(self.swim_addr, SocketAddr):
            raise TopologyError(f"node {self.node_id}: swim_addr must be a SocketAddr")
        groups = tuple(self.raft_groups)
        if len(groups) > RAFT_GROUPS_PER_NODE_MAX:
            raise TopologyError(f"node {self.node_id}: more than {RAFT_GROUPS_PER_NODE_MAX} groups")
        for g in groups:
            _check_u64("raft_groups[]", g, lo=0)
        if len(set(groups)) != len(groups):
            raise TopologyError(f"node {self.node_id}: raft_groups has duplicates")
        object.__setattr__(self, "raft_groups", tuple(sorted(groups)))


class Topology:
    """Nodes by id plus a `version` that grows by one on every change (never on a no-op)."""

    __slots__ = ("_nodes", "_version")

    def __init__(self, nodes: Iterable[NodeInfo] = (), version: int = 0) -> None:
        _check_u64("version", version, lo=0)
        self._version = version
        self._nodes: dict[int, NodeInfo] = {}
        for node in nodes:
            self._check_new(node)
            self._nodes[node.node_id] = node
        if len(self._nodes) > NODES_MAX:
            raise TopologyError(f"more than {NODES_MAX} nodes")

    # --- reads -----------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self._version

    def get(self, node_id: int) -> NodeInfo | None:
        return self._nodes.get(node_id)

    def __getitem__(self, node_id: int) -> NodeInfo:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise UnknownNode(node_id) from None

    def by_addr(self, addr: SocketAddr) -> NodeInfo | None:
        """The node listening on `addr`, if any (join uses it to catch node-id reuse)."""
        return next((n for n in self._nodes.values() if n.addr == addr), None)

    def nodes(self) -> tuple[NodeInfo, ...]:
        """Every node, ascending by id."""
        return tuple(self._nodes[i] for i in sorted(self._nodes))

    def node_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self._nodes))

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[NodeInfo]:
        return iter(self.nodes())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Topology):
            return NotImplemented
        return self._version == other._version and self._nodes == other._nodes

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Topology(version={self._version}, nodes={list(self.nodes())!r})"

    def copy(self) -> Topology:
        return Topology(self._nodes.values(), self._version)

    # --- changes (each bumps the version once) ---------------------------------------------------

    def add(self, node: NodeInfo) -> None:
        """Add a new node; its id and address must both be new."""
        self._check_new(node)
        if len(self._nodes) >= NODES_MAX:
            raise TopologyError(f"topology is full ({NODES_MAX} nodes)")
        self._nodes[node.node_id] = node
        self._version += 1

    def update(self, node: NodeInfo) -> bool:
        """Replace an existing node's entry; returns whether anything changed."""
        if not isinstance(node, NodeInfo):
            raise TopologyError(f"expected a NodeInfo, got {type(node).__name__}")
        old = self[node.node_id]
        if old == node:
            return False
        other = self.by_addr(node.addr)
        if other is not None and other.node_id != node.node_id:
            raise TopologyError(f"address {node.addr} already belongs to node {other.node_id}")
        self._nodes[node.node_id] = node
        self._version += 1
        return True

    def set_state(self, node_id: int, state: NodeState) -> bool:
        """Change one node's state; returns whether anything changed."""
        return self.update(replace(self[node_id], state=NodeState.from_code(state)))

    def remove(self, node_id: int) -> NodeInfo:
        """Remove a node and return its last entry."""
        node = self[node_id]
        del self._nodes[node_id]
        self._version += 1
        return node

    def _check_new(self, node: NodeInfo) -> None:
        if not isinstance(node, NodeInfo):
            raise TopologyError(f"expected a NodeInfo, got {type(node).__name__}")
        if node.node_id in self._nodes:
            raise TopologyError(f"node {node.node_id} is already in the topology")
        other = self.by_addr(node.addr)
        if other is not None:
            raise TopologyError(f"address {node.addr} already belongs to node {other.node_id}")

    # --- wire form -------------------------------------------------------------------------------

    def encode(self) -> bytes:
        """Stable MessagePack bytes: same topology, same bytes."""
        doc = {
            "format": TOPOLOGY_FORMAT,
            "version": self._version,
            "nodes": [node_to_doc(n) for n in self.nodes()],
        }
        packed = msgpack.packb(doc, use_bin_type=True)
        assert isinstance(packed, bytes)
        return packed

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse `encode()` output; any defect raises `MalformedTopology` naming what is wrong."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise MalformedTopology(f"expected bytes, got {type(data).__name__}")
        if len(data) > ENCODED_BYTES_MAX:
            raise MalformedTopology(f"{len(data)} bytes exceeds the {ENCODED_BYTES_MAX} byte bound")
        try:
            doc = msgpack.unpackb(
                data,
                raw=False,
                use_list=True,
                strict_map_key=True,
                max_array_len=max(NODES_MAX, RAFT_GROUPS_PER_NODE_MAX),
                max_map_len=64,
            )
        except (ValueError, msgpack.UnpackException) as e:
            # msgpack reports truncation, extra data, bad UTF-8 and limit breaches as ValueError.
            raise MalformedTopology(f"not valid MessagePack: {e}") from e
        root = _Fields(doc, "topology")
        fmt = root.integer("format", 0, 2**32 - 1)
        if fmt != TOPOLOGY_FORMAT:
            raise MalformedTopology(f"format {fmt} is not the supported {TOPOLOGY_FORMAT}")
        version = root.integer("version", 0, U64_MAX)
        raw_nodes = root.array("nodes")
        if len(raw_nodes) > NODES_MAX:
            raise MalformedTopology(f"{len(raw_nodes)} nodes exceeds the bound {NODES_MAX}")
        nodes = [node_from_doc(raw, f"nodes[{i}]") for i, raw in enumerate(raw_nodes)]
        try:
            return cls(nodes, version)
        except TopologyError as e:
            raise MalformedTopology(str(e)) from e


# --- helpers --------------------------------------------------------------------------------------


def node_to_doc(node: NodeInfo) -> dict[str, object]:
    return {
        "node_id": node.node_id,
        "addr": str(node.addr),
        "state": int(node.state),
        "wire_version": node.wire_version,
        "spki_pin": node.spki_pin,
        "swim_addr": None if node.swim_addr is None else str(node.swim_addr),
        "raft_groups": list(node.raft_groups),
    }


def node_from_doc(raw: object, where: str) -> NodeInfo:
    f = _Fields(raw, where)
    node_id = f.integer("node_id", 1, U64_MAX)
    addr = f.addr("addr")
    try:
        state = NodeState.from_code(f.integer("state", 0, 2**32 - 1))
    except UnknownNodeState as e:
        raise MalformedTopology(f"{where}.state: {e}") from e
    wire_version = f.integer("wire_version", 0, WIRE_VERSION_MAX)
    pin = f.optional_bytes("spki_pin")
    swim_addr = f.optional_addr("swim_addr")
    groups = f.array("raft_groups")
    group_ids = tuple(
        _int_in(g, f"{where}.raft_groups[{i}]", 0, U64_MAX) for i, g in enumerate(groups)
    )
    try:
        return NodeInfo(node_id, addr, state, wire_version, pin, swim_addr, group_ids)
    except TopologyError as e:
        raise MalformedTopology(f"{where}: {e}") from e


class _Fields:
    """Typed access to one decoded MessagePack map; every miss names its path."""

    def __init__(self, raw: object, where: str) -> None:
        if not isinstance(raw, Mapping):
            raise MalformedTopology(f"{where}: expected a map, got {type(raw).__name__}")
        self._raw = raw
        self._where = where

    def _get(self, key: str, *, required: bool = True) -> object:
        if key not in self._raw:
            if required:
                raise MalformedTopology(f"{self._where}.{key}: missing")
            return None
        return self._raw[key]

    def integer(self, key: str, lo: int, hi: int) -> int:
        return _int_in(self._get(key), f"{self._where}.{key}", lo, hi)

    def array(self, key: str) -> list[object]:
        value = self._get(key)
        if not isinstance(value, list):
            raise MalformedTopology(f"{self._where}.{key}: expected a list")
        return value

    def addr(self, key: str) -> SocketAddr:
        value = self._get(key)
        if not isinstance(value, str):
            raise MalformedTopology(f"{self._where}.{key}: expected an address string")
        try:
            return parse_socket_addr(value)
        except InvalidAddress as e:
            raise MalformedTopology(f"{self._where}.{key}: {e}") from e

    def optional_addr(self, key: str) -> SocketAddr | None:
        return None if self._get(key, required=False) is None else self.addr(key)

    def optional_bytes(self, key: str) -> bytes | None:
        value = self._get(key, required=False)
        if value is not None and not isinstance(value, bytes):
            raise MalformedTopology(f"{self._where}.{key}: expected bytes")
        return value


def _int_in(value: object, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedTopology(f"{where}: expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise MalformedTopology(f"{where}: {value} is outside {lo}..{hi}")
    return value


def _check_u64(name: str, value: object, lo: int) -> None:
    _check_int_range(name, value, lo, U64_MAX)


def _check_int_range(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TopologyError(f"{name} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise TopologyError(f"{name} {value} is outside {lo}..{hi}")
