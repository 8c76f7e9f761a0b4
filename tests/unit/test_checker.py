"""The linearizability checker on hand-made histories, each with a known verdict, plus the
durability helper, the Porcupine export and the 10k-op performance bound.

Method: every anomaly the issue names gets a minimal history and its fixed counterpart, so a
test fails if the checker either misses the anomaly or rejects the legal variant."""

from __future__ import annotations

import json
import random
import time

import pytest

from nodedb_cluster.checker import (
    HistoryError,
    HistoryRecorder,
    Op,
    OpKind,
    Outcome,
    Verdict,
    acknowledged_writes_present,
    check,
    check_key,
    dumps,
)
from nodedb_cluster.checker.porcupine import INT64_MAX
from support.checker_histories import H, generate


def verdict(h: H) -> Verdict:
    return check(h.ops).verdict


def both_paths(h: H) -> set[Verdict]:
    """The verdict of the fast path (when it applies) and of the search, which must agree."""
    fast = check_key(h.ops).verdict
    forced = check_key([*h.ops, *H().delete(99, 1e9, 1e9 + 1).ops]).verdict  # disables fast path
    return {fast, forced}


def test_sequential_history_is_linearizable() -> None:
    h = H().put(1, "a", 0, 1).get(2, "a", 2, 3).put(1, "b", 4, 5).get(2, "b", 6, 7)
    assert both_paths(h) == {Verdict.OK}


def test_stale_read_is_caught() -> None:
    h = H().put(1, "a", 0, 1).put(1, "b", 2, 3).get(2, "a", 4, 5)
    assert both_paths(h) == {Verdict.ILLEGAL}
    # The same read overlapping the second put may see either value.
    h = H().put(1, "a", 0, 1).put(1, "b", 2, 6).get(2, "a", 4, 5)
    assert both_paths(h) == {Verdict.OK}


def test_lost_write_is_caught() -> None:
    # b acknowledged, later reads see a again (b lost), then the initial state.
    h = H().put(1, "a", 0, 1).put(2, "b", 2, 3).get(3, "a", 4, 5)
    assert verdict(h) is Verdict.ILLEGAL
    h = H().put(1, "a", 0, 1).get(3, None, 4, 5)
    assert both_paths(h) == {Verdict.ILLEGAL}


def test_read_of_a_never_written_value_is_caught() -> None:
    h = H().put(1, "a", 0, 1).get(2, "zzz", 2, 3)
    assert both_paths(h) == {Verdict.ILLEGAL}
    assert "no put wrote" in check(h.ops).keys["x"].reason


def test_read_before_its_write_was_invoked_is_caught() -> None:
    h = H().get(2, "a", 0, 1).put(1, "a", 2, 3)
    assert both_paths(h) == {Verdict.ILLEGAL}


def test_concurrent_overlap_both_orders_are_allowed() -> None:
    # Two overlapping puts; readers after both may see either, but all later readers must agree.
    base = H().put(1, "a", 0, 10).put(2, "b", 5, 15)
    assert both_paths(H().put(1, "a", 0, 10).put(2, "b", 5, 15).get(3, "a", 20, 21)) == {Verdict.OK}
    assert both_paths(H().put(1, "a", 0, 10).put(2, "b", 5, 15).get(3, "b", 20, 21)) == {Verdict.OK}
    flip = base.get(3, "a", 20, 21).get(3, "b", 22, 23).get(4, "a", 24, 25)
    assert both_paths(flip) == {Verdict.ILLEGAL}
    # Two overlapping reads of the two values while both puts are in flight: fine.
    h = H().put(1, "a", 0, 10).put(2, "b", 0, 10).get(3, "a", 1, 9).get(4, "b", 1, 9)
    assert both_paths(h) == {Verdict.OK}
    # But a then b then a again, strictly ordered reads inside the puts: not fine.
    h = (
        H()
        .put(1, "a", 0, 10)
        .put(2, "b", 0, 10)
        .get(3, "a", 1, 2)
        .get(3, "b", 3, 4)
        .get(3, "a", 5, 6)
    )
    assert both_paths(h) == {Verdict.ILLEGAL}


def test_equal_timestamps_count_as_concurrent() -> None:
    h = H().put(1, "a", 0, 5).put(2, "b", 5, 6).get(3, "a", 6, 7)
    assert both_paths(h) == {Verdict.OK}


