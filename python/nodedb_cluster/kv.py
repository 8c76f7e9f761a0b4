"""Replicated KV: key -> vShard -> data group -> leader, with one forwarding hop and read levels.

`KvRouter` is the whole request path, used two ways:
- on a running `Node` (`node.kv`) with the local engine: a group this node leads is proposed to
  directly (group commit: every command that arrives while a batch is in flight rides the next
  one, as ONE Raft entry); any other group goes ONE hop over QUIC to its leader (kind KV_REQUEST
  marked forwarded, which the receiver never forwards again);
- in a separate process (`nodedb_cluster.Client`) without an engine: straight to the leader.

A NotLeader answer teaches the leader cache the new leader and the call retries, all within the
call's deadline (default 5 s); after it the caller gets `Timeout` (the last attempt timed out) or
`Unavailable` (no leader could be reached). A leader whose disk is full answers `NoSpace`
(errors.NoSpace, naming its data dir): raised at once, never retried. Writes (put, delete, cas)
are exactly-once: each carries this router's session id and a sequence number
(`nodedb_cluster.session`), so a retry after an unknown outcome (`LeadershipLost`, a lost reply,
an attempt timeout) is applied at most once by the state machine and answers the first copy's
result.

Read levels (docs/ARCHITECTURE.md, "Replicated KV"):
- "linearizable": ReadIndex (coalesced: every read that arrives while one is in flight shares the
  next) then the local state; on a member, leader or follower; a non-member forwards.
- "lease": the leader serves locally while its lease holds: from the moment it *sent* a request
  that a quorum then confirmed (its own commit) for `LEASE_FRACTION` of the minimum
  election timeout. Clock assumption: every node's monotonic clock advances at a rate within 10 %
  of every other's (no synchronised wall clocks needed). With check-quorum and pre-vote on, no
  follower votes for another candidate within an election timeout of hearing from this leader.
- "follower": any member serves from its local state if it was confirmed current (a ReadIndex or
  commit seen here) within `max_staleness_s`; otherwise one ReadIndex is tried and, failing that,
  `StaleRead` names the age. A background refresher keeps followers confirmed while they serve
  follower reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, cast

import msgpack
import numpy as np
import numpy.typing as npt

from nodedb_cluster import wire
from nodedb_cluster.errors import (
    ClusterError,
    EngineStopped,
    HandshakeError,
    InvalidRequest,
    LeadershipLost,
    NoSpace,
    RaftNotLeader,
    RemoteError,
    Timeout,
    TransportClosed,
    UnknownGroup,
    UnknownPeer,
    Unreachable,
)
from nodedb_cluster.peer_health import PeerHealth, serve_budget_ms
from nodedb_cluster.raft import kv_cas, kv_delete, kv_put, kv_result
from nodedb_cluster.routing import vshard_for_key, vshards_for_keys
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.session import WriteSession

if TYPE_CHECKING:
    from nodedb_cluster.raft import RaftEngine
    from nodedb_cluster.transport import Transport

log = logging.getLogger(__name__)

ReadLevel = Literal["linearizable", "lease", "follower"]
READ_LEVELS: Final = ("linearizable", "lease", "follower")

TIMEOUT_S_DEFAULT: Final = 5.0
"""A call's deadline unless given (WIRE.md's RPC bound)."""
MAX_STALENESS_S_DEFAULT: Final = 1.0
"""How old a follower's confirmation may be for a "follower" read unless given."""
LEASE_FRACTION: Final = 0.9
"""Lease = this fraction of the minimum election timeout: covers a 10 % clock-rate difference."""
BATCH_COMMANDS_MAX: Final = 4096
"""Commands per Raft entry (group commit); more wait for the next entry."""
BATCH_BYTES_MAX: Final = 512 << 10
"""Bytes of commands per Raft entry (below the 1 MiB message bound)."""
BATCHES_IN_FLIGHT_MAX: Final = 4
"""Entries per group proposed concurrently: the engine commits them in the same fsync round."""
REMOTE_IN_FLIGHT_MAX: Final = 4
"""KV_REQUESTs per (target, group, kind) in flight at once."""
REMOTE_COALESCERS_MAX: Final = 4096
"""Bound on remembered (target, group, kind) batchers."""
RETRY_BACKOFF_S: Final = (0.005, 0.01, 0.02, 0.05, 0.1)
"""Pause before retry n (then the last value), always cut short by the deadline; the last one
is how soon a client waiting out an election notices the new leader."""
REFRESH_INTERVAL_S: Final = 0.2
"""How often a follower serving follower reads re-confirms it is current."""
REFRESH_IDLE_STOP_S: Final = 10.0
"""The refresher stops when no follower read came for this long."""

