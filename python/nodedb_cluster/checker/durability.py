"""After healing: is every acknowledged write still there?

For one key, the final value must be the effect of a write that could have come last: the last
acknowledged write itself, or any write (acknowledged or of unknown outcome) that was not already
complete before the last acknowledged write was invoked. Anything else means an acknowledged write
was lost (or a value appeared from nowhere).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nodedb_cluster.checker.history import Op, OpKind, Outcome, Value

_ABSENT = object()


@dataclass(frozen=True, slots=True)
class LostWrite:
    key: str
    found: Value
    allowed: tuple[Value, ...]
    """Every final value that would have been consistent with the acknowledged writes."""


def _effect(op: Op) -> Value:
    return None if op.kind is OpKind.DELETE else op.value


def acknowledged_writes_present(
    ops: Iterable[Op], final: Mapping[str, Value], *, initial: Value = None
) -> list[LostWrite]:
    """One `LostWrite` per key whose value in `final` (absent: None) no write could explain."""
    writes: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if not op.is_write or op.outcome is Outcome.FAIL:
            continue
        if op.kind is OpKind.CAS and op.outcome is Outcome.OK and op.output is not True:
            continue  # a CAS that reported no swap wrote nothing
        writes[op.key].append(op)
    lost: list[LostWrite] = []
    for key in sorted(set(writes) | set(final)):
        found = final.get(key)
        acked = [w for w in writes[key] if w.outcome is Outcome.OK]
        if not acked:
            allowed = {initial, *(_effect(w) for w in writes[key])}
        else:
            last = max(acked, key=lambda w: w.complete_ms or 0.0)
            allowed = {
                _effect(w)
                for w in writes[key]
                if w is last or w.complete_ms is None or w.complete_ms >= last.invoke_ms
            }
        if found not in allowed:
            lost.append(LostWrite(key, found, tuple(sorted(allowed, key=repr))))
    return lost
