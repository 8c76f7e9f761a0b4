"""One chaos run: a LocalCluster, the recorded workload, the nemesis executing a schedule,
then heal everything, wait (bounded) for convergence and run every check.

The I/O shell around `nemesis.plan_schedule` (what) and `checks` (verdicts): it only fires
faults at their times and collects what the checks need.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from nodedb_cluster import wire
from nodedb_cluster.checker import HistoryRecorder, Op, OpKind, Outcome, dumps
from nodedb_cluster.cli_support import control_rpc
from nodedb_cluster.client import Client
from nodedb_cluster.errors import ClusterError, RemoteError, Timeout
from nodedb_cluster.faults.checks import (
    check_history,
    convergence_problems,
    moves_in_flight,
    routing_problems,
    stale_replicas,
)
from nodedb_cluster.faults.nemesis import (
    FAULT_KINDS,
    Fault,
    FaultKind,
    format_schedule,
    plan_schedule,
)
from nodedb_cluster.faults.netfault import Partitioner, in_private_netns
from nodedb_cluster.faults.workload import WorkloadSpec, connect_client, now_ms, run_workload
from nodedb_cluster.localcluster import (
    LocalCluster,
    NodeProcessError,
    Status,
    groups_formed,
    leader_of,
)
from nodedb_cluster.placement_control import encode_placement_request
from nodedb_cluster.routing.table import METADATA_GROUP_ID, RoutingTable
from nodedb_cluster.routing.vshard import vshard_for_key

FORM_TIMEOUT_S: Final = 60.0
"""Start to every group led with min(nodes, RF) voters."""
CONVERGE_TIMEOUT_S: Final = 30.0
"""Heal to every replica of every group reporting the same state."""
FINAL_READ_TIMEOUT_S: Final = 15.0
RESTART_READY_TIMEOUT_S: Final = 30.0
DECOMMISSION_REQUEST_TIMEOUT_S: Final = 10.0
DRAIN_TIMEOUT_S: Final = 60.0
"""A decommission's request to the node DECOMMISSIONED (its replicas moved off meanwhile)."""
PLACEMENT_REQUEST_TIMEOUT_S: Final = 10.0
"""A placement request (decommission, move_vshard, add_groups) retried over the live members."""
VSHARD_SETTLE_TIMEOUT_S: Final = 20.0
"""Heal to no vShard move in flight and one routing on every member, while moves progress: the
settle ends unsettled once the routing epoch (bumped by each finished move) stood this long
(moves that never end, or that the rebalancer begins again and again as they keep aborting)."""
VSHARD_SETTLE_MAX_S: Final = 180.0
"""The settle's outer bound while moves do finish: the rebalancer filling added groups (up to
~170 vShards each, 4 moves a round) is progress, not an anomaly, until this."""
VSHARD_QUIET_S: Final = 4.0
"""Settled: no move in flight nor routing change for this long (a mover rests up to 2 s)."""
ROUTING_PROBE_TIMEOUT_S: Final = 2.0
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


def _term_of(statuses: dict[int, Status], node_id: int, group_id: int) -> int:
    for g in statuses.get(node_id, {}).get("groups", []):
        if int(g["group_id"]) == group_id:
            return int(g["term"])
    return 0


def _node_state(statuses: Mapping[int, Status], node_id: int) -> str:
    """`node_id`'s state in the topology of the status with the most metadata applied
    (REMOVED when that topology no longer lists it)."""
    if not statuses:
        return "UNKNOWN"
    newest = max(statuses.values(), key=lambda d: int(d.get("metadata_applied_index", 0)))
    states = {int(n[0]): str(n[2]) for n in newest.get("nodes") or ()}
    return states.get(node_id, "REMOVED")


FaultAction = Callable[[Fault], Awaitable[None]]


