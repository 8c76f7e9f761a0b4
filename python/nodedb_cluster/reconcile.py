"""Make each Raft group's real membership follow the routing table (a level-triggered loop).

The metadata group decides who *should* serve each group (`RoutingTable`); Raft conf changes make
it so, one group's leader at a time. `plan_reconcile` is pure: given the desired routing and what
this node's engine reports for its local groups, it returns the next action per group. The node's
shell runs the actions and calls it again on every metadata change and on a timer, so a crash or a
lost RPC in the middle of a change is repaired by the next round rather than remembered.

Per group at most one conf change is planned per round: Raft admits one pending change at a time.

Leader balance (`ClusterConfig.balance_leaders`, off by default: measured slower with every
node on one host): Multi-Raft spreads work by spreading leaders (a leader does a group's
proposals, replication and reads). A node that leads at least `LEADER_IMBALANCE_MIN` more data
groups than a caught-up voter of one of them hands that group's leadership over, one group per
round, only when no membership change is pending here. Each node judges from its own replicas'
view of who leads (stale by a round at most); a difference of one is as balanced as the counts
allow, so the rule converges instead of oscillating.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from nodedb_cluster.metadata.placement import plan_promotion, replica_counts
from nodedb_cluster.routing.table import METADATA_GROUP_ID, RoutingTable

CAUGHT_UP_LAG_ENTRIES_MAX: Final = 64
"""A learner whose matched index trails the leader's commit by at most this is promotable: it
can vote without stalling commits while it replays the rest. It must also have acknowledged at
least one append (matched > 0): in a young group every commit index is below the lag, and
promoting a learner that never answered (a joiner that timed out before creating its replica)
would add a voter that cannot vote, and with one founder, lose the quorum."""
ORPHAN_AFTER_S: Final = 30.0
"""A replica routing no longer wants that has known no leader this long is dropped (see
`plan_reconcile`): long enough that a leader elected after a partition heals has reached it."""
LEADER_IMBALANCE_MIN: Final = 2
"""Move a leadership only from a node leading this many more data groups than the target."""


@dataclass(frozen=True, slots=True)
class LocalGroup:
    """What this node's engine says of one of its groups."""

    group_id: int
    is_leader: bool
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    commit_index: int
    matched: Mapping[int, int] = field(default_factory=dict)
    """Leader only: each follower's matched log index (empty elsewhere)."""
    leader_id: int = 0
    """The group's leader as this replica knows it (0 = unknown)."""


@dataclass(frozen=True, slots=True)
class CreateGroup:
    """This node should serve `group_id` but has no local replica: create an empty learner."""

    group_id: int


@dataclass(frozen=True, slots=True)
class BootstrapGroup:
    """A group added to a live cluster with this node as its one voter and no data yet: create
    it as a group of one and campaign (its learners join as in a join)."""

    group_id: int


@dataclass(frozen=True, slots=True)
class DropGroup:
    """The group no longer includes this node (in routing and in Raft): free its replica."""

    group_id: int


@dataclass(frozen=True, slots=True)
class AddLearner:
    group_id: int
    node_id: int


@dataclass(frozen=True, slots=True)
class PromoteVoter:
    """Raft conf change learner -> voter, once routing lists the node as a voter."""

    group_id: int
    node_id: int


@dataclass(frozen=True, slots=True)
class RemoveMember:
    group_id: int
    node_id: int


@dataclass(frozen=True, slots=True)
class TransferLeader:
    """The leader itself is to leave the group: hand leadership over first."""

    group_id: int
    to_node_id: int


@dataclass(frozen=True, slots=True)
class ProposeDemotion:
    """This node is a voter of `group_id` in routing but holds no replica of it (its log lost
    the group, or `start --rejoin` discarded it): an empty voter would count towards quorums
    for entries it no longer has. Ask group 0 to make it a learner first; the learner replica
    is created once routing says so; the leader takes it out of the group and adds it back as a
    learner (fresh progress), fills it and promotes it when caught up."""

    group_id: int


@dataclass(frozen=True, slots=True)
class ProposeReplacement:
    """A replica move's learner `new` caught up in a group already at RF voters: ask group 0 to
    put it in `old`'s place (`ReplaceGroupVoter`)."""

    group_id: int
    old: int
    new: int


@dataclass(frozen=True, slots=True)
class ProposeRemoval:
    """A learner of a data group on a leaving node (a move or join whose target drained or died
    past its grace) will never be of use: ask group 0 to take it out, which frees the group for
    the rebalancer's next move."""

    group_id: int
    node_id: int


@dataclass(frozen=True, slots=True)
class ProposePromotion:
    """A caught-up learner of an under-replicated group: ask group 0 to make it a voter."""

    group_id: int
    node_id: int


