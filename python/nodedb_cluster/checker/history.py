"""The history model: what clients did to a KV store, as Jepsen records it.

Each operation is invoked by one process (a client that runs one operation at a time) and ends in
one of three ways: `OK` (it happened, with this output), `FAIL` (it certainly did not happen) or
`INFO` (unknown: a timeout or crash; it may have happened, at any time after its invocation, or
never). `HistoryRecorder` turns invoke/complete events into `Op`s and refuses impossible
sequences (a second invoke while one is pending, a completion of nothing) with `HistoryError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

from nodedb_cluster.errors import ClusterError

Value = str | int | bytes | None
"""A register value; None means the key is absent."""
_INF: Final = float("inf")
OPS_MAX: Final = 10_000_000
"""A recorder bound: far above any run we check (the search is the limit long before)."""


class HistoryError(ClusterError, ValueError):
    """A history that no client could have produced (the recorder's caller is at fault)."""


class OpKind(Enum):
    PUT = "put"
    GET = "get"
    DELETE = "delete"
    CAS = "cas"


class Outcome(Enum):
    OK = "ok"
    FAIL = "fail"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Op:
    """One operation on one key, from invocation to completion."""

    op_id: int
    process: int
    kind: OpKind
    key: str
    value: Value = None
    """PUT: the value written; CAS: the new value."""
    expected: Value = None
    """CAS only: the value the key must hold for the swap."""
    output: Value | bool = None
    """GET: the value read (None: absent); CAS: whether it swapped; PUT/DELETE: unused."""
    outcome: Outcome = Outcome.OK
    invoke_ms: float = 0.0
    complete_ms: float | None = None
    """When the client heard back. Recorded for INFO too where a client knows when it gave up,
    but that does not bound the operation: see `effect_deadline_ms`."""

    @property
    def is_write(self) -> bool:
        return self.kind is not OpKind.GET

    @property
    def effect_deadline_ms(self) -> float:
        """The latest time the operation can have taken effect: its completion for OK and FAIL;
        never for INFO (a write whose client gave up may still be applied later, e.g. by a new
        leader committing it), so infinity."""
        if self.outcome is Outcome.INFO or self.complete_ms is None:
            return _INF
        return self.complete_ms


class HistoryRecorder:
    """Collects invoke/complete events from concurrent clients into `Op`s, in completion order."""

    def __init__(self) -> None:
        self._pending: dict[int, tuple[int, OpKind, str, Value, Value, float]] = {}
        self._ops: list[Op] = []
        self._next_id = 0

    def invoke(
        self,
        process: int,
        kind: OpKind,
        key: str,
        now_ms: float,
        value: Value = None,
        expected: Value = None,
    ) -> int:
        if process in self._pending:
            raise HistoryError(f"process {process} invoked a second operation while one is pending")
        if self._next_id >= OPS_MAX:
            raise HistoryError(f"history is full ({OPS_MAX} operations)")
        op_id = self._next_id
        self._next_id += 1
        self._pending[process] = (op_id, kind, key, value, expected, now_ms)
        return op_id

    def ok(self, process: int, now_ms: float, output: Value | bool = None) -> Op:
        return self._complete(process, Outcome.OK, now_ms, output)

    def fail(self, process: int, now_ms: float) -> Op:
        return self._complete(process, Outcome.FAIL, now_ms, None)

    def info(self, process: int) -> Op:
        return self._complete(process, Outcome.INFO, None, None)

    def close(self) -> list[Op]:
        """Every operation; any still pending becomes INFO (its client never heard back)."""
        for process in list(self._pending):
            self.info(process)
        return list(self._ops)

    def _complete(
        self, process: int, outcome: Outcome, now_ms: float | None, output: Value | bool
    ) -> Op:
        pending = self._pending.pop(process, None)
        if pending is None:
            raise HistoryError(f"process {process} completed an operation it never invoked")
        op_id, kind, key, value, expected, invoke_ms = pending
        if now_ms is not None and now_ms < invoke_ms:
            raise HistoryError(f"process {process} completed before it invoked")
        op = Op(op_id, process, kind, key, value, expected, output, outcome, invoke_ms, now_ms)
        self._ops.append(op)
        return op
