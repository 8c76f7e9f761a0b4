"""The membership reconciler's plan: routing says who should serve a group, Raft follows."""

from __future__ import annotations

from nodedb_cluster.reconcile import (
    CAUGHT_UP_LAG_ENTRIES_MAX,
    AddLearner,
    CreateGroup,
    DropGroup,
    LocalGroup,
    PromoteVoter,
    ProposeDemotion,
    ProposeLeaderHints,
    ProposePromotion,
    ProposeReplacement,
    RemoveMember,
    TransferLeader,
    plan_inputs,
    plan_reconcile,
)
from nodedb_cluster.routing.table import RoutingTable

RF = 3


def routing_with(group_id: int, voters: tuple[int, ...], learners: tuple[int, ...]) -> RoutingTable:
    table = RoutingTable.bootstrap(1, 1)
    table.set_members(0, voters, learners)
    table.set_members(group_id, voters, learners)
    return table


def leader(
    group_id: int,
    voters: tuple[int, ...],
    learners: tuple[int, ...] = (),
    commit: int = 100,
    matched: dict[int, int] | None = None,
) -> LocalGroup:
    return LocalGroup(group_id, True, voters, learners, commit, matched or {})


def test_missing_local_replica_is_created_and_foreign_one_dropped() -> None:
    routing = routing_with(1, (1,), (2,))
    local = {
        0: LocalGroup(0, False, (1,), (2,), 5),
        7: LocalGroup(7, False, (1,), (), 5),  # group 7 is not in routing; we are not in its conf
    }
    assert plan_reconcile(2, routing, local, RF) == [CreateGroup(1), DropGroup(7)]


def test_replica_still_in_the_raft_conf_is_kept_until_the_leader_removes_it() -> None:
    routing = routing_with(1, (1,), ())
    local = {
        0: LocalGroup(0, False, (1,), (), 5),
        1: LocalGroup(1, False, (1,), (2,), 5),
    }
    # Group 0 dropped us from routing and Raft alike: free it. Group 1 still has us as a Raft
    # learner although routing does not: keep it until its leader removes us.
    assert plan_reconcile(2, routing, local, RF) == [DropGroup(0)]


def test_leader_adds_the_learner_routing_asks_for() -> None:
    routing = routing_with(1, (1,), (2,))
    local = {0: leader(0, (1,), (2,)), 1: leader(1, (1,))}
    assert plan_reconcile(1, routing, local, RF) == [AddLearner(1, 2)]


def test_one_change_per_group_per_round() -> None:
    routing = routing_with(1, (1,), (2, 3))
    local = {0: leader(0, (1,), (2, 3)), 1: leader(1, (1,))}
    assert plan_reconcile(1, routing, local, RF) == [AddLearner(1, 2)]


def test_caught_up_learner_is_proposed_for_promotion_and_a_lagging_one_is_not() -> None:
    routing = routing_with(1, (1,), (2, 3))
    caught_up = 100 - CAUGHT_UP_LAG_ENTRIES_MAX
    local = {
        0: leader(0, (1,), (2, 3), matched={2: 0, 3: 0}),
        1: leader(1, (1,), (2, 3), matched={2: 10, 3: caught_up}),
    }
    assert plan_reconcile(1, routing, local, RF) == [ProposePromotion(1, 3)]


def test_learner_that_never_acknowledged_an_append_is_not_promoted() -> None:
    # A young group: commit 5 is within the lag of matched 0, yet node 2 never answered.
    routing = routing_with(1, (1,), (2,))
    local = {0: leader(0, (1,), (2,), commit=5, matched={2: 0}), 1: leader(1, (1,), (2,), commit=5)}
    assert plan_reconcile(1, routing, local, RF) == []


def test_routing_voter_that_is_a_raft_learner_is_promoted() -> None:
    routing = routing_with(1, (1, 2), ())
    local = {0: leader(0, (1, 2)), 1: leader(1, (1,), (2,))}
    assert plan_reconcile(1, routing, local, RF) == [PromoteVoter(1, 2)]


