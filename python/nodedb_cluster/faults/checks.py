"""The checks after a run, as pure functions over the history and what the nodes report.

Each returns a list of anomalies (empty = passed), every one a sentence naming the key or
group and the values involved, so a failing run can be read without the debugger.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nodedb_cluster.faults.history import Event, History

Status = Mapping[str, Any]


def _written(invoked: Event) -> str | None:
    if invoked.f == "put":
        return invoked.value if isinstance(invoked.value, str) else None
    if invoked.f == "cas" and isinstance(invoked.value, list):
        new = invoked.value[1]
        return new if isinstance(new, str) else None
    return None


def _acknowledged(completion: Event | None) -> bool:
    """ok, and for a cas: it swapped."""
    if completion is None or completion.type != "ok":
        return False
    if completion.f == "cas":
        return isinstance(completion.value, list) and completion.value[2] is True
    return completion.f == "put"


def lost_writes(history: History, final: Mapping[str, str | None]) -> list[str]:
    """Every acknowledged write must be the key's final value, or be superseded: the final
    value was written by another acknowledged or unknown write that did not complete before
    the acknowledged one was invoked (so it may be ordered after it)."""
    writers: dict[tuple[str, str], tuple[Event, Event | None]] = {}
    acked: list[tuple[Event, Event]] = []
    for invoked, completion in history.pairs():
        value = _written(invoked)
        if value is None:
            continue
        failed = completion is not None and (
            completion.type == "fail" or (completion.type == "ok" and not _acknowledged(completion))
        )
        if not failed:
            writers[(invoked.key, value)] = (invoked, completion)
        if completion is not None and _acknowledged(completion):
            acked.append((invoked, completion))
    problems: list[str] = []
    for invoked, _completion in acked:
        value = _written(invoked)
        now = final.get(invoked.key)
        if now == value:
            continue
        if now is None:
            problems.append(
                f"key {invoked.key}: acknowledged {invoked.f} of {value!r} lost, key is absent"
            )
            continue
        writer = writers.get((invoked.key, now))
        if writer is None:
            problems.append(
                f"key {invoked.key}: final value {now!r} was never (possibly) written; "
                f"acknowledged {value!r} lost"
            )
            continue
        w_inv, w_done = writer
        if w_done is not None and w_done.time_ns < invoked.time_ns:
            problems.append(
                f"key {invoked.key}: acknowledged {invoked.f} of {value!r} (op {invoked.op_index})"
                f" lost: final {now!r} comes from op {w_inv.op_index}, which completed before it"
                " was invoked"
            )
    return problems


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
