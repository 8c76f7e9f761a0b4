"""Linearizability of a KV history, key by key (Wing & Gong search with Lowe's memoization, as in
Porcupine), with a polynomial fast path for plain registers with unique written values.

Linearizability is compositional (Herlihy & Wing's locality; Porcupine's P-compositionality), so
the history is split by key and each key is checked alone. Per key:
- FAIL operations are dropped (they did not happen); INFO reads are dropped (they observed nothing
  we could check); INFO writes get an infinite completion time (they may take effect at any later
  point, and "never" is the same as "after everything else", since nothing observed them after).
- Fast path: only PUT and GET, every PUT value unique and never the absent value. Then the history
  is linearizable iff every read's value was written by a PUT invoked before the read completed and
  no two clusters' zones conflict (Gibbons & Korach 1997; Golab, Li & Shah 2011): O(n log n)-ish.
- Otherwise the search: walk the time-ordered call/return entries, linearize a pending call when
  the model allows it, backtrack when a return comes before its call was linearized, and skip any
  (linearized set, state) pair seen before. The search is exponential in the worst case, so it is
  bounded by `steps_max`; running out is the verdict UNKNOWN, never a hang or a guess.
Equal timestamps count as concurrent (the lenient reading; the recorder's clock has finite
resolution, so neither order can be proven).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from nodedb_cluster.checker.history import Op, OpKind, Outcome, Value
from nodedb_cluster.checker.model import step

STEPS_MAX_PER_KEY: Final = 2_000_000
"""About 2 s of pure-Python search per key; histories the fast path cannot take and that need more
are reported UNKNOWN (shorten the run or add keys)."""
_INF: Final = float("inf")


class Verdict(Enum):
    OK = "ok"
    ILLEGAL = "illegal"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class KeyResult:
    key: str
    verdict: Verdict
    reason: str = ""
    steps: int = 0
    fast_path: bool = False


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict over all keys: ILLEGAL if any key is, else UNKNOWN if any key is, else OK."""

    verdict: Verdict
    keys: dict[str, KeyResult] = field(default_factory=dict)

    @property
    def failures(self) -> list[KeyResult]:
        return [r for r in self.keys.values() if r.verdict is not Verdict.OK]


def check(
    ops: Iterable[Op], *, initial: Value = None, steps_max_per_key: int = STEPS_MAX_PER_KEY
) -> CheckResult:
    """Check a whole history (every key starts at `initial`)."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    results = {k: check_key(v, initial, steps_max_per_key) for k, v in sorted(by_key.items())}
    verdicts = {r.verdict for r in results.values()}
    verdict = (
        Verdict.ILLEGAL
        if Verdict.ILLEGAL in verdicts
        else Verdict.UNKNOWN
        if Verdict.UNKNOWN in verdicts
        else Verdict.OK
    )
    return CheckResult(verdict, results)


def check_key(
    ops: list[Op], initial: Value = None, steps_max: int = STEPS_MAX_PER_KEY
) -> KeyResult:
    """One key's operations against a register that starts at `initial`."""
    key = ops[0].key if ops else ""
    live = [
        op for op in ops if op.outcome is Outcome.OK or (op.outcome is Outcome.INFO and op.is_write)
    ]
    if _fast_path_applies(live, initial):
        reason = _zones(live)
        return KeyResult(key, Verdict.ILLEGAL if reason else Verdict.OK, reason, 0, True)
    return _search(key, live, initial, steps_max)


# --- fast path ------------------------------------------------------------------------------------


def _fast_path_applies(ops: list[Op], initial: Value) -> bool:
    if initial is not None:
        return False
    written: set[Value] = set()
    for op in ops:
        if op.kind is OpKind.PUT:
            if op.value is None or op.value in written:
                return False
            written.add(op.value)
        elif op.kind is not OpKind.GET:
            return False
    return True


def _end(op: Op) -> float:
    return op.effect_deadline_ms