_TRANSIENT: Final = (Unreachable, HandshakeError, TransportClosed, UnknownPeer, RemoteError)
"""Errors reaching a peer that another attempt (maybe to another node) can fix."""


class Unavailable(ClusterError):
    """No leader of the key's group could be reached before the deadline."""

    def __init__(self, group_id: int, reason: str) -> None:
        super().__init__(f"group {group_id} unavailable: {reason}")
        self.group_id = group_id
        self.reason = reason


class OutcomeUnknown(ClusterError):
    """A retried write found its first copy's result already dropped (its session's window of
    cached results overflowed, or the session was evicted): it was applied at most once, and
    whether it was is not known."""

    def __init__(self, group_id: int) -> None:
        super().__init__(f"group {group_id}: write outcome unknown (session result dropped)")
        self.group_id = group_id


class StaleRead(ClusterError):
    """A follower read refused: this replica was last confirmed current `age_s` ago."""

    def __init__(self, group_id: int, age_s: float, max_staleness_s: float) -> None:
        super().__init__(
            f"group {group_id}: replica last confirmed {age_s:.3f} s ago, "
            f"more than the allowed {max_staleness_s:.3f} s"
        )
        self.group_id = group_id
        self.age_s = age_s
        self.max_staleness_s = max_staleness_s


# --- wire -----------------------------------------------------------------------------------------
# KV_REQUEST payload (MessagePack map); node-to-node and Client traffic uses the *_many forms:
#   {"op": "propose_many", "gs": [group per cmd], "cmds": [bytes], "t": timeout_ms}
#   {"op": "read_many", "gs": [group per key], "keys": [bytes], "level", "stale_s", "t"}
#     -> {"r": [...], "nlg": [[group, leader]], "unk": [group], "stale_g": [[group, age_s]]}
#   {"op": "propose", "g": group, "cmds": [bytes], "fwd": bool, "t": timeout_ms}
#   {"op": "read", "g": group, "keys": [bytes], "level": str, "stale_s": float, "fwd": bool,
#    "t": timeout_ms}
#   {"op": "routing"}
# KV_RESPONSE payload: {"r": [results]} | {"nl": leader id or 0} | {"stale": age_s}
#   | {"routing": RoutingTable.encode(), "nodes": [[id, "ip:port", spki pin or nil]]}
# A forwarded ("fwd": true) request is executed on the receiver only; never forwarded again.
# On every node "propose_many" and linearizable "read_many" are answered in Rust
# (rust/py/src/kv_serve.rs, same replies as `_serve_many`): change both together.


def encode_request(doc: Mapping[str, object]) -> bytes:
    return bytes(msgpack.packb(doc, use_bin_type=True))


