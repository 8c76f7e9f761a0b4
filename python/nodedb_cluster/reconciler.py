"""The membership reconciler's shell: runs `plan_reconcile` (reconcile.py, pure) and acts.

A round reads the engine's view of every local group and the applied routing table, plans, and
carries each action out with its own time bound, so one stuck change never holds the others.
Rounds run on every metadata change (`wake`) and on a timer for what changes in Raft alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from nodedb_cluster.errors import ClusterError, EngineStopped
from nodedb_cluster.metadata.commands import (
    DemoteGroupVoter,
    MetadataEntry,
    RemoveGroupMember,
    ReplaceGroupVoter,
    SetGroupLeader,
)
from nodedb_cluster.metadata.placement import plan_promotion
from nodedb_cluster.raft import RaftEngine, StateMachineKind
from nodedb_cluster.reconcile import (
    ORPHAN_AFTER_S,
    Action,
    AddLearner,
    BootstrapGroup,
    CreateGroup,
    DropGroup,
    LocalGroup,
    PlanInputs,
    PromoteVoter,
    ProposeDemotion,
    ProposeLeaderHints,
    ProposePromotion,
    ProposeRemoval,
    ProposeReplacement,
    RemoveMember,
    TransferLeader,
    plan_inputs,
    plan_reconcile,
)
from nodedb_cluster.routing.table import RoutingTable

log = logging.getLogger(__name__)

RECONCILE_INTERVAL_S: Final = 0.5
"""The reconciler also runs on every metadata change; the timer catches what changes in Raft
alone (a learner catching up, a new leader) at a pace that keeps promotion well under a second."""


@dataclass(frozen=True, slots=True)
class ReconcilePolicy:
    """The configuration a round reads (`ClusterConfig` fields of the same names)."""

    node_id: int
    replication_factor: int
    balance_leaders: bool
    rpc_timeout_ms: int


class Reconciler:
    """Drives this node's replicas towards what the routing table says."""

    def __init__(
        self,
        policy: ReconcilePolicy,
        engine: Callable[[], RaftEngine],
        routing: Callable[[], RoutingTable],
        group_kind: Callable[[int], StateMachineKind],
        propose: Callable[[MetadataEntry], Awaitable[str | None]],
        leaving: Callable[[], frozenset[int]] = frozenset,
        move_targets: Callable[[], frozenset[int]] = frozenset,
    ) -> None:
        self._policy = policy
        self._move_targets = move_targets
        """Groups a vShard move in flight imports into (group 0's record)."""
        self._leaving = leaving
        self._leaderless_since: dict[int, float] = {}
        """When each local group was first seen knowing no leader (monotonic clock)."""
        """Nodes whose replicas move off (the rebalancer's view: draining, dead past grace)."""
        self._engine = engine
        """The running engine (raises EngineStopped once the node stops)."""
        self._routing = routing
        self._group_kind = group_kind
        self._propose = propose
        """Replicates a metadata entry through group 0; None once applied, else why refused."""
        self._wakeup = asyncio.Event()
        self._inputs: PlanInputs | None = None
        """What the last metadata change that woke a round left for the plan to read."""
        self._hints: asyncio.Task[None] | None = None
        """The leader-hint proposal in flight (`ProposeLeaderHints`): one at a time, off the
        round, so a hint never holds up a conf change (group 0 may have lost its quorum while
        a data group elected a leader)."""

    def wake(self) -> None:
        """Run a round soon."""
        self._wakeup.set()

    def metadata_changed(self) -> None:
        """Group 0 applied something: a round soon if it changed what a plan reads
        (`plan_inputs`). A vShard move changes group 0's state twice on every node and most
        often nothing a plan reads; a round costs one engine request and a plan."""
        inputs = plan_inputs(self._routing(), self._leaving(), self._move_targets())
        if inputs != self._inputs:
            self._inputs = inputs
            self.wake()

    async def run(self) -> None:
        """Rounds until the engine stops or the task is cancelled; a failed round is logged and
        the next one tries again (a control loop that dies silently leaves the cluster
        half-built)."""
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), RECONCILE_INTERVAL_S)
                self._wakeup.clear()
                try:
                    await self.reconcile_once()
                except EngineStopped:
                    return
                except ClusterError as e:
                    log.info("reconcile round incomplete: %s", e)
                except Exception:
                    log.exception("reconcile round failed; retrying next round")
        finally:
            await self.close()

    async def close(self) -> None:
        """Cancel the leader-hint proposal in flight, if any (a round before `run`, during a
        restart or a join, may have started one)."""
        hints, self._hints = self._hints, None
        if hints is not None:
            hints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hints

    async def reconcile_once(self) -> list[Action]:
        """One round: plan from the routing table and the engine's view, then act."""
        engine = self._engine()
        local: dict[int, LocalGroup] = {}
        for s in await engine.statuses():
            local[s.group_id] = LocalGroup(
                s.group_id,
                s.role == "leader",
                s.voters,
                s.learners,
                s.commit_index,
                dict(s.matched),
                s.leader_id or 0,
            )
        policy = self._policy
        now = time.monotonic()
        leaderless = {g for g, st in local.items() if not st.leader_id and not st.is_leader}
        for g in leaderless - set(self._leaderless_since):
            self._leaderless_since[g] = now
        for g in set(self._leaderless_since) - leaderless:
            del self._leaderless_since[g]
        orphaned = frozenset(
            g for g, since in self._leaderless_since.items() if now - since >= ORPHAN_AFTER_S
        )
        actions = plan_reconcile(
            policy.node_id,
            self._routing(),
            local,
            policy.replication_factor,
            policy.balance_leaders,
            self._leaving(),
            orphaned,
            self._move_targets(),
        )
        bound_s = 2 * policy.rpc_timeout_ms / 1000
        for action in actions:
            if isinstance(action, ProposeLeaderHints):
                self._propose_hints(action.group_ids, bound_s)
                continue
            try:
                async with asyncio.timeout(bound_s):
                    await self._act(action)
            except ClusterError as e:
                log.info("reconcile %s failed: %s", action, e)
            except TimeoutError:
                log.warning("reconcile %s not done within %.1f s; next round", action, bound_s)
        return actions

    def _propose_hints(self, groups: tuple[int, ...], bound_s: float) -> None:
        """Record this node as the leader of `groups` in group 0, in the background; nothing
        while the previous proposal is in flight (the next round asks again if still needed)."""
        if self._hints is not None and not self._hints.done():
            return
        me = self._policy.node_id

        async def propose() -> None:
            try:
                async with asyncio.timeout(bound_s):
                    refused = await self._propose(
                        MetadataEntry(tuple(SetGroupLeader(g, me) for g in groups))
                    )
            except (ClusterError, TimeoutError) as e:
                log.info("leader hints for groups %s not recorded: %s", groups, e or "timeout")
            else:
                if refused is not None:
                    log.info("leader hints for groups %s refused: %s", groups, refused)

        log.info("reconcile: recording this node as the leader of groups %s", groups)
        self._hints = asyncio.ensure_future(propose())

    async def _act(self, action: Action) -> None:
        engine = self._engine()
        log.info("reconcile: %s", action)
        match action:
            case CreateGroup(group_id=g):
                await engine.add_group(g, None, self._group_kind(g))
            case BootstrapGroup(group_id=g):
                await engine.add_group(g, [self._policy.node_id], self._group_kind(g))
                await engine.campaign(g)  # a group of one elects itself now
            case DropGroup(group_id=g):
                await engine.remove_group(g)
            case AddLearner(group_id=g, node_id=n):
                await engine.add_learner(g, n)
            case PromoteVoter(group_id=g, node_id=n):
                await engine.promote(g, n)
            case ProposeDemotion(group_id=g):
                me = self._policy.node_id
                refused = await self._propose(MetadataEntry((DemoteGroupVoter(g, me),)))
                if refused is not None:
                    log.info("demotion of %d in group %d refused: %s", me, g, refused)
                    return
                # Applied in group 0: routing lists this node as a learner of g. The empty
                # replica is created now rather than when this node's routing shows it, which
                # it learns through its own replica of group 0 (perhaps the one missing).
                await engine.add_group(g, None, self._group_kind(g))
            case RemoveMember(group_id=g, node_id=n):
                await engine.remove_node(g, n)
            case TransferLeader(group_id=g, to_node_id=n):
                await engine.transfer_leader(g, n)
            case ProposePromotion(group_id=g, node_id=n):
                rf = self._policy.replication_factor
                change = plan_promotion(self._routing(), g, n, rf)
                if change is not None:
                    refused = await self._propose(MetadataEntry((change,)))
                    if refused is not None:
                        log.info("promotion of %d in group %d refused: %s", n, g, refused)
            case ProposeRemoval(group_id=g, node_id=n):
                refused = await self._propose(MetadataEntry((RemoveGroupMember(g, n),)))
                if refused is not None:
                    log.info("removal of learner %d from group %d refused: %s", n, g, refused)
            case ProposeReplacement(group_id=g, old=old, new=new):
                refused = await self._propose(MetadataEntry((ReplaceGroupVoter(g, old, new),)))
                if refused is not None:
                    log.info(
                        "replacement of %d by %d in group %d refused: %s", old, new, g, refused
                    )
