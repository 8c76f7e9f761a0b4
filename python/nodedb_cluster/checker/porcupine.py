"""Export a history for cross-checking with Porcupine (github.com/anishathalye/porcupine).

`to_porcupine_operations` gives Porcupine's `[]Operation` as JSON objects with its field names
(`ClientId`, `Input`, `Call`, `Output`, `Return`), times in integer nanoseconds. An INFO operation
gets `Return` = the largest int64, which is how Porcupine is fed a crashed client's operation (it
may then be linearized anywhere after its call). Inputs and outputs use Porcupine's kv example
shape extended by two ops: `Input = {"Op": 0 get | 1 put | 2 delete | 3 cas, "Key", "Value",
"Expected"}`, `Output = {"Value", "Ok", "Unknown"}`; a Go model for it is ten lines of
`Step`. FAIL operations are left out (they did not happen).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Final

from nodedb_cluster.checker.history import Op, OpKind, Outcome, Value

INT64_MAX: Final = 2**63 - 1
OP_CODES: Final = {OpKind.GET: 0, OpKind.PUT: 1, OpKind.DELETE: 2, OpKind.CAS: 3}


def _value(v: Value) -> object:
    return v.hex() if isinstance(v, bytes) else v


def to_porcupine_operations(ops: Iterable[Op]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for op in sorted(ops, key=lambda o: (o.invoke_ms, o.op_id)):
        if op.outcome is Outcome.FAIL:
            continue
        unknown = op.outcome is Outcome.INFO
        out.append(
            {
                "ClientId": op.process,
                "Input": {
                    "Op": OP_CODES[op.kind],
                    "Key": op.key,
                    "Value": _value(op.value),
                    "Expected": _value(op.expected),
                },
                "Call": int(op.invoke_ms * 1_000_000),
                "Output": {
                    "Value": None if op.kind is not OpKind.GET else _value(op.output),
                    "Ok": op.output if op.kind is OpKind.CAS else True,
                    "Unknown": unknown,
                },
                "Return": (
                    INT64_MAX
                    if op.effect_deadline_ms == float("inf")
                    else int(op.effect_deadline_ms * 1_000_000)
                ),
            }
        )
    return out


def dumps(ops: Iterable[Op]) -> str:
    """The JSON text of `to_porcupine_operations`, one operation per line."""
    rows = to_porcupine_operations(ops)
    return "[\n" + ",\n".join(json.dumps(r, sort_keys=True) for r in rows) + "\n]\n"
