"""A decommissioned node's restart: refused, naming why, instead of coming up to nothing.

Decommissioning ends with the node holding no replica and out of group 0, so nobody tells it
anything again: restarted, it came up Ready, campaigned in the groups its stale log still
listed, forever, and served clients from a stale routing table. Its own catalog says so when it
applied its retirement before it stopped (DECOMMISSIONED); when it stopped while still
DRAINING, its peers know better, and a restart of a draining node asks them (the first that
answers `status`; none answering: it restarts to finish draining, as before).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

import msgpack

from nodedb_cluster import wire
from nodedb_cluster.errors import ClusterError, NodeRetired
from nodedb_cluster.topology import NodeInfo, NodeState

log = logging.getLogger(__name__)

WAY_BACK: Final = (
    "To run this machine again, move its data dir aside and join it as a new node (another "
    "--node-id and a join token)"
)

SendStatus = Callable[[str], Awaitable[bytes]]
"""STATUS_REQUEST to a peer's address -> its STATUS_RESPONSE payload (raises on failure)."""


def retired_refusal(node_id: int, state: NodeState | None, source: str) -> NodeRetired | None:
    """The refusal of a restart whose topology (as `source` has it) lists this node
    DECOMMISSIONED or not at all (None: it may restart)."""
    if state is NodeState.DECOMMISSIONED:
        return NodeRetired(
            f"node {node_id} was decommissioned ({source}): it holds no replica and takes no "
            f"part in the cluster, so it has nothing to serve; refusing to start. {WAY_BACK}"
        )
    if state is None:
        return NodeRetired(
            f"node {node_id} is no longer a member ({source}); refusing to start. {WAY_BACK}"
        )
    return None


async def peers_verdict(
    node_id: int, peers: Iterable[NodeInfo], send_status: SendStatus
) -> NodeRetired | None:
    """Ask the peers, in id order, for their status until one answers; the refusal its topology
    gives this node, None when it may restart or no peer answered."""
    for peer in sorted(peers, key=lambda n: n.node_id):
        if peer.node_id == node_id:
            continue
        try:
            doc = msgpack.unpackb(await send_status(str(peer.addr)), raw=False)
            listed = {int(n[0]): NodeState[str(n[2])] for n in doc["nodes"]}
        except (ClusterError, OSError, ValueError, KeyError, TypeError, IndexError) as e:
            log.info("node %d: peer %d gave no status (%s)", node_id, peer.node_id, e)
            continue
        if not listed:
            continue  # a peer still starting knows no topology
        return retired_refusal(node_id, listed.get(node_id), f"as node {peer.node_id} reports")
    return None


def status_sender(
    transport_rpc: Callable[[str, int, bytes], Awaitable[tuple[int, bytes]]],
) -> SendStatus:
    """`SendStatus` over a transport's `send_rpc_to_addr`."""

    async def send(addr: str) -> bytes:
        kind, payload = await transport_rpc(addr, wire.MessageKind.STATUS_REQUEST, b"")
        if kind != wire.MessageKind.STATUS_RESPONSE:
            raise ClusterError(f"{addr} answered status with kind {kind}")
        return payload

    return send
