"""The node lifecycle: which formation phase a node is in, with legal transitions as data.

    Starting ──▶ Restarting ───────────────┐
        │──────▶ Bootstrapping ────────────┤──▶ Ready{nodes} ──▶ Ready{nodes'}
        │──────▶ Joining{0} ─▶ Joining{n} ─┘        │    └────▶ Retired{reason}
        └──(any non-terminal state)──────▶ Failed{reason}  ◀┘

Failed and Retired are terminal: a node that failed to form is restarted as a new process; a
decommissioned one has nothing left to serve and stops. The tracker logs every
transition, tells observers (status, metrics), keeps a bounded history, and lets coroutines await
Ready or Failed without polling. It is meant to be driven from the event-loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Final

from nodedb_cluster.clock import Clock, SystemClock
from nodedb_cluster.errors import FormationFailed, IllegalTransition, Timeout

logger = logging.getLogger(__name__)

HISTORY_MAX: Final = 64
"""Enough for a full join schedule (9 attempts) several times over; older entries are dropped."""
OBSERVERS_MAX: Final = 64
"""Observers are status and metrics hooks, a handful per node; more means a leak."""

# --- states ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Starting:
    """The process is up and has not yet decided between restart, bootstrap and join."""

    label: ClassVar[str] = "starting"


@dataclass(frozen=True, slots=True)
class Restarting:
    """Reloading topology, routing and Raft state from this node's own data_dir."""

    label: ClassVar[str] = "restarting"


@dataclass(frozen=True, slots=True)
class Bootstrapping:
    """Forming a new cluster with this node as its only member."""

    label: ClassVar[str] = "bootstrapping"


@dataclass(frozen=True, slots=True)
class Joining:
    """Asking the seeds to admit this node."""

    attempt: int
    """Join attempt number, 0..JoinRetryPolicy.max_attempts."""
    label: ClassVar[str] = "joining"

    def __post_init__(self) -> None:
        if isinstance(self.attempt, bool) or not isinstance(self.attempt, int) or self.attempt < 0:
            raise ValueError(
                f"Joining.attempt must be a non-negative integer, got {self.attempt!r}"
            )


@dataclass(frozen=True, slots=True)
class Ready:
    """Member of a formed cluster, serving."""

    nodes: int
    """Number of nodes in the topology when this state was entered."""
    label: ClassVar[str] = "ready"

    def __post_init__(self) -> None:
        if isinstance(self.nodes, bool) or not isinstance(self.nodes, int) or self.nodes < 1:
            raise ValueError(f"Ready.nodes must be a positive integer, got {self.nodes!r}")


@dataclass(frozen=True, slots=True)
class Failed:
    """Formation gave up; `reason` is the last concrete error."""

    reason: str
    error: BaseException | None = field(default=None, compare=False, repr=False)
    """The exception behind `reason`, when there is one; `wait_ready` chains it."""
    label: ClassVar[str] = "failed"

    def __post_init__(self) -> None:
        if not isinstance(self.reason, str) or not self.reason:
            raise ValueError("Failed.reason must be a non-empty string")


@dataclass(frozen=True, slots=True)
class Retired:
    """Decommissioned: the node holds no replica and takes no part in the cluster, so it stops
    (formation/retired.py); `reason` says where it learned so."""

    reason: str
    label: ClassVar[str] = "retired"


LifecycleState = Starting | Restarting | Bootstrapping | Joining | Ready | Failed | Retired

STATE_LABELS: Final = tuple(
    s.label for s in (Starting, Restarting, Bootstrapping, Joining, Ready, Failed, Retired)
)
"""Every label, for initialising a per-state metric."""

