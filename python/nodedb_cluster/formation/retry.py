"""The join retry schedule (docs/JOIN.md "Retry policy").

The delay before attempt `a` is `max_backoff_secs * 1000 ms >> (max_attempts - a)`, floored at 1 ms:
each attempt waits twice as long as the one before, and the last one (a == max_attempts) waits the
full `max_backoff_secs`. Attempt 0 goes out at once, and attempts beyond `max_attempts` wait zero
(the caller has given up by then). Attempts are numbered 0..max_attempts inclusive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from nodedb_cluster.validate import check_int

MAX_ATTEMPTS_MAX: Final = 64
"""A larger count would make the early shifts vanish anyway; 64 also keeps the shift in range."""
MAX_BACKOFF_SECS_MAX: Final = 3600
"""An hour between join attempts is already past any sensible operator patience."""
BACKOFF_FLOOR_MS: Final = 1
"""Early attempts of a long schedule would shift down to 0 ms and hammer the seeds."""


@dataclass(frozen=True, slots=True)
class JoinRetryPolicy:
    """How many join attempts to make and how long to back off before each."""

    max_attempts: int = 8
    """Number of the last attempt (attempts run 0..max_attempts); 1..64."""
    max_backoff_secs: int = 32
    """Delay before the last attempt, in seconds; 0..3600 (0 gives the 1 ms floor everywhere)."""

    def __post_init__(self) -> None:
        check_int("join_retry.max_attempts", self.max_attempts, 1, MAX_ATTEMPTS_MAX)
        check_int("join_retry.max_backoff_secs", self.max_backoff_secs, 0, MAX_BACKOFF_SECS_MAX)

    def backoff_ms(self, attempt: int) -> int:
        """Delay before `attempt`, in whole milliseconds."""
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
            raise ValueError(f"attempt must be a non-negative integer, got {attempt!r}")
        if attempt == 0 or attempt > self.max_attempts:
            return 0
        full_ms = self.max_backoff_secs * 1000
        return max(BACKOFF_FLOOR_MS, full_ms >> (self.max_attempts - attempt))

    def backoff_for(self, attempt: int) -> float:
        """Delay before `attempt`, in seconds (for `asyncio.sleep`)."""
        return self.backoff_ms(attempt) / 1000

    def schedule_ms(self) -> tuple[int, ...]:
        """Every delay, attempts 0..max_attempts, in milliseconds."""
        return tuple(self.backoff_ms(a) for a in range(self.max_attempts + 1))

    def total_backoff_ms(self) -> int:
        """The whole schedule's sleeping time: how long a join takes to fail, not counting RPCs."""
        return sum(self.schedule_ms())