@dataclass(frozen=True, slots=True)
class ProposeLeaderHints:
    """This node leads `group_ids`, which the routing table says another node (or no node)
    leads: ask group 0 to record this node (`SetGroupLeader`, one entry for all of them), so
    `status`, `locate` and a new client's first request find the leader without a detour
    through a node that lost it or died."""

    group_ids: tuple[int, ...]


Action = (
    CreateGroup
    | BootstrapGroup
    | DropGroup
    | AddLearner
    | PromoteVoter
    | RemoveMember
    | TransferLeader
    | ProposeDemotion
    | ProposePromotion
    | ProposeReplacement
    | ProposeRemoval
    | ProposeLeaderHints
)


PlanInputs = tuple[
    tuple[tuple[int, tuple[int, ...], tuple[int, ...], int], ...],
    frozenset[int],
    frozenset[int],
    frozenset[int],
]
"""What `plan_reconcile` reads of group 0's state (`plan_inputs`)."""


def plan_inputs(
    routing: RoutingTable, leaving: frozenset[int], move_targets: frozenset[int]
) -> PlanInputs:
    """Everything of group 0's state that `plan_reconcile` reads: each group's voters,
    learners and recorded leader, which groups hold no vShard, the leaving nodes and the move
    targets. A metadata change that leaves these equal (a vShard move's begin or flip between
    groups that keep vShards) cannot change a round's plan, so the shell runs no round for it;
    what changes in Raft alone is caught by its timer."""
    routes = tuple(
        (r.group_id, r.voters, r.learners, r.leader) for r in map(routing.route, routing.group_ids)
    )
    holding = frozenset(np.unique(routing.vshard_to_group).tolist())
    empty = frozenset(g for g in routing.group_ids if g not in holding)
    # The plan reads move targets only of groups that hold no vShard.
    return routes, empty, leaving, move_targets & empty


def plan_reconcile(
    self_id: int,
    routing: RoutingTable,
    local: Mapping[int, LocalGroup],
    replication_factor: int,
    balance_leaders: bool = False,
    leaving: frozenset[int] = frozenset(),
    orphaned: frozenset[int] = frozenset(),
    move_targets: frozenset[int] = frozenset(),
) -> list[Action]:
    """The next action for every group that needs one, in group order; then, when nothing else
    is to be done here, at most one leadership hand-over towards balance; then the groups this
    node leads whose recorded leader is another (`ProposeLeaderHints`). `leaving`: nodes whose
    replicas are being moved off (draining, or dead past their grace): a replica move's learner
    replaces one of them first. `orphaned`: local groups whose replica has known no leader for
    `ORPHAN_AFTER_S` (the shell's clock). `move_targets`: groups a vShard move in flight
    imports into."""
    actions: list[Action] = []
    desired_groups = set(routing.groups_of_node(self_id))
    for group_id in sorted(desired_groups - set(local)):
        voters = routing.route(group_id).voters
        if self_id not in voters:
            actions.append(CreateGroup(group_id))
        elif any(v != self_id for v in voters):
            actions.append(ProposeDemotion(group_id))
        elif (
            group_id != METADATA_GROUP_ID
            and not len(routing.vshards_of_group(group_id))
            and group_id not in move_targets
        ):
            # The sole voter of a group that holds no vShard and takes none in: a group just
            # added (`add-groups`), or one whose only copy was lost while it held nothing.
            # Either way an empty group of one is exactly right.
            actions.append(BootstrapGroup(group_id))
        # else: the sole voter of a group with data lost its only copy; nothing can restore it.
    for group_id, group in sorted(local.items()):
        unwanted = group_id not in routing.group_ids or group_id not in desired_groups
        gone = self_id not in group.voters and self_id not in group.learners
        if unwanted and (gone or group_id in orphaned):
            # Gone: Raft took this node out. Orphaned: routing moved the group away while this
            # replica could not hear of its removal; it knows no leader and never will (the
            # group's leader no longer sends to it), so it would campaign forever.
            actions.append(DropGroup(group_id))
            continue
        if not group.is_leader or group_id not in routing.group_ids:
            continue
        action = _leader_step(self_id, routing, group, replication_factor, leaving)
        if action is not None:
            actions.append(action)
    if balance_leaders and not actions:
        transfer = plan_leader_balance(self_id, routing, local)
        if transfer is not None:
            actions.append(transfer)
    hints = stale_leader_hints(self_id, routing, local)
    if hints:
        actions.append(ProposeLeaderHints(hints))
    return actions


