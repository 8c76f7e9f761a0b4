"""The rebalancer's shell: plans on a timer (`metadata/rebalance.py`, pure) and carries out the
moves of the groups this node leads (issue 16).

Every node plans from the same routing table and acts only for the groups it leads, so each move
is started once, by the node that sees its progress. A replica move becomes `AddGroupLearner`
with room for one member beyond RF; the group's leader later puts the caught-up learner in a
voter's place (`reconcile.ProposeReplacement`). Leaderships are balanced by the reconciler
(`balance_leaders`). A vShard move becomes `BeginVShardMove` in group 0, which the source
group's leader carries out (`vshard_mover.py`). Nothing is remembered between rounds: a crash,
a lost proposal or a new leader only delays the next plan, made again from the routing table
the moves so far produced. A round that started moves is followed by the next after
`REPLAN_AFTER_MOVES_S` instead of the full interval, so filling new groups (hundreds of vShard
moves, a few at a time) does not take hundreds of intervals.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from nodedb_cluster.errors import ClusterError, EngineStopped, UnknownGroup
from nodedb_cluster.membership import MemberChanged, MemberState
from nodedb_cluster.metadata.commands import (
    AddGroupLearner,
    BeginVShardMove,
    MetadataEntry,
    RemoveGroupMember,
    SetNodeState,
)
from nodedb_cluster.metadata.rebalance import (
    ClusterLoad,
    Limits,
    MoveReplica,
    MoveVShard,
    Plan,
    cluster_load,
    plan,
    retirements,
    unmovable_moves,
)
from nodedb_cluster.metadata.vshard_moves import VShardMove
from nodedb_cluster.raft import RaftEngine
from nodedb_cluster.routing.table import METADATA_GROUP_ID, RoutingTable
from nodedb_cluster.topology import NodeState, Topology

log = logging.getLogger(__name__)

REPLAN_AFTER_MOVES_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class RebalancePolicy:
    """The configuration a round reads (`ClusterConfig.rebalance_*`, `dead_node_grace_s`)."""

    node_id: int
    replication_factor: int
    interval_s: float
    """Between plans; 0 turns the rebalancer off."""
    dead_grace_s: float
    rpc_timeout_ms: int
    limits: Limits = field(default_factory=Limits)


class Rebalancer:
    def __init__(
        self,
        policy: RebalancePolicy,
        engine: Callable[[], RaftEngine],
        routing: Callable[[], RoutingTable],
        topology: Callable[[], Topology],
        propose: Callable[[MetadataEntry], Awaitable[str | None]],
        clock: Callable[[], float] = time.monotonic,
        vshard_moves: Callable[[], list[VShardMove]] = list,
        vshard_bytes: Callable[[], dict[int, int] | None] = lambda: None,
    ) -> None:
        self._policy = policy
        self._engine = engine
        self._routing = routing
        self._topology = topology
        self._propose = propose
        self._clock = clock
        self._vshard_moves = vshard_moves
        """vShard moves in flight (group 0's record)."""
        self._vshard_bytes = vshard_bytes
        """Bytes per vShard of every data group, or None when this node cannot see them all."""
        self._dead_since: dict[int, float] = {}

    def on_member_changed(self, event: MemberChanged) -> None:
        """SWIM's verdicts: how long each node has been dead decides when it is replaced."""
        if event.state in (MemberState.DEAD, MemberState.LEFT):
            self._dead_since.setdefault(event.node_id, self._clock())
        else:
            self._dead_since.pop(event.node_id, None)

    def dead(self) -> frozenset[int]:
        """Nodes SWIM declares dead (or left) now: no new replica goes there."""
        return frozenset(self._dead_since)

    @property
    def vshards_movable(self) -> bool:
        """Whether this cluster's data groups can hand vShards over (`Limits.vshards_movable`)."""
        return self._policy.limits.vshards_movable

    def leaving(self) -> frozenset[int]:
        """Nodes whose replicas move off now (draining, or dead past the grace)."""
        return self._load(self._routing(), with_bytes=False).leaving

    def _load(self, routing: RoutingTable, *, with_bytes: bool = True) -> ClusterLoad:
        now = self._clock()
        dead_for = {n: now - since for n, since in self._dead_since.items()}
        load = cluster_load(
            self._topology(),
            routing,
            dead_for,
            self._policy.dead_grace_s,
            len(self._vshard_moves()),
        )
        sizes = self._vshard_bytes() if with_bytes else None
        if sizes is None:
            return load
        group_bytes: dict[int, int] = {}
        for vshard, group in enumerate(routing.vshard_to_group.tolist()):
            group_bytes[group] = group_bytes.get(group, 0) + sizes.get(vshard, 0)
        return dataclasses.replace(load, group_bytes=group_bytes, vshard_bytes=sizes)

    async def run(self) -> None:
        """Plans every `interval_s` until the engine stops or the task is cancelled."""
        if self._policy.interval_s <= 0:
            return
        period = self._policy.interval_s
        while True:
            await asyncio.sleep(period)  # a period, not a synchronisation
            period = self._policy.interval_s
            try:
                if (await self.rebalance_once()).moves:
                    period = min(period, REPLAN_AFTER_MOVES_S)
            except EngineStopped:
                return
            except ClusterError as e:
                log.info("rebalance round incomplete: %s", e)
            except Exception:
                log.exception("rebalance round failed; retrying next round")

    async def rebalance_once(self, dry_run: bool = False) -> Plan:
        """One plan; unless `dry_run`, the moves of groups this node leads are started (not
        awaited to the end), and the metadata group's leader retires drained nodes."""
        routing = self._routing()
        load = self._load(routing)
        planned = plan(routing, load, self._policy.replication_factor, self._policy.limits)
        if dry_run:
            return planned
        for held in planned.held:
            log.info("rebalance: %s", held)
        engine = self._engine()
        bound_s = 2 * self._policy.rpc_timeout_ms / 1000
        with contextlib.suppress(UnknownGroup):
            if (await engine.status(METADATA_GROUP_ID)).role == "leader":
                for node_id in retirements(self._topology(), routing):
                    log.info("rebalance: node %d holds no data replica: decommissioned", node_id)
                    retire = (
                        SetNodeState(node_id, NodeState.DECOMMISSIONED),
                        RemoveGroupMember(METADATA_GROUP_ID, node_id),
                    )
                    refused = await self._propose(MetadataEntry(retire))
                    if refused is not None:
                        log.info("rebalance: retiring node %d refused: %s", node_id, refused)
                for abort in unmovable_moves(self._policy.limits, self._vshard_moves()):
                    log.warning(
                        "rebalance: vShard %d: move %d aborted: %s", *dataclasses.astuple(abort)
                    )
                    refused = await self._propose(MetadataEntry((abort,)))
                    if refused is not None:
                        log.info("rebalance: abort of vShard %d refused: %s", abort.vshard, refused)
        for move in planned.moves:
            group = move.from_group if isinstance(move, MoveVShard) else move.group_id
            with contextlib.suppress(UnknownGroup):
                if (await engine.status(group)).role != "leader":
                    continue
                try:
                    async with asyncio.timeout(bound_s):
                        await self._start(move)
                except (ClusterError, TimeoutError) as e:
                    log.info("rebalance %s not started: %s", move, e or "timed out")
        return planned

    async def _start(self, move: MoveReplica | MoveVShard) -> None:
        log.info("rebalance: %s", move)
        match move:
            case MoveReplica(group_id=g, from_node=src, to_node=dst):
                rf = self._policy.replication_factor
                cap = rf + 1 if src else rf
                refused = await self._propose(MetadataEntry((AddGroupLearner(g, dst, cap),)))
                if refused is not None:
                    log.info("rebalance: learner %d of group %d refused: %s", dst, g, refused)
            case MoveVShard(vshard=v, from_group=src, to_group=dst):
                cap = self._policy.limits.concurrent_moves_max
                refused = await self._propose(
                    MetadataEntry((BeginVShardMove(v, src, dst, min(cap, 64)),))
                )
                if refused is not None:
                    log.info("rebalance: move of vShard %d refused: %s", v, refused)
