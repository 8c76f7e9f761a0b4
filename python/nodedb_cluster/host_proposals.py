"""The embedding API's proposals, gathered per turn of the event loop.

Every command `node.data.propose` queues for one node in one turn goes in ONE call: one
`propose_each` per group this node leads (each command still its own log entry, so a host's
`apply_batch` sees one index per command), one HOST_PROPOSE (version 2, rust/wire/src/host.rs)
per other leader. Sent alone, each command paid a boundary crossing, a timer and a driver
round here, or a QUIC stream, a handler task and a proposal on the leader: 64 concurrent
proposers reached a third of the built-in KV's writes/s (BENCHMARKS.md, "Host proposals").

A leader from before version 2 refuses a batch as "newer than this build"; its commands are
then sent one by one (version 1) to it, and a batch is tried again after
`BATCH_RETRY_AFTER_S`, by when it may have been upgraded.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import nodedb_cluster_core as _core

from nodedb_cluster import wire
from nodedb_cluster.errors import (
    Busy,
    ClusterError,
    HandshakeError,
    InvalidRequest,
    LeadershipLost,
    OutcomeUnknown,
    RaftNotLeader,
    RemoteError,
    Timeout,
    TransportClosed,
    UnknownGroup,
    UnknownPeer,
    Unreachable,
)
from nodedb_cluster.raft import Proposed, RaftEngine, proposed_each
from nodedb_cluster.transport import Transport

HOST_VERSION: Final = _core.HOST_VERSION
"""The newest HOST_PROPOSE version this build speaks (rust/wire/src/host.rs): a batch."""
HOST_ITEMS_MAX: Final = _core.HOST_ITEMS_MAX
"""The most commands one HOST_PROPOSE carries; more go in several."""
BATCH_BYTES_MAX: Final = _core.PAYLOAD_BYTES_MAX - 4096
"""The most bytes of commands (each counted with `ITEM_OVERHEAD_BYTES`) one HOST_PROPOSE
carries: its frame's limit less room for the envelope; more go in several (a command alone
always fits, embedding.COMMAND_BYTES_MAX)."""
ITEM_OVERHEAD_BYTES: Final = 64
"""A command's encoding around its bytes in a batch (group, keys, lengths), rounded up."""
TIMEOUT_MS_MAX: Final = 86_400_000
"""The engine's longest proposal deadline (rust/py/src/raft_convert.rs)."""
BATCH_RETRY_AFTER_S: Final = 60.0
"""How long commands for a leader that refused a batch go one by one before a batch is tried
again (a rolling upgrade replaces that leader's build meanwhile)."""

NOT_SENT: Final = (UnknownPeer, HandshakeError)
"""Failures that prove the request never reached the peer: safe to try another node."""
STOPPED_CODE: Final = "EngineStopped"
"""A leader's refusal because its engine stopped (shutting down, or failed) before it took the
command: nothing of it is in any log (a command the engine had taken is answered outcome
unknown, `LeadershipLost`), so it is sent to the next voter, which may lead by now (embedding
probe, session 30: ~1,000 such commands failed during a graceful leader shutdown, although a
new leader was elected within milliseconds)."""
BUSY_CODE: Final = "Busy"
"""A leader's refusal of a command raft dropped unappended (a leadership transfer under way,
the uncommitted limit full): raised as `Busy`, as the same refusal on this node is, which the
proposer retries within its deadline (embedding probe, session 31: it was a `RemoteError`, and
a follower's callers failed where the leader's would have been told to retry)."""
_MAYBE_SENT: Final = (Unreachable, TransportClosed, Timeout)
"""Failures after which the peer may have proposed the commands."""

log = logging.getLogger(__name__)


def encode_propose(group: int, command: bytes, timeout_ms: int) -> bytes:
    """Version 1: one command."""
    return bytes(
        msgpack.packb(
            {"group": group, "command": command, "timeout_ms": timeout_ms}, use_bin_type=True
        )
    )


def encode_batch(items: list[tuple[int, bytes]], timeout_ms: int) -> bytes:
    """Version 2: the commands, in order, for one leader."""
    doc = {
        "v": HOST_VERSION,
        "timeout_ms": timeout_ms,
        "items": [{"group": g, "command": c} for g, c in items],
    }
    return bytes(msgpack.packb(doc, use_bin_type=True))


def decode_outcomes(payload: bytes, count: int, target: int) -> list[object]:
    """The outcomes of a batch of `count`; `InvalidRequest` unless there are that many."""
    doc = wire.decode_map(payload, "HostProposeResponse")
    outcomes = doc.get("outcomes")
    if not isinstance(outcomes, list) or len(outcomes) != count:
        raise InvalidRequest(f"node {target} answered a batch of {count} with {doc!r:.200}")
    return outcomes