def stale_leader_hints(
    self_id: int, routing: RoutingTable, local: Mapping[int, LocalGroup]
) -> tuple[int, ...]:
    """The groups this node leads whose route names another leader while it is a voter there
    (the only leader `SetGroupLeader` records), in group order."""
    return tuple(
        g.group_id
        for g in sorted(local.values(), key=lambda g: g.group_id)
        if g.is_leader
        and g.group_id in routing.group_ids
        and routing.route(g.group_id).leader != self_id
        and self_id in routing.route(g.group_id).voters
    )


def plan_leader_balance(
    self_id: int, routing: RoutingTable, local: Mapping[int, LocalGroup]
) -> TransferLeader | None:
    """One data group this node leads to hand to the caught-up voter leading the fewest, if
    this node leads at least `LEADER_IMBALANCE_MIN` more than it."""
    data = [
        g
        for g in local.values()
        if g.group_id != METADATA_GROUP_ID and g.group_id in routing.group_ids
    ]
    leads = Counter(g.leader_id for g in data if g.leader_id)
    for group in sorted(data, key=lambda g: g.group_id):
        if not group.is_leader:
            continue
        candidates = [
            v
            for v in group.voters
            if v != self_id and v in routing.route(group.group_id).voters and _caught_up(group, v)
        ]
        if not candidates:
            continue
        target = min(candidates, key=lambda v: (leads[v], v))
        if leads[self_id] - leads[target] >= LEADER_IMBALANCE_MIN:
            return TransferLeader(group.group_id, target)
    return None


def _caught_up(group: LocalGroup, node_id: int) -> bool:
    matched = group.matched.get(node_id, 0)
    return matched > 0 and matched + CAUGHT_UP_LAG_ENTRIES_MAX >= group.commit_index


def _leader_step(
    self_id: int,
    routing: RoutingTable,
    group: LocalGroup,
    replication_factor: int,
    leaving: frozenset[int],
) -> Action | None:
    route = routing.route(group.group_id)
    desired = set(route.voters) | set(route.learners)
    actual = set(group.voters) | set(group.learners)
    for node_id in sorted(desired - actual):
        return AddLearner(group.group_id, node_id)
    for node_id in sorted(set(route.voters) & set(group.learners)):
        return PromoteVoter(group.group_id, node_id)
    for node_id in sorted(set(route.learners) & set(group.voters) - {self_id}):
        # Routing demoted a voter (it lost its replica and rejoins): out of the group, then
        # back as a learner (next round). Demoting it in place would keep its Raft progress,
        # whose matched index is that of the copy it lost: it would look caught up and be
        # promoted before it holds those entries again.
        return RemoveMember(group.group_id, node_id)
    if (
        group.group_id != METADATA_GROUP_ID
        and self_id in route.learners
        and self_id in group.voters
    ):
        # Routing lists this leader as a move's learner while Raft counts it a voter: a leader
        # died between promoting a move's learner and removing the voter it replaced (this
        # node, elected next), and a later move put this node back as a learner. Nothing else
        # ever changes either side; a leader holds every committed entry, so it is caught up.
        if plan_promotion(routing, group.group_id, self_id, replication_factor):
            return ProposePromotion(group.group_id, self_id)
        old = replaced_by_move(routing, route.voters, leaving)
        return ProposeReplacement(group.group_id, old, self_id)
    for node_id in sorted(actual - desired):
        if node_id == self_id:
            successors = sorted(set(route.voters) & set(group.voters) - {self_id})
            if successors:
                return TransferLeader(group.group_id, successors[0])
            continue
        return RemoveMember(group.group_id, node_id)
    if group.group_id != METADATA_GROUP_ID:
        for node_id in sorted(set(route.learners) & leaving):
            return ProposeRemoval(group.group_id, node_id)
    for node_id in sorted(set(route.learners) & set(group.learners)):
        matched = group.matched.get(node_id, 0)
        caught_up = matched > 0 and matched + CAUGHT_UP_LAG_ENTRIES_MAX >= group.commit_index
        if not caught_up:
            continue
        if plan_promotion(routing, group.group_id, node_id, replication_factor):
            return ProposePromotion(group.group_id, node_id)
        if group.group_id != METADATA_GROUP_ID:
            # A learner beyond RF voters is a replica move in flight (`rebalance`): it
            # replaces a voter once caught up.
            return ProposeReplacement(
                group.group_id, replaced_by_move(routing, route.voters, leaving), node_id
            )
    return None


def replaced_by_move(
    routing: RoutingTable, voters: tuple[int, ...], leaving: frozenset[int]
) -> int:
    """Which voter a replica move's learner replaces: one on a leaving node (lowest id), else
    the one on the node holding the most data-group replicas (the rebalancer moved off the most
    loaded node; ties go to the highest id, never decided by who leads)."""
    gone = sorted(v for v in voters if v in leaving)
    if gone:
        return gone[0]
    replicas = replica_counts(routing)
    return max(voters, key=lambda v: (replicas[v], v))
