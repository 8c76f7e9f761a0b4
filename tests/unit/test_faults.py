"""The fault harness's pure parts: schedules are reproducible and bounded, and the post-run
checks catch deliberately broken inputs (a lost acknowledged write, a stale read, diverged
replicas, a voter without a replica)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

import support
from nodedb_cluster.checker import Op, OpKind, Outcome, Verdict, check
from nodedb_cluster.cli import main
from nodedb_cluster.faults.checks import (
    check_history,
    convergence_problems,
    moves_in_flight,
    ops_from_porcupine,
    routing_problems,
    stale_replicas,
)
from nodedb_cluster.faults.nemesis import (
    ADD_GROUPS_PER_SCHEDULE_MAX,
    DATA_GROUPS_MAX,
    DRAINING_TARGETABLE_S,
    FAULT_KINDS,
    FAULTS_MAX,
    MOVE_VSHARDS_MAX,
    MOVER_FAULTS,
    NODE_KINDS,
    WARMUP_S,
    format_schedule,
    plan_schedule,
)
from nodedb_cluster.faults.run import SLOW_FAILOVER_MS, RunResult, slow_failovers_ms
from nodedb_cluster.faults.summary import percentile
from nodedb_cluster.localcluster import groups_formed

# --- schedules ------------------------------------------------------------------------------------


def test_same_seed_same_schedule_and_different_seeds_differ() -> None:
    a = plan_schedule(22, 15.0, [1, 2, 3], [1, 3])
    assert a == plan_schedule(22, 15.0, [1, 2, 3], [1, 3])
    assert format_schedule(22, a) == format_schedule(22, plan_schedule(22, 15.0, [3, 1, 2], [3, 1]))
    assert a != plan_schedule(23, 15.0, [1, 2, 3], [1, 3])


def test_schedule_stays_inside_the_run_and_names_valid_targets() -> None:
    for seed in range(200):
        faults = plan_schedule(seed, 20.0, [1, 2, 3], [2, 4])
        assert faults, seed
        assert faults[0].at_s >= WARMUP_S
        for prev, nxt in itertools.pairwise(faults):
            assert nxt.at_s >= prev.at_s + prev.hold_s  # one fault at a time
        for f in faults:
            assert f.at_s + f.hold_s <= 20.0
            assert f.kind in FAULT_KINDS
            if f.kind in NODE_KINDS:
                assert f.node_id in (1, 2, 3)
            if f.kind == "kill_leader":
                assert f.group_id in (2, 4)


def test_schedule_bounded_and_restricted_to_the_kinds_asked() -> None:
    assert len(plan_schedule(1, 1e9, [1], [1])) == FAULTS_MAX
    only = plan_schedule(5, 60.0, [1, 2, 3], [], kinds=("pause", "kill_leader"))
    assert {f.kind for f in only} == {"pause"}  # no group known: no leader kills


def test_without_membership_kinds_a_schedule_is_what_it_was() -> None:
    """Seeds recorded before add_node / decommission existed replay the same faults."""
    old = ("kill", "kill_leader", "pause", "restart_all", "partition")
    faults = plan_schedule(10, 15.0, [1, 2, 3], [1, 2], old, spare_ids=[4, 5])  # type: ignore[arg-type]
    assert [(f.at_s, f.kind, f.node_id, f.group_id) for f in faults] == SEED_10_BEFORE


SEED_10_BEFORE = [
    (1.5, "pause", 2, 0),
    (5.36, "restart_all", 0, 0),
    (9.0, "partition", 3, 0),
    (12.29, "kill_leader", 0, 2),
]
"""`plan_schedule(10, 15.0, [1, 2, 3], [1, 2], <the five old kinds>)` at commit c09d58a."""


def test_membership_faults_follow_the_plan_model_of_who_runs() -> None:
    """add_node starts each spare once, lowest first; decommission never leaves fewer than RF
    active nodes; no fault aims at a decommissioned node once it had time to drain; a node
    that joined is a target like the others."""
    seen: set[str] = set()
    for seed in range(300):
        faults = plan_schedule(
            seed,
            40.0,
            [1, 2, 3, 4, 5],
            [1, 2],
            FAULT_KINDS,
            spare_ids=[6, 7],
            replication_factor=3,
            vshards=[5, 9],
            data_groups=4,
        )
        active, spares = {1, 2, 3, 4, 5}, [6, 7]
        gone: dict[int, float] = {}
        for f in faults:
            seen.add(f.kind)
            if f.kind in NODE_KINDS and f.kind != "decommission":
                drained = f.node_id in gone and f.at_s - gone[f.node_id] >= DRAINING_TARGETABLE_S
                assert f.node_id in active | set(gone), (seed, f)
                assert not drained, (seed, f)
            if f.kind == "add_node":
                assert f.node_id == spares.pop(0), (seed, f)
                active.add(f.node_id)
            if f.kind == "decommission":
                assert f.node_id in active, (seed, f)
                active.remove(f.node_id)
                gone[f.node_id] = f.at_s
                assert len(active) >= 3, (seed, f)
    assert seen == set(FAULT_KINDS)


def test_only_decommissions_kill_their_draining_node_and_some_do() -> None:
    faults = [
        f
        for seed in range(100)
        for f in plan_schedule(seed, 30.0, [1, 2, 3, 4, 5], [1], FAULT_KINDS, [6, 7])
    ]
    assert not any(f.kill_draining for f in faults if f.kind != "decommission")
    assert {f.kill_draining for f in faults if f.kind == "decommission"} == {True, False}
    killing = next(f for f in faults if f.kill_draining)
    assert "SIGKILL it while it drains" in killing.describe()


def test_membership_kinds_alone_stop_when_nothing_is_left_to_do() -> None:
    """Three nodes, one spare, RF 3: add the spare, decommission one node, then neither kind
    can fire again (no spare, three active), so the schedule ends."""
    faults = plan_schedule(4, 60.0, [1, 2, 3], [1], ("add_node", "decommission"), spare_ids=[4])
    assert [f.kind for f in faults] == ["add_node", "decommission"]
    assert faults[0].node_id == 4


def test_without_placement_kinds_a_membership_schedule_is_what_it_was() -> None:
    """Seeds recorded before move_vshard / add_groups existed replay the same faults, whatever
    vShards and groups are passed."""
    old = ("kill", "kill_leader", "pause", "restart_all", "partition", "add_node", "decommission")
    for seed in range(50):
        before = plan_schedule(seed, 30.0, [1, 2, 3, 4, 5], [1, 2], old, [6, 7])  # type: ignore[arg-type]
        after = plan_schedule(
            seed,
            30.0,
            [1, 2, 3, 4, 5],
            [1, 2],
            old,  # type: ignore[arg-type]
            [6, 7],
            vshards=[3, 8],
            data_groups=4,
        )
        assert before == after, seed
    nine = plan_schedule(9, 30.0, [1, 2, 3, 4, 5], [1, 2], old, [6, 7])  # type: ignore[arg-type]
    assert [(f.at_s, f.kind, f.node_id, f.group_id) for f in nine] == SEED_9_MEMBERSHIP


SEED_9_MEMBERSHIP = [
    (1.5, "pause", 1, 0),
    (3.94, "decommission", 1, 0),
    (6.51, "partition", 3, 0),
    (9.01, "kill", 3, 0),
    (11.87, "pause", 4, 0),
    (15.36, "add_node", 6, 0),
    (18.61, "kill_leader", 0, 1),
    (21.86, "kill", 3, 0),
    (25.15, "decommission", 2, 0),
]
"""`plan_schedule(9, 30.0, [1..5], [1, 2], <the seven kinds before placement>, [6, 7])` at
commit 01d27a0 (before move_vshard / add_groups)."""


def test_vshard_moves_pick_the_workloads_vshards_and_sometimes_hit_the_mover() -> None:
    moves = [
        f
        for seed in range(200)
        for f in plan_schedule(
            seed, 30.0, [1, 2, 3, 4, 5], [1], FAULT_KINDS, [6, 7], vshards=[4, 4, 9, 700, 12, 3]
        )
        if f.kind == "move_vshard"
    ]
    assert moves
    for f in moves:
        assert 1 <= len(f.vshards) <= MOVE_VSHARDS_MAX
        assert len(set(f.vshards)) == len(f.vshards)
        assert set(f.vshards) <= {3, 4, 9, 12, 700}
        assert 0.0 <= f.target_pick < 1.0
        assert f.node_id == 0
        assert f.count == 0
    assert {len(f.vshards) for f in moves} == {1, 2, 3, 4}
    assert {f.mover_fault for f in moves} == set(MOVER_FAULTS)
    hit = next(f for f in moves if f.mover_fault == "kill")
    assert "kill the mover" in hit.describe()
    # No vShard known: no move is planned.
    none = plan_schedule(1, 60.0, [1, 2, 3], [1], ("move_vshard", "kill"))
    assert {f.kind for f in none} == {"kill"}


def test_added_groups_stay_bounded_per_schedule_and_in_all() -> None:
    for seed in range(300):
        for start in (4, 7, DATA_GROUPS_MAX):
            faults = plan_schedule(
                seed, 60.0, [1, 2, 3], [1], ("add_groups", "pause"), data_groups=start
            )
            adds = [f for f in faults if f.kind == "add_groups"]
            assert len(adds) <= ADD_GROUPS_PER_SCHEDULE_MAX, (seed, start)
            assert all(1 <= f.count <= 2 for f in adds), (seed, start)
            assert start + sum(f.count for f in adds) <= DATA_GROUPS_MAX, (seed, start)
    only = plan_schedule(3, 60.0, [1, 2, 3], [1], ("add_groups",), data_groups=4)
    assert 1 <= len(only) <= ADD_GROUPS_PER_SCHEDULE_MAX  # then nothing is left to plan


# --- history checks (the checker, fed by the harness) -------------------------------------------


def _put(op_id: int, process: int, key: str, value: str, t0: float, t1: float | None) -> Op:
    outcome = Outcome.OK if t1 is not None else Outcome.INFO
    return Op(op_id, process, OpKind.PUT, key, value, None, None, outcome, t0, t1)


def _get(op_id: int, process: int, key: str, value: str | None, t0: float, t1: float) -> Op:
    return Op(op_id, process, OpKind.GET, key, None, None, value, Outcome.OK, t0, t1)


def test_a_clean_history_passes() -> None:
    ops = [_put(0, 0, "k", "a", 1, 2), _put(1, 1, "k", "b", 3, None), _get(2, 2, "k", "b", 5, 6)]
    verdict = check_history(ops, {"k": "b"})
    assert verdict.anomalies == []
    assert verdict.linearizable is True


def test_a_lost_acknowledged_write_is_caught() -> None:
    ops = [_put(0, 0, "k", "a", 1, 2), _put(1, 0, "k", "b", 3, 4), _get(2, 1, "k", "a", 5, 6)]
    verdict = check_history(ops, {"k": "a"})
    assert verdict.linearizable is False
    assert any("key k: acknowledged write lost: final value 'a'" in a for a in verdict.anomalies)
    assert any("key k: not linearizable" in a for a in verdict.anomalies)


def test_a_stale_read_is_caught_even_when_the_final_state_is_right() -> None:
    ops = [
        _put(0, 0, "k", "a", 1, 2),
        _put(1, 0, "k", "b", 3, 4),
        _get(2, 1, "k", "a", 5, 6),  # read after b was acknowledged
        _get(3, 1, "k", "b", 7, 8),
    ]
    verdict = check_history(ops, {"k": "b"})
    assert verdict.linearizable is False
    (anomaly,) = verdict.anomalies
    assert anomaly.startswith("key k: not linearizable")


# --- replica convergence --------------------------------------------------------------------------


def _status(
    node: int,
    groups: dict[int, tuple[int, int, int] | None],
    voters: tuple[int, ...] = (1, 2, 3),
    learners: tuple[int, ...] = (),
    leader: int = 1,
    term: int = 2,
) -> dict[str, object]:
    return {
        "node_id": node,
        "routing_epoch": 1,
        "groups": [
            {
                "group_id": g,
                "role": "leader" if node == leader else "follower",
                "term": term,
                "voters": list(voters),
                "learners": list(learners),
                "kv": [] if kv is None else list(kv),
            }
            for g, kv in groups.items()
        ],
    }


MEMBERS = {1, 2, 3}


def test_equal_replicas_converge_and_a_diverged_digest_is_caught() -> None:
    same = {n: _status(n, {1: (9, 3, 77), 2: (4, 1, 5)}) for n in (1, 2, 3)}
    assert convergence_problems(same, MEMBERS, 3) == []
    broken = dict(same)
    broken[3] = _status(3, {1: (9, 3, 78), 2: (4, 1, 5)})
    (problem,) = convergence_problems(broken, MEMBERS, 3)
    assert problem.startswith("group 1: replicas differ")
    assert "node 3: (9, 3, 78)" in problem


def test_statuses_without_digests_do_not_pass_vacuously() -> None:
    statuses = {n: _status(n, {1: None}) for n in (1, 2, 3)}
    problems = convergence_problems(statuses, MEMBERS, 3)
    assert problems[0].startswith("no node reports a KV replica digest")


def test_a_voter_without_a_replica_is_caught() -> None:
    statuses = {n: _status(n, {1: (9, 3, 77)}) for n in (1, 2)}
    (problem,) = convergence_problems(statuses, MEMBERS, 3)
    assert problem == "group 1: no replica state from voters [3]"


def test_five_nodes_compare_the_leaders_configuration_only() -> None:
    """Five members, RF 3: group 1 on 3, 4, 5 (led by 3). Node 1 still holds an old replica
    with another configuration and state (removed while it could not hear of it): not
    compared, named by `stale_replicas`; a learner left over or a missing group leader is."""
    members = {1, 2, 3, 4, 5}
    statuses = {n: _status(n, {}) for n in (1, 2)}
    statuses.update({n: _status(n, {1: (20, 6, 9)}, (3, 4, 5), leader=3) for n in (3, 4, 5)})
    statuses[1] = _status(1, {1: (11, 2, 4)}, (1, 3, 4, 5), leader=0)
    assert convergence_problems(statuses, members, 3) == []
    assert stale_replicas(statuses) == [(1, 1)]
    stuck = dict(statuses)
    stuck[3] = _status(3, {1: (20, 6, 9)}, (3, 4, 5), learners=(2,), leader=3)
    (problem,) = convergence_problems(stuck, members, 3)
    assert problem.startswith("group 1: learners [2] not promoted or removed (leader 3")
    assert convergence_problems(statuses, members - {5}, 3) == [
        "group 1: members [5] are not running members"
    ]
    leaderless = {n: _status(n, {1: (20, 6, 9)}, (3, 4, 5), leader=0) for n in (3, 4, 5)}
    assert convergence_problems(leaderless, members, 3) == ["group 1: no leader"]


def test_too_few_voters_and_a_routing_disagreement_are_caught() -> None:
    statuses = {n: _status(n, {1: (9, 3, 77)}, (1, 2)) for n in (1, 2)}
    assert convergence_problems(statuses, MEMBERS, 3) == [
        "group 1: voters [1, 2] (leader 1), want 3"
    ]
    same = {n: _status(n, {1: (9, 3, 77)}) for n in (1, 2, 3)}
    same[1]["placement"] = [[1, 1, 1], [2, 1, 0], [3, 0, 0], [4, 1, 0]]
    (problem,) = convergence_problems(same, MEMBERS, 3)
    assert problem.startswith("routing's replicas per node {1: 1, 2: 1, 4: 1} != leaders'")


def test_the_metadata_group_keeps_learners_beyond_rf() -> None:
    meta = {n: _status(n, {0: None, 1: (9, 3, 77)}, learners=(4,)) for n in (1, 2, 3)}
    for doc in meta.values():
        groups = doc["groups"]
        assert isinstance(groups, list)
        groups[1]["learners"] = []
    assert convergence_problems(meta, {1, 2, 3, 4}, 3) == []
    assert groups_formed(meta, 3)
    assert convergence_problems(meta, {1, 2, 3, 4, 5}, 3) == [
        "group 0: running nodes [5] are not members"
    ]


# --- percentiles ---------------------------------------------------------------------------------


def _leading(node: int, group: int, vshards: int) -> dict[str, object]:
    return {
        "group_id": group,
        "role": "leader",
        "term": 2,
        "leader": node,
        "voters": [node],
        "learners": [],
        "vshards": vshards,
    }


def test_moves_in_flight_lists_each_move_once_with_the_movers_phase() -> None:
    statuses: dict[int, dict[str, Any]] = {
        1: {"vshard_moves": [[7, 1, 2, 30, "elsewhere", 0, 0]]},
        2: {"vshard_moves": [[7, 1, 2, 30, "copying", 1, 3], [9, 2, 1, 31, "elsewhere", 0, 0]]},
        3: {"vshard_moves": []},
    }
    assert moves_in_flight(statuses) == [(7, 1, 2, 30, "copying"), (9, 2, 1, 31, "elsewhere")]
    assert moves_in_flight({1: {"vshard_moves": []}, 2: {}}) == []


def test_routing_problems_catch_a_lagging_node_and_a_group_without_leader() -> None:
    statuses = {1: {"groups": [_leading(1, 1, 3)]}, 2: {"groups": [_leading(2, 2, 1)]}}
    same = [1, 1, 2, 1]
    assert routing_problems({1: (5, same), 2: (5, same)}, statuses) == []
    lagging = routing_problems({1: (5, same), 2: (4, [1, 1, 1, 1])}, statuses)
    assert lagging == ["node 2 routes at epoch 4, node 1 at 5; 1 vShards differ (vShard 2: 1 vs 2)"]
    # Same epoch, different maps: caught too.
    assert len(routing_problems({1: (5, same), 2: (5, [1, 1, 1, 2])}, statuses)) == 1
    orphan = routing_problems({1: (6, [1, 1, 3, 1])}, statuses)
    assert "routing sends 1 vShards to group 3, which has no leader" in orphan
    assert "group 2: routing gives it" not in " ".join(orphan)  # group 2 holds none: not asked
    miscount = routing_problems(
        {1: (5, [1, 1, 1, 2])},
        {1: {"groups": [_leading(1, 1, 2)]}, 2: {"groups": [_leading(2, 2, 1)]}},
    )
    assert miscount == ["group 1: routing gives it 3 vShards, its leader 1 reports 2"]
    assert routing_problems({}, statuses) == ["no node answered a routing request"]


def test_percentile_nearest_rank() -> None:
    assert percentile([5.0], 99) == 5.0
    assert percentile([float(i) for i in range(1, 101)], 50) == 50.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0


# --- CLI ------------------------------------------------------------------------------------------


def test_chaos_cli_refuses_unknown_kinds_and_bad_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chaos", "--kinds=kill,bogus", "--no-netns"]) == 2
    assert "unknown fault kind 'bogus'" in capsys.readouterr().err
    assert main(["chaos", "--schedules=0", "--no-netns"]) == 2
    assert "--schedules must be" in capsys.readouterr().err


# --- a real anomaly, kept ------------------------------------------------------------------------


PUT_RETRY_FIXTURE = support.DIR / "fixtures" / "faults_put_retry_seed1029_k4.porcupine.json"
"""Key k4 of `nodedb-cluster chaos --seed 1000` run seed=1029, the 27 operations around the
anomaly: process 2000's put of w0-1136 was sent to the group leader just as it was SIGSTOPped;
the entry committed under the next leader (process 3001 read it at 14.6 s, then wrote w1-1307
.. w1-1348 over it), and the client's blind retry of the put applied it a second time, so reads
at 14.81 s returned w0-1136 again. One put, two effects: not linearizable."""


def test_the_recorded_put_retry_history_is_caught_and_its_legal_twin_passes() -> None:
    ops = ops_from_porcupine(json.loads(PUT_RETRY_FIXTURE.read_text()))
    assert len(ops) == 27
    result = check(ops)
    assert result.verdict is Verdict.ILLEGAL
    late = [
        o for o in ops if o.kind is OpKind.GET and o.output == "w0-1136" and o.invoke_ms > 14800
    ]
    assert len(late) == 2  # the reads that saw the second application
    assert check([o for o in ops if o not in late]).verdict is Verdict.OK


def test_a_slow_failover_is_picked_out_to_keep_the_runs_artifacts() -> None:
    """A passing run with a failover over the bound keeps its logs and history (the tail can
    then be explained); a run of usual failovers keeps nothing."""
    usual = RunResult(seed=1, schedule=(), failovers_ms=[480.0, 760.0])
    assert usual.passed
    assert slow_failovers_ms(usual) == []
    tail = RunResult(seed=2, schedule=(), failovers_ms=[600.0, SLOW_FAILOVER_MS + 715.4])
    assert tail.passed
    assert slow_failovers_ms(tail) == [round(SLOW_FAILOVER_MS + 715.4)]