def test_member_routing_dropped_is_removed_and_a_leaving_leader_hands_over() -> None:
    routing = routing_with(1, (2, 3), ())
    local = {0: leader(0, (1, 2, 3)), 1: leader(1, (1, 2, 3))}
    # Node 1 leads both groups but routing no longer lists it: it transfers leadership first.
    assert plan_reconcile(1, routing, local, RF) == [TransferLeader(0, 2), TransferLeader(1, 2)]
    local = {0: leader(0, (2, 3)), 1: leader(1, (2, 3, 4))}
    # Node 2 leads both now; routing knows no leader of either (node 1 left their voters).
    assert plan_reconcile(2, routing, local, RF) == [RemoveMember(1, 4), ProposeLeaderHints((0, 1))]


def test_followers_plan_nothing_for_groups_they_hold() -> None:
    routing = routing_with(1, (1,), (2,))
    local = {0: LocalGroup(0, False, (1,), (), 1), 1: LocalGroup(1, False, (1,), (), 1)}
    assert plan_reconcile(2, routing, local, RF) == []


def data_routing(groups: int, voters: tuple[int, ...]) -> RoutingTable:
    table = RoutingTable.bootstrap(groups, 1)
    for g in range(groups + 1):
        table.set_members(g, voters, ())
    return table


def replicas(
    self_id: int, leaders: dict[int, int], matched: int = 100, voters: tuple[int, ...] = (1, 2, 3)
) -> dict[int, LocalGroup]:
    """This node's view: group -> its leader; the node's own groups carry matched indexes."""
    return {
        g: LocalGroup(
            g,
            lead == self_id,
            voters,
            (),
            100,
            {v: matched for v in voters if v != self_id} if lead == self_id else {},
            lead,
        )
        for g, lead in leaders.items()
    }


def test_a_node_leading_every_data_group_hands_one_to_the_least_loaded_voter() -> None:
    routing = data_routing(4, (1, 2, 3))
    local = replicas(1, {0: 1, 1: 1, 2: 1, 3: 1, 4: 1})
    assert plan_reconcile(1, routing, local, RF, balance_leaders=True) == [TransferLeader(1, 2)]
    # One round later node 2 leads group 1: the next goes to node 3, which leads none.
    local = replicas(1, {0: 1, 1: 2, 2: 1, 3: 1, 4: 1})
    assert plan_reconcile(1, routing, local, RF, balance_leaders=True) == [TransferLeader(2, 3)]


def test_a_difference_of_one_is_balanced_and_the_metadata_group_does_not_count() -> None:
    routing = data_routing(4, (1, 2, 3))
    # Node 1 leads groups 0 (metadata), 1 and 2; nodes 2 and 3 one data group each.
    local = replicas(1, {0: 1, 1: 1, 2: 1, 3: 2, 4: 3})
    assert plan_reconcile(1, routing, local, RF, balance_leaders=True) == []
    view2 = replicas(2, {0: 1, 1: 1, 2: 1, 3: 2, 4: 3})
    # No hand-over; only the hint for the group routing says node 1 leads.
    assert plan_reconcile(2, routing, view2, RF, balance_leaders=True) == [ProposeLeaderHints((3,))]


def test_no_hand_over_to_a_lagging_voter_nor_while_membership_changes_or_when_off() -> None:
    routing = data_routing(4, (1, 2, 3))
    lagging = replicas(
        1, {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}, matched=100 - CAUGHT_UP_LAG_ENTRIES_MAX - 1
    )
    assert plan_reconcile(1, routing, lagging, RF, balance_leaders=True) == []
    local = replicas(1, {0: 1, 1: 1, 2: 1, 3: 1, 4: 1})
    assert plan_reconcile(1, routing, local, RF) == [], "off by default"
    routing.set_members(3, (1, 2, 3), (4,))  # a learner to add first: membership comes first
    assert plan_reconcile(1, routing, local, RF, balance_leaders=True) == [AddLearner(3, 4)]


