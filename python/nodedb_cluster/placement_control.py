"""PLACEMENT_REQUEST (admins only, by the kind table): start a decommission, or rebalance now or
as a dry run. Any node answers; a decommission is a metadata entry (forwarded to group 0's
leader), after which the rebalancer moves the node's replicas off and retires it.

    {op: "decommission", node_id: u64}   -> {node_id, state: "DRAINING"}
    {op: "rebalance", dry_run: bool}      -> {moves: [{move: name, ...fields}], held: [str],
                                              started: bool}
    {op: "move_vshard", vshard: u16, to_group: u64, wait_ms: u32 = 0}
                                          -> {vshard, source, target, move_id, outcome}: begun in
                                             group 0; the source group's leader carries it out;
                                             with wait_ms the answer waits (bounded) for the end:
                                             outcome "moved", "aborted" or "running"
    {op: "add_groups", count: u32}        -> {groups: [[group, [voter], [learners]]]}: new data
                                             groups, each bootstrapped by its first member and
                                             joined by the others; the rebalancer then moves
                                             vShards into them
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from nodedb_cluster import wire
from nodedb_cluster.config import ClusterConfig
from nodedb_cluster.errors import InvalidRequest
from nodedb_cluster.metadata.applier import MetadataState
from nodedb_cluster.metadata.commands import BeginVShardMove, MetadataEntry, SetNodeState
from nodedb_cluster.metadata.placement import plan_new_groups
from nodedb_cluster.metadata.rebalance import Plan, decommission_refusal
from nodedb_cluster.rebalancer import Rebalancer
from nodedb_cluster.routing.vshard import NUM_VSHARDS
from nodedb_cluster.topology import NodeState
from nodedb_cluster.transport import Peer, Reply

log = logging.getLogger(__name__)

MOVE_WAIT_MS_MAX = 600_000
ADD_GROUPS_MAX = 1024
"""Groups one request may add (the routing table holds 4096 in all)."""


def encode_placement_request(op: str, **fields: object) -> bytes:
    return bytes(msgpack.packb({"op": op, **fields}))


def plan_doc(planned: Plan, started: bool) -> dict[str, Any]:
    return {
        "moves": [{"move": type(m).__name__, **dataclasses.asdict(m)} for m in planned.moves],
        "held": list(planned.held),
        "started": started,
    }


class PlacementControl:
    def __init__(
        self,
        config: ClusterConfig,
        metadata: Callable[[], MetadataState],
        rebalancer: Rebalancer,
        propose: Callable[[MetadataEntry], Awaitable[str | None]],
    ) -> None:
        self._config = config
        self._metadata = metadata
        self._rebalancer = rebalancer
        self._propose = propose
        self._changed = asyncio.Event()
        """Set (and replaced) each time group 0 applied something here."""

    def metadata_changed(self) -> None:
        """Group 0 applied something on this node (`Node.on_metadata_change`): wakes requests
        waiting for a move's end."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def on_request(self, peer: Peer, payload: bytes) -> Reply:
        doc = wire.decode_map(payload, "placement request")
        match doc.get("op"):
            case "decommission":
                node_id = doc.get("node_id")
                if isinstance(node_id, bool) or not isinstance(node_id, int):
                    raise InvalidRequest(f"decommission node_id {node_id!r} is not an integer")
                answer = await self._decommission(peer, node_id)
            case "rebalance":
                dry_run = doc.get("dry_run", False)
                if not isinstance(dry_run, bool):
                    raise InvalidRequest(f"rebalance dry_run {dry_run!r} is not a boolean")
                planned = await self._rebalancer.rebalance_once(dry_run=dry_run)
                answer = plan_doc(planned, not dry_run)
            case "move_vshard":
                vshard, to_group = doc.get("vshard"), doc.get("to_group")
                wait_ms = doc.get("wait_ms", 0)
                if type(vshard) is not int or type(to_group) is not int:
                    raise InvalidRequest("move_vshard needs integer vshard and to_group")
                if type(wait_ms) is not int or not 0 <= wait_ms <= MOVE_WAIT_MS_MAX:
                    raise InvalidRequest(f"move_vshard wait_ms must be 0..{MOVE_WAIT_MS_MAX}")
                answer = await self._move_vshard(peer, vshard, to_group)
                if wait_ms and answer["move_id"]:
                    answer["outcome"] = await self._move_outcome(
                        vshard, answer["move_id"], to_group, wait_ms / 1000
                    )
            case "add_groups":
                count = doc.get("count")
                if type(count) is not int or not 1 <= count <= ADD_GROUPS_MAX:
                    raise InvalidRequest(f"add_groups count must be 1..{ADD_GROUPS_MAX}")
                answer = await self._add_groups(peer, count)
            case other:
                raise InvalidRequest(f"unknown placement op {other!r}")
        return wire.MessageKind.PLACEMENT_RESPONSE, bytes(msgpack.packb(answer))

    async def _move_vshard(self, peer: Peer, vshard: int, to_group: int) -> dict[str, Any]:
        if not 0 <= vshard < NUM_VSHARDS:
            raise InvalidRequest(f"vshard {vshard} is not in 0..{NUM_VSHARDS - 1}")
        if not self._rebalancer.vshards_movable:
            raise InvalidRequest(
                f"move of vshard {vshard} refused: this cluster's data groups run the host's "
                "state machine, which cannot move vShards between groups"
            )
        source = self._metadata().routing.group_for_vshard(vshard)
        begin = BeginVShardMove(
            vshard, source, to_group, self._config.rebalance_concurrent_moves_max
        )
        refused = await self._propose(MetadataEntry((begin,), peer.identity))
        if refused is not None:
            raise InvalidRequest(f"move of vshard {vshard} refused: {refused}")
        move = self._metadata().vshard_moves.get(vshard)
        log.info(
            "vshard %d: move from group %d to group %d begun (asked by %s)",
            vshard,
            source,
            to_group,
            peer.identity,
        )
        return {
            "vshard": vshard,
            "source": source,
            "target": to_group,
            "move_id": 0 if move is None else move.move_id,  # 0: already over when read
        }

    async def _add_groups(self, peer: Peer, count: int) -> dict[str, Any]:
        state = self._metadata()
        commands = plan_new_groups(
            state.topology,
            state.routing,
            count,
            self._config.replication_factor,
            self._rebalancer.dead(),
        )
        refused = await self._propose(MetadataEntry(tuple(commands), peer.identity))
        if refused is not None:
            raise InvalidRequest(f"adding {count} groups refused: {refused}")
        log.info(
            "added data groups %s (asked by %s)", [c.group_id for c in commands], peer.identity
        )
        return {"groups": [[c.group_id, list(c.voters), list(c.learners)] for c in commands]}

    async def _move_outcome(self, vshard: int, move_id: int, to_group: int, wait_s: float) -> str:
        """How move `move_id` ended, as this node's replica of group 0 says, once it ended or
        `wait_s` passed ("running"). Reads local state only (no RPC), again after each change
        group 0 applies here."""
        deadline = time.monotonic() + wait_s
        while True:
            changed = self._changed  # taken before the state is read: no change is missed
            state = self._metadata()
            move = state.vshard_moves.get(vshard)
            if move is None or move.move_id != move_id:
                moved = state.routing.group_for_vshard(vshard) == to_group
                return "moved" if moved else "aborted"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "running"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    async def _decommission(self, peer: Peer, node_id: int) -> dict[str, Any]:
        state = self._metadata()
        node = state.topology.get(node_id)
        if node is not None and node.state is NodeState.DRAINING:
            return {"node_id": node_id, "state": "DRAINING"}  # asked again: already under way
        refusal = decommission_refusal(
            state.topology, state.routing, node_id, self._config.replication_factor
        )
        if refusal is not None:
            raise InvalidRequest(refusal)
        refused = await self._propose(
            MetadataEntry((SetNodeState(node_id, NodeState.DRAINING),), peer.identity)
        )
        if refused is not None:
            raise InvalidRequest(f"decommission of node {node_id} refused: {refused}")
        log.info("node %d is draining (decommission asked by %s)", node_id, peer.identity)
        return {"node_id": node_id, "state": "DRAINING"}