TRANSITIONS: Final[dict[type[LifecycleState], frozenset[type[LifecycleState]]]] = {
    Starting: frozenset({Restarting, Bootstrapping, Joining, Failed}),
    Restarting: frozenset({Ready, Failed}),
    Bootstrapping: frozenset({Ready, Failed}),
    Joining: frozenset({Joining, Ready, Failed}),
    Ready: frozenset({Ready, Failed, Retired}),
    Failed: frozenset(),
    Retired: frozenset(),
}
"""Legal (previous state type -> next state types); Joining -> Joining needs a larger attempt."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One recorded transition."""

    previous: LifecycleState
    next: LifecycleState
    detail: str
    at_ms: int
    """Wall-clock time of the transition (Clock.now_ms)."""


Observer = Callable[[Transition], None]

# --- tracker --------------------------------------------------------------------------------------


class LifecycleTracker:
    """Holds the current state; the single place transitions are checked, logged and announced."""

    def __init__(self, clock: Clock | None = None, history_max: int = HISTORY_MAX) -> None:
        if history_max < 1:
            raise ValueError("history_max must be at least 1")
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._state: LifecycleState = Starting()
        self._history: deque[Transition] = deque(maxlen=history_max)
        self._observers: list[Observer] = []
        self._waiters: list[asyncio.Future[LifecycleState]] = []

    @property
    def state(self) -> LifecycleState:
        return self._state

    @property
    def history(self) -> tuple[Transition, ...]:
        """Recent transitions, oldest first (at most `history_max`)."""
        return tuple(self._history)

    def transition(self, new: LifecycleState, detail: str = "") -> Transition:
        """Move to `new`; raises `IllegalTransition` (state unchanged) if the table forbids it."""
        previous = self._state
        if type(new) not in TRANSITIONS[type(previous)]:
            raise IllegalTransition(previous.label, new.label)
        if (
            isinstance(previous, Joining)
            and isinstance(new, Joining)
            and new.attempt <= previous.attempt
        ):
            raise IllegalTransition(
                f"joining(attempt={previous.attempt})",
                f"joining(attempt={new.attempt})",
                "attempt numbers only grow",
            )
        record = Transition(previous, new, detail, self._clock.now_ms())
        self._state = new
        self._history.append(record)
        level = logging.WARNING if isinstance(new, Failed) else logging.INFO
        logger.log(
            level,
            "lifecycle %s -> %s: %s",
            previous,
            new,
            detail or "-",
            extra={
                "lifecycle_previous": previous.label,
                "lifecycle_next": new.label,
                "lifecycle_detail": detail,
            },
        )
        if isinstance(new, Ready | Failed):
            self._wake_waiters(new)
        self._notify(record)
        return record

    def add_observer(self, observer: Observer) -> Callable[[], None]:
        """Call `observer` after every transition; returns a function that removes it."""
        if len(self._observers) >= OBSERVERS_MAX:
            raise RuntimeError(f"more than {OBSERVERS_MAX} lifecycle observers: a leak?")
        self._observers.append(observer)

        def remove() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return remove

    async def wait_ready(self, timeout_s: float) -> Ready:
        """Return the Ready state once reached; raise `FormationFailed` on Failed, or
        `errors.Timeout` if neither happens within `timeout_s` seconds."""
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise ValueError(f"timeout_s must be a positive finite number, got {timeout_s!r}")
        state = self._state
        if not isinstance(state, Ready | Failed):
            future: asyncio.Future[LifecycleState] = asyncio.get_running_loop().create_future()
            self._waiters.append(future)
            try:
                state = await asyncio.wait_for(future, timeout_s)
            except TimeoutError:
                raise Timeout("wait_ready", round(timeout_s * 1000)) from None
            finally:
                if future in self._waiters:
                    self._waiters.remove(future)
        if isinstance(state, Failed):
            raise FormationFailed(state.reason) from state.error
        assert isinstance(state, Ready)  # only Ready or Failed wake a waiter
        return state

    def _wake_waiters(self, state: Ready | Failed) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(state)

    def _notify(self, record: Transition) -> None:
        for observer in tuple(self._observers):
            try:
                observer(record)
            except Exception:
                # An observer is a status/metrics hook: its bug must not undo or block the
                # transition, which has already happened. Report it loudly and go on.
                logger.exception("lifecycle observer %r failed on %s", observer, record.next)
