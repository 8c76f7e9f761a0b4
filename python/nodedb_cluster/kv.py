"""Replicated KV: the asyncio face of the Rust client core (`nodedb_cluster_core.KvClient`).

Key -> vShard -> data group -> leader, the write session, per-target coalescing, retries and
deadlines all run in Rust (crate nodedb-kv); this class only turns each call into one boundary
crossing and one future, and resolves the futures a reply finishes in one loop wake-up (the
core's loop bridge). It is used two ways:
- on a running `Node` (`node.kv`): the core serves this node's own share in process (a group
  this node leads is proposed to, or read, without leaving Rust; a read this node may answer
  now, inside its lease, is answered within the call, which then does not suspend); any other
  group goes ONE hop over QUIC to its leader;
- in a separate process (`nodedb_cluster.Client`): every request goes straight to the leader.

A NotLeader answer teaches the core the new leader and the call retries there, all within the
call's deadline (default 5 s); after it the caller gets `Timeout` or `Unavailable`. A leader
whose disk is full answers `NoSpace`, raised at once. Writes (put, delete, cas) are
exactly-once: each carries the core's session id and a sequence number, so a retry after an
unknown outcome is applied at most once and answers the first copy's result (`OutcomeUnknown`
when that result was already dropped).

Read levels (docs/KV.md): "linearizable" (ReadIndex, shared by every read of a group that
arrives while one is in flight; a leader answers it from its read lease, with no quorum round,
while the lease holds), "lease" (the same) and "follower" (any member serves if it was
confirmed current within `max_staleness_s`, else `StaleRead`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final, Literal

import nodedb_cluster_core as _core

from nodedb_cluster.errors import OutcomeUnknown, StaleRead, TransportClosed, Unavailable
from nodedb_cluster.loop_bridge import BridgeWatch
from nodedb_cluster.routing.table import RoutingTable

__all__ = [
    "IN_CALL_ANSWERS_MAX",
    "MAX_STALENESS_S_DEFAULT",
    "READ_LEVELS",
    "TIMEOUT_S_DEFAULT",
    "Kv",
    "OutcomeUnknown",
    "ReadLevel",
    "StaleRead",
    "Unavailable",
]

ReadLevel = Literal["linearizable", "lease", "follower"]
READ_LEVELS: Final = ("linearizable", "lease", "follower")

TIMEOUT_S_DEFAULT: Final = 5.0
"""A call's deadline unless given (docs/WIRE.md's RPC bound)."""
MAX_STALENESS_S_DEFAULT: Final = 1.0
"""How old a follower's confirmation may be for a "follower" read unless given."""
IN_CALL_ANSWERS_MAX: Final = 64
"""Reads answered within the call (they do not suspend) in a row before one yields to the loop,
so a tight loop of a node's own reads cannot starve its other tasks (SWIM, control handlers)."""