def test_a_voter_without_its_replica_asks_to_be_demoted_instead_of_creating_an_empty_voter() -> (
    None
):
    # Node 3 lost group 1 (its log's tail, or all of it): routing still lists it as a voter.
    routing = routing_with(1, (1, 2, 3), ())
    local = {0: LocalGroup(0, False, (1, 2, 3), (), 5)}
    assert plan_reconcile(3, routing, local, RF) == [ProposeDemotion(1)]
    # Once routing says learner, the empty learner replica is created.
    routing.set_members(1, (1, 2), (3,))
    assert plan_reconcile(3, routing, local, RF) == [CreateGroup(1)]


def test_a_sole_voter_that_lost_its_replica_has_no_one_to_ask() -> None:
    routing = routing_with(1, (3,), ())
    local = {0: LocalGroup(0, False, (3,), (), 5)}
    assert plan_reconcile(3, routing, local, RF) == []


def test_a_voter_routing_demoted_is_removed_readded_as_learner_and_promoted_caught_up() -> None:
    routing = routing_with(1, (1, 2), (3,))
    local = {0: leader(0, (1, 2), (3,)), 1: leader(1, (1, 2, 3), matched={3: 100})}
    # Out first (a demotion in place would keep its stale matched index), back as a learner.
    assert plan_reconcile(1, routing, local, RF) == [RemoveMember(1, 3)]
    local[1] = leader(1, (1, 2))
    assert plan_reconcile(1, routing, local, RF) == [AddLearner(1, 3)]
    local[1] = leader(1, (1, 2), (3,), commit=100, matched={3: 100})
    assert plan_reconcile(1, routing, local, RF) == [ProposePromotion(1, 3)]


def test_a_leader_routing_lists_as_a_learner_finishes_the_move_onto_itself() -> None:
    """Seen in a chaos run (5 nodes, seed 9): leader 1 of group 1 promoted move learner 4 in
    Raft, routing replaced voter 3 by 4, then 1 was SIGKILLed before removing 3 from Raft; 3
    was elected, and the rebalancer moved draining node 1's replica onto 3: routing voters
    (1, 2, 4) + learner 3, Raft voters (1, 2, 3, 4). Leader 3 proposes to replace 1 (leaving) by
    itself; without it neither side ever changed (the drain of node 1 never finished)."""
    routing = routing_with(1, (1, 2, 4), (3,))
    local = {0: leader(0, (1, 2, 3, 4)), 1: leader(1, (1, 2, 3, 4), matched={1: 0})}
    leaving = frozenset({1})
    assert plan_reconcile(3, routing, local, RF, False, leaving)[-1:] == [
        ProposeReplacement(1, 1, 3)
    ]
    under_rf = routing_with(1, (2, 4), (3,))
    local = {0: leader(0, (2, 3, 4)), 1: leader(1, (2, 3, 4))}
    assert plan_reconcile(3, under_rf, local, RF)[-1:] == [ProposePromotion(1, 3)]


def test_plan_inputs_change_only_with_what_a_plan_reads() -> None:
    """A vShard moving between groups that keep vShards changes nothing a plan reads (no round
    is woken for it); members, a leader hint (a stale one is proposed again), a group emptied or
    added, a leaving node, or a move into an empty group do."""
    table = data_routing(3, (1, 2, 3))
    base = plan_inputs(table, frozenset(), frozenset())
    moved = table.copy()
    moved.assign_vshard(0, 2)
    assert plan_inputs(moved, frozenset(), frozenset({2})) == base
    moved.set_leader(1, 2)
    assert plan_inputs(moved, frozenset(), frozenset({2})) != base
    members = table.copy()
    members.set_members(1, (1, 2), (4,))
    assert plan_inputs(members, frozenset(), frozenset()) != base
    assert plan_inputs(table, frozenset({3}), frozenset()) != base
    grown = table.copy()
    grown.add_group(4, (1, 2, 3))
    with_group = plan_inputs(grown, frozenset(), frozenset())
    assert with_group != base
    assert plan_inputs(grown, frozenset(), frozenset({4})) != with_group, "a move into it"
    emptied = table.copy()
    for v in emptied.vshards_of_group(3).tolist():
        emptied.assign_vshard(v, 1)
    assert plan_inputs(emptied, frozenset(), frozenset()) != base
