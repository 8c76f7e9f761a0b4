"""The sequential specification of one KV register (one key): what each operation may return.

`step(state, op)` answers whether `op` may take effect on `state` with the output it recorded,
and the state after it. An INFO operation recorded no output, so it is legal on any state
(a CAS of unknown result swaps exactly when the expected value is there).
"""

from __future__ import annotations

from nodedb_cluster.checker.history import Op, OpKind, Outcome, Value


def step(state: Value, op: Op) -> tuple[bool, Value]:
    unknown = op.outcome is Outcome.INFO
    match op.kind:
        case OpKind.PUT:
            return True, op.value
        case OpKind.DELETE:
            return True, None
        case OpKind.GET:
            return unknown or op.output == state, state
        case OpKind.CAS:
            swaps = state == op.expected
            if unknown:
                return True, op.value if swaps else state
            if op.output is True:
                return swaps, op.value
            return not swaps, state