def test_cas_semantics() -> None:
    ok = H().put(1, 1, 0, 1).cas(2, 1, 2, True, 2, 3).get(3, 2, 4, 5)
    assert verdict(ok) is Verdict.OK
    wrong_swap = H().put(1, 1, 0, 1).cas(2, 5, 2, True, 2, 3)
    assert verdict(wrong_swap) is Verdict.ILLEGAL
    wrong_refusal = H().put(1, 1, 0, 1).cas(2, 1, 2, False, 2, 3)
    assert verdict(wrong_refusal) is Verdict.ILLEGAL
    refused_has_no_effect = H().put(1, 1, 0, 1).cas(2, 7, 2, False, 2, 3).get(3, 2, 4, 5)
    assert verdict(refused_has_no_effect) is Verdict.ILLEGAL
    # Two CAS from the same value: only one may win.
    both_win = H().put(1, 0, 0, 1).cas(2, 0, 1, True, 2, 5).cas(3, 0, 2, True, 2, 5)
    assert verdict(both_win) is Verdict.ILLEGAL
    one_wins = H().put(1, 0, 0, 1).cas(2, 0, 1, True, 2, 5).cas(3, 0, 2, False, 2, 5)
    assert verdict(one_wins) is Verdict.OK


def test_delete_semantics() -> None:
    assert verdict(H().put(1, "a", 0, 1).delete(1, 2, 3).get(2, None, 4, 5)) is Verdict.OK
    assert verdict(H().put(1, "a", 0, 1).delete(1, 2, 3).get(2, "a", 4, 5)) is Verdict.ILLEGAL


def test_unknown_write_may_have_happened() -> None:
    # A put whose client timed out, later observed: it must be assumed to have happened.
    h = H().put(1, "a", 0, 1).put(2, "b", 2, None).get(3, "b", 10, 11)
    assert both_paths(h) == {Verdict.OK}


def test_unknown_write_may_not_have_happened() -> None:
    # The same put never observed: it must be allowed not to have happened.
    h = H().put(1, "a", 0, 1).put(2, "b", 2, None).get(3, "a", 10, 11).get(3, "a", 12, 13)
    assert both_paths(h) == {Verdict.OK}
    # But once observed it cannot un-happen (reads b then a, with a written before b began).
    h = H().put(1, "a", 0, 1).put(2, "b", 2, None).get(3, "b", 10, 11).get(3, "a", 12, 13)
    assert both_paths(h) == {Verdict.ILLEGAL}


def test_an_unknown_write_is_not_bounded_by_the_time_its_client_gave_up() -> None:
    # The client recorded when it gave up (t=3); the write was applied later (a new leader
    # committed it) and read at t=10 after another write at t=5..6: legal, whatever t=3 says.
    h = (
        H()
        .put(1, "a", 0, 1)
        .put(2, "b", 2, 3, outcome=Outcome.INFO)
        .put(1, "c", 5, 6)
        .get(3, "b", 10, 11)
    )
    assert both_paths(h) == {Verdict.OK}
    # The same history with b acknowledged at t=3 is illegal (c overwrote it before the read).
    acknowledged = H().put(1, "a", 0, 1).put(2, "b", 2, 3).put(1, "c", 5, 6).get(3, "b", 10, 11)
    assert both_paths(acknowledged) == {Verdict.ILLEGAL}
    rows = json.loads(dumps(h.ops))
    assert rows[1]["Return"] == INT64_MAX, "exported to Porcupine as unbounded too"


def test_a_failure_names_the_operation_that_cannot_be_placed() -> None:
    # put 1, cas 1->2, then a read of 3 that nothing wrote: the read is the culprit, not the put
    # the search backtracks to last.
    h = H().put(1, 1, 0, 1).cas(2, 1, 2, True, 2, 3).get(3, 3, 4, 5)
    result = check_key(h.ops)
    assert result.verdict is Verdict.ILLEGAL
    assert "get by process 3 (op 2)" in result.reason, result.reason
    assert "after the 2 operations" in result.reason


def test_failed_ops_did_not_happen_and_unknown_reads_are_ignored() -> None:
    h = H().put(1, "a", 0, 1).put(2, "b", 2, 3, outcome=Outcome.FAIL).get(3, "b", 4, 5)
    assert verdict(h) is Verdict.ILLEGAL
    h = H().put(1, "a", 0, 1).get(3, "zzz", 4, None)
    assert verdict(h) is Verdict.OK


