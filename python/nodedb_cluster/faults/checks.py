"""The checks after a run, as pure functions over the history and what the nodes report.

Each returns a list of anomalies (empty = passed), every one a sentence naming the key or
group and the values involved, so a failing run can be read without the debugger.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nodedb_cluster.checker import (
    Op,
    OpKind,
    Outcome,
    Value,
    Verdict,
    acknowledged_writes_present,
    check,
)
from nodedb_cluster.checker.porcupine import INT64_MAX

Status = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class HistoryVerdict:
    linearizable: bool | None
    """None: the checker's search ran out of budget on some key (UNKNOWN), never a guess."""
    note: str
    anomalies: list[str]


def check_history(ops: Sequence[Op], final: Mapping[str, str | None]) -> HistoryVerdict:
    """Linearizable per key (`checker.check`) and every acknowledged write present in `final`
    (`checker.acknowledged_writes_present`), as anomaly sentences."""
    anomalies = [
        f"key {lw.key}: acknowledged write lost: final value {lw.found!r}, "
        f"consistent values {list(lw.allowed)}"
        for lw in acknowledged_writes_present(ops, final)
    ]
    result = check(ops)
    anomalies += [
        f"key {r.key}: not linearizable: {r.reason}"
        for r in result.failures
        if r.verdict is Verdict.ILLEGAL
    ]
    unknown = [r.key for r in result.failures if r.verdict is Verdict.UNKNOWN]
    linearizable = {
        Verdict.OK: True,
        Verdict.ILLEGAL: False,
        Verdict.UNKNOWN: None,
    }[result.verdict]
    fast = sum(1 for r in result.keys.values() if r.fast_path)
    steps = sum(r.steps for r in result.keys.values())
    note = f"{len(result.keys)} keys, {fast} by the fast path, {steps} search steps"
    if unknown:
        note += f"; search budget exhausted on keys {unknown}"
    return HistoryVerdict(linearizable, note, anomalies)


def kv_replicas(statuses: Mapping[int, Status]) -> dict[int, dict[int, tuple[int, int, int]]]:
    """group id -> {node id -> (applied, key count, digest)} from the status documents."""
    out: dict[int, dict[int, tuple[int, int, int]]] = {}
    for node_id, doc in statuses.items():
        for g in doc.get("groups", []):
            kv = g.get("kv") or []
            if len(kv) == 3:
                out.setdefault(int(g["group_id"]), {})[node_id] = (
                    int(kv[0]),
                    int(kv[1]),
                    int(kv[2]),
                )
    return out


def replica_divergence(statuses: Mapping[int, Status]) -> list[str]:
    """Every voter of every KV group holds a replica, and all replicas report the same state
    (applied index, key count, digest). Empty = converged."""
    voters: dict[int, set[int]] = {}
    for doc in statuses.values():
        for g in doc.get("groups", []):
            if g.get("kv"):
                voters.setdefault(int(g["group_id"]), set()).update(int(v) for v in g["voters"])
    problems: list[str] = []
    if statuses and not voters:
        return ["no node reports a KV replica digest (status without 'kv'): nothing compared"]
    replicas = kv_replicas(statuses)
    for group_id in sorted(voters):
        states = replicas.get(group_id, {})
        missing = sorted(v for v in voters[group_id] if v not in states)
        if missing:
            problems.append(f"group {group_id}: no replica state from voters {missing}")
        if len(set(states.values())) > 1:
            shown = ", ".join(f"node {n}: {s}" for n, s in sorted(states.items()))
            problems.append(f"group {group_id}: replicas differ (applied, keys, digest): {shown}")
    return problems


_PORCUPINE_KINDS = {0: OpKind.GET, 1: OpKind.PUT, 2: OpKind.DELETE, 3: OpKind.CAS}


def ops_from_porcupine(rows: Sequence[Mapping[str, Any]]) -> list[Op]:
    """The inverse of `checker.dumps` for string values (a failed run's file, re-checked):
    `Return` = int64 max → INFO; FAIL operations were never exported."""
    ops: list[Op] = []
    for n, row in enumerate(rows):
        given, out = row["Input"], row["Output"]
        kind = _PORCUPINE_KINDS[int(given["Op"])]
        unknown = bool(out["Unknown"])
        output: Value | bool = None
        if not unknown:
            output = (
                out["Value"] if kind is OpKind.GET else out["Ok"] if kind is OpKind.CAS else None
            )
        ret = int(row["Return"])
        ops.append(
            Op(
                op_id=n,
                process=int(row["ClientId"]),
                kind=kind,
                key=str(given["Key"]),
                value=given["Value"],
                expected=given["Expected"],
                output=output,
                outcome=Outcome.INFO if unknown else Outcome.OK,
                invoke_ms=int(row["Call"]) / 1e6,
                complete_ms=None if ret == INT64_MAX else ret / 1e6,
            )
        )
    return ops