def outcome_result(doc: object, group: int, target: int) -> bytes:
    """The result of one answered command, or the error its outcome stands for."""
    if not isinstance(doc, dict):
        raise InvalidRequest(f"node {target} answered HOST_PROPOSE with {doc!r}")
    outcome, result = doc.get("outcome"), doc.get("result")
    if outcome == "applied" and isinstance(result, bytes):
        return result
    if outcome == "not_leader":
        leader = doc.get("leader")
        raise RaftNotLeader(group, leader if isinstance(leader, int) and leader else None)
    if outcome == "unknown":
        raise OutcomeUnknown(group, f"node {target}: {doc.get('reason')}")
    code, message = doc.get("code"), doc.get("message")
    if outcome == "failed" and code == STOPPED_CODE:
        raise RaftNotLeader(group, None)  # it took nothing: the next voter may lead
    if outcome == "failed" and code == BUSY_CODE and isinstance(message, str):
        raise Busy(message.removeprefix("busy: "))  # it took nothing: retried, as here
    if outcome == "failed" and isinstance(code, str) and isinstance(message, str):
        raise RemoteError(code, message)  # what a version-1 answer's ERROR frame raised
    raise InvalidRequest(f"node {target} answered HOST_PROPOSE with {doc!r}")


def local_error(group: int, error: ClusterError) -> ClusterError:
    """This node's engine's refusal as a proposer sees it."""
    if isinstance(error, UnknownGroup):
        return RaftNotLeader(group, None)
    if isinstance(error, (LeadershipLost, Timeout)):  # it may be in the log
        return OutcomeUnknown(group, str(error))
    return error


@dataclass(slots=True)
class _Queued:
    group: int
    command: bytes
    deadline: float
    """Loop time."""
    future: asyncio.Future[bytes]
    sent: bool = False


class ProposalQueue:
    """Commands for the leaders of host groups, sent once per turn of the loop."""

    def __init__(self, node_id: int, engine: RaftEngine, transport: Transport) -> None:
        self._node_id = node_id
        self._engine = engine
        self._transport = transport
        self._queued: dict[int, list[_Queued]] = {}
        self._flush_scheduled = False
        self._one_by_one: dict[int, float] = {}
        """Leaders that refused a batch, and when."""
        self._tasks: set[asyncio.Task[None]] = set()

    async def propose(self, target: int, group: int, command: bytes, deadline: float) -> bytes:
        """`command`'s result from `target`, which should lead `group`; by `deadline` (loop
        time), or `OutcomeUnknown` once it was sent (`Timeout` if it never was)."""
        loop = asyncio.get_running_loop()
        timeout_ms = max(1, int((deadline - loop.time()) * 1000))
        item = _Queued(group, command, deadline, loop.create_future())
        self._queued.setdefault(target, []).append(item)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        try:
            async with asyncio.timeout_at(deadline):
                return await item.future
        except TimeoutError:
            if item.sent:
                raise OutcomeUnknown(group, f"no answer from node {target} in time") from None
            raise Timeout("propose", timeout_ms) from None

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _flush(self) -> None:
        """Begin one call per local group and one request per other leader; callbacks settle
        the callers (no task per call, nor per request)."""
        self._flush_scheduled = False
        queued, self._queued = self._queued, {}
        for target, items in queued.items():
            items = [i for i in items if not i.future.done()]  # a caller may have given up
            for item in items:
                item.sent = True
            if not items:
                continue
            if target != self._node_id:
                for chunk in _chunks(items):
                    _guarded(chunk, functools.partial(self._send, target, chunk))
                continue
            by_group: dict[int, list[_Queued]] = {}
            for item in items:
                by_group.setdefault(item.group, []).append(item)
            for group, those in by_group.items():
                # Cut like a request (embedding probe, session 31: three 63 MiB commands in
                # one engine call were one ~190 MB append and send, and the leader lost
                # check-quorum); a cut the uncommitted limit refuses is `Busy`, retried.
                for chunk in _chunks(those):
                    _guarded(chunk, functools.partial(self._propose_here, group, chunk))

    def _propose_here(self, group: int, items: list[_Queued]) -> None:
        commands = [i.command for i in items]
        try:
            fut = self._engine.propose_each_nowait(
                group, commands, _timeout_ms(items), kind="python"
            )
        except ClusterError as e:
            _fail(items, local_error(group, e))
            return

        def proposed(fut: asyncio.Future[list[tuple[int, bytes] | BaseException]]) -> None:
            error = _failure(fut)
            if error is not None:  # the whole call: its deadline, a stopped engine
                _fail(items, local_error(group, error))
                return
            for item, out in zip(items, proposed_each(fut.result()), strict=True):
                if isinstance(out, Proposed):
                    _settle(item, out.result)
                else:
                    _fail([item], local_error(group, out))

        fut.add_done_callback(proposed)

    def _send(self, target: int, items: list[_Queued]) -> None:
        loop = asyncio.get_running_loop()
        refused_at = self._one_by_one.get(target)
        if refused_at is not None and loop.time() - refused_at < BATCH_RETRY_AFTER_S:
            for item in items:
                self._spawn(self._send_one(target, item))
            return
        timeout_ms = _timeout_ms(items)
        payload = encode_batch([(i.group, i.command) for i in items], timeout_ms)
        # The leader may take the commands' deadline to answer (it caps its own wait, then says
        # outcome unknown): the RPC bound alone (5 s) answered applied commands `OutcomeUnknown`
        # whatever their callers' deadline (embedding probe, session 31).
        try:
            fut = self._transport.send_rpc_nowait(
                target,
                wire.MessageKind.HOST_PROPOSE,
                payload,
                answer_within_ms=timeout_ms,
            )
        except ClusterError as e:
            _fail(items, e)
            return

        def answered(fut: asyncio.Future[tuple[int, bytes]]) -> None:
            error = _failure(fut)
            if isinstance(error, RemoteError) and _refuses_batches(error):
                self._one_by_one[target] = loop.time()  # refused unread: nothing proposed
                for item in items:
                    self._spawn(self._send_one(target, item))
                return
            try:
                if error is not None:
                    raise _sent_error(target, error)
                kind, reply = fut.result()
                _check_kind(target, kind)
                outcomes = decode_outcomes(reply, len(items), target)
            except ClusterError as e:
                _fail(items, e)
                return
            self._one_by_one.pop(target, None)
            for item, outcome in zip(items, outcomes, strict=True):
                try:
                    _settle(item, outcome_result(outcome, item.group, target))
                except ClusterError as e:
                    _fail([item], e)

        fut.add_done_callback(answered)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_one(self, target: int, item: _Queued) -> None:
        """Version 1, for a leader from before batches."""
        timeout_ms = _timeout_ms([item])
        payload = encode_propose(item.group, item.command, timeout_ms)
        try:
            try:
                kind, reply = await self._transport.send_rpc_nowait(
                    target,
                    wire.MessageKind.HOST_PROPOSE,
                    payload,
                    answer_within_ms=timeout_ms,
                )
            except ClusterError as e:
                raise _sent_error(target, e) from e
            _check_kind(target, kind)
            doc = wire.decode_map(reply, "HostProposeResponse")
            _settle(item, outcome_result(doc, item.group, target))
        except ClusterError as e:
            _fail([item], e)


