"""The membership reconciler's plan: routing says who should serve a group, Raft follows."""

from __future__ import annotations

from nodedb_cluster.reconcile import (
    CAUGHT_UP_LAG_ENTRIES_MAX,
    AddLearner,
    CreateGroup,
    DropGroup,
    LocalGroup,
    PromoteVoter,
    ProposePromotion,
    RemoveMember,
    TransferLeader,
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
    assert plan_reconcile(2, routing, local, RF) == [RemoveMember(1, 4)]


def test_followers_plan_nothing_for_groups_they_hold() -> None:
    routing = routing_with(1, (1,), (2,))
    local = {0: LocalGroup(0, False, (1,), (), 1), 1: LocalGroup(1, False, (1,), (), 1)}
    assert plan_reconcile(2, routing, local, RF) == []
