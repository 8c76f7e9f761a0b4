"""What the workload records: one event per invocation and one per completion.

`ok` = the operation took effect with the recorded result; `fail` = it certainly did not;
`info` = unknown (a write that timed out or lost its connection may still be applied later,
so it is never recorded as `fail`). Timestamps are `time.monotonic_ns()` in the harness
process, the clock the nemesis stamps its faults with. The search for a linearization belongs
to `nodedb_cluster.checker`; `faults.checks` hands these events to it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final, Literal

EventType = Literal["invoke", "ok", "fail", "info"]
OpName = Literal["put", "get", "cas"]
Value = str | None | list[str | bool | None]
"""put: the written value; get: the value read (None on invoke, None = absent on ok);
cas: [expected or None, new] on invoke, [expected, new, swapped] on ok."""

HISTORY_EVENTS_MAX: Final = 2_000_000
"""A run that records more events than this is refused: the checker would not finish."""


class HistoryFull(Exception):
    """More events than `HISTORY_EVENTS_MAX`: shorten the run or use fewer clients."""


@dataclass(frozen=True, slots=True)
class Event:
    process: int
    type: EventType
    f: OpName
    key: str
    value: Value
    time_ns: int
    op_index: int
    """The same number on an invocation and its completion."""


@dataclass(slots=True)
class History:
    """Append-only event list, bounded by `HISTORY_EVENTS_MAX`."""

    events: list[Event] = field(default_factory=list)
    next_op: int = 0

    def _append(self, event: Event) -> None:
        if len(self.events) >= HISTORY_EVENTS_MAX:
            raise HistoryFull(f"history passed {HISTORY_EVENTS_MAX} events")
        self.events.append(event)

    def invoke(self, process: int, f: OpName, key: str, value: Value) -> Event:
        event = Event(process, "invoke", f, key, value, time.monotonic_ns(), self.next_op)
        self.next_op += 1
        self._append(event)
        return event

    def complete(self, invoked: Event, type_: EventType, value: Value) -> Event:
        if type_ == "invoke":
            raise ValueError("a completion cannot be an invoke")
        event = Event(
            invoked.process,
            type_,
            invoked.f,
            invoked.key,
            value,
            time.monotonic_ns(),
            invoked.op_index,
        )
        self._append(event)
        return event

    def pairs(self) -> list[tuple[Event, Event | None]]:
        """(invocation, completion or None if the run ended first), in invocation order."""
        done = {e.op_index: e for e in self.events if e.type != "invoke"}
        return [(e, done.get(e.op_index)) for e in self.events if e.type == "invoke"]

    def keys(self) -> list[str]:
        return sorted({e.key for e in self.events})

    def write_jsonl(self, path: Path) -> None:
        """One JSON object per event (this harness's own format, lossless)."""
        with path.open("w") as out:
            for event in self.events:
                out.write(json.dumps(asdict(event)) + "\n")

    @classmethod
    def read_jsonl(cls, path: Path) -> History:
        history = cls()
        for line in path.read_text().splitlines():
            doc = json.loads(line)
            history._append(Event(**doc))
            history.next_op = max(history.next_op, int(doc["op_index"]) + 1)
        return history
