"""JoinRetryPolicy: the exact schedule of docs/JOIN.md, its edges (attempt 0, past the last, the
1 ms floor) and field validation naming the field."""

from __future__ import annotations

import pytest

from nodedb_cluster.errors import ConfigError
from nodedb_cluster.formation.retry import JoinRetryPolicy


def test_default_schedule() -> None:
    policy = JoinRetryPolicy()
    assert (policy.max_attempts, policy.max_backoff_secs) == (8, 32)
    secs = [policy.backoff_for(a) for a in range(10)]
    assert secs == [0, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 0]
    assert policy.schedule_ms() == (0, 250, 500, 1000, 2000, 4000, 8000, 16000, 32000)
    assert policy.total_backoff_ms() == 63_750


def test_small_backoff_sums_under_five_seconds() -> None:
    policy = JoinRetryPolicy(max_backoff_secs=2)
    assert sum(policy.backoff_for(a) for a in range(9)) < 5
    assert policy.backoff_for(8) == 2
    assert policy.backoff_ms(1) == 2000 >> 7 == 15


def test_early_attempts_are_floored_at_one_ms() -> None:
    policy = JoinRetryPolicy(max_attempts=20, max_backoff_secs=1)
    assert policy.backoff_ms(0) == 0
    assert 1000 >> 19 == 0  # the raw shift would not wait at all
    assert all(policy.backoff_ms(a) >= 1 for a in range(1, 21))
    assert policy.backoff_ms(1) == 1
    assert policy.backoff_ms(20) == 1000
    assert policy.backoff_ms(21) == 0


def test_zero_backoff_is_all_floor() -> None:
    policy = JoinRetryPolicy(max_attempts=3, max_backoff_secs=0)
    assert policy.schedule_ms() == (0, 1, 1, 1)


def test_attempts_past_the_last_wait_zero() -> None:
    policy = JoinRetryPolicy(max_attempts=2, max_backoff_secs=4)
    assert [policy.backoff_ms(a) for a in range(6)] == [0, 2000, 4000, 0, 0, 0]


@pytest.mark.parametrize("attempt", [-1, 1.5, True, "1"])
def test_bad_attempt_is_refused(attempt: object) -> None:
    with pytest.raises(ValueError, match="attempt"):
        JoinRetryPolicy().backoff_ms(attempt)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": 0}, "join_retry.max_attempts"),
        ({"max_attempts": 65}, "join_retry.max_attempts"),
        ({"max_attempts": "8"}, "join_retry.max_attempts"),
        ({"max_attempts": True}, "join_retry.max_attempts"),
        ({"max_backoff_secs": -1}, "join_retry.max_backoff_secs"),
        ({"max_backoff_secs": 3601}, "join_retry.max_backoff_secs"),
        ({"max_backoff_secs": 2.5}, "join_retry.max_backoff_secs"),
    ],
)
def test_fields_are_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        JoinRetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
