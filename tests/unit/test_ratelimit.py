"""Log lines a peer causes, at a bounded rate (ratelimit.py)."""

from __future__ import annotations

import logging

import pytest

from nodedb_cluster import ratelimit
from nodedb_cluster.ratelimit import KeyedRateLimitedLog, RateLimitedLog

log = logging.getLogger("test.ratelimit")


def test_one_line_per_interval_and_the_held_back_counted_into_the_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="test.ratelimit")
    limited = RateLimitedLog(log, 10_000)
    for now_ms in (0, 1, 2, 9_999):
        limited(now_ms, logging.WARNING, "bad %s", "frame")
    limited(10_000, logging.WARNING, "bad %s", "frame")
    assert [r.getMessage() for r in caplog.records] == [
        "bad frame",
        "bad frame (3 more like it held back since the last such line)",
    ]


def test_each_key_has_its_own_interval_and_the_keys_are_bounded(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="test.ratelimit")
    monkeypatch.setattr(ratelimit, "KEYS_MAX", 2)
    keyed = KeyedRateLimitedLog(log, 10_000)
    for key in ("a", "b", "a", "b"):
        keyed(key, 0, logging.WARNING, "from %s", key)
    assert [r.getMessage() for r in caplog.records] == ["from a", "from b"]
    keyed("c", 1, logging.WARNING, "from %s", "c")  # a third key: the table starts over
    keyed("a", 2, logging.WARNING, "from %s", "a")
    assert [r.getMessage() for r in caplog.records][2:] == ["from c", "from a"]
