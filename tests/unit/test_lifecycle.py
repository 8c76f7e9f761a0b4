"""LifecycleTracker: the transition table is enforced (illegal moves raise and change nothing),
every transition is logged, observed and recorded (bounded), and wait_ready wakes on Ready or
Failed without polling, or times out with errors.Timeout."""

from __future__ import annotations

import asyncio
import logging

import pytest

from nodedb_cluster.clock import ManualClock, SystemClock
from nodedb_cluster.errors import FormationFailed, IllegalTransition, Timeout
from nodedb_cluster.lifecycle import (
    STATE_LABELS,
    TRANSITIONS,
    Bootstrapping,
    Failed,
    Joining,
    LifecycleState,
    LifecycleTracker,
    Ready,
    Restarting,
    Retired,
    Starting,
    Transition,
)

EXAMPLES: dict[type, LifecycleState] = {
    Starting: Starting(),
    Restarting: Restarting(),
    Bootstrapping: Bootstrapping(),
    Joining: Joining(5),
    Ready: Ready(3),
    Failed: Failed("boom"),
    Retired: Retired("node 3 was decommissioned"),
}


def tracker_in(state: LifecycleState) -> LifecycleTracker:
    tracker = LifecycleTracker(ManualClock())
    paths: dict[type, list[LifecycleState]] = {
        Starting: [],
        Restarting: [Restarting()],
        Bootstrapping: [Bootstrapping()],
        Joining: [Joining(0), state],
        Ready: [Bootstrapping(), state],
        Failed: [state],
        Retired: [Bootstrapping(), Ready(3), state],
    }
    for step in paths[type(state)]:
        tracker.transition(step)
    assert tracker.state == state
    return tracker


def test_labels() -> None:
    assert STATE_LABELS == (
        "starting",
        "restarting",
        "bootstrapping",
        "joining",
        "ready",
        "failed",
        "retired",
    )
    assert Joining(3).label == "joining"
    assert Ready(1).label == "ready"


@pytest.mark.parametrize("src", list(EXAMPLES))
@pytest.mark.parametrize("dst", list(EXAMPLES))
def test_table_is_enforced_for_every_pair(src: type, dst: type) -> None:
    tracker = tracker_in(EXAMPLES[src])
    before = (tracker.state, tracker.history)
    new = Joining(6) if dst is Joining else EXAMPLES[dst]
    if dst in TRANSITIONS[src]:
        tracker.transition(new, "ok")
        assert tracker.state == new
    else:
        with pytest.raises(IllegalTransition) as info:
            tracker.transition(new)
        assert info.value.previous == EXAMPLES[src].label
        assert (tracker.state, tracker.history) == before


def test_failed_and_retired_are_terminal_and_starting_cannot_be_reentered() -> None:
    assert TRANSITIONS[Failed] == TRANSITIONS[Retired] == frozenset()
    assert {s for s, dsts in TRANSITIONS.items() if Retired in dsts} == {Ready}
    assert all(Starting not in dsts for dsts in TRANSITIONS.values())


def test_join_attempts_only_grow() -> None:
    tracker = tracker_in(Joining(2))
    with pytest.raises(IllegalTransition, match="attempt numbers only grow"):
        tracker.transition(Joining(2))
    with pytest.raises(IllegalTransition):
        tracker.transition(Joining(1))
    tracker.transition(Joining(3))
    assert tracker.state == Joining(3)


def test_state_validation() -> None:
    with pytest.raises(ValueError, match="attempt"):
        Joining(-1)
    with pytest.raises(ValueError, match="nodes"):
        Ready(0)
    with pytest.raises(ValueError, match="reason"):
        Failed("")


def test_transitions_are_logged_with_previous_next_and_detail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracker = LifecycleTracker(ManualClock())
    with caplog.at_level(logging.INFO, logger="nodedb_cluster.lifecycle"):
        tracker.transition(Joining(0), "seeds: 127.0.0.1:9400")
        tracker.transition(Failed("all seeds unreachable"), "gave up")
    first, second = caplog.records
    assert first.levelno == logging.INFO
    assert "Starting()" in first.getMessage()
    assert "Joining(attempt=0)" in first.getMessage()
    assert "seeds: 127.0.0.1:9400" in first.getMessage()
    fields = vars(first)
    assert (fields["lifecycle_previous"], fields["lifecycle_next"]) == ("starting", "joining")
    assert fields["lifecycle_detail"] == "seeds: 127.0.0.1:9400"
    assert second.levelno == logging.WARNING
    assert "all seeds unreachable" in second.getMessage()


