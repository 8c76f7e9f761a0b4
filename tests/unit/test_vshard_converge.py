"""The end of a vShard move's marks by group 0's outcome (metadata/vshard_converge.py), and where
new groups go (metadata/placement.plan_new_groups)."""

from __future__ import annotations

import pytest

from nodedb_cluster.errors import ClusterError
from nodedb_cluster.metadata.placement import plan_new_groups
from nodedb_cluster.metadata.vshard_converge import (
    FROZEN,
    INCOMING,
    MOVED,
    TRACKING,
    Step,
    VShardMark,
    converge,
)
from nodedb_cluster.metadata.vshard_moves import VShardMoves
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.topology import NodeState, Topology
from support.nodes import node


def routing() -> RoutingTable:
    return RoutingTable.bootstrap(2, 1)  # vShards alternate between groups 1 and 2


V = 4  # in group 1
W = 5  # in group 2


def in_flight(vshard: int, source: int, target: int) -> tuple[VShardMoves, int]:
    moves = VShardMoves().begin(vshard, source, target, routing(), 4)
    move = moves.get(vshard)
    assert move is not None
    return moves, move.move_id


def test_the_movers_own_marks_are_left_alone() -> None:
    moves, move_id = in_flight(V, 1, 2)
    assert converge(1, {V: VShardMark(FROZEN, 2, move_id)}, routing(), moves) == []
    assert converge(2, {V: VShardMark(INCOMING, 1, move_id)}, routing(), moves) == []


def test_after_an_abort_the_source_serves_again_and_the_target_drops_its_copy() -> None:
    table, none = routing(), VShardMoves()  # the move is over and the route did not flip
    assert converge(1, {V: VShardMark(FROZEN, 2, 7)}, table, none) == [Step("unfreeze", V, 7)]
    assert converge(1, {V: VShardMark(TRACKING, 2, 7)}, table, none) == [Step("unfreeze", V, 7)]
    assert converge(2, {V: VShardMark(INCOMING, 1, 7)}, table, none) == [Step("drop", V, 7)]


def test_after_a_flip_the_target_activates_and_the_source_releases() -> None:
    table = routing()
    table.assign_vshard(V, 2)
    none = VShardMoves()
    assert converge(2, {V: VShardMark(INCOMING, 1, 7)}, table, none) == [Step("activate", V, 7)]
    assert converge(1, {V: VShardMark(FROZEN, 2, 7)}, table, none) == [
        Step("release", V, 7, to_group=2)
    ]


def test_a_mark_of_an_older_move_ends_even_while_a_newer_move_runs() -> None:
    moves, move_id = in_flight(V, 1, 2)
    stale = VShardMark(INCOMING, 1, move_id - 1 if move_id > 1 else move_id + 100)
    assert converge(2, {V: stale}, routing(), moves) == [Step("drop", V, stale.move_id)]


def test_moved_marks_follow_the_vshard() -> None:
    table = routing()
    table.assign_vshard(W, 1)  # W moved 2 -> 1 earlier; group 2 still points at 1: fine
    assert converge(2, {W: VShardMark(MOVED, 1, 3)}, table, VShardMoves()) == []
    other = routing()
    other.add_group(3, [1])
    other.assign_vshard(W, 3)  # it moved on from group 1 to group 3
    assert converge(2, {W: VShardMark(MOVED, 1, 3)}, other, VShardMoves()) == [
        Step("release", W, 3, to_group=3)
    ]


def test_new_groups_go_to_the_least_loaded_nodes() -> None:
    topology = Topology([node(1), node(2), node(3), node(4)])
    table = routing()
    table.set_members(1, (1, 2, 3), ())
    table.set_members(2, (1, 2, 3), ())
    commands = plan_new_groups(topology, table, 2, 3)
    assert [c.group_id for c in commands] == [3, 4]
    # node 4 holds nothing: it is in both, and each group's one voter is its least loaded node
    assert commands[0].voters == (4,)
    assert 4 in commands[1].voters + commands[1].learners
    assert all(len(c.voters) == 1 and len(c.learners) == 2 for c in commands)


def test_new_groups_need_an_active_node() -> None:
    draining = Topology([node(1)])
    draining.set_state(1, NodeState.DRAINING)
    with pytest.raises(ClusterError, match="no live ACTIVE node"):
        plan_new_groups(draining, routing(), 1, 3)


def test_new_groups_go_to_no_dead_node() -> None:
    """Found by an operator probe: node 4, the least loaded, SWIM-dead, became the one voter
    of the new group, which had no leader until node 4 came back."""
    topology = Topology([node(1), node(2), node(3), node(4)])
    table = routing()
    table.set_members(1, (1, 2, 3), ())
    table.set_members(2, (1, 2, 3), ())
    (group,) = plan_new_groups(topology, table, 1, 3, dead=frozenset({4}))
    assert 4 not in group.voters + group.learners
    assert len(group.voters) == 1
    assert len(group.learners) == 2
    (fewer,) = plan_new_groups(topology, table, 1, 3, dead=frozenset({3, 4}))
    assert fewer.voters + fewer.learners == (1, 2), "below RF: the rebalancer fills it later"
    with pytest.raises(ClusterError, match=r"no live ACTIVE node .*dead: \[1, 2, 3, 4\]"):
        plan_new_groups(topology, table, 1, 3, dead=frozenset({1, 2, 3, 4}))
