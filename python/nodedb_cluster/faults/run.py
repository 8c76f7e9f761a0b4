"""One chaos run: a LocalCluster, the recorded workload, the nemesis executing a schedule,
then heal everything, wait (bounded) for convergence and run every check.

The I/O shell around `nemesis.plan_schedule` (what) and `checks` (verdicts): it only fires
faults at their times and collects what the checks need.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from nodedb_cluster.checker import HistoryRecorder, Op, OpKind, Outcome, dumps
from nodedb_cluster.client import Client
from nodedb_cluster.errors import ClusterError, Timeout
from nodedb_cluster.faults.checks import check_history, replica_divergence
from nodedb_cluster.faults.nemesis import (
    FAULT_KINDS,
    Fault,
    FaultKind,
    format_schedule,
    plan_schedule,
)
from nodedb_cluster.faults.netfault import Partitioner, in_private_netns
from nodedb_cluster.faults.workload import WorkloadSpec, connect_client, now_ms, run_workload
from nodedb_cluster.localcluster import LocalCluster, Status, leader_of

FORM_TIMEOUT_S: Final = 60.0
"""Start to every KV group led with all its voters."""
CONVERGE_TIMEOUT_S: Final = 30.0
"""Heal to every replica of every group reporting the same state."""
FINAL_READ_TIMEOUT_S: Final = 15.0
RESTART_READY_TIMEOUT_S: Final = 30.0
FINAL_READ_PROCESS: Final = 999_999
"""The process id of the reads after healing (in the history, so the checker sees them)."""

PrintFn = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class RunSpec:
    seed: int
    base_dir: Path
    nodes: int = 3
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
    elections_ms: list[float] = field(default_factory=list)
    """Leader SIGKILL → a survivor reports leading that group in a later term."""
    """Leader SIGKILL → first acknowledged write invoked after it, in that group."""
    ops: dict[str, int] = field(default_factory=dict)
    fault_log: list[str] = field(default_factory=list)
    history_path: Path | None = None

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
            "history_path": None if self.history_path is None else str(self.history_path),
        }


def groups_formed(statuses: dict[int, Status], voters_per_group: int) -> bool:
    """Every group (metadata and KV) has a leader whose view holds `voters_per_group` voters
    and no learners, and every voter reports a replica. Before this, followers may still be
    learners, which never campaign: a fault then tests formation, not failover."""
    leaders: dict[int, Mapping[str, Any]] = {}
    present: dict[int, set[int]] = {}
    for node_id, doc in statuses.items():
        for g in doc.get("groups", []):
            gid = int(g["group_id"])
            present.setdefault(gid, set()).add(node_id)
            if g["role"] == "leader":
                leaders[gid] = g
    return bool(present) and all(
        gid in leaders
        and len(leaders[gid]["voters"]) == voters_per_group
        and not leaders[gid]["learners"]
        and {int(v) for v in leaders[gid]["voters"]} <= present[gid]
        for gid in present
    )


def _term_of(statuses: dict[int, Status], node_id: int, group_id: int) -> int:
    for g in statuses.get(node_id, {}).get("groups", []):
        if int(g["group_id"]) == group_id:
            return int(g["term"])
    return 0


class _Nemesis:
    """Executes a schedule against `cluster`; everything it did is in `log`."""

    def __init__(self, cluster: LocalCluster, port: int, t0: float) -> None:
        self.cluster = cluster
        self.partitioner = Partitioner(port) if in_private_netns() else None
        self.t0 = t0
        self.log: list[str] = []
        self.leader_kills: list[tuple[int, float]] = []
        """(group id, `now_ms()` of the SIGKILL)."""
        self.elections_ms: list[float] = []
        """Leader SIGKILL → a survivor reports itself leader in a later term (status polls)."""

    def note(self, text: str) -> None:
        self.log.append(f"t+{time.monotonic() - self.t0:6.2f}s  {text}")

    async def _statuses(self) -> dict[int, Status]:
        out: dict[int, Status] = {}
        for node_id, node in self.cluster.nodes.items():
            if not node.running:
                continue
            with contextlib.suppress(ClusterError, TimeoutError):
                out[node_id] = await self.cluster.status(node_id, timeout_s=1.0)
        return out

    async def _restart(self, node_ids: Sequence[int]) -> None:
        chosen = [self.cluster.nodes[i] for i in node_ids]
        for node in chosen:
            with contextlib.suppress(TimeoutError):
                await node.wait_exit(5.0)
            if not node.running:
                await node.start()
        await asyncio.gather(*(n.wait_ready(RESTART_READY_TIMEOUT_S) for n in chosen))
        self.note(f"restarted {list(node_ids)}")

    async def fire(self, fault: Fault, duration_s: float) -> None:
        nodes = self.cluster.nodes
        hold = fault.hold_s
        if fault.kind == "kill":
            nodes[fault.node_id].kill()
            self.note(f"SIGKILL node {fault.node_id}")
            await asyncio.sleep(hold)
            await self._restart([fault.node_id])
        elif fault.kind == "kill_leader":
            leader = leader_of(await self._statuses(), fault.group_id)
            if not leader:
                self.note(f"group {fault.group_id} has no leader now: kill skipped")
                await asyncio.sleep(hold)
                return
            term = _term_of(await self._statuses(), leader, fault.group_id)
            nodes[leader].kill()
            killed_ms = now_ms()
            self.leader_kills.append((fault.group_id, killed_ms))
            self.note(f"SIGKILL node {leader}, leader of group {fault.group_id} (term {term})")
            await self._watch_election(fault.group_id, leader, term, killed_ms, hold)
            await self._restart([leader])
        elif fault.kind == "pause":
            nodes[fault.node_id].pause()
            self.note(f"SIGSTOP node {fault.node_id}")
            try:
                await asyncio.sleep(hold)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    nodes[fault.node_id].resume()
                self.note(f"SIGCONT node {fault.node_id}")
        elif fault.kind == "restart_all":
            for node in nodes.values():
                node.kill()
            self.note("SIGKILL every node")
            await asyncio.sleep(hold)
            await self._restart(sorted(nodes))
        elif fault.kind == "partition":
            if self.partitioner is None:
                self.note("partition skipped: not in a private network namespace")
                await asyncio.sleep(hold)
                return
            host = nodes[fault.node_id].config.listen_addr.host
            others = [
                str(n.config.listen_addr.host) for i, n in nodes.items() if i != fault.node_id
            ]
            self.partitioner.isolate(str(host), others)
            self.note(f"isolated node {fault.node_id} ({host}) from {others}")
            try:
                await asyncio.sleep(hold)
            finally:
                self.partitioner.heal()
                self.note(f"healed partition of node {fault.node_id}")

    async def _watch_election(
        self, group_id: int, old: int, term: int, killed_ms: float, hold_s: float
    ) -> None:
        """For the hold: poll the survivors until one reports itself leader of `group_id` in a
        later term (status polling, so up to one poll late); the time goes to `elections_ms`."""
        loop = asyncio.get_running_loop()
        end = loop.time() + hold_s
        while loop.time() < end:
            statuses = await self._statuses()
            new = leader_of(statuses, group_id)
            if new not in (0, old) and _term_of(statuses, new, group_id) > term:
                self.elections_ms.append(now_ms() - killed_ms)
                self.note(f"group {group_id}: node {new} leads")
                break
            await asyncio.sleep(min(0.05, max(0.0, end - loop.time())))  # no push channel
        await asyncio.sleep(max(0.0, end - loop.time()))

    async def run(self, schedule: Sequence[Fault], duration_s: float) -> None:
        loop = asyncio.get_running_loop()
        for fault in schedule:
            wait = self.t0 + fault.at_s - loop.time()
            if self.t0 + duration_s - loop.time() < fault.hold_s:
                self.note(f"out of time: {fault.describe()} not fired")
                break
            await asyncio.sleep(max(0.0, wait))
            await self.fire(fault, duration_s)

    async def heal_all(self) -> None:
        """Resume paused nodes, drop partitions, restart anything dead."""
        if self.partitioner is not None:
            self.partitioner.heal()
        dead = []
        for node_id, node in self.cluster.nodes.items():
            if node.running:
                with contextlib.suppress(ProcessLookupError):  # exited since the check
                    node.resume()
            else:
                dead.append(node_id)
        if dead:
            await self._restart(dead)


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
    cluster = LocalCluster(base, spec.nodes)
    clients: list[Client] = []
    result = RunResult(spec.seed, ())
    finished = False
    try:
        await cluster.start()
        voters = min(spec.nodes, cluster.nodes[1].config.replication_factor)
        await cluster.wait_for(
            lambda s: groups_formed(s, voters), cluster.nodes, FORM_TIMEOUT_S, "groups formed"
        )
        addrs = [n.addr for n in cluster.nodes.values()]
        for _ in range(spec.workload.workers):
            clients.append(
                await connect_client(addrs, cluster.client_credentials, spec.workload.op_timeout_s)
            )
        keys = spec.workload.key_names()
        key_groups = sorted({clients[0].group_of(k.encode()) for k in keys})
        schedule = plan_schedule(
            spec.seed, spec.workload.duration_s, sorted(cluster.nodes), key_groups, spec.kinds
        )
        result.schedule = schedule
        print_fn(format_schedule(spec.seed, schedule))
        history = HistoryRecorder()
        loop = asyncio.get_running_loop()
        nemesis = _Nemesis(cluster, cluster.nodes[1].config.listen_addr.port, loop.time())
        workload = asyncio.create_task(run_workload(clients, spec.workload, history, spec.seed))
        try:
            await nemesis.run(schedule, spec.workload.duration_s)
        finally:
            await nemesis.heal_all()
            await workload
        result.fault_log = nemesis.log
        try:
            await cluster.wait_for(
                lambda s: groups_formed(s, voters) and not replica_divergence(s),
                cluster.nodes,
                CONVERGE_TIMEOUT_S,
                "replicas to converge",
            )
        except Timeout:
            statuses = await nemesis._statuses()
            result.anomalies += [
                f"no convergence within {CONVERGE_TIMEOUT_S} s: {p}"
                for p in replica_divergence(statuses) or ["(no group led)"]
            ]
        final = await _final_values(clients[0], keys, history)
        ops = history.close()
        result.ops = _count_ops(ops)
        verdict = check_history(ops, final)
        result.linearizable = verdict.linearizable
        result.linearizable_note = verdict.note
        result.anomalies += verdict.anomalies
        result.failovers_ms = failover_times_ms(ops, nemesis.leader_kills, clients[0])
        result.elections_ms = nemesis.elections_ms
        if not result.passed:
            result.history_path = base / "history.porcupine.json"
            result.history_path.write_text(dumps(ops))
            print_fn(_failure_report(spec, result))
        finished = True
        return result
    finally:
        for client in clients:
            with contextlib.suppress(ClusterError):
                await client.close()
        await cluster.close()
        if finished and result.passed and not spec.keep_dirs:  # logs kept after an error
            shutil.rmtree(base, ignore_errors=True)


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


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def summarize(results: Sequence[RunResult]) -> dict[str, object]:
    failovers = [f for r in results for f in r.failovers_ms]
    elections = [f for r in results for f in r.elections_ms]
    ops: dict[str, int] = {}
    for r in results:
        for k, v in r.ops.items():
            ops[k] = ops.get(k, 0) + v
    return {
        "runs": len(results),
        "failed_runs": [r.seed for r in results if not r.passed],
        "anomalies": sum(len(r.anomalies) for r in results),
        "linearizable_unknown": [r.seed for r in results if r.linearizable is None],
        "failovers": len(failovers),
        "failover_ms_p50": statistics.median(failovers) if failovers else None,
        "failover_ms_p99": percentile(failovers, 99) if failovers else None,
        "failover_ms_max": max(failovers) if failovers else None,
        "elections": len(elections),
        "election_ms_p50": statistics.median(elections) if elections else None,
        "election_ms_p99": percentile(elections, 99) if elections else None,
        "ops": dict(sorted(ops.items())),
    }


def write_summary(path: Path, results: Sequence[RunResult]) -> None:
    doc = {"summary": summarize(results), "runs": [r.to_doc() for r in results]}
    path.write_text(json.dumps(doc, indent=2))
