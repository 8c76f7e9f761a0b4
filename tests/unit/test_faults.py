"""The fault harness's pure parts: schedules are reproducible and bounded, and the post-run
checks catch deliberately broken inputs (a lost acknowledged write, a stale read, diverged
replicas, a voter without a replica)."""

from __future__ import annotations

import itertools
import json

import pytest

import support
from nodedb_cluster.checker import Op, OpKind, Outcome, Verdict, check
from nodedb_cluster.cli import main
from nodedb_cluster.faults.checks import check_history, ops_from_porcupine, replica_divergence
from nodedb_cluster.faults.nemesis import (
    FAULT_KINDS,
    FAULTS_MAX,
    WARMUP_S,
    format_schedule,
    plan_schedule,
)
from nodedb_cluster.faults.run import percentile

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
            if f.kind in ("kill", "pause", "partition"):
                assert f.node_id in (1, 2, 3)
            if f.kind == "kill_leader":
                assert f.group_id in (2, 4)


def test_schedule_bounded_and_restricted_to_the_kinds_asked() -> None:
    assert len(plan_schedule(1, 1e9, [1], [1])) == FAULTS_MAX
    only = plan_schedule(5, 60.0, [1, 2, 3], [], kinds=("pause", "kill_leader"))
    assert {f.kind for f in only} == {"pause"}  # no group known: no leader kills


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


def _status(node: int, groups: dict[int, tuple[int, int, int] | None]) -> dict[str, object]:
    return {
        "node_id": node,
        "groups": [
            {
                "group_id": g,
                "role": "leader" if node == 1 else "follower",
                "voters": [1, 2, 3],
                "kv": [] if kv is None else list(kv),
            }
            for g, kv in groups.items()
        ],
    }


def test_equal_replicas_converge_and_a_diverged_digest_is_caught() -> None:
    same = {n: _status(n, {1: (9, 3, 77), 2: (4, 1, 5)}) for n in (1, 2, 3)}
    assert replica_divergence(same) == []
    broken = dict(same)
    broken[3] = _status(3, {1: (9, 3, 78), 2: (4, 1, 5)})
    (problem,) = replica_divergence(broken)
    assert problem.startswith("group 1: replicas differ")
    assert "node 3: (9, 3, 78)" in problem


def test_statuses_without_digests_do_not_pass_vacuously() -> None:
    statuses = {n: _status(n, {1: None}) for n in (1, 2, 3)}
    (problem,) = replica_divergence(statuses)
    assert problem.startswith("no node reports a KV replica digest")


def test_a_voter_without_a_replica_is_caught() -> None:
    statuses = {n: _status(n, {1: (9, 3, 77)}) for n in (1, 2)}
    (problem,) = replica_divergence(statuses)
    assert problem == "group 1: no replica state from voters [3]"


# --- percentiles ---------------------------------------------------------------------------------


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
