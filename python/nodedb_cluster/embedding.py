"""The embedding API: the host process's own state machine on the data groups (`node.data`).

`start_cluster(config, state_machine=factory)` makes every data group apply the host's commands
(`factory(group_id)` returns a `raft.StateMachine`: `apply_batch`, `snapshot`, `restore`); group
0 stays the cluster's metadata group. The node's `data` is then what the host uses:

- `locate(key)`: where a key lives (vShard, group, leader, voters, learners);
- `propose(command, key=... | group=...)`: replicate one command and return what the state
  machine's `apply_batch` returned for it. On a node that does not lead the group the command
  goes ONE hop to the leader (HOST_PROPOSE: node certificates only, so no client can put
  commands into the host's log) and the answer comes back. Commands proposed in the same turn
  of the event loop travel together (host_proposals.py), each still its own log entry;
- `read_index(key=... | group=...)`: once it returns, a read of the host's local state on this
  node is linearizable (this node must hold a replica of the group);
- `on_leader_change(callback)`: `callback(group, leader or None, term)` whenever this node sees a
  data group's leader change.

A host command carries no session: when its fate is unknown (leadership lost or the deadline
passed after it was handed to a leader, or the connection to the leader broke) `OutcomeUnknown`
is raised and the command is not retried, unless the caller says it is idempotent. A call
cancelled after it began (`task.cancel()`, `asyncio.wait_for`) has an unknown outcome too: the
command may already be with the leader, and most such commands apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import nodedb_cluster_core as _core

from nodedb_cluster.errors import (
    Busy,
    ClusterError,
    EngineStopped,
    InvalidRequest,
    NotEmbedded,
    OutcomeUnknown,
    RaftNotLeader,
    Timeout,
)
from nodedb_cluster.host_proposals import NOT_SENT, ProposalQueue
from nodedb_cluster.leaders import LeaderView, changed_leaders
from nodedb_cluster.raft import RaftEngine
from nodedb_cluster.routing import vshard_for_key
from nodedb_cluster.routing.table import METADATA_GROUP_ID, RoutingTable
from nodedb_cluster.transport import Peer, Reply, Transport

log = logging.getLogger(__name__)

TIMEOUT_S_DEFAULT: Final = 5.0
"""A call's deadline unless given (docs/WIRE.md's RPC bound)."""
TIMEOUT_S_MAX: Final = 86_400.0
"""A call's deadline, at most (a day: the engine's and node.kv's bound)."""
COMMAND_BYTES_MAX: Final = _core.PAYLOAD_BYTES_MAX - (1 << 20) - 9
"""The largest command: one log entry holds at most a frame less 1 MiB
(rust/multiraft/src/codec.rs, ENTRY_BYTES_MAX), 9 bytes of it the entry's own header."""
NO_LEADER_WAIT_S: Final = 0.05
"""How long a proposer with no leader to try waits for one to be elected before trying again."""
BUSY_WAIT_MIN_S: Final = 0.001
BUSY_WAIT_MAX_S: Final = 0.05
"""A proposer whose leader answered `Busy` (raft dropped the command unappended: a leadership
transfer under way, or the uncommitted limit full) waits this long before trying again, from
the first value doubling to the second, until its deadline: a replica move hands leadership over
under load, and the callers failed at once with ~9 s of their deadline left (embedding probe,
session 31)."""

BytesLike = bytes | bytearray | memoryview
"""A command or key: taken as its bytes."""
LeaderCallback = Callable[[int, int | None, int], None]
"""(group, leader node id or None, term), called on the event loop."""


@dataclass(frozen=True, slots=True)
class Location:
    """Where a key (or a group) lives, as this node knows it."""

    vshard: int | None
    """None when located by group."""
    group: int
    leader: int | None
    voters: tuple[int, ...]
    learners: tuple[int, ...]

    def to_doc(self) -> dict[str, object]:
        return {
            "vshard": self.vshard,
            "group": self.group,
            "leader": self.leader,
            "voters": list(self.voters),
            "learners": list(self.learners),
        }


