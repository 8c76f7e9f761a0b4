"""`PeerHealth`: which nodes a KV router should avoid, and how long to wait for one answer.

Failover from the client's side is "stop waiting for the dead leader, find the new one". The
new leader exists one election after the crash (election timeout 0.5-1 s here), so waiting
longer than that for the dead node only delays the client; waiting much less than the slowest
healthy answer turns a loaded cluster into a storm of retries. So the bound of one attempt is a
multiple of the slowest answer seen lately, between `ATTEMPT_TIMEOUT_MIN_S` and
`ATTEMPT_TIMEOUT_MAX_S`. Retrying early is safe: reads change nothing and writes are
exactly-once (`nodedb_cluster.session`).

A node that failed to answer is tried after the others for `DOWN_HOLD_S`; one that SWIM
declared dead is avoided until SWIM sees it alive again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Final

ATTEMPT_TIMEOUT_MIN_S: Final = 0.3
"""Below the shortest election timeout (0.5 s): the next attempt is ready when a leader is."""
ATTEMPT_TIMEOUT_MAX_S: Final = 1.0
"""The longest election timeout: by then a dead leader's group has elected another."""
SLOWEST_MULT: Final = 3.0
"""An attempt waits at least this multiple of the slowest recent answer."""
SLOWEST_HALF_LIFE_S: Final = 2.0
"""The remembered slowest answer halves every this many seconds (a load spike fades)."""
DOWN_HOLD_S: Final = 1.0
"""A node that failed to answer is tried after the others for this long: about one election,
after which its groups have another leader if it was dead."""
DOWN_NODES_MAX: Final = 4096
"""Bound on remembered down nodes (forgotten all at once past it)."""


class PeerHealth:
    """Per-router view of the peers. Pure: time comes from `clock` (monotonic seconds)."""

    __slots__ = ("_clock", "_dead", "_down_until", "_slowest_at", "_slowest_s")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._down_until: dict[int, float] = {}
        self._dead: set[int] = set()
        self._slowest_s = 0.0
        self._slowest_at = 0.0

    def answered(self, elapsed_s: float) -> None:
        """A peer answered after `elapsed_s`."""
        now = self._clock()
        if elapsed_s >= self._decayed_slowest(now):
            self._slowest_s, self._slowest_at = elapsed_s, now

    def attempt_timeout_s(self) -> float:
        """How long one attempt may wait for its answer."""
        scaled = SLOWEST_MULT * self._decayed_slowest(self._clock())
        return min(ATTEMPT_TIMEOUT_MAX_S, max(ATTEMPT_TIMEOUT_MIN_S, scaled))

    def failed(self, node_id: int) -> None:
        """`node_id` did not answer in time (or could not be reached)."""
        if len(self._down_until) >= DOWN_NODES_MAX:
            self._down_until.clear()
        self._down_until[node_id] = self._clock() + DOWN_HOLD_S

    def set_dead(self, node_id: int, dead: bool) -> None:
        """SWIM's verdict on `node_id`."""
        if dead:
            self._dead.add(node_id)
        else:
            self._dead.discard(node_id)

    def avoid(self, node_id: int) -> bool:
        """True while `node_id` should be tried only when nothing else is left."""
        return node_id in self._dead or self._down_until.get(node_id, 0.0) > self._clock()

    def preferred(self, nodes: Iterable[int]) -> list[int]:
        """`nodes` not to avoid, in order; all of them when every one is to be avoided."""
        nodes = list(nodes)
        return [n for n in nodes if not self.avoid(n)] or nodes

    def _decayed_slowest(self, now: float) -> float:
        halvings = (now - self._slowest_at) / SLOWEST_HALF_LIFE_S
        return self._slowest_s * math.pow(0.5, halvings)