def _failure(fut: asyncio.Future[Any]) -> ClusterError | None:
    """The error a core future failed with (a closing loop's cancel as `TransportClosed`)."""
    if fut.cancelled():
        return TransportClosed()
    error = fut.exception()
    if error is None or isinstance(error, ClusterError):
        return error
    raise error  # the core answers only ClusterErrors


def _refuses_batches(error: RemoteError) -> bool:
    """A leader from before version 2 refused the batch unread (its own words)."""
    return error.code == InvalidRequest.__name__ and "newer than this build" in error.message


def _sent_error(target: int, error: ClusterError) -> ClusterError:
    """A request's failure as its commands' callers see it: unknown outcome once it may have
    reached `target`."""
    if isinstance(error, _MAYBE_SENT):
        return _Unanswered(f"node {target}: {error}")
    if isinstance(error, RemoteError) and error.code == BUSY_CODE:  # a version-1 answer
        return Busy(error.message.removeprefix("busy: "))
    return error


def _check_kind(target: int, kind: int) -> None:
    if kind != wire.MessageKind.HOST_PROPOSE_RESPONSE:
        raise InvalidRequest(f"node {target} answered HOST_PROPOSE with kind {kind}")


class _Unanswered(ClusterError):
    """Sent, and no answer: each command's outcome is unknown (`_fail` names its group)."""


def _timeout_ms(items: list[_Queued]) -> int:
    """The latest deadline among `items` (within the engine's bound, so no item's deadline
    can make the call refused): each caller still stops waiting at its own."""
    remaining = max(i.deadline for i in items) - asyncio.get_running_loop().time()
    return min(TIMEOUT_MS_MAX, max(1, int(remaining * 1000)))


def _chunks(items: list[_Queued]) -> list[list[_Queued]]:
    """`items` in order, cut so no HOST_PROPOSE carries more than `HOST_ITEMS_MAX` commands or
    `BATCH_BYTES_MAX` bytes of them (a frame over the limit would fail all of its commands)."""
    chunks: list[list[_Queued]] = [[]]
    size = 0
    for item in items:
        cost = len(item.command) + ITEM_OVERHEAD_BYTES
        if chunks[-1] and (len(chunks[-1]) >= HOST_ITEMS_MAX or size + cost > BATCH_BYTES_MAX):
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += cost
    return chunks


def _guarded(items: list[_Queued], begin: Callable[[], None]) -> None:
    """`begin()`, whose failure fails `items` alone: the other groups and leaders of the
    same turn are still sent (an argument that reached here unchecked is a bug, not theirs)."""
    try:
        begin()
    except Exception as e:
        log.exception("host proposals for %d command(s) could not be sent", len(items))
        for item in items:
            if not item.future.done():
                item.future.set_exception(e)


def _settle(item: _Queued, result: bytes) -> None:
    if not item.future.done():
        item.future.set_result(result)


def _fail(items: list[_Queued], error: ClusterError) -> None:
    for item in items:
        if item.future.done():
            continue
        if isinstance(error, _Unanswered):
            item.future.set_exception(OutcomeUnknown(item.group, str(error)))
        elif isinstance(error, RemoteError) and error.code == STOPPED_CODE:
            item.future.set_exception(RaftNotLeader(item.group, None))  # as `outcome_result`
        else:
            item.future.set_exception(error)
