"""PeerHealth: the attempt bound follows the slowest recent answer; failed and dead nodes are
tried last. Pure: the clock is a variable."""

from __future__ import annotations

import pytest

from nodedb_cluster.peer_health import (
    ATTEMPT_TIMEOUT_MAX_S,
    ATTEMPT_TIMEOUT_MIN_S,
    DOWN_HOLD_S,
    SLOWEST_HALF_LIFE_S,
    SLOWEST_MULT,
    PeerHealth,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_quiet_cluster_gets_the_short_bound_and_a_slow_one_a_longer_bound() -> None:
    clock = Clock()
    h = PeerHealth(clock)
    assert h.attempt_timeout_s() == ATTEMPT_TIMEOUT_MIN_S
    h.answered(0.002)
    assert h.attempt_timeout_s() == ATTEMPT_TIMEOUT_MIN_S
    h.answered(0.2)
    assert h.attempt_timeout_s() == pytest.approx(SLOWEST_MULT * 0.2)
    h.answered(0.9)
    assert h.attempt_timeout_s() == ATTEMPT_TIMEOUT_MAX_S
    clock.now += SLOWEST_HALF_LIFE_S
    assert h.attempt_timeout_s() == pytest.approx(min(ATTEMPT_TIMEOUT_MAX_S, SLOWEST_MULT * 0.45))
    clock.now += 10 * SLOWEST_HALF_LIFE_S
    assert h.attempt_timeout_s() == ATTEMPT_TIMEOUT_MIN_S, "a load spike fades"


def test_a_failed_node_is_avoided_for_the_hold_then_tried_again() -> None:
    clock = Clock()
    h = PeerHealth(clock)
    h.failed(3)
    assert h.avoid(3)
    assert not h.avoid(2)
    assert h.preferred([1, 2, 3]) == [1, 2]
    clock.now += DOWN_HOLD_S + 0.001
    assert not h.avoid(3)
    assert h.preferred([1, 2, 3]) == [1, 2, 3]


def test_a_dead_node_is_avoided_until_seen_alive_and_all_avoided_means_all_tried() -> None:
    clock = Clock()
    h = PeerHealth(clock)
    h.set_dead(2, True)
    clock.now += 3600
    assert h.avoid(2)
    h.failed(1)
    assert h.preferred([1, 2]) == [1, 2], "nothing left: try them all anyway"
    h.set_dead(2, False)
    assert h.preferred([1, 2]) == [2]
