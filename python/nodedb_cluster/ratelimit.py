"""Log lines a peer can cause, at a bounded rate: one per interval, the rest counted into the
next (a client certificate sending malformed payloads wrote 500 WARNING lines in 0.2 s; attack
probe, session 30)."""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Final

KEYS_MAX: Final = 1024
"""`KeyedRateLimitedLog` forgets every key past this many (each peer's first line comes again
sooner, never more lines per key than the interval allows meanwhile)."""


class RateLimitedLog:
    """Logs at most once per `interval_ms`; the lines it holds back are counted into the next."""

    def __init__(self, logger: logging.Logger, interval_ms: int) -> None:
        self._logger = logger
        self._interval_ms = interval_ms
        self._last_ms: int | None = None
        self._held = 0

    def __call__(
        self, now_ms: int, level: int, msg: str, *args: object, exc_info: bool = False
    ) -> None:
        if self._last_ms is not None and now_ms - self._last_ms < self._interval_ms:
            self._held += 1
            return
        held, self._held, self._last_ms = self._held, 0, now_ms
        if held:
            msg += " (%d more like it held back since the last such line)"
            args = (*args, held)
        self._logger.log(level, msg, *args, exc_info=exc_info)


class KeyedRateLimitedLog:
    """A `RateLimitedLog` per key (a peer and what it sent), at most `KEYS_MAX` kept."""

    def __init__(self, logger: logging.Logger, interval_ms: int) -> None:
        self._logger = logger
        self._interval_ms = interval_ms
        self._logs: dict[Hashable, RateLimitedLog] = {}

    def __call__(self, key: Hashable, now_ms: int, level: int, msg: str, *args: object) -> None:
        limited = self._logs.get(key)
        if limited is None:
            if len(self._logs) >= KEYS_MAX:
                self._logs.clear()
            limited = self._logs[key] = RateLimitedLog(self._logger, self._interval_ms)
        limited(now_ms, level, msg, *args)