def _zones(ops: list[Op]) -> str:
    """Empty if linearizable, else why not (a unique-values register history)."""
    writes = {op.value: op for op in ops if op.kind is OpKind.PUT}
    clusters: dict[Value, list[Op]] = {v: [w] for v, w in writes.items()}
    initial_reads: list[Op] = []
    for r in ops:
        if r.kind is not OpKind.GET:
            continue
        if r.output is None:
            initial_reads.append(r)
            continue
        w = writes.get(r.output)
        if w is None:
            return f"get by process {r.process} read {r.output!r}, which no put wrote"
        if _end(r) < w.invoke_ms:
            return f"get by process {r.process} read {r.output!r} before its put was invoked"
        clusters[r.output].append(r)
    forward: list[tuple[float, float, Value]] = []
    backward: list[tuple[float, float, Value]] = []
    for v, members in clusters.items():
        f = min(_end(o) for o in members)
        s = max(o.invoke_ms for o in members)
        (forward if f < s else backward).append((f, s, v) if f < s else (s, f, v))
    if initial_reads:  # the initial value's virtual put happened before everything
        forward.append((-_INF, max(r.invoke_ms for r in initial_reads), None))
    forward.sort(key=lambda z: (z[0], z[1]))
    for (_, s1, v1), (f2, _, v2) in itertools.pairwise(forward):
        if f2 < s1:  # sorted by start: overlap with the next one is the only case to test
            return f"values {v1!r} and {v2!r} were each read after the other was overwritten"
    # A backward zone [s2, f2] strictly inside a forward zone (f1, s1): the other value must have
    # taken effect between a write and a later read of the first value.
    starts = [z[0] for z in forward]
    for s2, f2, v2 in backward:
        for f1, s1, v1 in forward[: _bisect_left(starts, s2)]:
            if f1 < s2 and f2 < s1:
                return f"{v2!r} was written between the write of {v1!r} and a later read of it"
    return ""


def _bisect_left(xs: list[float], x: float) -> int:
    lo, hi = 0, len(xs)
    while lo < hi:
        mid = (lo + hi) // 2
        if xs[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


# --- the search -----------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Entry:
    op_index: int
    is_call: bool
    time: float
    match: _Entry | None = None
    prev: _Entry | None = None
    next: _Entry | None = None


def _search(key: str, ops: list[Op], initial: Value, steps_max: int) -> KeyResult:
    if len(ops) == 0:
        return KeyResult(key, Verdict.OK)
    raw: list[_Entry] = []
    for i, op in enumerate(ops):
        call = _Entry(i, True, op.invoke_ms)
        ret = _Entry(i, False, _end(op))
        call.match = ret
        raw.extend((call, ret))
    # Time order; at equal times calls first (equal timestamps are concurrent).
    raw.sort(key=lambda e: (e.time, not e.is_call))
    head = _Entry(-1, False, -_INF)
    prev = head
    for e in raw:
        prev.next, e.prev = e, prev
        prev = e
    state = initial
    linearized = 0
    seen: set[tuple[int, Value]] = set()
    stack: list[tuple[_Entry, Value]] = []
    entry = head.next
    steps = 0
    # The operation that blocked the longest partial linearization: the one to name on failure
    # (the return the search finally fails at is usually an innocent one it backtracked over).
    blocked_depth, blocked = -1, 0
    while head.next is not None:
        steps += 1
        if steps > steps_max:
            return KeyResult(
                key, Verdict.UNKNOWN, f"search budget exceeded ({steps_max} steps)", steps
            )
        assert entry is not None
        if entry.is_call:
            legal, new_state = step(state, ops[entry.op_index])
            if legal:
                new_linearized = linearized | (1 << entry.op_index)
                if (new_linearized, new_state) not in seen:
                    seen.add((new_linearized, new_state))
                    stack.append((entry, state))
                    state, linearized = new_state, new_linearized
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if len(stack) > blocked_depth:
                blocked_depth, blocked = len(stack), entry.op_index
            if not stack:
                op = ops[blocked]
                return KeyResult(
                    key,
                    Verdict.ILLEGAL,
                    f"no linearization: {op.kind.value} by process {op.process} "
                    f"(op {op.op_id}) cannot be placed after the {blocked_depth} operations "
                    "before it that can",
                    steps,
                )
            top, state = stack.pop()
            linearized &= ~(1 << top.op_index)
            _unlift(top)
            entry = top.next
    return KeyResult(key, Verdict.OK, "", steps)


def _lift(call: _Entry) -> None:
    """Unlink a call and its return (the operation is linearized)."""
    ret = call.match
    assert call.prev is not None
    assert ret is not None
    assert ret.prev is not None
    call.prev.next = call.next
    if call.next is not None:
        call.next.prev = call.prev
    ret.prev.next = ret.next
    if ret.next is not None:
        ret.next.prev = ret.prev


def _unlift(call: _Entry) -> None:
    """Undo `_lift` (entries keep their own links, so re-linking restores the list exactly)."""
    ret = call.match
    assert call.prev is not None
    assert ret is not None
    assert ret.prev is not None
    ret.prev.next = ret
    if ret.next is not None:
        ret.next.prev = ret
    call.prev.next = call
    if call.next is not None:
        call.next.prev = call