def decode_doc(payload: bytes, what: str) -> dict[str, object]:
    try:
        doc = msgpack.unpackb(payload, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise InvalidRequest(f"malformed {what}: {e}") from e
    if not isinstance(doc, dict):
        raise InvalidRequest(f"malformed {what}: not a map")
    return doc


def _bytes_list(value: object, what: str) -> list[bytes]:
    if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
        raise InvalidRequest(f"{what} must be a list of bytes")
    return cast("list[bytes]", value)


def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidRequest(f"{what} must be a non-negative integer")
    return value


# --- the coalescers -------------------------------------------------------------------------------


Result = bytes | None
Outcome = tuple[Sequence[Result], Mapping[int, ClusterError]]
"""One result per item, and the errors of the tags (groups) whose items failed."""
Send = Callable[[list[bytes], list[int], int], Awaitable[Outcome]]
"""Send a batch of items (commands or keys) with one tag (group) per item and a timeout in ms."""
_NO_ERRORS: Mapping[int, ClusterError] = {}


@dataclass(slots=True)
class _Waiter:
    items: list[bytes]
    tag: int
    deadline: float
    future: asyncio.Future[list[Result]]


class _Coalescer:
    """Items that arrive together travel together: one `send` per loop iteration (at most
    `in_flight_max` at once), results sliced back per caller. Locally one Raft entry per batch
    (group commit); towards another node one KV_REQUEST per batch."""

    __slots__ = ("_in_flight", "_in_flight_max", "_on_done", "_pending", "_scheduled", "_send")

    def __init__(
        self, send: Send, in_flight_max: int, on_done: Callable[[float], None] | None = None
    ) -> None:
        self._send = send
        self._in_flight_max = in_flight_max
        self._on_done = on_done
        self._pending: deque[_Waiter] = deque()
        self._in_flight = 0
        self._scheduled = False

    def submit(
        self, items: list[bytes], deadline: float, tag: int = 0
    ) -> asyncio.Future[list[Result]]:
        loop = asyncio.get_running_loop()
        waiter = _Waiter(items, tag, deadline, loop.create_future())
        self._pending.append(waiter)
        if not self._scheduled and self._in_flight < self._in_flight_max:
            # call_soon: everything submitted in this loop iteration shares the batch.
            self._scheduled = True
            loop.call_soon(self._launch)
        return waiter.future

    def _launch(self) -> None:
        self._scheduled = False
        pending = self._pending
        while pending and self._in_flight < self._in_flight_max:
            batch: list[_Waiter] = []
            count = size = 0
            while pending:
                w = pending[0]
                w_size = sum(len(c) for c in w.items)
                if batch and (
                    count + len(w.items) > BATCH_COMMANDS_MAX or size + w_size > BATCH_BYTES_MAX
                ):
                    break
                pending.popleft()
                if not w.future.done():  # a cancelled caller's items are not sent
                    batch.append(w)
                    count += len(w.items)
                    size += w_size
            if not batch:
                continue
            self._in_flight += 1
            task = asyncio.ensure_future(self._run(batch))
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)

    async def _run(self, batch: list[_Waiter]) -> None:
        loop = asyncio.get_running_loop()
        sent_at = time.monotonic()
        timeout_ms = max(1, int((min(w.deadline for w in batch) - loop.time()) * 1000))
        items = [c for w in batch for c in w.items] if len(batch) > 1 else batch[0].items
        tags = [w.tag for w in batch for _ in w.items]
        try:
            results, errors = await self._send(items, tags, timeout_ms)
            if len(results) != len(items):
                raise RemoteError("malformed", f"{len(results)} results for {len(items)} items")
        except ClusterError as e:
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(e)
        else:
            if self._on_done is not None:
                self._on_done(sent_at)
            at = 0
            for w in batch:
                if not w.future.done():
                    failed = errors.get(w.tag) if errors else None
                    if failed is not None:
                        w.future.set_exception(failed)
                    else:
                        w.future.set_result(list(results[at : at + len(w.items)]))
                at += len(w.items)
        finally:
            self._in_flight -= 1
            if self._pending and not self._scheduled:
                self._scheduled = True
                loop.call_soon(self._launch)


@dataclass(slots=True)
class _ReadIndexShare:
    """Reads of one group share ReadIndex rounds: one that arrives while a round is in flight
    waits for the next round (the running one may have been sent before it arrived)."""

    group_id: int
    engine: RaftEngine
    on_confirmed: Callable[[int, float], None]
    next_round: asyncio.Future[None] | None = None
    running: bool = False
    next_timeout_ms: int = 0
    rounds: int = 0

    def wait(self, timeout_ms: int) -> asyncio.Future[None]:
        if self.next_round is None:
            self.next_round = asyncio.get_running_loop().create_future()
            self.next_timeout_ms = timeout_ms
            if not self.running:
                self.running = True
                task = asyncio.ensure_future(self._rounds())
                _BACKGROUND.add(task)
                task.add_done_callback(_BACKGROUND.discard)
        else:
            self.next_timeout_ms = min(self.next_timeout_ms, timeout_ms)
        return self.next_round

    async def _rounds(self) -> None:
        try:
            while self.next_round is not None:
                round_, self.next_round = self.next_round, None
                self.rounds += 1
                sent_at = time.monotonic()
                try:
                    await self.engine.read_index(self.group_id, max(1, self.next_timeout_ms))
                except ClusterError as e:
                    if not round_.done():
                        round_.set_exception(e)
                else:
                    self.on_confirmed(self.group_id, sent_at)
                    if not round_.done():
                        round_.set_result(None)
        finally:
            self.running = False


@dataclass(frozen=True, slots=True)
class _Remote:
    """How to send a request's items to another node: the batch key and the request builder."""

    kind: tuple[object, ...]
    items: list[bytes]
    request: Callable[[list[bytes], list[int], int], dict[str, object]]
    tag: int = 0
    """The group of these items when one request may carry several groups."""


def _propose_many_request(
    items: list[bytes], tags: list[int], timeout_ms: int
) -> dict[str, object]:
    """Commands of several groups for one target in one KV_REQUEST (`"gs"`: group per command)."""
    return {"op": "propose_many", "gs": tags, "cmds": items, "t": timeout_ms}


def _written(group: int, result: bytes) -> tuple[str, bytes | None]:
    """A write's decoded result; a session copy refused as already answered is an unknown
    outcome for this caller."""
    status, value = kv_result(result)
    if status == "duplicate":
        raise OutcomeUnknown(group)
    return status, value


_BACKGROUND: set[asyncio.Task[None]] = set()
"""Tasks the loop would otherwise only weakly reference."""


