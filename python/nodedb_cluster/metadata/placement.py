"""Replica placement rules, as pure functions over the routing table (docs/ARCHITECTURE.md).

Every data group converges to exactly min(RF, nodes) voters. A joining node becomes a learner of
the metadata group (always: every node must receive group 0's log to keep its catalog current) and
of every data group that is under-replicated counting learners already in flight; the control plane
promotes a learner once it has caught up. Groups already at RF gain the node only when the
rebalancer moves a replica. The metadata group keeps learners beyond RF as permanent learners.
"""

from __future__ import annotations

from collections import Counter

from nodedb_cluster.errors import ClusterError
from nodedb_cluster.metadata.commands import (
    AddGroupLearner,
    PromoteGroupLearner,
    RemoveGroupMember,
    SetGroupMembers,
)
from nodedb_cluster.routing.table import GROUPS_MAX, METADATA_GROUP_ID, RoutingTable
from nodedb_cluster.topology import NodeState, Topology


def plan_join(
    routing: RoutingTable, node_id: int, replication_factor: int
) -> tuple[AddGroupLearner, ...]:
    """Learner placements for a new node: every group, capped at RF members for data groups.

    The cap is judged when the entry applies, so joins decided on the same (stale) state cannot
    over-fill a group; for group 0 there is no cap.
    """
    return tuple(
        AddGroupLearner(g, node_id, 0 if g == METADATA_GROUP_ID else replication_factor)
        for g in routing.group_ids
        if not routing.route(g).has_member(node_id)
    )


def plan_promotion(
    routing: RoutingTable, group_id: int, learner: int, replication_factor: int
) -> PromoteGroupLearner | None:
    """Promote a caught-up `learner` of `group_id` when the group has fewer than RF voters."""
    route = routing.route(group_id)
    if learner not in route.learners or len(route.voters) >= replication_factor:
        return None
    return PromoteGroupLearner(group_id, learner, replication_factor)


def plan_removal(routing: RoutingTable, node_id: int) -> tuple[RemoveGroupMember, ...]:
    """Take `node_id` out of every group it belongs to (decommission); never empties a group."""
    return tuple(RemoveGroupMember(g, node_id) for g in routing.groups_of_node(node_id))


def replica_counts(routing: RoutingTable) -> Counter[int]:
    """Data-group replicas (voters and learners) per node, as routing places them."""
    return Counter(
        n
        for g in routing.group_ids
        if g != METADATA_GROUP_ID
        for n in (*routing.route(g).voters, *routing.route(g).learners)
    )


def filling_groups(routing: RoutingTable) -> tuple[int, ...]:
    """Data groups with a learner: a replica move or a join in flight."""
    return tuple(
        g for g in routing.group_ids if g != METADATA_GROUP_ID and routing.route(g).learners
    )


def plan_new_groups(
    topology: Topology,
    routing: RoutingTable,
    count: int,
    replication_factor: int,
    dead: frozenset[int] = frozenset(),
) -> list[SetGroupMembers]:
    """`count` new data groups (ids after the highest), each on the min(RF, such nodes) ACTIVE
    nodes not `dead` (SWIM's verdict) with the fewest data replicas (then the lowest ids): the
    first is the group's one voter, which bootstraps it (`reconcile.BootstrapGroup`); the others
    are learners that join and are promoted as in a join. A dead node would leave its group
    without a leader (its one voter) or with a learner that never catches up; the rebalancer
    fills a group below RF once nodes come back. Raises ClusterError when no such node exists or
    the routing table would exceed its group limit."""
    active = sorted(
        n.node_id for n in topology.nodes() if n.state is NodeState.ACTIVE and n.node_id not in dead
    )
    if not active:
        gone = f" (dead: {sorted(dead)})" if dead else ""
        raise ClusterError(f"no live ACTIVE node to place new groups on{gone}")
    if len(routing.group_ids) + count > GROUPS_MAX:
        raise ClusterError(f"{count} more groups would exceed the limit of {GROUPS_MAX}")
    replicas = replica_counts(routing)
    first = max(routing.group_ids) + 1
    commands = []
    for group in range(first, first + count):
        chosen = sorted(active, key=lambda n: (replicas[n], n))[
            : min(replication_factor, len(active))
        ]
        for n in chosen:
            replicas[n] += 1
        commands.append(SetGroupMembers(group, (chosen[0],), tuple(chosen[1:])))
    return commands
