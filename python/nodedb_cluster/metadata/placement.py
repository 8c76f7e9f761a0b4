"""Replica placement rules, as pure functions over the routing table (docs/ARCHITECTURE.md).

Every data group converges to exactly min(RF, nodes) voters. A joining node becomes a learner of
the metadata group (always: every node must receive group 0's log to keep its catalog current) and
of every data group that is under-replicated counting learners already in flight; the control plane
promotes a learner once it has caught up. Groups already at RF gain the node only when the
rebalancer moves a replica. The metadata group keeps learners beyond RF as permanent learners.
"""

from __future__ import annotations

from collections import Counter

from nodedb_cluster.metadata.commands import (
    AddGroupLearner,
    PromoteGroupLearner,
    RemoveGroupMember,
)
from nodedb_cluster.routing.table import METADATA_GROUP_ID, RoutingTable


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