def test_observers_and_history_with_time() -> None:
    clock = ManualClock(wall_start_ms=1000)
    tracker = LifecycleTracker(clock)
    seen: list[Transition] = []
    remove = tracker.add_observer(seen.append)
    tracker.transition(Bootstrapping(), "smallest seed")
    clock.advance(250)
    tracker.transition(Ready(1), "elected")
    assert [(t.previous, t.next, t.detail, t.at_ms) for t in seen] == [
        (Starting(), Bootstrapping(), "smallest seed", 1000),
        (Bootstrapping(), Ready(1), "elected", 1250),
    ]
    assert tracker.history == tuple(seen)
    remove()
    remove()  # idempotent
    tracker.transition(Ready(2))
    assert len(seen) == 2


def test_a_failing_observer_does_not_block_others(caplog: pytest.LogCaptureFixture) -> None:
    tracker = LifecycleTracker(ManualClock())
    seen: list[Transition] = []

    def broken(_: Transition) -> None:
        raise RuntimeError("observer bug")

    tracker.add_observer(broken)
    tracker.add_observer(seen.append)
    with caplog.at_level(logging.ERROR, logger="nodedb_cluster.lifecycle"):
        tracker.transition(Restarting())
    assert tracker.state == Restarting()
    assert len(seen) == 1
    assert any("observer" in r.getMessage() and r.exc_info for r in caplog.records)


def test_history_is_bounded() -> None:
    tracker = LifecycleTracker(ManualClock(), history_max=4)
    tracker.transition(Joining(0))
    for attempt in range(1, 10):
        tracker.transition(Joining(attempt))
    assert len(tracker.history) == 4
    assert tracker.history[-1].next == Joining(9)
    assert tracker.history[0].next == Joining(6)
    with pytest.raises(ValueError, match="history_max"):
        LifecycleTracker(history_max=0)


async def test_wait_ready_wakes_waiters_created_before_the_transition() -> None:
    tracker = LifecycleTracker(SystemClock())
    waiters = [asyncio.create_task(tracker.wait_ready(5)) for _ in range(3)]
    await asyncio.sleep(0)  # let the waiters register (no timing involved: one loop turn)
    assert not any(w.done() for w in waiters)
    tracker.transition(Bootstrapping())
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    tracker.transition(Ready(1))
    results = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert results == [Ready(1)] * 3


async def test_wait_ready_when_already_ready_returns_at_once() -> None:
    tracker = tracker_in(Ready(4))
    assert await tracker.wait_ready(0.001) == Ready(4)


async def test_wait_ready_raises_the_failure_with_its_cause() -> None:
    tracker = LifecycleTracker(ManualClock())
    waiter = asyncio.create_task(tracker.wait_ready(5))
    await asyncio.sleep(0)
    cause = ConnectionRefusedError("127.0.0.1:9400 refused")
    tracker.transition(Joining(0))
    tracker.transition(Failed("127.0.0.1:9400 refused", cause))
    with pytest.raises(FormationFailed, match=r"127\.0\.0\.1:9400 refused") as info:
        await asyncio.wait_for(waiter, 5)
    assert info.value.reason == "127.0.0.1:9400 refused"
    assert info.value.__cause__ is cause
    with pytest.raises(FormationFailed):  # and a late waiter sees the same
        await tracker.wait_ready(1)


async def test_wait_ready_times_out_and_cleans_up() -> None:
    tracker = LifecycleTracker(ManualClock())
    tracker.transition(Joining(0))
    with pytest.raises(Timeout) as info:
        await tracker.wait_ready(0.02)
    assert info.value.op == "wait_ready"
    assert info.value.timeout_ms == 20
    assert tracker._waiters == []  # the expired waiter left nothing behind


@pytest.mark.parametrize("timeout_s", [0, -1, float("inf"), float("nan")])
async def test_wait_ready_needs_a_finite_timeout(timeout_s: float) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        await LifecycleTracker().wait_ready(timeout_s)


def test_manual_clock() -> None:
    clock = ManualClock(monotonic_start_ms=5, wall_start_ms=100)
    clock.advance(10)
    assert (clock.monotonic_ms(), clock.now_ms()) == (15, 110)
    clock.set_wall_ms(50)  # wall clocks may step back...
    assert (clock.monotonic_ms(), clock.now_ms()) == (15, 50)
    with pytest.raises(ValueError, match="negative"):
        clock.advance(-1)  # ...monotonic time may not


def test_system_clock_is_monotonic_and_near_wall_time() -> None:
    import time

    clock = SystemClock()
    readings = [clock.monotonic_ms() for _ in range(1000)]
    assert readings == sorted(readings)
    assert abs(clock.now_ms() - time.time() * 1000) < 1000