def locate(
    routing: RoutingTable, key: BytesLike | None, group: int | None, leader: int | None
) -> Location:
    """The location of `key` (or of `group`); `leader` overrides the table's hint when known.
    `InvalidRequest` for arguments of the wrong type, `UnknownGroup` for a group not in the
    table."""
    key, group = _checked_key(key), _checked_group(group)
    if (key is None) == (group is None):
        raise InvalidRequest("give exactly one of key= or group=")
    vshard = None
    if key is not None:
        vshard = vshard_for_key(key)
        group = routing.group_for_vshard(vshard)
    assert group is not None
    if group == METADATA_GROUP_ID:
        raise InvalidRequest("group 0 is the cluster's metadata group, not a data group")
    route = routing.route(group)  # UnknownGroup for a group the table does not have
    return Location(
        vshard=vshard,
        group=group,
        leader=leader if leader is not None else (route.leader or None),
        voters=tuple(route.voters),
        learners=tuple(route.learners),
    )


class DataGroups:
    """`node.data`: the data groups of a node that runs the host's state machine."""

    def __init__(
        self,
        node_id: int,
        engine: RaftEngine,
        transport: Transport,
        routing: Callable[[], RoutingTable],
        host: bool,
    ) -> None:
        self._node_id = node_id
        self._engine = engine
        self._transport = transport
        self._routing = routing
        self._host = host
        self._subscribers: list[_Subscriber] = []
        self._watcher: asyncio.Task[None] | None = None
        self._proposals = ProposalQueue(node_id, engine, transport)

    # --- the host's API -----------------------------------------------------------------------

    def locate(self, key: BytesLike | None = None, *, group: int | None = None) -> Location:
        where = locate(self._routing(), key, group, None)  # the arguments checked first
        leader = self._engine.leader(where.group)
        return where if leader is None else dataclasses.replace(where, leader=leader)

    async def propose(
        self,
        command: BytesLike,
        *,
        key: BytesLike | None = None,
        group: int | None = None,
        timeout_s: float | None = None,
        idempotent: bool = False,
    ) -> bytes:
        """Replicate `command` in the group of `key` (or `group`); the result its apply gave.

        `idempotent=True` lets a command whose outcome became unknown be sent again within
        the deadline (applying it twice must then be harmless).

        Arguments are checked here, the same on the leader and on a follower, before anything
        is queued: a bad one raises `InvalidRequest` naming it (`UnknownGroup` for a group not
        in the routing table) to this caller alone."""
        self._require_host()
        command, timeout = _checked_command(command), _checked_timeout(timeout_s)
        where = self.locate(key, group=group)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        hint = where.leader
        tried: set[int] = set()
        busy_wait = BUSY_WAIT_MIN_S
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise Timeout("propose", int(timeout * 1000))
            target = hint if hint is not None and hint not in tried else None
            if target is None:
                target = next((v for v in where.voters if v not in tried), None)
            if target is None:  # every voter tried: wait for an election, then start over
                tried.clear()
                await self._wait_leader(where.group, min(NO_LEADER_WAIT_S, remaining))
                hint = self._engine.leader(where.group)
                continue
            try:
                return await self._proposals.propose(target, where.group, command, deadline)
            except RaftNotLeader as e:
                tried.add(target)
                hint = e.leader_id
            except NOT_SENT:
                tried.add(target)
                hint = None
            except OutcomeUnknown:
                if not idempotent:
                    raise
                tried.add(target)
                hint = None
            except Busy:  # nothing appended: the same leader again, once it has room
                await asyncio.sleep(min(busy_wait, max(0.0, deadline - loop.time())))
                busy_wait = min(2 * busy_wait, BUSY_WAIT_MAX_S)
                hint = target

    async def read_index(
        self,
        *,
        key: BytesLike | None = None,
        group: int | None = None,
        timeout_s: float | None = None,
    ) -> int:
        """Confirm with a quorum and wait until this node applied through the group's commit
        index as of the call: a read of the local state after it is linearizable. Returns the
        index."""
        self._require_host()
        timeout = _checked_timeout(timeout_s)
        where = self.locate(key, group=group)
        if self._node_id not in where.voters and self._node_id not in where.learners:
            raise InvalidRequest(
                f"node {self._node_id} holds no replica of group {where.group}: "
                f"read on one of {list(where.voters)}"
            )
        return await self._engine.read_index(where.group, max(1, int(timeout * 1000)))

    def on_leader_change(self, callback: LeaderCallback) -> Callable[[], None]:
        """Call `callback(group, leader, term)` on every data-group leader change seen here;
        returns the function that stops it.

        Every group's current leader is reported first (soon, on the loop), then each change.
        Each report compares the engine's leaders of that moment with what this callback was
        last told, so a change that lands at any point after registering (the host busy in
        synchronous code, a change before the watcher first looks) is still reported: the
        last call per group always names the leader this node knows."""
        if not callable(callback):
            raise InvalidRequest(f"callback must be callable, got {type(callback).__name__}")
        subscriber = _Subscriber(callback)
        self._subscribers.append(subscriber)
        asyncio.get_running_loop().call_soon(self._report, subscriber)
        if self._watcher is None:
            self._watcher = asyncio.ensure_future(self._watch_leaders())

        def stop() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(subscriber)

        return stop

    async def close(self) -> None:
        await self._proposals.close()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    # --- HOST_PROPOSE ---------------------------------------------------------------------------

    def serve_proposals(self) -> None:
        """Answer forwarded commands in Rust from now on (the engine's `HostProposeServer`):
        each group's share proposed to the host's state machine, one outcome per command,
        never forwarded again. A node of the built-in KV does not: its control dispatch
        refuses them (`refuse_propose`)."""
        if self._host:
            self._engine.serve_host_proposals(self._transport)

    async def refuse_propose(self, peer: Peer, payload: bytes) -> Reply:
        """What a HOST_PROPOSE that reaches Python is answered: a KV node's `NotEmbedded`, or a
        host node whose engine no longer serves."""
        self._require_host()
        raise EngineStopped("this node's engine is closed")

    # --- internals ----------------------------------------------------------------------------

    def _require_host(self) -> None:
        if not self._host:
            raise NotEmbedded(
                "this node's data groups run the built-in KV (use node.kv); start it with "
                "start_cluster(config, state_machine=factory) to run your own"
            )

    async def _wait_leader(self, group: int, timeout_s: float) -> None:
        epoch, _ = self._engine.leaders()
        await self._engine.wait_leaders_changed(epoch, max(1, int(timeout_s * 1000)))

    async def _watch_leaders(self) -> None:
        """Wakes on every change of the engine's leader epoch and reports it to each callback
        (relative to what that callback was told), until closed or the engine stops."""
        stopped = asyncio.ensure_future(self._engine.wait_stopped())
        try:  # the epoch before the look: a change during the reports wakes the next wait
            while not stopped.done():
                epoch, _ = self._engine.leaders()
                for subscriber in list(self._subscribers):
                    self._report(subscriber)
                await self._engine.wait_leaders_changed(epoch, 60_000)
        except ClusterError:
            return  # the engine stopped: no more changes
        finally:
            stopped.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await stopped

    def _report(self, subscriber: _Subscriber) -> None:
        """Tell `subscriber` every data group whose leader differs from what it was last told
        (every group, the first time): from one look at the engine's leaders."""
        if subscriber not in self._subscribers:
            return  # stopped meanwhile
        try:
            _, now = self._engine.leaders()
        except ClusterError:
            return
        for g, leader, term, _ in changed_leaders(subscriber.told, now):
            if g == METADATA_GROUP_ID:
                continue
            try:
                subscriber.callback(g, leader, term)
            except Exception:
                log.exception("leader-change callback failed for group %d", g)