def test_unknown_cas_may_swap_or_not() -> None:
    swapped = H().put(1, 1, 0, 1).cas(2, 1, 2, None, 2, None).get(3, 2, 10, 11)
    kept = H().put(1, 1, 0, 1).cas(2, 1, 2, None, 2, None).get(3, 1, 10, 11)
    assert verdict(swapped) is Verdict.OK
    assert verdict(kept) is Verdict.OK


def test_keys_are_checked_independently_and_the_failing_key_is_named() -> None:
    h = H().put(1, "a", 0, 1, key="k1").get(2, "a", 2, 3, key="k2")
    result = check(h.ops)
    assert result.verdict is Verdict.ILLEGAL
    assert [r.key for r in result.failures] == ["k2"]


def test_search_budget_exceeded_is_unknown_not_a_hang() -> None:
    rng = random.Random(4)
    ops = generate(rng, 400, 12, ["x"], unique=False, kinds=(OpKind.PUT, OpKind.GET, OpKind.CAS))
    # Spread the ops so that everything overlaps: the search has to explore.
    wide = [
        Op(**{**{f: getattr(o, f) for f in Op.__slots__}, "complete_ms": 1e9})
        for o in ops
        if o.complete_ms is not None
    ]
    started = time.monotonic()
    result = check_key(wide, steps_max=20_000)
    assert time.monotonic() - started < 5
    assert result.verdict is Verdict.UNKNOWN
    assert "search budget exceeded" in result.reason


def test_recorder_refuses_impossible_sequences() -> None:
    r = HistoryRecorder()
    r.invoke(1, OpKind.PUT, "x", 0, value="a")
    with pytest.raises(HistoryError):
        r.invoke(1, OpKind.GET, "x", 1)
    with pytest.raises(HistoryError):
        r.ok(2, 1)
    r.ok(1, 2)
    r.invoke(2, OpKind.GET, "x", 3)
    ops = r.close()
    assert [o.outcome for o in ops] == [Outcome.OK, Outcome.INFO]
    assert check(ops).verdict is Verdict.OK


def test_acknowledged_writes_present_after_healing() -> None:
    h = H().put(1, "a", 0, 1).put(2, "b", 2, 3).put(3, "c", 2.5, None)
    assert acknowledged_writes_present(h.ops, {"x": "b"}) == []
    assert acknowledged_writes_present(h.ops, {"x": "c"}) == []  # the unknown put may come last
    [lost] = acknowledged_writes_present(h.ops, {"x": "a"})  # overwritten by an acked put: lost
    assert (lost.key, lost.found) == ("x", "a")
    assert acknowledged_writes_present(h.ops, {}) != []  # the key vanished
    # Concurrent acked puts: either may be last.
    h = H().put(1, "a", 0, 5).put(2, "b", 1, 4)
    assert acknowledged_writes_present(h.ops, {"x": "a"}) == []
    assert acknowledged_writes_present(h.ops, {"x": "b"}) == []


def test_porcupine_export_has_its_field_names_and_conventions() -> None:
    h = H().put(1, "a", 0, 1).get(2, "a", 2, 3).put(3, "b", 4, None).cas(1, "a", "c", False, 5, 6)
    rows = json.loads(dumps(h.ops))
    assert [set(r) for r in rows] == [{"ClientId", "Input", "Call", "Output", "Return"}] * 4
    assert rows[0]["Input"] == {"Op": 1, "Key": "x", "Value": "a", "Expected": None}
    assert rows[1]["Output"]["Value"] == "a"
    assert rows[2]["Return"] == INT64_MAX
    assert rows[2]["Output"]["Unknown"] is True
    assert rows[3]["Output"]["Ok"] is False
    assert rows[1]["Call"] == 2_000_000  # nanoseconds


@pytest.mark.parametrize("unique", [True, False])
def test_10k_ops_over_100_keys_check_in_seconds(unique: bool) -> None:
    rng = random.Random(10)
    keys = [f"k{i}" for i in range(100)]
    kinds = (OpKind.PUT, OpKind.GET) if unique else tuple(OpKind)
    ops = generate(rng, 10_000, 20, keys, unique=unique, kinds=kinds, info_rate=0.02)
    started = time.monotonic()
    result = check(ops)
    elapsed_s = time.monotonic() - started
    assert result.verdict is Verdict.OK, result.failures[:3]
    assert elapsed_s < 5.0, elapsed_s
    if unique:
        assert all(r.fast_path for r in result.keys.values())
