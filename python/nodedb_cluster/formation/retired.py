"""A decommissioned node: a running one stops once retired, and a restart of one is refused.

Decommissioning ends with the node holding no replica and out of group 0, so nobody tells it
anything again. Left running, it served nothing and lingered; restarted, it came up Ready,
campaigned in the groups its stale log still listed, forever, and served clients from a stale
routing table. It learns of its retirement from its own group 0 replica (DECOMMISSIONED) or,
when that replica was let go before it heard (a node removed from a Raft group is not told the
entry that removed it), from its peers: the first that answers `status`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Final

import msgpack

from nodedb_cluster import wire
from nodedb_cluster.errors import ClusterError, NodeRetired
from nodedb_cluster.routing.table import METADATA_GROUP_ID
from nodedb_cluster.topology import NodeInfo, NodeState

log = logging.getLogger(__name__)

WAY_BACK: Final = (
    "To run this machine again, move its data dir aside and join it as a new node (another "
    "--node-id and a join token)"
)
RETIREMENT_POLL_S: Final = 0.5
"""How often a draining node looks at what it holds: the reconciler's own interval, at which it
drops the replicas this waits for."""
PEERS_ASKED_EVERY_S: Final = 5.0
"""A drained node whose group 0 view still says DRAINING asks a peer this often: one status
request per node being retired, for the seconds until it hears."""

SendStatus = Callable[[str], Awaitable[bytes]]
"""STATUS_REQUEST to a peer's address -> its STATUS_RESPONSE payload (raises on failure)."""


def retired_reason(node_id: int, state: NodeState | None, source: str) -> str | None:
    """Why a node whose topology (as `source` has it) lists it DECOMMISSIONED or not at all has
    nothing to serve; None while it is a member."""
    if state is NodeState.DECOMMISSIONED:
        return (
            f"node {node_id} was decommissioned ({source}): it holds no replica and takes no "
            f"part in the cluster, so it has nothing to serve"
        )
    if state is None:
        return f"node {node_id} is no longer a member ({source})"
    return None


def retired_refusal(node_id: int, state: NodeState | None, source: str) -> NodeRetired | None:
    """The refusal of a restart of a retired node (None: it may restart)."""
    reason = retired_reason(node_id, state, source)
    if reason is None:
        return None
    return NodeRetired(f"{reason}; refusing to start. {WAY_BACK}")


async def peers_reason(
    node_id: int, peers: Iterable[NodeInfo], send_status: SendStatus
) -> str | None:
    """Ask the peers, in id order, for their status until one answers; why its topology says
    this node is retired, None when it is a member there or no peer answered."""
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
        return retired_reason(node_id, listed.get(node_id), f"as node {peer.node_id} reports")
    return None


async def peers_verdict(
    node_id: int, peers: Iterable[NodeInfo], send_status: SendStatus
) -> NodeRetired | None:
    """The refusal of a restart the first answering peer's topology gives this node."""
    reason = await peers_reason(node_id, peers, send_status)
    return None if reason is None else NodeRetired(f"{reason}; refusing to start. {WAY_BACK}")


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


def drained(held: Collection[int]) -> bool:
    """A draining node holding at most its group 0 replica has nothing left to hand over: its
    retirement may have been applied where it could not hear of it. So may that of one no
    longer holding group 0 (a decommission removes it last), whatever stale replica it still
    runs: one removed while it could not hear is dropped only after `ORPHAN_AFTER_S` (30 s),
    and waiting for it kept a decommissioned node serving as long (embedding probe, session
    31)."""
    return set(held) <= {METADATA_GROUP_ID} or METADATA_GROUP_ID not in held


async def until_retired(
    node_id: int,
    own_state: Callable[[], NodeState | None],
    held: Callable[[], Awaitable[list[int]]],
    peers: Callable[[], Iterable[NodeInfo]],
    send_status: SendStatus,
) -> str | None:
    """Watch a draining node until it is retired; the reason it has nothing to serve. Once
    its retirement applied here it stops at once: group 0 retires a node only when routing
    places no replica on it, and every peer unregisters it as it applies the same entry
    (`Node.register_peers`), so whatever stale replica it still runs counts for nobody (waiting
    for their drops took 30-60 s). A drained node that never heard asks its peers. None once
    the node is no longer draining."""
    asked_at = -math.inf
    while True:
        state = own_state()
        if state not in (NodeState.DRAINING, NodeState.DECOMMISSIONED, None):
            return None
        reason = retired_reason(node_id, state, "as group 0 applied it here")
        if reason is not None:
            return reason
        replicas = await held()
        now = time.monotonic()
        if (
            state is NodeState.DRAINING
            and drained(replicas)
            and now - asked_at >= (PEERS_ASKED_EVERY_S)
        ):
            asked_at = now
            reason = await peers_reason(node_id, peers(), send_status)
            if reason is not None:
                return reason
        await asyncio.sleep(RETIREMENT_POLL_S)  # a bounded poll of the engine's groups