class _Nemesis:
    """Executes a schedule against `cluster`; everything it did is in `log`.

    `members` are the nodes that should run (started, not retired): heals, restarts and
    convergence look at them only. One method per fault kind (`_actions`): a new kind is one
    more method and one more entry."""

    def __init__(self, cluster: LocalCluster, members: Sequence[int], port: int, t0: float) -> None:
        self.cluster = cluster
        self.partitioner = Partitioner(port) if in_private_netns() else None
        self.t0 = t0
        self.log: list[str] = []
        self.anomalies: list[str] = []
        """Membership faults that did not finish (a join or a decommission), with the reason."""
        self.members: set[int] = set(members)
        self.retired: set[int] = set()
        self._locks = {i: asyncio.Lock() for i in cluster.nodes}
        """Per node: a restart and a retirement of the same node never interleave."""
        self._drains: list[asyncio.Task[None]] = []
        self.leader_kills: list[tuple[int, float]] = []
        """(group id, `now_ms()` of the SIGKILL)."""
        self.elections_ms: list[float] = []
        """Leader SIGKILL → a survivor reports itself leader in a later term (status polls)."""
        self._actions: dict[FaultKind, FaultAction] = {
            "kill": self._kill,
            "kill_leader": self._kill_leader,
            "pause": self._pause,
            "restart_all": self._restart_all,
            "partition": self._partition,
            "add_node": self._add_node,
            "decommission": self._decommission,
            "move_vshard": self._move_vshard,
            "add_groups": self._add_groups,
            "readdress": self._readdress,
        }
        self.moves_begun: list[tuple[int, int, int]] = []
        """(vShard, source, target) per move begun by a `move_vshard` fault."""
        self.moves_refused = 0
        self.groups_added: set[int] = set()
        self._readdressed: dict[int, int] = {}
        """Per node: how many times it moved (its address is 127.0.<that>.<node id>)."""

    def note(self, text: str) -> None:
        self.log.append(f"t+{time.monotonic() - self.t0:6.2f}s  {text}")

    def live(self) -> list[int]:
        """Members whose process runs now."""
        return sorted(i for i in self.members if self.cluster.nodes[i].running)

    async def _statuses(self) -> dict[int, Status]:
        out: dict[int, Status] = {}
        for node_id in self.live():
            with contextlib.suppress(ClusterError, TimeoutError):
                out[node_id] = await self.cluster.status(node_id, timeout_s=1.0)
        return out

    async def _restart(self, node_ids: Sequence[int]) -> None:
        """Start the given members again (retired ones are left down) and await Ready."""

        async def one(node_id: int) -> int:
            node = self.cluster.nodes[node_id]
            async with self._locks[node_id]:
                if node_id in self.retired:
                    return 0
                with contextlib.suppress(TimeoutError):
                    await node.wait_exit(5.0)
                if not node.running:
                    await node.start()
                await node.wait_ready(RESTART_READY_TIMEOUT_S)
                return node_id

        started = [i for i in await asyncio.gather(*(one(i) for i in node_ids)) if i]
        skipped = sorted(set(node_ids) - set(started))
        self.note(f"restarted {started}" + (f" (retired meanwhile: {skipped})" if skipped else ""))

    def _gone(self, fault: Fault) -> bool:
        """A fault aimed at a node retired meanwhile is skipped (noted)."""
        if fault.node_id in self.members:
            return False
        self.note(f"node {fault.node_id} is retired: {fault.kind} skipped")
        return True

    async def fire(self, fault: Fault) -> None:
        await self._actions[fault.kind](fault)

    async def _kill(self, fault: Fault) -> None:
        if self._gone(fault):
            return await asyncio.sleep(fault.hold_s)
        await self._kill_node(fault.node_id, fault.hold_s)

    async def _kill_node(self, node_id: int, hold_s: float) -> None:
        self.cluster.nodes[node_id].kill()
        self.note(f"SIGKILL node {node_id}")
        await asyncio.sleep(hold_s)
        await self._restart([node_id])

    async def _kill_leader(self, fault: Fault) -> None:
        statuses = await self._statuses()
        leader = leader_of(statuses, fault.group_id)
        if not leader:
            self.note(f"group {fault.group_id} has no leader now: kill skipped")
            return await asyncio.sleep(fault.hold_s)
        term = _term_of(statuses, leader, fault.group_id)
        self.cluster.nodes[leader].kill()
        killed_ms = now_ms()
        self.leader_kills.append((fault.group_id, killed_ms))
        self.note(f"SIGKILL node {leader}, leader of group {fault.group_id} (term {term})")
        await self._watch_election(fault.group_id, leader, term, killed_ms, fault.hold_s)
        await self._restart([leader])

    async def _readdress(self, fault: Fault) -> None:
        """SIGKILL the node, then restart it at 127.0.<n>.<id> (its n-th move), same port."""
        if self._gone(fault):
            return await asyncio.sleep(fault.hold_s)
        node_id = fault.node_id
        self.cluster.nodes[node_id].kill()
        self.note(f"SIGKILL node {node_id}")
        await asyncio.sleep(fault.hold_s)
        async with self._locks[node_id]:
            with contextlib.suppress(TimeoutError):
                await self.cluster.nodes[node_id].wait_exit(5.0)
            self._readdressed[node_id] = self._readdressed.get(node_id, 0) + 1
            host = f"127.0.{self._readdressed[node_id]}.{node_id}"
            self.cluster.readdress(node_id, host)
        self.note(f"node {node_id} moves to {host}")
        await self._restart([node_id])

    async def _pause(self, fault: Fault) -> None:
        if self._gone(fault):
            return await asyncio.sleep(fault.hold_s)
        await self._pause_node(fault.node_id, fault.hold_s)

    async def _pause_node(self, node_id: int, hold_s: float) -> None:
        node = self.cluster.nodes[node_id]
        node.pause()
        self.note(f"SIGSTOP node {node_id}")
        try:
            await asyncio.sleep(hold_s)
        finally:
            with contextlib.suppress(ProcessLookupError):
                node.resume()
            self.note(f"SIGCONT node {node_id}")

    async def _restart_all(self, fault: Fault) -> None:
        chosen = sorted(self.members)
        for i in chosen:
            self.cluster.nodes[i].kill()
        self.note(f"SIGKILL every node {chosen}")
        await asyncio.sleep(fault.hold_s)
        await self._restart(chosen)

    async def _partition(self, fault: Fault) -> None:
        if self._gone(fault):
            return await asyncio.sleep(fault.hold_s)
        await self._isolate(fault.node_id, fault.hold_s)

    async def _isolate(self, node_id: int, hold_s: float) -> None:
        """Cut `node_id` off from every other live member for `hold_s`, then heal."""
        if self.partitioner is None:
            self.note("partition skipped: not in a private network namespace")
            return await asyncio.sleep(hold_s)
        nodes = self.cluster.nodes
        host = nodes[node_id].config.listen_addr.host
        others = [str(nodes[i].config.listen_addr.host) for i in self.live() if i != node_id]
        self.partitioner.isolate(str(host), others)
        self.note(f"isolated node {node_id} ({host}) from {others}")
        try:
            await asyncio.sleep(hold_s)
        finally:
            self.partitioner.heal()
            self.note(f"healed partition of node {node_id}")

    async def _add_node(self, fault: Fault) -> None:
        """Start a spare slot: it joins through its seeds and the rebalancer (every
        `HARNESS_OVERRIDES["rebalance_interval_ms"]`) moves replicas onto it from then on."""
        node = self.cluster.nodes[fault.node_id]
        self.members.add(fault.node_id)
        started = time.monotonic()
        try:
            await node.start()
            await node.wait_ready(RESTART_READY_TIMEOUT_S)
        except NodeProcessError as e:
            node.kill()
            self.members.discard(fault.node_id)
            self.anomalies.append(f"spare node {fault.node_id} did not join: {e}")
            self.note(f"spare node {fault.node_id} did not join")
            return
        took = time.monotonic() - started
        self.note(f"spare node {fault.node_id} joined (Ready after {took:.2f} s)")
        await asyncio.sleep(fault.hold_s)

    async def _placement(
        self, op: str, refusal: str, **fields: object
    ) -> tuple[dict[str, Any] | None, str]:
        """PLACEMENT_REQUEST `op` with the admin certificate (what the `nodedb-cluster`
        placement commands send) to any live member, retried while unanswered, bounded by
        `PLACEMENT_REQUEST_TIMEOUT_S`. (answer, "") or (None, why): a refusal (an error naming
        `refusal`, final) or the last error when no member answered."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PLACEMENT_REQUEST_TIMEOUT_S
        error = ""
        while loop.time() < deadline:
            for via in self.live():
                try:
                    reply = await control_rpc(
                        self.cluster.nodes[via].addr,
                        self.cluster.admin_credentials,
                        2.0,
                        wire.MessageKind.PLACEMENT_REQUEST,
                        encode_placement_request(op, **fields),
                        wire.MessageKind.PLACEMENT_RESPONSE,
                    )
                    return wire.decode_map(reply, "placement response"), ""
                except RemoteError as e:
                    if refusal in e.message:  # refused: stays so
                        return None, f"refused: {e.message}"
                    error = str(e)
                except ClusterError as e:
                    error = str(e)
            await asyncio.sleep(0.2)  # no member answered: try again, bounded
        return None, f"no member answered within {PLACEMENT_REQUEST_TIMEOUT_S} s ({error})"

    async def _decommission(self, fault: Fault) -> None:
        """PLACEMENT_REQUEST decommission (what `nodedb-cluster decommission --no-wait` sends);
        the drain is then awaited in the background (`_retire`) while later faults fire."""
        if self._gone(fault):
            return await asyncio.sleep(fault.hold_s)
        node_id = fault.node_id
        answer, why = await self._placement("decommission", "replication factor", node_id=node_id)
        if answer is None:
            self.note(f"decommission of node {node_id}: {why}")
            if not why.startswith("refused"):
                self.anomalies.append(f"decommission of node {node_id}: {why}")
            return await asyncio.sleep(fault.hold_s)
        self.note(f"decommission of node {node_id}: {answer.get('state')}")
        self._drains.append(asyncio.create_task(self._retire(node_id)))
        if not fault.kill_draining:
            return await asyncio.sleep(fault.hold_s)
        self.cluster.nodes[node_id].kill()
        self.note(f"SIGKILL node {node_id} (draining)")
        await asyncio.sleep(fault.hold_s)
        await self._restart([node_id])  # unless retired meanwhile (its replicas moved anyway)

    async def routing_tables(self) -> dict[int, RoutingTable]:
        """The routing table each live member serves to a client (those that answer)."""

        async def one(node_id: int) -> tuple[int, RoutingTable | None]:
            addr = self.cluster.nodes[node_id].addr
            creds = self.cluster.client_credentials
            try:
                async with asyncio.timeout(ROUTING_PROBE_TIMEOUT_S * 2):
                    async with Client([addr], creds, timeout_s=ROUTING_PROBE_TIMEOUT_S) as c:
                        return node_id, c.routing
            except (ClusterError, TimeoutError):
                return node_id, None

        got = await asyncio.gather(*(one(i) for i in self.live()))
        return {i: t for i, t in got if t is not None}

    async def _move_vshard(self, fault: Fault) -> None:
        """Begin moves of `fault.vshards` (at once) to one group other than the first one's
        source, picked by `fault.target_pick` among the data groups routing has now; then hit
        the mover (the source group's leader) with `fault.mover_fault` for the hold. A move
        refused (the concurrent-move limit, a move of that vShard under way) is noted."""
        tables = await self.routing_tables()
        if not tables:
            self.note("move_vshard skipped: no member served routing")
            return await asyncio.sleep(fault.hold_s)
        routing = max(tables.values(), key=lambda t: t.epoch)
        source = routing.group_for_vshard(fault.vshards[0])
        others = sorted(set(routing.group_ids) - {source, METADATA_GROUP_ID})
        if not others:
            self.note("move_vshard skipped: one data group")
            return await asyncio.sleep(fault.hold_s)
        target = others[int(fault.target_pick * len(others))]
        there = [v for v in fault.vshards if routing.group_for_vshard(v) == target]
        if there:
            self.note(f"vShards {there} are in group {target} already: not moved")
        # The mover is found before the moves begin, so the hit lands while they run.
        mover = leader_of(await self._statuses(), source) if fault.mover_fault else 0

        async def begin(vshard: int) -> None:
            answer, why = await self._placement(
                "move_vshard", "refused", vshard=vshard, to_group=target
            )
            if answer is None:
                self.moves_refused += 1
                self.note(f"move of vShard {vshard} to group {target}: {why}")
                return
            self.moves_begun.append((vshard, int(answer.get("source", 0)), target))
            self.note(
                f"move {answer.get('move_id')} of vShard {vshard}: group "
                f"{answer.get('source')} -> {target} begun"
            )

        await asyncio.gather(*(begin(v) for v in fault.vshards if v not in there))
        if not fault.mover_fault:
            return await asyncio.sleep(fault.hold_s)
        if not mover:
            self.note(f"group {source} had no leader: {fault.mover_fault} skipped")
            return await asyncio.sleep(fault.hold_s)
        self.note(f"{fault.mover_fault} the mover, node {mover} (leader of group {source})")
        hit = {"kill": self._kill_node, "pause": self._pause_node, "partition": self._isolate}
        await hit[fault.mover_fault](mover, fault.hold_s)

    async def _add_groups(self, fault: Fault) -> None:
        """PLACEMENT_REQUEST add_groups (what `nodedb-cluster add-groups` sends); the rebalancer
        then moves vShards into them while later faults fire."""
        answer, why = await self._placement("add_groups", "refused", count=fault.count)
        if answer is None:
            self.note(f"adding {fault.count} groups: {why}")
            if not why.startswith("refused"):
                self.anomalies.append(f"adding {fault.count} groups: {why}")
            return await asyncio.sleep(fault.hold_s)
        added = [int(g[0]) for g in answer.get("groups") or ()]
        self.groups_added.update(added)
        self.note(f"added data groups {added}")
        await asyncio.sleep(fault.hold_s)

    async def _retire(self, node_id: int) -> None:
        """Poll until the topology says `node_id` is DECOMMISSIONED (or gone), then stop it for
        good; bounded by `DRAIN_TIMEOUT_S` (past it: an anomaly naming its state)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT_S
        state = "UNKNOWN"
        while loop.time() < deadline:
            others = {i: s for i, s in (await self._statuses()).items() if i != node_id}
            state = _node_state(others, node_id) if others else state
            if state in ("DECOMMISSIONED", "REMOVED"):
                async with self._locks[node_id]:
                    self.retired.add(node_id)
                    self.members.discard(node_id)
                    await self.cluster.nodes[node_id].stop()
                self.note(f"node {node_id} {state}: stopped for good")
                return
            await asyncio.sleep(0.2)  # the drain has no push channel: poll, bounded
        self.anomalies.append(
            f"decommission of node {node_id} not finished within {DRAIN_TIMEOUT_S} s: {state}"
        )

    async def settle_placement(self) -> tuple[list[str], RoutingTable | None]:
        """Poll until no move ran for `VSHARD_QUIET_S` and every member serves the same routing
        (`checks.routing_problems`), bounded by `VSHARD_SETTLE_TIMEOUT_S` without progress and
        `VSHARD_SETTLE_MAX_S`. Returns what was still wrong (empty: settled), the newest routing."""
        loop = asyncio.get_running_loop()
        start = progress_at = loop.time()
        epoch = -1
        while True:
            statuses = await self._statuses()
            newest_epoch = max(
                (int(d.get("routing_epoch", 0)) for d in statuses.values()), default=0
            )
            if newest_epoch > epoch:
                epoch, progress_at = newest_epoch, loop.time()
            tables: dict[int, RoutingTable] = {}
            problems = [f"member {i} did not answer status" for i in self.members - statuses.keys()]
            rows = moves_in_flight(statuses)
            now = loop.time()
            last = now - progress_at > VSHARD_SETTLE_TIMEOUT_S or now - start > VSHARD_SETTLE_MAX_S
            quiet = not rows and now - progress_at >= VSHARD_QUIET_S
            if not quiet:
                problems.append(
                    f"vShard moves in flight (vShard, source, target, id, phase) {rows} at "
                    f"routing epoch {epoch}, unchanged for {now - progress_at:.1f} s"
                )
            if quiet or last:  # routing read once no move ran for a while, and at the bound
                tables = await self.routing_tables()
                problems += [f"member {i} served no routing" for i in self.members - tables.keys()]
                views = {i: (t.epoch, list(map(int, t.vshard_to_group))) for i, t in tables.items()}
                problems += routing_problems(views, statuses)
            newest = max(tables.values(), key=lambda t: t.epoch) if tables else None
            if not problems or last:
                return problems, newest
            await asyncio.sleep(0.25)  # moves and routing have no push channel: poll, bounded

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
            await self.fire(fault)

    async def heal_all(self) -> None:
        """Resume paused nodes, drop partitions, restart any member that is down, then await
        the decommissions under way (each bounded by `DRAIN_TIMEOUT_S`)."""
        if self.partitioner is not None:
            self.partitioner.heal()
        dead = []
        for node_id in sorted(self.members):
            node = self.cluster.nodes[node_id]
            if node.running:
                with contextlib.suppress(ProcessLookupError):  # exited since the check
                    node.resume()
            else:
                dead.append(node_id)
        if dead:
            await self._restart(dead)
        await asyncio.gather(*self._drains)


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
        nemesis = _Nemesis(cluster, initial, cluster.nodes[1].config.listen_addr.port, loop.time())
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
    nemesis: _Nemesis, start: Sequence[int], end: RoutingTable | None
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