class Kv:
    """The KV API of one process over its core: `await kv.put(k, v)`, `get`, `delete`, `cas`,
    `put_many`, `get_many`. Bound to the first event loop that uses it."""

    def __init__(self, core: _core.KvClient) -> None:
        self._core = core
        self._bridge = BridgeWatch(core, "KV client")
        self._closed = False
        self._in_call = 0

    # --- calls --------------------------------------------------------------------------------

    async def put(self, key: bytes, value: bytes, *, timeout_s: float | None = None) -> None:
        loop = self._attach()
        future: asyncio.Future[None] = loop.create_future()
        if self._core.put(key, value, timeout_s, future):
            loop.call_soon(self._core.flush)
        await future

    async def delete(self, key: bytes, *, timeout_s: float | None = None) -> bool:
        """True when the key existed."""
        loop = self._attach()
        future: asyncio.Future[bool] = loop.create_future()
        if self._core.delete(key, timeout_s, future):
            loop.call_soon(self._core.flush)
        return await future

    async def cas(
        self, key: bytes, expected: bytes | None, new: bytes, *, timeout_s: float | None = None
    ) -> bool:
        """Set `key` to `new` iff it holds `expected` (None = absent); False when it did not."""
        loop = self._attach()
        future: asyncio.Future[bool] = loop.create_future()
        if self._core.cas(key, expected, new, timeout_s, future):
            loop.call_soon(self._core.flush)
        return await future

    async def get(
        self,
        key: bytes,
        *,
        read: ReadLevel = "linearizable",
        max_staleness_s: float = MAX_STALENESS_S_DEFAULT,
        timeout_s: float | None = None,
    ) -> bytes | None:
        loop = self._attach()
        future: asyncio.Future[bytes | None] = loop.create_future()
        if self._core.get_many([key], read, max_staleness_s, timeout_s, future, True):
            loop.call_soon(self._core.flush)
        elif future.done() and self._answered_in_call(loop):
            await asyncio.sleep(0)
        return await future

    async def put_many(
        self, items: Sequence[tuple[bytes, bytes]], *, timeout_s: float | None = None
    ) -> None:
        """Every pair; one session seq each, every group's share in the same requests. Not
        atomic: each group's share commits on its own, exactly once, so when the call raises
        (`QuotaExceeded` or `NoSpace` from one group, a deadline) other groups' pairs may be
        written."""
        if not items:
            return
        loop = self._attach()
        future: asyncio.Future[None] = loop.create_future()
        if self._core.put_many(list(items), timeout_s, future):
            loop.call_soon(self._core.flush)
        await future

    async def get_many(
        self,
        keys: Sequence[bytes],
        *,
        read: ReadLevel = "linearizable",
        max_staleness_s: float = MAX_STALENESS_S_DEFAULT,
        timeout_s: float | None = None,
    ) -> list[bytes | None]:
        """One value (or None) per key, in order. Values past what one reply carries (63 MiB)
        come in further replies, one round trip each (docs/KV.md, `ovr`)."""
        if not keys:
            return []
        loop = self._attach()
        future: asyncio.Future[list[bytes | None]] = loop.create_future()
        if self._core.get_many(list(keys), read, max_staleness_s, timeout_s, future, False):
            loop.call_soon(self._core.flush)
        elif future.done() and self._answered_in_call(loop):
            await asyncio.sleep(0)
        return await future

    # --- routing and state --------------------------------------------------------------------

    def set_routing(self, table: RoutingTable) -> None:
        """Route by `table` from now on (a node calls it on every metadata change)."""
        self._core.set_routing(
            table.vshard_to_group.tolist(),
            [(g, table.route(g).leader, list(table.route(g).voters)) for g in table.group_ids],
        )

    def set_dead(self, node_id: int, dead: bool) -> None:
        """SWIM's verdict on `node_id`: a dead node is tried last until it is seen alive."""
        self._core.set_dead(node_id, dead)

    def group_of(self, key: bytes) -> int:
        """The data group owning `key`."""
        return self._core.group_of(key)

    def leader_hint(self, group_id: int) -> int:
        """The node the next request for `group_id` goes to first (0 = unknown)."""
        return self._core.leader_hint(group_id)

    @property
    def client_id(self) -> int:
        """This process's write-session id (exactly-once writes)."""
        return self._core.client_id

    @property
    def acked_below(self) -> int:
        """The session's floor: every write below this seq has finished (exactly-once)."""
        return self._core.acked_below

    @property
    def writes_in_flight(self) -> int:
        return self._core.writes_in_flight

    @property
    def requests_sent(self) -> int:
        """KV_REQUESTs sent to other nodes (each carries every call queued for its target)."""
        return self._core.requests_sent

    @property
    def retry_unknown_writes(self) -> bool:
        """Retry a write whose outcome is unknown within its deadline (safe: the session makes
        the retry exactly-once); False surfaces the unknown outcome at once."""
        return self._core.retry_unknown_writes

    @retry_unknown_writes.setter
    def retry_unknown_writes(self, value: bool) -> None:
        self._core.retry_unknown_writes = value

    # --- the loop bridge ----------------------------------------------------------------------

    def _attach(self) -> asyncio.AbstractEventLoop:
        """The running loop, watching the core's bridge (the first loop that uses it)."""
        if self._closed and not self._bridge.watching:
            raise TransportClosed()
        return self._bridge.attach()

    def _answered_in_call(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Count a read the core answered within the call; True when this one should yield:
        `IN_CALL_ANSWERS_MAX` of them ran since the loop last did or a call last yielded (so
        no task runs more than that many in a row, and the others do not yield for it)."""
        self._in_call += 1
        if self._in_call == 1:
            loop.call_soon(self._loop_ran)
        if self._in_call < IN_CALL_ANSWERS_MAX:
            return False
        self._in_call = 0
        return True

    def _loop_ran(self) -> None:
        self._in_call = 0

    async def close(self) -> None:
        """Queued calls fail with `TransportClosed`; calls in flight resolve as their replies
        (or the transport's closing) come: the bridge stays watched until the last one."""
        self._core.close()
        self._closed = True
        self._bridge.close()