@dataclass(eq=False, slots=True)
class _Subscriber:
    """One `on_leader_change` callback and what it was last told, per group."""

    callback: LeaderCallback
    told: LeaderView = dataclasses.field(default_factory=dict)


def _checked_key(key: object) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    raise InvalidRequest(f"key must be bytes, got {type(key).__name__}")


def _checked_group(group: object) -> int | None:
    if group is None:
        return None
    if isinstance(group, bool) or not isinstance(group, int):
        raise InvalidRequest(f"group must be an int, got {type(group).__name__}")
    return group


def _checked_command(command: object) -> bytes:
    if isinstance(command, (bytearray, memoryview)):
        command = bytes(command)
    if not isinstance(command, bytes):
        raise InvalidRequest(f"command must be bytes, got {type(command).__name__}")
    if len(command) > COMMAND_BYTES_MAX:
        raise InvalidRequest(
            f"command of {len(command)} bytes; a command holds at most {COMMAND_BYTES_MAX}"
        )
    return command


def _checked_timeout(timeout_s: object) -> float:
    """`timeout_s` (None: the default) in seconds: a finite number in (0, TIMEOUT_S_MAX]."""
    if timeout_s is None:
        return TIMEOUT_S_DEFAULT
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
        raise InvalidRequest(f"timeout_s must be a number of seconds, got {timeout_s!r}")
    t = float(timeout_s)
    if not (math.isfinite(t) and 0 < t <= TIMEOUT_S_MAX):
        raise InvalidRequest(f"timeout_s must be in (0, {TIMEOUT_S_MAX:g}] seconds, got {t!r}")
    return t
