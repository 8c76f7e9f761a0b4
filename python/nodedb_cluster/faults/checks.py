"""The checks after a run, as pure functions over the history and what the nodes report.

Each returns a list of anomalies (empty = passed), every one a sentence naming the key or
group and the values involved, so a failing run can be read without the debugger.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
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
from nodedb_cluster.localcluster import leader_views
from nodedb_cluster.routing.table import METADATA_GROUP_ID

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


def convergence_problems(
    statuses: Mapping[int, Status], members: Set[int], replication_factor: int
) -> list[str]:
    """What keeps the cluster from having converged, as sentences; empty = converged.

    `members` are the nodes that should run now (started, not retired). Per group, the leader's
    configuration (highest term: `leader_views`) is the membership: it holds min(members, RF)
    voters, only running members, and data groups no learner (one left is a move or a join that
    has not finished); every voter of a KV group reports the same (applied index, key count,
    digest). Routing's replica count per node (`placement`, from the status with the newest
    routing) equals the data groups whose leader lists that node. Replicas outside their
    group's configuration are not compared (`stale_replicas` names them)."""
    if not statuses:
        return ["no status from any member"]
    wanted = min(len(members), replication_factor)
    views = leader_views(statuses)
    present = {int(g["group_id"]) for doc in statuses.values() for g in doc.get("groups", [])}
    replicas = kv_replicas(statuses)
    problems: list[str] = []
    if present and not replicas:
        problems.append("no node reports a KV replica digest (status without 'kv')")
    held: dict[int, int] = {}
    for gid in sorted(present):
        if gid not in views:
            problems.append(f"group {gid}: no leader")
            continue
        leader, view = views[gid]
        voters = sorted(int(v) for v in view["voters"])
        learners = sorted(int(v) for v in view["learners"])
        if len(voters) != wanted:
            problems.append(f"group {gid}: voters {voters} (leader {leader}), want {wanted}")
        strangers = sorted(set(voters + learners) - members)
        if strangers:
            problems.append(f"group {gid}: members {strangers} are not running members")
        if gid == METADATA_GROUP_ID:
            missing = sorted(members - set(voters + learners))
            if missing:
                problems.append(f"group 0: running nodes {missing} are not members")
            continue
        if learners:
            problems.append(
                f"group {gid}: learners {learners} not promoted or removed (leader {leader}, "
                f"voters {voters}, commit {view.get('commit')})"
            )
        for n in {*voters, *learners}:
            held[n] = held.get(n, 0) + 1
        states = replicas.get(gid, {})
        missing = [v for v in voters if v not in states]
        if missing:
            problems.append(f"group {gid}: no replica state from voters {missing}")
        compared = {v: states[v] for v in voters if v in states}
        if len(set(compared.values())) > 1:
            shown = ", ".join(f"node {n}: {s}" for n, s in sorted(compared.items()))
            problems.append(f"group {gid}: replicas differ (applied, keys, digest): {shown}")
    newest = max(statuses.values(), key=lambda d: int(d.get("routing_epoch", 0)))
    routed = {int(p[0]): int(p[1]) for p in newest.get("placement") or () if int(p[1])}
    if routed and routed != held:
        problems.append(f"routing's replicas per node {routed} != leaders' configurations {held}")
    return problems


MoveRow = tuple[int, int, int, int, str]
"""(vShard, source, target, move id, phase) of a vShard move in flight, from status."""


def moves_in_flight(statuses: Mapping[int, Status]) -> list[MoveRow]:
    """Every vShard move some node's status lists (`vshard_moves` rows), each once; the phase
    from the node that runs it when one reports it ("elsewhere" on the others)."""
    rows: dict[tuple[int, int], MoveRow] = {}
    for doc in statuses.values():
        for m in doc.get("vshard_moves") or ():
            row = (int(m[0]), int(m[1]), int(m[2]), int(m[3]), str(m[4]))
            key = (row[0], row[3])
            if key not in rows or rows[key][4] == "elsewhere":
                rows[key] = row
    return sorted(rows.values())


RoutingView = tuple[int, Sequence[int]]
"""(routing epoch, vShard -> group) as one node serves it to clients."""


def routing_problems(views: Mapping[int, RoutingView], statuses: Mapping[int, Status]) -> list[str]:
    """What keeps routing from being settled, as sentences; empty = settled: every node serves
    the same epoch and the same vShard -> group map, and every group that map routes vShards
    to has a leader (`leader_views` of `statuses`) holding the number of vShards the map gives
    it in its status (`vshards`)."""
    if not views:
        return ["no node answered a routing request"]
    ref_node = max(views, key=lambda n: (views[n][0], -n))
    ref_epoch, ref_map = views[ref_node]
    problems: list[str] = []
    for node_id, (epoch, mapping) in sorted(views.items()):
        differ = [v for v, (a, b) in enumerate(zip(mapping, ref_map, strict=True)) if a != b]
        if epoch != ref_epoch or differ:
            shown = ", ".join(f"vShard {v}: {mapping[v]} vs {ref_map[v]}" for v in differ[:3])
            problems.append(
                f"node {node_id} routes at epoch {epoch}, node {ref_node} at {ref_epoch}; "
                f"{len(differ)} vShards differ" + (f" ({shown})" if shown else "")
            )
    counts: dict[int, int] = {}
    for g in ref_map:
        counts[int(g)] = counts.get(int(g), 0) + 1
    views_by_group = leader_views(statuses)
    for gid, n in sorted(counts.items()):
        if gid not in views_by_group:
            problems.append(f"routing sends {n} vShards to group {gid}, which has no leader")
            continue
        leader, view = views_by_group[gid]
        if int(view.get("vshards", n)) != n:
            problems.append(
                f"group {gid}: routing gives it {n} vShards, its leader {leader} reports "
                f"{view.get('vshards')}"
            )
    return problems


def stale_replicas(statuses: Mapping[int, Status]) -> list[tuple[int, int]]:
    """(node, group) for each local replica its group's leader does not list: a node removed
    from a group while it could not hear of the removal keeps its replica (and campaigns)."""
    views = leader_views(statuses)
    out: list[tuple[int, int]] = []
    for node_id, doc in sorted(statuses.items()):
        for g in doc.get("groups", []):
            gid = int(g["group_id"])
            if gid in views:
                view = views[gid][1]
                if node_id not in {int(v) for v in (*view["voters"], *view["learners"])}:
                    out.append((node_id, gid))
    return out


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
