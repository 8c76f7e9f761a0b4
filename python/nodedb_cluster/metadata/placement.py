"""Replica placement rules, as pure functions over the routing table (ARCHITECTURE.md).

Every data group converges to exactly min(RF, nodes) voters. A joining node becomes a learner of
the metadata group (always: every node must receive group 0's log to keep its catalog current) and
of every data group that is under-replicated counting learners already in flight; the control plane
promotes a learner once it has caught up. Groups already at RF gain the node only when the
rebalancer moves a replica. The metadata group keeps learners beyond RF as permanent learners.
"""

from __future__ import annotations

from nodedb_cluster.metadata.commands import SetGroupMembers
from nodedb_cluster.routing.table import METADATA_GROUP_ID, RoutingTable


def plan_join(
    routing: RoutingTable, node_id: int, replication_factor: int
) -> tuple[SetGroupMembers, ...]:
    """The membership changes that admit `node_id` as a learner where it is needed."""
    changes = []
    for group_id in routing.group_ids:
        route = routing.route(group_id)
        if route.has_member(node_id):
            continue
        members = len(route.voters) + len(route.learners)
        if group_id == METADATA_GROUP_ID or members < replication_factor:
            changes.append(SetGroupMembers(group_id, route.voters, (*route.learners, node_id)))
    return tuple(changes)


def plan_promotion(
    routing: RoutingTable, group_id: int, learner: int, replication_factor: int
) -> SetGroupMembers | None:
    """Promote a caught-up `learner` of `group_id` when the group has fewer than RF voters."""
    route = routing.route(group_id)
    if learner not in route.learners or len(route.voters) >= replication_factor:
        return None
    learners = tuple(n for n in route.learners if n != learner)
    return SetGroupMembers(group_id, (*route.voters, learner), learners)


def plan_removal(routing: RoutingTable, node_id: int) -> tuple[SetGroupMembers, ...]:
    """Take `node_id` out of every group it belongs to (decommission); never empties a group."""
    changes = []
    for group_id in routing.groups_of_node(node_id):
        route = routing.route(group_id)
        voters = tuple(n for n in route.voters if n != node_id)
        if not voters:
            continue  # the last voter stays until a replacement is promoted
        learners = tuple(n for n in route.learners if n != node_id)
        changes.append(SetGroupMembers(group_id, voters, learners))
    return tuple(changes)