# --- the router -----------------------------------------------------------------------------------


class KvRouter:
    """The KV request path of one process. See the module docstring."""

    def __init__(
        self,
        node_id: int,
        transport: Transport,
        routing: Callable[[], RoutingTable],
        engine: RaftEngine | None = None,
        lease_s: float = 0.0,
    ) -> None:
        self.node_id = node_id
        self._transport = transport
        self._routing = routing
        self._engine = engine
        self._lease_s = lease_s
        self.retry_unknown_writes = True
        """Retry a write whose outcome is unknown (LeadershipLost, a lost reply, an attempt
        timeout) within the deadline. Safe: the session makes the retry exactly-once (before
        sessions a retried put could land after another client's later write, fixture
        tests/support/fixtures/faults_put_retry_seed1029_k4.porcupine.json). False surfaces the
        unknown outcome to the caller instead."""
        self.session = WriteSession()
        """This router's client identity for exactly-once writes."""
        self._leaders: dict[int, int] = {}
        """group -> leader node id as last learned (absent = ask routing)."""
        self._commit: dict[int, _Coalescer] = {}
        self._remote: dict[tuple[object, ...], _Coalescer] = {}
        self._reads: dict[int, _ReadIndexShare] = {}
        self._confirmed_at: dict[int, float] = {}
        """group -> monotonic time a request confirmed by a quorum was sent from here."""
        self._lease_from: dict[int, float] = {}
        self.health = PeerHealth()
        """Nodes to try last (they failed to answer, or SWIM declared them dead) and the
        bound of one attempt (`nodedb_cluster.peer_health`)."""
        self._follower_read_at = 0.0
        self._refresher: asyncio.Task[None] | None = None
        self.forwarded = 0
        """Requests this router sent one hop to another node (a counter for tests/metrics)."""

    # --- public API ---------------------------------------------------------------------------

    async def put(self, key: bytes, value: bytes, *, timeout_s: float | None = None) -> None:
        await self._write(key, kv_put(key, value), timeout_s)

    async def delete(self, key: bytes, *, timeout_s: float | None = None) -> bool:
        """True when the key existed."""
        status, _ = await self._write(key, kv_delete(key), timeout_s)
        return status == "ok"

    async def cas(
        self, key: bytes, expected: bytes | None, new: bytes, *, timeout_s: float | None = None
    ) -> bool:
        """Set `key` to `new` iff it holds `expected` (None = absent); False when it did not."""
        status, value = await self._write(key, kv_cas(key, expected, new), timeout_s)
        if status == "invalid":
            raise InvalidRequest(f"cas refused: {value!r}")
        return status == "ok"

    async def get(
        self,
        key: bytes,
        *,
        read: ReadLevel = "linearizable",
        max_staleness_s: float = MAX_STALENESS_S_DEFAULT,
        timeout_s: float | None = None,
    ) -> bytes | None:
        (value,) = await self.get_many(
            [key], read=read, max_staleness_s=max_staleness_s, timeout_s=timeout_s
        )
        return value

    async def put_many(
        self, items: Sequence[tuple[bytes, bytes]], *, timeout_s: float | None = None
    ) -> None:
        """Every pair, grouped by data group; each group's share proposed in one call."""
        if not items:
            return
        keys = [k for k, _ in items]
        groups = self._groups_of(keys)
        deadline = self._deadline(timeout_s)
        seqs, cmds = self.session.wrap([kv_put(key, value) for key, value in items])
        by_group: dict[int, list[bytes]] = {}
        for cmd, g in zip(cmds, groups.tolist(), strict=True):
            by_group.setdefault(g, []).append(cmd)
        try:
            outcomes = await asyncio.gather(
                *(
                    self._propose(g, group_cmds, deadline, self.retry_unknown_writes)
                    for g, group_cmds in by_group.items()
                )
            )
        finally:
            self.session.finish(seqs)
        for g, results in zip(by_group, outcomes, strict=True):
            for result in results:
                _written(g, result)

    async def get_many(
        self,
        keys: Sequence[bytes],
        *,
        read: ReadLevel = "linearizable",
        max_staleness_s: float = MAX_STALENESS_S_DEFAULT,
        timeout_s: float | None = None,
    ) -> list[bytes | None]:
        """One value (or None) per key, in order; one read per group."""
        if read not in READ_LEVELS:
            raise InvalidRequest(f"read level must be one of {READ_LEVELS}, not {read!r}")
        if not keys:
            return []
        deadline = self._deadline(timeout_s)
        groups = self._groups_of(keys).tolist()
        by_group: dict[int, list[int]] = {}
        for i, g in enumerate(groups):
            by_group.setdefault(g, []).append(i)
        out: list[bytes | None] = [None] * len(keys)
        results = await asyncio.gather(
            *(
                self._read(g, [keys[i] for i in idx], read, max_staleness_s, deadline)
                for g, idx in by_group.items()
            )
        )
        for idx, values in zip(by_group.values(), results, strict=True):
            for i, v in zip(idx, values, strict=True):
                out[i] = v
        return out

    @property
    def read_index_rounds(self) -> int:
        """ReadIndex rounds this router ran (reads share them; lease reads skip them)."""
        return sum(share.rounds for share in self._reads.values())

    def group_of(self, key: bytes) -> int:
        """The data group owning `key` (the scalar kernel: no arrays for one key)."""
        return self._routing().group_for_vshard(vshard_for_key(key))

    def leader_hint(self, group_id: int) -> int:
        """The leader this router would send `group_id`'s requests to (0 = unknown)."""
        return self._target(group_id)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher

    # --- serving (called by the Node's KV_REQUEST handler) --------------------------------------

    async def serve(self, doc: dict[str, object]) -> bytes:
        """Answer one decoded KV_REQUEST; a forwarded one is executed here or answered
        NotLeader."""
        op = doc.get("op")
        t_ms = _int(doc.get("t", 5000), "t")
        # Answer a little before the requester's bound, so it never mistakes us for dead.
        timeout_s = (serve_budget_ms(t_ms) if t_ms > 0 else t_ms) / 1000
        deadline = self._deadline(timeout_s)
        if op in ("propose_many", "read_many"):
            return await self._serve_many(op, doc, deadline)
        group = _int(doc.get("g"), "g")
        forwarded = bool(doc.get("fwd"))
        try:
            if op == "propose":
                cmds = _bytes_list(doc.get("cmds"), "cmds")
                if forwarded:
                    results: list[bytes] | list[bytes | None] = await self._propose_local(
                        group, cmds, deadline
                    )
                else:
                    results = await self._propose(group, cmds, deadline, idempotent=False)
            elif op == "read":
                keys = _bytes_list(doc.get("keys"), "keys")
                level = doc.get("level", "linearizable")
                if level not in READ_LEVELS:
                    raise InvalidRequest(f"unknown read level {level!r}")
                stale = doc.get("stale_s", MAX_STALENESS_S_DEFAULT)
                if not isinstance(stale, int | float):
                    raise InvalidRequest("stale_s must be a number")
                level_: ReadLevel = level
                if forwarded:
                    results = await self._read_local(group, keys, level_, float(stale), deadline)
                else:
                    results = await self._read(group, keys, level_, float(stale), deadline)
            else:
                raise InvalidRequest(f"unknown kv op {op!r}")
        except RaftNotLeader as e:
            return encode_request({"nl": e.leader_id or 0})
        except UnknownGroup:
            return encode_request({"nl": self._leaders.get(group, 0)})
        except StaleRead as e:
            return encode_request({"stale": e.age_s})
        return encode_request({"r": results})

    async def _serve_many(self, op: str, doc: dict[str, object], deadline: float) -> bytes:
        """Forwarded commands (or reads) of several groups: each group's share executed here
        (one group commit / one ReadIndex round each); groups not served here are named with
        their leader hint in "nlg", groups with an unknown outcome in "unk", stale ones in
        "stale"."""
        read = op == "read_many"
        cmds = _bytes_list(doc.get("keys" if read else "cmds"), "keys" if read else "cmds")
        level: ReadLevel = "linearizable"
        stale_s = MAX_STALENESS_S_DEFAULT
        if read:
            raw_level = doc.get("level", "linearizable")
            if raw_level not in READ_LEVELS:
                raise InvalidRequest(f"unknown read level {raw_level!r}")
            level = raw_level
            raw_stale = doc.get("stale_s", MAX_STALENESS_S_DEFAULT)
            if not isinstance(raw_stale, int | float):
                raise InvalidRequest("stale_s must be a number")
            stale_s = float(raw_stale)
        groups = doc.get("gs")
        if not isinstance(groups, list) or len(groups) != len(cmds):
            raise InvalidRequest("gs must list one group per command")
        by_group: dict[int, list[int]] = {}
        for i, g in enumerate(groups):
            by_group.setdefault(_int(g, "gs[]"), []).append(i)
        shares = list(by_group.items())
        outcomes = await asyncio.gather(
            *(
                self._read_local(g, [cmds[i] for i in idx], level, stale_s, deadline)
                if read
                else self._propose_local(g, [cmds[i] for i in idx], deadline)
                for g, idx in shares
            ),
            return_exceptions=True,
        )
        results: list[Result] = [None] * len(cmds)
        refused: list[list[int]] = []
        unknown: list[int] = []
        stale: list[list[float]] = []
        for (g, idx), outcome in zip(shares, outcomes, strict=True):
            if isinstance(outcome, RaftNotLeader):
                refused.append([g, outcome.leader_id or 0])
            elif isinstance(outcome, UnknownGroup):
                refused.append([g, self._leaders.get(g, 0)])
            elif isinstance(outcome, StaleRead):
                stale.append([g, outcome.age_s])
            elif isinstance(outcome, LeadershipLost | Timeout):
                unknown.append(g)  # outcome unknown: the caller decides whether to retry
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                for i, r in zip(idx, cast("list[Result]", outcome), strict=True):
                    results[i] = r
        doc_out: dict[str, object] = {"r": results}
        if refused:
            doc_out["nlg"] = refused
        if unknown:
            doc_out["unk"] = unknown
        if stale:
            doc_out["stale_g"] = stale
        return encode_request(doc_out)

    # --- the path -----------------------------------------------------------------------------

    def _deadline(self, timeout_s: float | None) -> float:
        t = TIMEOUT_S_DEFAULT if timeout_s is None else timeout_s
        if t <= 0:
            raise InvalidRequest(f"timeout must be positive, got {t}")
        return asyncio.get_running_loop().time() + t

    def _groups_of(self, keys: Sequence[bytes]) -> npt.NDArray[np.uint32]:
        routing = self._routing()
        return routing.groups_for_vshards(vshards_for_keys(keys))

    def _is_local(self, group_id: int) -> bool:
        if self._engine is None:
            return False
        try:
            return self._routing().route(group_id).has_member(self.node_id)
        except UnknownGroup:
            return False

    def _target(self, group_id: int) -> int:
        """The node to send `group_id`'s requests to: the leader as last learned, else the one
        routing names (0 = unknown); a node that just failed us is skipped for a while."""
        leader = self._leaders.get(group_id)
        if leader is None:
            try:
                leader = self._routing().route(group_id).leader
            except UnknownGroup:
                return 0
        if leader and self.health.avoid(leader):
            return 0
        return leader

    def learn_leader(self, group_id: int, leader: int | None) -> None:
        self._leaders[group_id] = leader or 0

    def _failed(self, group_id: int, node_id: int) -> None:
        """`node_id` did not answer: forget it as leader and try other members first."""
        if node_id and node_id != self.node_id:
            self.health.failed(node_id)
        self._leaders[group_id] = 0

    def _next_member(self, group_id: int, tried: int) -> int:
        """With no leader known, ask the members in turn (any of them may know it), those
        that answered lately first."""
        try:
            route = self._routing().route(group_id)
        except UnknownGroup:
            return 0
        members = [m for m in route.voters if m != self.node_id] or list(route.voters)
        alive = self.health.preferred(members)
        return alive[tried % len(alive)] if alive else 0

    def _on_confirmed(self, group_id: int, sent_at: float) -> None:
        """A ReadIndex sent at `sent_at` came back: the local state is at least that fresh."""
        self._confirmed_at[group_id] = max(self._confirmed_at.get(group_id, 0.0), sent_at)

    def _on_committed(self, group_id: int, sent_at: float) -> None:
        """A local proposal sent at `sent_at` committed: only a leader commits its own
        proposals, so a quorum followed this node then (the lease starts there)."""
        self._on_confirmed(group_id, sent_at)
        self._leaders[group_id] = self.node_id
        self._lease_from[group_id] = max(self._lease_from.get(group_id, 0.0), sent_at)

    async def _write(
        self, key: bytes, command: bytes, timeout_s: float | None
    ) -> tuple[str, bytes | None]:
        """One write of `key` in this router's session; its decoded result."""
        deadline = self._deadline(timeout_s)
        group = self.group_of(key)
        seqs, cmds = self.session.wrap([command])
        try:
            (result,) = await self._propose(group, cmds, deadline, self.retry_unknown_writes)
        finally:
            self.session.finish(seqs)
        return _written(group, result)

    async def _propose(
        self, group: int, cmds: list[bytes], deadline: float, idempotent: bool
    ) -> list[bytes]:
        async def local() -> list[bytes]:
            return await self._propose_local(group, cmds, deadline)

        remote = _Remote(("propose_many",), cmds, _propose_many_request, group)
        results = await self._attempts(group, deadline, local, remote, idempotent)
        return cast("list[bytes]", results)

    async def _propose_local(self, group: int, cmds: list[bytes], deadline: float) -> list[bytes]:
        engine = self._engine
        if engine is None:
            raise RaftNotLeader(group, None)
        gc = self._commit.get(group)
        if gc is None:

            async def propose(items: list[bytes], _tags: list[int], timeout_ms: int) -> Outcome:
                proposed = await engine.propose_batch(group, items, timeout_ms, kind="kv")
                return proposed.results, _NO_ERRORS

            def committed(sent_at: float) -> None:
                self._on_committed(group, sent_at)

            gc = self._commit[group] = _Coalescer(propose, BATCHES_IN_FLIGHT_MAX, committed)
        return cast("list[bytes]", await gc.submit(cmds, deadline))

    async def _read(
        self, group: int, keys: list[bytes], level: ReadLevel, stale_s: float, deadline: float
    ) -> list[bytes | None]:
        async def local() -> list[bytes | None]:
            return await self._read_local(group, keys, level, stale_s, deadline)

        def request(items: list[bytes], tags: list[int], timeout_ms: int) -> dict[str, object]:
            return {
                "op": "read_many",
                "gs": tags,
                "keys": items,
                "level": level,
                "stale_s": stale_s,
                "t": timeout_ms,
            }

        remote = _Remote(("read_many", level, stale_s), keys, request, group)

        local_ok = self._is_local(group)
        results = await self._attempts(group, deadline, local, remote, True, local_ok)
        return cast("list[bytes | None]", results)

    async def _read_local(
        self, group: int, keys: list[bytes], level: ReadLevel, stale_s: float, deadline: float
    ) -> list[bytes | None]:
        engine = self._engine
        if engine is None or not self._is_local(group):
            raise RaftNotLeader(group, self._leaders.get(group) or None)
        now = time.monotonic()
        timeout_ms = max(1, int((deadline - asyncio.get_running_loop().time()) * 1000))
        if level == "lease":
            # Outside a lease (or on a follower) ReadIndex: stronger, never weaker.
            if now - self._lease_from.get(group, 0.0) >= self._lease_s:
                await self._read_index(group, timeout_ms)
        elif level == "follower":
            self._note_follower_read()
            age = now - self._confirmed_at.get(group, 0.0)
            if age > stale_s:
                try:
                    await self._read_index(group, min(timeout_ms, max(1, int(stale_s * 1000))))
                except (Timeout, RaftNotLeader, LeadershipLost) as e:
                    log.debug("follower read of group %d unconfirmed: %s", group, e)
                    raise StaleRead(group, age, stale_s) from e
        else:
            await self._read_index(group, timeout_ms)
        return [engine.kv_get(group, k) for k in keys]

    async def _read_index(self, group: int, timeout_ms: int) -> None:
        engine = self._engine
        assert engine is not None
        share = self._reads.get(group)
        if share is None:
            share = self._reads[group] = _ReadIndexShare(group, engine, self._on_confirmed)
        await share.wait(timeout_ms)

    async def _attempts(
        self,
        group: int,
        deadline: float,
        local: Callable[[], Awaitable[Sequence[bytes | None]]],
        remote: _Remote,
        idempotent: bool,
        local_ok: bool = False,
    ) -> Sequence[bytes | None]:
        """Local when this node leads (or may serve) `group`, else one hop; retried on a
        NotLeader or a transient failure until the deadline."""
        loop = asyncio.get_running_loop()
        last: ClusterError | None = None
        attempt = 0
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                if isinstance(last, Timeout):
                    raise last
                raise Unavailable(group, str(last) if last else "no attempt possible")
            target = self._target(group)
            try:
                if local_ok or (target == self.node_id and self._is_local(group)):
                    return await local()
                if not target or target == self.node_id:
                    # Unknown, or "us" without a replica here: ask the members in turn.
                    target = self._next_member(group, attempt)
                    if not target:
                        raise Unavailable(group, "no member known")
                sent_at = loop.time()
                attempt_deadline = min(deadline, sent_at + self.health.attempt_timeout_s())
                results = await self._send_remote(group, target, remote, attempt_deadline)
                self.health.answered(loop.time() - sent_at)
                return results
            except RaftNotLeader as e:
                last = e
                local_ok = False
                self.learn_leader(group, e.leader_id)
            except UnknownGroup as e:  # the replica is not created here yet: go to the leader
                last = e
                local_ok = False
            except (LeadershipLost, Timeout) as e:  # outcome unknown
                if not idempotent:
                    raise
                last = e
                self._failed(group, target if isinstance(e, Timeout) else 0)
            except _TRANSIENT as e:
                if isinstance(e, RemoteError) and e.code == "InvalidRequest":
                    raise  # the request itself is bad: no other node or attempt will take it
                if isinstance(e, RemoteError) and e.code == NoSpace.code:
                    # The leader's disk is full: a definite refusal, not a transient failure.
                    raise NoSpace(e.message) from e
                last = e
                self._failed(group, target)
            except EngineStopped:
                raise
            pause = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
            attempt += 1
            if isinstance(last, RaftNotLeader) and last.leader_id and attempt < 3:
                continue  # a named leader: go at once
            await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))

    async def _send_remote(
        self, group: int, target: int, remote: _Remote, deadline: float
    ) -> list[Result]:
        """One hop, coalesced with every other request for the same target and kind."""
        key = (target, *remote.kind)
        coalescer = self._remote.get(key)
        if coalescer is None:
            if len(self._remote) >= REMOTE_COALESCERS_MAX:
                self._remote.clear()  # old targets and levels; rebuilt on demand

            async def send(items: list[bytes], tags: list[int], timeout_ms: int) -> Outcome:
                # The transport's own RPC bound may be longer than what is left of ours.
                try:
                    async with asyncio.timeout(timeout_ms / 1000):
                        request = remote.request(items, tags, timeout_ms)
                        return await self._forward(group, target, request, tags)
                except TimeoutError:
                    raise Timeout(f"kv request to node {target}", timeout_ms) from None

            coalescer = self._remote[key] = _Coalescer(send, REMOTE_IN_FLIGHT_MAX)
        return await coalescer.submit(remote.items, deadline, remote.tag)

    async def _forward(
        self, group: int, target: int, request: dict[str, object], tags: list[int]
    ) -> Outcome:
        self.forwarded += 1
        kind, payload = await self._transport.send_rpc(
            target, wire.MessageKind.KV_REQUEST, encode_request(request)
        )
        if kind != wire.MessageKind.KV_RESPONSE:
            raise RemoteError("bad_kind", f"node {target} answered kv with kind {kind}")
        doc = decode_doc(payload, "kv response")
        if "r" in doc:
            results = doc["r"]
            if not isinstance(results, list):
                raise RemoteError("malformed", "kv response 'r' is not a list")
            refused = doc.get("nlg")
            unknown = doc.get("unk")
            stale = doc.get("stale_g")
            if not refused and not unknown and not stale:
                for g in set(tags) if tags else (group,):
                    self._leaders.setdefault(g, target)
                return cast("list[Result]", results), _NO_ERRORS
            # Some groups of a multi-group request are not led there: those items fail alone.
            errors: dict[int, ClusterError] = {}
            if isinstance(refused, list):
                for pair in refused:
                    if isinstance(pair, list) and len(pair) == 2:
                        g, hint = pair
                        errors[int(g)] = RaftNotLeader(int(g), int(hint) or None)
            if isinstance(unknown, list):
                for g in unknown:
                    errors[int(g)] = LeadershipLost(int(g), None)
            if isinstance(stale, list):
                allowed = request.get("stale_s", 0.0)
                for pair in stale:
                    if isinstance(pair, list) and len(pair) == 2:
                        errors[int(pair[0])] = StaleRead(
                            int(pair[0]),
                            float(pair[1]),
                            float(allowed) if isinstance(allowed, int | float) else 0.0,
                        )
            if len(results) != len(tags):
                raise RemoteError("malformed", "kv response with a result count mismatch")
            return cast("list[Result]", results), errors
        if "nl" in doc:
            hint = doc["nl"]
            raise RaftNotLeader(group, hint if isinstance(hint, int) and hint else None)
        if "stale" in doc:
            age = doc["stale"]
            raise StaleRead(
                group,
                float(age) if isinstance(age, int | float) else -1.0,
                float(cast(float, request.get("stale_s", 0.0))),
            )
        raise RemoteError("malformed", f"kv response without a result: {sorted(doc)}")

    # --- follower freshness ------------------------------------------------------------------

    def _note_follower_read(self) -> None:
        self._follower_read_at = time.monotonic()
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.ensure_future(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        """While follower reads arrive, keep every local group's confirmation fresh."""
        while time.monotonic() - self._follower_read_at < REFRESH_IDLE_STOP_S:
            routing = self._routing()
            groups = [g for g in routing.group_ids if g != 0 and self._is_local(g)]
            stale = [
                g
                for g in groups
                if time.monotonic() - self._confirmed_at.get(g, 0.0) > REFRESH_INTERVAL_S
            ]
            results = await asyncio.gather(
                *(self._read_index(g, int(REFRESH_INTERVAL_S * 5000)) for g in stale),
                return_exceptions=True,
            )
            for r in results:
                if isinstance(r, EngineStopped):
                    return
                if isinstance(r, BaseException) and not isinstance(r, ClusterError):
                    raise r
            await asyncio.sleep(REFRESH_INTERVAL_S)  # a period, not a synchronisation
