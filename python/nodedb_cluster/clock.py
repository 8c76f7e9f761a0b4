"""Time as an injected dependency: pure machines take `now_ms`, shells read one `Clock`.

`now_ms` is wall-clock time (epoch milliseconds: for records and humans, it may jump);
`monotonic_ms` never goes backwards and is the only one to measure intervals and deadlines with.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """The two times a node reads."""

    def now_ms(self) -> int:
        """Wall-clock time, milliseconds since the Unix epoch."""
        ...

    def monotonic_ms(self) -> int:
        """A monotonic millisecond counter with an arbitrary origin."""
        ...


class SystemClock:
    """The process's real clocks."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic_ms(self) -> int:
        return time.monotonic_ns() // 1_000_000


class ManualClock:
    """A clock tests move by hand; nothing advances on its own."""

    def __init__(self, monotonic_start_ms: int = 0, wall_start_ms: int = 1_700_000_000_000) -> None:
        if monotonic_start_ms < 0 or wall_start_ms < 0:
            raise ValueError("clock start times must be non-negative")
        self._monotonic_ms = monotonic_start_ms
        self._wall_ms = wall_start_ms

    def now_ms(self) -> int:
        return self._wall_ms

    def monotonic_ms(self) -> int:
        return self._monotonic_ms

    def advance(self, delta_ms: int) -> None:
        """Move both clocks forward by `delta_ms` (monotonic time never goes back)."""
        if delta_ms < 0:
            raise ValueError(f"a clock cannot advance by a negative amount ({delta_ms} ms)")
        self._monotonic_ms += delta_ms
        self._wall_ms += delta_ms

    def set_wall_ms(self, wall_ms: int) -> None:
        """Jump the wall clock (it may go back, like an NTP step); monotonic time is untouched."""
        if wall_ms < 0:
            raise ValueError("wall-clock time must be non-negative")
        self._wall_ms = wall_ms
