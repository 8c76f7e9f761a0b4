"""A topology node for tests of the pure control-plane machines."""

from __future__ import annotations

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.topology import NodeInfo, NodeState


def node(node_id: int, port: int | None = None) -> NodeInfo:
    """ACTIVE node `node_id` at 127.0.0.<id>:<port or 9400>, wire version 1."""
    addr = parse_socket_addr(f"127.0.0.{node_id}:{port or 9400}")
    return NodeInfo(node_id, addr, NodeState.ACTIVE, 1)
