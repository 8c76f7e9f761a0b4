"""One chaos run: a LocalCluster, the recorded workload, the nemesis executing a schedule,
then heal everything, wait (bounded) for convergence and run every check.

The I/O shell around `nemesis.plan_schedule` (what) and `checks` (verdicts): its
`injector.FaultInjector` fires the faults at their times, and it collects what the checks need.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from nodedb_cluster.checker import HistoryRecorder, Op, OpKind, Outcome, dumps
from nodedb_cluster.client import Client
from nodedb_cluster.errors import ClusterError, Timeout
from nodedb_cluster.faults.checks import check_history, convergence_problems, stale_replicas
from nodedb_cluster.faults.injector import FaultInjector
from nodedb_cluster.faults.nemesis import (
    FAULT_KINDS,
    Fault,
    FaultKind,
    format_schedule,
    plan_schedule,
)
from nodedb_cluster.faults.workload import WorkloadSpec, connect_client, now_ms, run_workload
from nodedb_cluster.localcluster import LocalCluster, groups_formed
from nodedb_cluster.routing.table import METADATA_GROUP_ID, RoutingTable
from nodedb_cluster.routing.vshard import vshard_for_key

FORM_TIMEOUT_S: Final = 60.0
"""Start to every group led with min(nodes, RF) voters."""
CONVERGE_TIMEOUT_S: Final = 30.0
"""Heal to every replica of every group reporting the same state."""
FINAL_READ_TIMEOUT_S: Final = 15.0
SLOW_FAILOVER_MS: Final = 2000.0
"""A failover slower than this (about twice the usual) keeps a passing run's directory and
history: a tail to explain, which the run's node logs and the history of its clients' calls
can, where a number alone cannot. Not an anomaly."""
SPARES_DEFAULT: Final = 2
HARNESS_OVERRIDES: Final[dict[str, object]] = {"rebalance_interval_ms": 500}
"""Every node plans replica moves twice a second, so an added node takes replicas and a
decommissioned one drains within a fault or two."""
FINAL_READ_PROCESS: Final = 999_999
"""The process id of the reads after healing (in the history, so the checker sees them)."""

PrintFn = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class RunSpec:
    seed: int
    base_dir: Path
    nodes: int = 3
    spares: int = SPARES_DEFAULT
    """Node slots started only by `add_node` faults (ids nodes+1 ..)."""
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    kinds: tuple[FaultKind, ...] = FAULT_KINDS
    keep_dirs: bool = False


@dataclass(slots=True)
class RunResult:
    seed: int
    schedule: tuple[Fault, ...]
    anomalies: list[str] = field(default_factory=list)
    linearizable: bool | None = None
    """None when the checker gave up (search bound) or is not installed."""
    linearizable_note: str = ""
    failovers_ms: list[float] = field(default_factory=list)
    """Leader SIGKILL → first acknowledged write invoked after it, in that group."""
    elections_ms: list[float] = field(default_factory=list)
    """Leader SIGKILL → a survivor reports leading that group in a later term."""
    ops: dict[str, int] = field(default_factory=dict)
    fault_log: list[str] = field(default_factory=list)
    stale_replicas: list[tuple[int, int]] = field(default_factory=list)
    """(node, group): replicas outside their group's configuration after convergence (not an
    anomaly: not compared, they hold no acknowledged state the group depends on)."""
    history_path: Path | None = None
    moves: dict[str, int] = field(default_factory=dict)
    """The harness's vShard moves: begun, refused, finished (in the target at the end), aborted
    (still in the source), elsewhere (moved on by the rebalancer); groups_added; relocated:
    vShards whose group at the end differs from the start (the rebalancer's moves included)."""

    @property
    def passed(self) -> bool:
        return not self.anomalies and self.linearizable is not False

    def to_doc(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "passed": self.passed,
            "anomalies": self.anomalies,
            "linearizable": self.linearizable,
            "linearizable_note": self.linearizable_note,
            "failovers_ms": self.failovers_ms,
            "elections_ms": self.elections_ms,
            "ops": self.ops,
            "schedule": [f.describe() for f in self.schedule],
            "fault_log": self.fault_log,
            "stale_replicas": self.stale_replicas,
            "moves": self.moves,
            "history_path": None if self.history_path is None else str(self.history_path),
        }


def slow_failovers_ms(result: RunResult) -> list[int]:
    """The run's failovers over `SLOW_FAILOVER_MS`, which keep its directory and history."""
    return [round(f) for f in result.failovers_ms if f > SLOW_FAILOVER_MS]


def failover_times_ms(
    ops: Sequence[Op], leader_kills: Sequence[tuple[int, float]], client: Client
) -> list[float]:
    """Per leader kill: the first acknowledged write to that group invoked after the kill,
    its completion minus the kill time."""
    out: list[float] = []
    for group_id, killed_ms in leader_kills:
        done = [
            op.complete_ms
            for op in ops
            if op.is_write
            and op.outcome is Outcome.OK
            and op.invoke_ms >= killed_ms
            and op.complete_ms is not None
            and client.group_of(op.key.encode()) == group_id
        ]
        if done:
            out.append(min(done) - killed_ms)
    return out


async def _final_values(
    client: Client, keys: Sequence[str], history: HistoryRecorder
) -> dict[str, str | None]:
    """Each key read (linearizable) after healing, recorded in the history as well."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FINAL_READ_TIMEOUT_S
    out: dict[str, str | None] = {}
    for key in keys:
        while True:
            history.invoke(FINAL_READ_PROCESS, OpKind.GET, key, now_ms())
            try:
                got = await client.get(key.encode(), timeout_s=2.0)
            except ClusterError:
                history.fail(FINAL_READ_PROCESS, now_ms())
                if loop.time() > deadline:
                    raise
                continue
            out[key] = None if got is None else got.decode()
            history.ok(FINAL_READ_PROCESS, now_ms(), out[key])
            break
    return out


async def run_schedule(spec: RunSpec, print_fn: PrintFn = print) -> RunResult:
    base = spec.base_dir / f"run-{spec.seed}"
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    cluster = LocalCluster(base, spec.nodes + spec.spares, overrides=dict(HARNESS_OVERRIDES))
    clients: list[Client] = []
    result = RunResult(spec.seed, ())
    finished = False
    try:
        initial = list(range(1, spec.nodes + 1))
        await cluster.start(initial)
        rf = cluster.nodes[1].config.replication_factor
        try:
            await cluster.wait_for(
                lambda s: groups_formed(s, min(spec.nodes, rf)),
                initial,
                FORM_TIMEOUT_S,
                "groups formed",
            )
        except Timeout as e:  # say why: the groups' state as the nodes report it
            statuses = {}
            for i in initial:
                with contextlib.suppress(ClusterError, TimeoutError):
                    statuses[i] = await cluster.status(i, timeout_s=1.0)
            why = convergence_problems(statuses, set(initial), rf)
            raise ClusterError(f"{e}: {why}; stale replicas {stale_replicas(statuses)}") from e
        addrs = [cluster.nodes[i].addr for i in initial]
        for _ in range(spec.workload.workers):
            clients.append(
                await connect_client(addrs, cluster.client_credentials, spec.workload.op_timeout_s)
            )
        keys = spec.workload.key_names()
        key_groups = sorted({clients[0].group_of(k.encode()) for k in keys})
        key_vshards = sorted({int(vshard_for_key(k.encode())) for k in keys})
        start_routing = [int(g) for g in clients[0].routing.vshard_to_group]
        data_groups = len(set(clients[0].routing.group_ids) - {METADATA_GROUP_ID})
        spares = range(spec.nodes + 1, spec.nodes + spec.spares + 1)
        schedule = plan_schedule(
            spec.seed,
            spec.workload.duration_s,
            initial,
            key_groups,
            spec.kinds,
            spares,
            rf,
            vshards=key_vshards,
            data_groups=data_groups,
        )
        result.schedule = schedule
        print_fn(format_schedule(spec.seed, schedule))
        history = HistoryRecorder()
        loop = asyncio.get_running_loop()
        nemesis = FaultInjector(
            cluster, initial, cluster.nodes[1].config.listen_addr.port, loop.time()
        )
        workload = asyncio.create_task(run_workload(clients, spec.workload, history, spec.seed))
        try:
            await nemesis.run(schedule, spec.workload.duration_s)
        finally:
            await nemesis.heal_all()
            await workload
        unsettled, routing = await nemesis.settle_placement()
        result.anomalies += [f"placement not settled after healing: {p}" for p in unsettled]
        result.moves = _move_outcomes(nemesis, start_routing, routing)
        result.fault_log = nemesis.log
        result.anomalies += nemesis.anomalies
        members = set(nemesis.members)
        try:
            statuses = await cluster.wait_for(
                lambda s: not convergence_problems(s, members, rf),
                sorted(members),
                CONVERGE_TIMEOUT_S,
                "replicas to converge",
            )
        except Timeout:
            statuses = await nemesis._statuses()
            result.anomalies += [
                f"no convergence within {CONVERGE_TIMEOUT_S} s: {p}"
                for p in convergence_problems(statuses, members, rf)
                or [f"members {sorted(members)} did not all answer status"]
            ]
        result.stale_replicas = stale_replicas(statuses)
        try:
            final: dict[str, str | None] | None = await _final_values(clients[0], keys, history)
        except ClusterError as e:  # the run's finding, not the harness's end: recorded
            final = None
            result.anomalies.append(
                f"a key stayed unreadable {FINAL_READ_TIMEOUT_S} s after healing: {e}"
            )
        ops = history.close()
        result.ops = _count_ops(ops)
        if final is None:
            result.linearizable_note = "not checked: the final reads failed"
        else:
            verdict = check_history(ops, final)
            result.linearizable = verdict.linearizable
            result.linearizable_note = verdict.note
            result.anomalies += verdict.anomalies
        result.failovers_ms = failover_times_ms(ops, nemesis.leader_kills, clients[0])
        result.elections_ms = nemesis.elections_ms
        slow = slow_failovers_ms(result)
        if not result.passed or slow:
            result.history_path = base / "history.porcupine.json"
            result.history_path.write_text(dumps(ops))
        if not result.passed:
            print_fn(_failure_report(spec, result))
        elif slow:
            print_fn(
                f"chaos seed={spec.seed}: failover of {slow} ms (over {SLOW_FAILOVER_MS:.0f}); "
                f"kept {base} (node logs, history: {result.history_path})"
            )
        finished = True
        return result
    finally:
        for client in clients:
            with contextlib.suppress(ClusterError):
                await client.close()
        await cluster.close()
        # Kept after an error, a failed check or a slow failover.
        if finished and not spec.keep_dirs and result.history_path is None:
            shutil.rmtree(base, ignore_errors=True)


def _move_outcomes(
    nemesis: FaultInjector, start: Sequence[int], end: RoutingTable | None
) -> dict[str, int]:
    """The harness's moves by where their vShard is at the end (see `RunResult.moves`)."""
    out = {
        "begun": len(nemesis.moves_begun),
        "refused": nemesis.moves_refused,
        "finished": 0,
        "aborted": 0,
        "elsewhere": 0,
        "groups_added": len(nemesis.groups_added),
        "relocated": 0,
    }
    if end is None:
        return out
    final = [int(g) for g in end.vshard_to_group]
    begun = nemesis.moves_begun
    for n, (vshard, source, target) in enumerate(begun):
        # Where the vShard is next seen: the source of the harness's next move of it, or the end.
        later = [s for v, s, _ in begun[n + 1 :] if v == vshard]
        group = later[0] if later else final[vshard]
        outcome = "finished" if group == target else "aborted" if group == source else "elsewhere"
        out[outcome] += 1
    out["relocated"] = sum(1 for a, b in zip(start, final, strict=True) if a != b)
    return out


def _count_ops(ops: Sequence[Op]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in ops:
        name = f"{op.kind.value}:{op.outcome.value}"
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _failure_report(spec: RunSpec, result: RunResult) -> str:
    lines = [
        f"CHAOS RUN FAILED seed={spec.seed}",
        format_schedule(spec.seed, result.schedule),
        "what happened:",
        *("  " + line for line in result.fault_log),
        "anomalies:",
        *("  " + a for a in result.anomalies),
        f"linearizable: {result.linearizable} {result.linearizable_note}",
        f"history (Porcupine format): {result.history_path}",
    ]
    return "\n".join(lines)
