"""The rebalancer's inputs (metadata/rebalance.cluster_load) and its SWIM bookkeeping
(rebalancer.Rebalancer.leaving): who may take replicas, whose replicas move off, and when."""

from __future__ import annotations

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.membership import MemberChanged, MemberState
from nodedb_cluster.metadata.commands import AbortVShardMove, MetadataEntry
from nodedb_cluster.metadata.rebalance import (
    HOST_GROUPS_HOLD_VSHARDS,
    ClusterLoad,
    Limits,
    MoveVShard,
    cluster_load,
    decommission_refusal,
    plan,
    retirements,
    unmovable_moves,
)
from nodedb_cluster.metadata.vshard_moves import VShardMove
from nodedb_cluster.raft import RaftEngine
from nodedb_cluster.rebalancer import RebalancePolicy, Rebalancer
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.topology import NodeInfo, NodeState, Topology

GRACE_S = 300.0


def topology(states: dict[int, NodeState]) -> Topology:
    return Topology(
        [NodeInfo(n, parse_socket_addr(f"127.0.0.{n}:9400"), s, 1) for n, s in states.items()]
    )


def routing() -> RoutingTable:
    table = RoutingTable.bootstrap(3, 1)
    table.set_members(1, (1, 2, 3))
    table.set_members(2, (1, 2, 3), (4,))  # a move (or join) in flight
    table.set_members(3, (1, 2, 3))
    table.set_members(0, (1, 2, 3), (4, 5))  # group 0's permanent learners are not moves
    return table


def test_eligible_leaving_and_moving() -> None:
    topo = topology(
        {
            1: NodeState.ACTIVE,
            2: NodeState.ACTIVE,
            3: NodeState.DRAINING,
            4: NodeState.ACTIVE,
            5: NodeState.ACTIVE,
            6: NodeState.JOINING,
        }
    )
    load = cluster_load(topo, routing(), {4: 10.0, 5: GRACE_S}, GRACE_S)
    assert load.eligible == frozenset({1, 2})  # 3 drains, 4 and 5 are dead, 6 still joins
    assert load.leaving == frozenset({3, 5})  # 4 is dead within its grace: it waits
    assert load.moving_groups == frozenset({2})


def test_swim_verdicts_start_the_grace_and_a_return_ends_it() -> None:
    now = [1000.0]

    def engine() -> RaftEngine:
        raise AssertionError("not needed to say who is leaving")

    async def propose(entry: MetadataEntry) -> str | None:
        raise AssertionError("not needed to say who is leaving")

    topo = topology({n: NodeState.ACTIVE for n in (1, 2, 3, 4)})
    rebalancer = Rebalancer(
        RebalancePolicy(1, 3, 30.0, GRACE_S, 2000),
        engine,
        routing,
        lambda: topo,
        propose,
        clock=lambda: now[0],
    )

    def event(node: int, state: MemberState) -> MemberChanged:
        return MemberChanged(node, parse_socket_addr(f"127.0.0.{node}:9401"), state, 1, 0)

    rebalancer.on_member_changed(event(4, MemberState.DEAD))
    now[0] += GRACE_S - 1
    assert rebalancer.leaving() == frozenset()
    rebalancer.on_member_changed(event(4, MemberState.DEAD))  # told again: the grace runs on
    now[0] += 1
    assert rebalancer.leaving() == frozenset({4})
    rebalancer.on_member_changed(event(4, MemberState.ALIVE))
    assert rebalancer.leaving() == frozenset()


def test_decommission_is_refused_when_rf_could_not_hold_and_drained_nodes_retire() -> None:
    states = {n: NodeState.ACTIVE for n in (1, 2, 3, 4)}
    table = routing()
    assert decommission_refusal(topology(states), table, 4, 3) is None
    assert decommission_refusal(topology(states), table, 9, 3) == "node 9 is not in the cluster"
    three = topology({n: NodeState.ACTIVE for n in (1, 2, 3)})
    refusal = decommission_refusal(three, table, 3, 3)
    assert refusal is not None
    assert "below the replication factor 3" in refusal
    # Node 4 drains: it still fills a learner of group 2, so it is not retired yet.
    draining = topology({**states, 4: NodeState.DRAINING})
    assert retirements(draining, table) == ()
    table.set_members(2, (1, 2, 3))
    assert retirements(draining, table) == (4,)  # group 0's learner does not hold it back
    gone = topology({**states, 4: NodeState.DECOMMISSIONED})
    assert decommission_refusal(gone, table, 4, 3) == "node 4 is already decommissioned"


def test_moves_in_flight_on_host_groups_are_aborted_and_kv_ones_left_alone() -> None:
    """A vShard move begun on groups that run a host's state machine (by an earlier build)
    can never be carried out: the metadata leader aborts it instead of letting it hold the
    concurrency limit forever."""
    moves = [VShardMove(5, 2, 3, 7), VShardMove(9, 1, 3, 8)]
    assert unmovable_moves(Limits(), moves) == ()
    assert unmovable_moves(Limits(vshards_movable=False), moves) == (
        AbortVShardMove(5, 7, HOST_GROUPS_HOLD_VSHARDS),
        AbortVShardMove(9, 8, HOST_GROUPS_HOLD_VSHARDS),
    )
    assert unmovable_moves(Limits(vshards_movable=False), []) == ()


def test_counts_and_bytes_settle_when_one_large_vshard_holds_a_group_heavy() -> None:
    """Found by an operator probe: one 60 MB vShard kept group 1 the heaviest by far; rule 5
    (bytes) moved a small vShard 1 -> 6, which put the vShard counts past the threshold, and
    rule 4 (counts) moved one straight back: two moves a second, for good. Now the plans
    settle and no vShard moves twice."""
    table = RoutingTable.bootstrap(6, 1)
    for g in table.group_ids:
        table.set_members(g, (1, 2, 3))
    want = {1: 142, 2: 176, 3: 176, 4: 176, 5: 176, 6: 178}
    vshards = iter(range(1024))
    for group, count in want.items():
        for _ in range(count):
            table.assign_vshard(next(vshards), group)
    large = 0  # in group 1
    original = 142 + 3 * 176  # groups 1-4: the lighter vShards went to groups 5 and 6
    sizes = {v: 30_000 if v < original else 20_000 for v in range(1024)}
    sizes[large] = 60_000_000
    moved: dict[int, int] = {}
    for _ in range(40):
        group_bytes = dict.fromkeys(range(1, 7), 0)
        for v, g in enumerate(table.vshard_to_group.tolist()):
            group_bytes[int(g)] += sizes[v]
        load = ClusterLoad(
            eligible=frozenset({1, 2, 3}), group_bytes=group_bytes, vshard_bytes=sizes
        )
        moves = [m for m in plan(table, load, 3).moves if isinstance(m, MoveVShard)]
        if not moves:
            break
        for m in moves:
            table.assign_vshard(m.vshard, m.to_group)
            moved[m.vshard] = moved.get(m.vshard, 0) + 1
    else:
        raise AssertionError(f"still moving after 40 plans: {sorted(moved.items())[:8]}")
    assert all(n == 1 for n in moved.values()), moved
