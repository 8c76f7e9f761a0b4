"""The nemesis's hands: fires each fault of a schedule (`nemesis.plan_schedule`) at a running
`LocalCluster` (SIGKILL, SIGSTOP, partitions, re-addressing, joins, decommissions, vShard moves,
added groups) and heals them; records what it did and what did not finish for `run`'s checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from nodedb_cluster import wire
from nodedb_cluster.cli_support import control_rpc
from nodedb_cluster.client import Client
from nodedb_cluster.errors import ClusterError, RemoteError
from nodedb_cluster.faults.checks import moves_in_flight, routing_problems
from nodedb_cluster.faults.nemesis import Fault, FaultKind
from nodedb_cluster.faults.netfault import Partitioner, in_private_netns
from nodedb_cluster.faults.workload import now_ms
from nodedb_cluster.localcluster import LocalCluster, NodeProcessError, Status, leader_of
from nodedb_cluster.placement_control import encode_placement_request
from nodedb_cluster.routing.table import METADATA_GROUP_ID, RoutingTable

RESTART_READY_TIMEOUT_S: Final = 30.0
DRAIN_TIMEOUT_S: Final = 60.0
"""A decommission's request to the node DECOMMISSIONED (its replicas moved off meanwhile)."""
RETIRED_LINE: Final = "was decommissioned"
"""In the last line of a node that stopped by itself once retired (`formation/retired.py`)."""
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


def term_of(statuses: dict[int, Status], node_id: int, group_id: int) -> int:
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


class FaultInjector:
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
                if not node.running and RETIRED_LINE in node.log_tail():
                    # It stopped by itself, decommissioned, before `_retire` saw the state.
                    self._retired_meanwhile(node_id)
                    return 0
                if not node.running:
                    await node.start()
                try:
                    await node.wait_ready(RESTART_READY_TIMEOUT_S)
                except NodeProcessError:
                    if node.running or RETIRED_LINE not in node.log_tail():
                        raise
                    # Refused: killed while it drained, its drain finished while it was down.
                    self._retired_meanwhile(node_id)
                    return 0
                return node_id

        started = [i for i in await asyncio.gather(*(one(i) for i in node_ids)) if i]
        skipped = sorted(set(node_ids) - set(started))
        self.note(f"restarted {started}" + (f" (retired meanwhile: {skipped})" if skipped else ""))

    def _retired_meanwhile(self, node_id: int) -> None:
        """`node_id` is retired (it said so, stopping or refusing to start): left down."""
        self.retired.add(node_id)
        self.members.discard(node_id)

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
        term = term_of(statuses, leader, fault.group_id)
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
        `run.HARNESS_OVERRIDES["rebalance_interval_ms"]`) moves replicas onto it from then on."""
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
            if new not in (0, old) and term_of(statuses, new, group_id) > term:
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
