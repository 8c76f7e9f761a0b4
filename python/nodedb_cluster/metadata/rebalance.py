"""The rebalancer's planner: routing table and per-node load in, moves out (pure; issue 16).

One plan is a short list of independent moves, at most one per group, that the shell proposes
through the metadata group and runs; the next plan is made from the routing table those moves
produced, so a crash between plans loses nothing and a plan never has to be remembered.

Rules, in order (each spends the plan's budget; later rules get what is left):
1. **Back-pressure.** Nothing moves while any node that would take part is at or above the CPU
   limit: a move costs the source and the target a snapshot stream.
2. **Evacuation.** A replica on a node that is leaving (DRAINING, or DEAD past its grace) moves
   to the eligible node with the fewest replicas that is not in the group. A group below
   min(RF, eligible nodes) members (not counting leaving ones) gains one. A node down but
   within its grace is neither: its replicas stay where they are, and it takes none.
3. **Replicas per node.** While the most and least loaded eligible nodes differ by more than one
   replica and by more than the threshold (relative to the mean), one replica moves from the
   first to the second; a group the source leads is chosen last (its move needs a transfer).
4. **vShards per group.** While the data groups with the most and fewest vShards differ by more
   than one and by more than the threshold, the fullest group's smallest vShard (by bytes, then
   id) moves to the emptiest: this fills groups added to a live cluster. A group still short of
   its replicas (min(RF, eligible nodes) voters) takes no vShard yet.
5. **Bytes per group.** While the heaviest and lightest data group differ by more than the
   threshold, the heaviest's largest vShard that fits half the difference (and that this plan
   did not move already) moves to the lightest, unless that would set off rule 4: the two
   rules undid each other every round when one large vShard held its group's bytes high.

Every rule simulates its moves on the counts before choosing the next, so a plan never moves the
same replica twice nor overshoots; ties break by the lowest id, so a plan is deterministic.
Leaders per node are balanced by each group's leader itself (`reconcile.plan_leader_balance`,
`ClusterConfig.balance_leaders`), not here: one rule, in one place.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from nodedb_cluster.metadata.commands import AbortVShardMove
from nodedb_cluster.metadata.placement import filling_groups, replica_counts
from nodedb_cluster.metadata.vshard_moves import VShardMove
from nodedb_cluster.routing.table import METADATA_GROUP_ID, RoutingTable
from nodedb_cluster.topology import NodeState, Topology

IMBALANCE_THRESHOLD_DEFAULT: Final = 0.20
"""Balance when (max - min) / mean of a quantity exceeds this."""
MOVES_PER_PLAN_MAX_DEFAULT: Final = 10
CONCURRENT_MOVES_MAX_DEFAULT: Final = 4
CPU_BACKPRESSURE_DEFAULT: Final = 0.80


@dataclass(frozen=True, slots=True)
class Limits:
    imbalance_threshold: float = IMBALANCE_THRESHOLD_DEFAULT
    moves_per_plan_max: int = MOVES_PER_PLAN_MAX_DEFAULT
    concurrent_moves_max: int = CONCURRENT_MOVES_MAX_DEFAULT
    """Moves in flight at once, counting those still running from earlier plans."""
    cpu_backpressure: float = CPU_BACKPRESSURE_DEFAULT
    vshards_movable: bool = True
    """Whether data groups can hand vShards to each other: only the built-in KV state machine
    exports and imports a vShard; groups that run a host's state machine cannot (their
    replicas still move between nodes)."""


HOST_GROUPS_HOLD_VSHARDS: Final = (
    "vShard balance: the data groups run the host's state machine, which cannot move vShards"
)
"""The held reason of a plan that would move vShards between groups of a host state machine."""


@dataclass(frozen=True, slots=True)
class ClusterLoad:
    """What the planner knows beyond routing."""

    eligible: frozenset[int]
    """Nodes that may take replicas: ACTIVE and alive."""
    leaving: frozenset[int] = frozenset()
    """Nodes every replica moves off: DRAINING, or DEAD for longer than the grace."""
    cpu: Mapping[int, float] = field(default_factory=dict)
    """Recent CPU use per node, 0..1 (absent: unknown, taken as idle)."""
    group_bytes: Mapping[int, int] = field(default_factory=dict)
    """KV bytes per data group (absent: bytes are not balanced)."""
    vshard_bytes: Mapping[int, int] = field(default_factory=dict)
    """KV bytes per vShard, for choosing which vShard moves."""
    moving_groups: frozenset[int] = frozenset()
    """Groups with a replica move in flight: left alone, and counted against the concurrency
    limit."""
    vshard_moves: int = 0
    """vShard moves in flight (group 0's record), counted against the concurrency limit."""


@dataclass(frozen=True, slots=True)
class MoveReplica:
    """Add a replica of `group_id` on `to_node` (learner, caught up, promoted), then remove the
    one on `from_node` (0: nothing to remove; the group was short of a member)."""

    group_id: int
    from_node: int
    to_node: int


@dataclass(frozen=True, slots=True)
class MoveVShard:
    vshard: int
    from_group: int
    to_group: int


Move = MoveReplica | MoveVShard


@dataclass(frozen=True, slots=True)
class Plan:
    moves: tuple[Move, ...]
    held: tuple[str, ...] = ()
    """Why something that should move did not (back-pressure, no spare node, budget)."""


def imbalance(counts: Iterable[int]) -> float:
    """(max - min) / mean; 0 for no values or a zero mean."""
    values = list(counts)
    if not values:
        return 0.0
    mean = sum(values) / len(values)
    return 0.0 if mean == 0 else (max(values) - min(values)) / mean


class _Planning:
    """One plan in the making: the simulated placement and the budget left."""

    def __init__(self, routing: RoutingTable, load: ClusterLoad, limits: Limits) -> None:
        self.load = load
        self.limits = limits
        self.groups = [g for g in routing.group_ids if g != METADATA_GROUP_ID]
        self.members: dict[int, set[int]] = {}
        self.voters: dict[int, set[int]] = {}
        self.leader: dict[int, int] = {}
        for g in self.groups:
            route = routing.route(g)
            self.members[g] = set(route.voters) | set(route.learners)
            self.voters[g] = set(route.voters)
            self.leader[g] = route.leader
        self.vshard_group = {v: int(g) for v, g in enumerate(routing.vshard_to_group)}
        self.busy: set[int] = set(load.moving_groups)
        in_flight = len(load.moving_groups) + load.vshard_moves
        self.budget = max(
            0, min(limits.moves_per_plan_max, limits.concurrent_moves_max - in_flight)
        )
        self.moves: list[Move] = []
        self.held: list[str] = []

    def replicas(self) -> Counter[int]:
        counts: Counter[int] = Counter({n: 0 for n in self.load.eligible})
        for g in self.groups:
            for n in self.members[g]:
                if n in self.load.eligible:
                    counts[n] += 1
        return counts

    def spend(self, move: Move, group: int) -> None:
        self.moves.append(move)
        self.busy.add(group)
        self.budget -= 1

    def target_for(self, group: int) -> int | None:
        """The eligible node outside `group` with the fewest replicas (then the lowest id)."""
        replicas = self.replicas()
        outside = [n for n in self.load.eligible if n not in self.members[group]]
        if not outside:
            return None
        return min(outside, key=lambda n: (replicas[n], n))

    def move_replica(self, group: int, src: int, dst: int) -> None:
        self.members[group].discard(src)
        self.members[group].add(dst)
        if src in self.voters[group]:
            self.voters[group].discard(src)
            self.voters[group].add(dst)
        self.spend(MoveReplica(group, src, dst), group)


def plan(
    routing: RoutingTable, load: ClusterLoad, replication_factor: int, limits: Limits | None = None
) -> Plan:
    """The next moves toward a balanced placement (empty when balanced or held)."""
    p = _Planning(routing, load, limits or Limits())
    hot = sorted(
        n for n, cpu in load.cpu.items() if cpu >= p.limits.cpu_backpressure and n in load.eligible
    )
    if hot:
        return Plan((), (f"back-pressure: node {hot[0]} at CPU {load.cpu[hot[0]]:.2f}",))
    _evacuate(p, replication_factor)
    _balance_replicas(p)
    _balance_vshards(p, replication_factor)
    _balance_bytes(p, replication_factor)
    if not p.limits.vshards_movable and any(isinstance(m, MoveVShard) for m in p.moves):
        p.moves = [m for m in p.moves if not isinstance(m, MoveVShard)]
        p.held.append(HOST_GROUPS_HOLD_VSHARDS)
    return Plan(tuple(p.moves), tuple(p.held))


def _evacuate(p: _Planning, replication_factor: int) -> None:
    want = min(replication_factor, len(p.load.eligible))
    for g in p.groups:
        if g in p.busy:
            continue
        leaving = sorted(n for n in p.members[g] if n in p.load.leaving)
        # A member neither eligible nor leaving (down, within its grace) still holds its copy.
        short = want - len([n for n in p.members[g] if n not in p.load.leaving])
        if not leaving and short <= 0:
            continue
        if p.budget == 0:
            p.held.append(f"group {g}: needs a move, plan budget spent")
            continue
        dst = p.target_for(g)
        if dst is None:
            p.held.append(f"group {g}: no eligible node outside it to take a replica")
            continue
        # A leaving member is replaced (which also mends a shortage); else the group gains one.
        p.move_replica(g, leaving[0] if leaving else 0, dst)


def _balance_replicas(p: _Planning) -> None:
    while p.budget > 0:
        counts = p.replicas()
        if len(counts) < 2:
            return
        src = max(counts, key=lambda n: (counts[n], -n))
        dst = min(counts, key=lambda n: (counts[n], n))
        spread = counts[src] - counts[dst]
        if spread <= 1 or imbalance(counts.values()) <= p.limits.imbalance_threshold:
            return
        candidates = [
            g
            for g in p.groups
            if g not in p.busy and src in p.members[g] and dst not in p.members[g]
        ]
        if not candidates:
            return
        group = min(candidates, key=lambda g: (p.leader[g] == src, g))
        p.move_replica(group, src, dst)


def _vshard_counts(p: _Planning, replication_factor: int) -> Counter[int]:
    """vShards per data group that may take vShards (its replicas complete, no move under
    way), as the plan so far leaves them."""
    want = min(replication_factor, len(p.load.eligible))
    counts = Counter({g: 0 for g in p.groups if len(p.voters[g]) >= want and g not in p.busy})
    for g in p.vshard_group.values():
        if g in counts:
            counts[g] += 1
    return counts


def _counts_unbalanced(counts: Counter[int], limits: Limits) -> bool:
    """Rule 4's trigger: the fullest and emptiest groups differ by more than one vShard and by
    more than the threshold."""
    return (
        max(counts.values()) - min(counts.values()) > 1
        and imbalance(counts.values()) > limits.imbalance_threshold
    )


def _balance_vshards(p: _Planning, replication_factor: int) -> None:
    counts = _vshard_counts(p, replication_factor)
    if len(counts) < 2:
        return
    while p.budget > 0 and _counts_unbalanced(counts, p.limits):
        heavy = max(counts, key=lambda g: (counts[g], -g))
        light = min(counts, key=lambda g: (counts[g], g))
        vshard = min(
            (v for v, g in p.vshard_group.items() if g == heavy),
            key=lambda v: (p.load.vshard_bytes.get(v, 0), v),
        )
        p.vshard_group[vshard] = light
        counts[heavy] -= 1
        counts[light] += 1
        p.moves.append(MoveVShard(vshard, heavy, light))
        p.budget -= 1


def _balance_bytes(p: _Planning, replication_factor: int) -> None:
    sizes = {g: p.load.group_bytes.get(g, 0) for g in p.groups}
    if not p.load.group_bytes or len(sizes) < 2:
        return
    moved = {m.vshard for m in p.moves if isinstance(m, MoveVShard)}
    counts = _vshard_counts(p, replication_factor)
    while p.budget > 0:
        heavy = max(sizes, key=lambda g: (sizes[g], -g))
        light = min(sizes, key=lambda g: (sizes[g], g))
        if imbalance(sizes.values()) <= p.limits.imbalance_threshold:
            return
        if heavy in p.busy or light in p.busy:
            return
        after = counts.copy()
        if heavy in after:
            after[heavy] -= 1
        if light in after:
            after[light] += 1
        if (
            len(after) > 1
            and _counts_unbalanced(after, p.limits)
            and imbalance(after.values()) > imbalance(counts.values())
        ):
            # Rule 4 would move a vShard straight back (a large vShard pins its group's bytes
            # high): the bytes wait rather than have the two rules undo each other every round.
            p.held.append(f"bytes: a vShard {heavy} -> {light} would unbalance vShard counts")
            return
        half = (sizes[heavy] - sizes[light]) // 2
        fitting = [
            (p.load.vshard_bytes.get(v, 0), v)
            for v, g in p.vshard_group.items()
            if g == heavy and v not in moved and 0 < p.load.vshard_bytes.get(v, 0) <= half
        ]
        if not fitting:
            return
        size, vshard = max(fitting, key=lambda sv: (sv[0], -sv[1]))
        p.vshard_group[vshard] = light
        sizes[heavy] -= size
        sizes[light] += size
        counts = after
        moved.add(vshard)
        p.moves.append(MoveVShard(vshard, heavy, light))
        p.budget -= 1
        p.busy.update((heavy, light))


def cluster_load(
    topology: Topology,
    routing: RoutingTable,
    dead_for_s: Mapping[int, float],
    dead_grace_s: float,
    vshard_moves: int = 0,
) -> ClusterLoad:
    """What the planner needs from the topology, routing and SWIM: ACTIVE nodes not dead are
    eligible; DRAINING nodes and those dead for at least `dead_grace_s` are leaving (a node dead
    for less is neither: its replicas wait for it); a data group with a learner has a move or a
    join in flight."""
    eligible = frozenset(
        n.node_id
        for n in topology.nodes()
        if n.state is NodeState.ACTIVE and n.node_id not in dead_for_s
    )
    leaving = frozenset(
        n.node_id
        for n in topology.nodes()
        if n.state in (NodeState.DRAINING, NodeState.DECOMMISSIONED)
        or dead_for_s.get(n.node_id, -1.0) >= dead_grace_s
    )
    moving = frozenset(filling_groups(routing))
    return ClusterLoad(
        eligible=eligible, leaving=leaving, moving_groups=moving, vshard_moves=vshard_moves
    )


def decommission_refusal(
    topology: Topology, routing: RoutingTable, node_id: int, replication_factor: int
) -> str | None:
    """Why `node_id` may not start draining (None: it may): unknown, already gone, or the
    other ACTIVE nodes could not hold RF replicas of a group it serves."""
    node = topology.get(node_id)
    if node is None:
        return f"node {node_id} is not in the cluster"
    if node.state is NodeState.DECOMMISSIONED:
        return f"node {node_id} is already decommissioned"
    others = [
        n.node_id for n in topology.nodes() if n.state is NodeState.ACTIVE and n.node_id != node_id
    ]
    serves = [g for g in routing.groups_of_node(node_id) if g != METADATA_GROUP_ID]
    if serves and len(others) < replication_factor:
        return (
            f"decommissioning node {node_id} would leave data groups {serves} below the "
            f"replication factor {replication_factor}: only {len(others)} other ACTIVE nodes"
        )
    return None


def unmovable_moves(limits: Limits, moves: Iterable[VShardMove]) -> tuple[AbortVShardMove, ...]:
    """The aborts of vShard moves in flight that nothing can carry out: on host groups
    (`Limits.vshards_movable` false) a move begun by an earlier build, or on an admin's request
    before moves were refused there, would stay in flight forever and count against the
    concurrency limit replica moves use too."""
    if limits.vshards_movable:
        return ()
    return tuple(AbortVShardMove(m.vshard, m.move_id, HOST_GROUPS_HOLD_VSHARDS) for m in moves)


def retirements(topology: Topology, routing: RoutingTable) -> tuple[int, ...]:
    """DRAINING nodes that no longer serve a data group: they can be marked DECOMMISSIONED and
    leave the metadata group."""
    replicas = replica_counts(routing)
    return tuple(
        n.node_id
        for n in topology.nodes()
        if n.state is NodeState.DRAINING and replicas[n.node_id] == 0
    )
