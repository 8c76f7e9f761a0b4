"""vShard moves between groups, carried out (issue 16 part 2): the mover on the source group's
leader, and the convergence of marks left by movers that died.

A move of vShard v from group S to group T, recorded in group 0 (`metadata/vshard_moves.py`),
runs on S's leader in these steps (each a KV command through Raft; `docs/PLACEMENT.md`):

1. T `incoming` (T answers v with Paused and drops leftovers of an earlier attempt);
2. S `track` (S records which keys of v change from now on);
3. copy: S's keys of v, exported from S's local replica, proposed to T in chunks (no pause);
4. S `freeze` (S answers v with Paused: **the pause starts**);
5. delta: the keys of v changed since step 2 and S's write sessions, proposed to T;
6. group 0 `FinishVShardMove`: **the commit point**, v's route flips to T; if the pause already
   exceeds `vshard_move_pause_budget_ms`, `AbortVShardMove` instead;
7. T `activate` and S `release` (S answers v with Moved(T) and deletes its keys): the pause
   ends for clients as soon as both apply.

A mover that fails before step 6 aborts the move in group 0 and undoes its marks; one that dies
leaves marks that `metadata/vshard_converge.converge` ends on the next round of each group's
leader, after a ReadIndex of group 0, by group 0's outcome. Only the node that led S when it
first saw the move carries it out: a node that leads S later rolls the move back (its first
mover may still be running, paused or cut off, and two movers would interleave their copies at
T), and T refuses a late Incoming of a move that already ended there. Every step names the move
id, and the state machines refuse a step of another move than their mark's, and any step of a move
older than the highest they applied for the vShard (the fence, docs/KV.md), so no step of an
old move touches a new one. A step refused so (`InvalidRequest`, "refused as stale") aborts
the move like any failed step, once: group 0 then holds no move to run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol

import msgpack

from nodedb_cluster import wire
from nodedb_cluster.errors import (
    ClusterError,
    EngineStopped,
    InvalidRequest,
    NotLeader,
    RaftNotLeader,
    UnknownGroup,
)
from nodedb_cluster.metadata.applier import MetadataState
from nodedb_cluster.metadata.commands import (
    AbortVShardMove,
    FinishVShardMove,
    MetadataEntry,
)
from nodedb_cluster.metadata.vshard_converge import Step, VShardMark, converge
from nodedb_cluster.metadata.vshard_moves import VShardMove
from nodedb_cluster.raft import RaftEngine, kv_check_result, kv_vshard_command
from nodedb_cluster.routing.table import METADATA_GROUP_ID, RoutingTable
from nodedb_cluster.transport import Peer, Reply, Transport

log = logging.getLogger(__name__)

ROUND_INTERVAL_S: Final = 1.0
"""Between rounds when nothing wakes the mover: how soon a dead mover's marks are ended."""
STEP_ATTEMPTS_MAX: Final = 4
"""A step follows at most this many leader changes of its group before the move gives up."""
NO_LEADER_WAIT_MS: Final = 200
"""How long a step waits for a leaderless group to elect one before asking again."""
CHUNK_BYTES: Final = 1 << 20
"""Keys per import command, by size: one Raft entry each."""
STEP_COMMANDS_MAX: Final = 64
"""Commands per VSHARD_STEP request at most (a peer cannot make one entry of more)."""
STEP_BYTES_MAX: Final = 8 * CHUNK_BYTES


class KvVShards(Protocol):
    """The KV state machine's side of a move, on this node (the Rust core, `nodedb_kv`)."""

    def command(self, op: str, vshard: int, group: int, move_id: int) -> bytes:
        """One placement command: incoming, track, freeze, unfreeze, activate, release, drop."""
        ...

    def check(self, result: bytes) -> None:
        """Raise if a placement command's result says it did not apply."""
        ...

    def export(self, group: int, vshard: int, move_id: int, delta: bool) -> list[bytes]:
        """Import commands for the target holding this replica's keys of `vshard` (all; or,
        with `delta`, those changed since `track` plus the write sessions)."""
        ...

    def marks(self, group: int) -> dict[int, VShardMark]:
        """This replica's vShard marks (vShards in any state but plainly owned)."""
        ...


class CoreVShards:
    """`KvVShards` over the Rust core (nodedb_kv's placement commands, on the running engine)."""

    def __init__(self, engine: Callable[[], RaftEngine]) -> None:
        self._engine = engine

    def command(self, op: str, vshard: int, group: int, move_id: int) -> bytes:
        return kv_vshard_command(op, vshard, group, move_id)

    def check(self, result: bytes) -> None:
        kv_check_result(result)

    def export(self, group: int, vshard: int, move_id: int, delta: bool) -> list[bytes]:
        return self._engine().kv_vshard_export(group, vshard, move_id, delta, CHUNK_BYTES)

    def marks(self, group: int) -> dict[int, VShardMark]:
        return {
            v: VShardMark(state, to_group, move_id)
            for v, (state, to_group, move_id) in self._engine().kv_vshard_states(group).items()
        }


class MoveAborted(ClusterError):
    """A vShard move ended with the vShard where it was."""


@dataclass(slots=True)
class MoveProgress:
    """What the mover of one move is doing, for `status`."""

    move: VShardMove
    phase: str = "starting"
    chunks_done: int = 0
    chunks: int = 0


FAILPOINT_FROZEN_DELAY_MS: Final = "NODEDB_FAILPOINT_MOVE_FROZEN_DELAY_MS"
"""Failpoint (tests of the pause budget): a mover waits this many ms after freezing a vShard,
so a move over its budget can be made on any host. Read once per mover; unset in production."""


def _failpoint_frozen_delay_s() -> float:
    text = os.environ.get(FAILPOINT_FROZEN_DELAY_MS, "")
    return int(text) / 1000 if text.isdigit() else 0.0


MOVE_REST_MAX_S: Final = 2.0
"""The longest rest after one move: a move slowed by waiting (an election, a partition, a
timeout) rather than by work would otherwise hold the node's next move for minutes."""


@dataclass(slots=True)
class MovePacer:
    """Keeps a node's moves to `duty_percent` of the time: a move's work (Raft rounds in its
    two groups, two group 0 changes applied, saved and acted on by every node) takes CPU from
    the writes of every other vShard for as long as the move lasts, so after a move that took
    d the next one starts no sooner than d x (100 / duty - 1) later. 100: back to back."""

    duty_percent: int
    not_before: float = 0.0
    """When the next move may start (the mover's clock)."""

    def ended(self, started: float, now: float) -> None:
        rest = min((now - started) * (100 / self.duty_percent - 1), MOVE_REST_MAX_S)
        self.not_before = max(self.not_before, now + rest)

    def wait_s(self, now: float) -> float:
        """How long until a move may start (0: now)."""
        return max(0.0, self.not_before - now)


# --- one hop to a data group's leader -----------------------------------------------------------


def encode_step(group: int, commands: list[bytes], timeout_ms: int) -> bytes:
    return bytes(msgpack.packb({"g": group, "cmds": commands, "t": timeout_ms}))


def decode_step(payload: bytes) -> tuple[int, list[bytes], int]:
    """(group, commands, timeout ms) of a VSHARD_STEP; InvalidRequest names what is wrong."""
    doc = wire.decode_map(payload, "vshard step")
    group, commands, timeout_ms = doc.get("g"), doc.get("cmds"), doc.get("t")
    if type(group) is not int or group <= METADATA_GROUP_ID:
        raise InvalidRequest(f"vshard step: 'g' must be a data group id, got {group!r}")
    if (
        not isinstance(commands, list)
        or not 0 < len(commands) <= STEP_COMMANDS_MAX
        or not all(isinstance(c, bytes) for c in commands)
        or sum(len(c) for c in commands) > STEP_BYTES_MAX
    ):
        raise InvalidRequest(
            f"vshard step: 'cmds' must be 1..{STEP_COMMANDS_MAX} byte strings, "
            f"{STEP_BYTES_MAX} bytes in all at most"
        )
    if type(timeout_ms) is not int or not 0 < timeout_ms <= 60_000:
        raise InvalidRequest("vshard step: 't' must be 1..60000 ms")
    return group, commands, timeout_ms


class GroupSteps:
    """Proposes placement commands to a data group wherever its leader is: here, or one hop
    away (VSHARD_STEP, which only nodes may send)."""

    def __init__(
        self,
        node_id: int,
        engine: Callable[[], RaftEngine],
        transport: Transport,
        routing: Callable[[], RoutingTable],
        timeout_ms: int,
    ) -> None:
        self._node_id = node_id
        self._engine = engine
        self._transport = transport
        self._routing = routing
        """The applied routing table: who the voters of a group are."""
        self._timeout_ms = timeout_ms

    async def propose(self, group: int, commands: list[bytes]) -> list[bytes]:
        """The results of `commands`, applied as ONE entry of `group`. The leader is the one
        this node knows (it holds a replica), else asked of the group's voters in turn, each
        answer naming the leader it knows."""
        last: ClusterError = NotLeader(None, f"group {group} has no leader")
        engine = self._engine()
        hint = engine.leader(group) or 0
        voters = [v for v in self._routing().route(group).voters if v != self._node_id]
        for attempt in range(STEP_ATTEMPTS_MAX + len(voters)):
            target = hint or engine.leader(group) or 0
            if not target and voters:
                target = voters[attempt % len(voters)]  # someone who can name the leader
            hint = 0
            try:
                if target == self._node_id:
                    return await self._propose_here(group, commands)
                if not target:
                    epoch, _ = engine.leaders()
                    await engine.wait_leaders_changed(epoch, NO_LEADER_WAIT_MS)
                    continue
                _kind, payload = await self._transport.send_rpc(
                    target,
                    wire.MessageKind.VSHARD_STEP,
                    encode_step(group, commands, self._timeout_ms),
                )
            except (RaftNotLeader, NotLeader) as e:
                last = e
                continue
            doc = wire.decode_map(payload, "vshard step response")
            results = doc.get("r")
            if isinstance(results, list) and all(isinstance(r, bytes) for r in results):
                return list(results)
            named = doc.get("nl")
            hint = named if type(named) is int and named != target else 0
            last = NotLeader(None, f"group {group}: node {target} does not lead it")
            if not hint:
                epoch, _ = engine.leaders()
                await engine.wait_leaders_changed(epoch, NO_LEADER_WAIT_MS)  # an election
        raise last

    async def _propose_here(self, group: int, commands: list[bytes]) -> list[bytes]:
        proposed = await self._engine().propose_batch(group, commands, self._timeout_ms, kind="kv")
        return list(proposed.results)

    async def on_step(self, peer: Peer, payload: bytes) -> Reply:
        """VSHARD_STEP from another node's mover: propose here if this node leads the group."""
        group, commands, timeout_ms = decode_step(payload)
        engine = self._engine()
        try:
            proposed = await engine.propose_batch(group, commands, timeout_ms, kind="kv")
        except (RaftNotLeader, UnknownGroup):
            doc: dict[str, object] = {"nl": engine.leader(group) or 0}  # a hint, or 0
        else:
            doc = {"r": list(proposed.results)}
        return wire.MessageKind.VSHARD_STEP_RESPONSE, bytes(msgpack.packb(doc))


# --- the mover -----------------------------------------------------------------------------------


class VShardMover:
    """Runs the moves whose source group this node leads, and ends stale marks of the groups it
    leads; one task, woken by metadata changes and every `ROUND_INTERVAL_S`."""

    def __init__(
        self,
        node_id: int,
        engine: Callable[[], RaftEngine],
        metadata: Callable[[], MetadataState],
        propose_metadata: Callable[[MetadataEntry], Awaitable[str | None]],
        steps: GroupSteps,
        vshards: KvVShards,
        pause_budget_s: float,
        pacer: MovePacer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._node_id = node_id
        self._engine = engine
        self._metadata = metadata
        self._propose_metadata = propose_metadata
        self._steps = steps
        self._vshards = vshards
        self._pause_budget_s = pause_budget_s
        self._frozen_delay_s = _failpoint_frozen_delay_s()
        self._clock = clock
        self._pacer = MovePacer(100) if pacer is None else pacer
        self._rest_timer: asyncio.TimerHandle | None = None
        self._running: dict[int, asyncio.Task[None]] = {}
        self._first_seen: dict[int, bool] = {}
        """Per move in flight: whether this node led its source group when it first saw it."""
        self.progress: dict[int, MoveProgress] = {}
        """Moves this node runs, by vShard."""
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        self._wakeup.set()

    def rest_left_s(self) -> float:
        """How long this node still rests before it may start its next move (0: it may now)."""
        return self._pacer.wait_s(self._clock())

    async def run(self) -> None:
        """Rounds until the engine stops or the task is cancelled (a failed round is logged)."""
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), ROUND_INTERVAL_S)
                self._wakeup.clear()
                try:
                    await self.round()
                except EngineStopped:
                    return
                except ClusterError as e:
                    log.info("vshard mover round incomplete: %s", e)
                except Exception:
                    log.exception("vshard mover round failed; retrying next round")
        finally:
            if self._rest_timer is not None:
                self._rest_timer.cancel()
            for task in self._running.values():
                task.cancel()

    async def round(self) -> None:
        engine = self._engine()
        moves = list(self._metadata().vshard_moves)
        for move in moves:
            if move.move_id not in self._first_seen:
                self._first_seen[move.move_id] = engine.leader(move.source) == self._node_id
        in_flight = {m.move_id for m in moves}
        for move_id in [m for m in self._first_seen if m not in in_flight]:
            del self._first_seen[move_id]
        startable = [
            move
            for move in moves
            if move.vshard not in self._running and engine.leader(move.source) == self._node_id
        ]
        # A move this node did not lead the source group for when it first saw it may have
        # another mover still running (a leader paused or cut off mid-move, then resuming): two
        # movers of one move interleave their copies at the target. Such a move is rolled back,
        # never taken over.
        for move in [m for m in startable if not self._first_seen[m.move_id]]:
            self._running[move.vshard] = asyncio.ensure_future(self._roll_back(move))
        startable = [m for m in startable if self._first_seen[m.move_id]]
        if self._pacer.duty_percent < 100 and self._running:
            startable = []  # paced moves go one at a time; the running one's end wakes a round
        for vshard in [v for v, p in self.progress.items() if p.phase == "resting"]:
            del self.progress[vshard]  # re-marked below while they still wait here
        rest_s = self._pacer.wait_s(self._clock()) if startable else 0.0
        if rest_s > 0:
            self._wake_after(rest_s)
            for move in startable:  # `status` shows why they wait
                self.progress[move.vshard] = MoveProgress(move, phase="resting")
            startable = []
        for move in startable:
            self._running[move.vshard] = asyncio.ensure_future(self._run_move(move))
        await self._converge(engine)

    def _wake_after(self, delay_s: float) -> None:
        """A round once the pacer's rest is over (one timer at a time)."""
        if self._rest_timer is not None and not self._rest_timer.cancelled():
            self._rest_timer.cancel()
        self._rest_timer = asyncio.get_running_loop().call_later(delay_s, self.wake)

    async def _converge(self, engine: RaftEngine) -> None:
        """End the marks of moves no longer in flight, in the groups this node leads. Marks of
        a vShard whose move this node runs are left to it: once group 0 flipped the route, the
        mover's own activate and release are under way (when the mover ends, it wakes a round
        that ends what it left)."""
        marked: dict[int, dict[int, VShardMark]] = {}
        for group in self._metadata().routing.group_ids:
            if group == METADATA_GROUP_ID or engine.leader(group) != self._node_id:
                continue
            with contextlib.suppress(UnknownGroup):
                marks = {
                    v: mark
                    for v, mark in self._vshards.marks(group).items()
                    if v not in self._running
                }
                if marks:
                    marked[group] = marks
        if not marked:
            return
        state = self._metadata()
        if not any(
            converge(g, marks, state.routing, state.vshard_moves) for g, marks in marked.items()
        ):
            # Nothing to end as far as this node's group 0 knows (a source keeps its MOVED
            # marks, so most rounds see marks). What would end one is a group 0 change, and
            # its apply here wakes a round; the ReadIndex below is only for marks newer than it.
            return
        await engine.read_index(METADATA_GROUP_ID)  # group 0 as new as the marks, at least
        state = self._metadata()
        for group, marks in marked.items():
            for step in converge(group, marks, state.routing, state.vshard_moves):
                log.info(
                    "vshard %d: %s in group %d (move %d ended)",
                    step.vshard,
                    step.op,
                    group,
                    step.move_id,
                )
                await self._step(group, step)

    async def _step(self, group: int, step: Step) -> None:
        command = self._vshards.command(step.op, step.vshard, step.to_group, step.move_id)
        for result in await self._steps.propose(group, [command]):
            self._vshards.check(result)

    async def _roll_back(self, move: VShardMove) -> None:
        try:
            log.warning(
                "vshard %d: move %d from group %d to group %d rolled back: this node began "
                "leading group %d after the move began",
                move.vshard,
                move.move_id,
                move.source,
                move.target,
                move.source,
            )
            await self._abort(move, "the source group's leader changed during the move")
        finally:
            self._running.pop(move.vshard, None)

    async def _run_move(self, move: VShardMove) -> None:
        progress = MoveProgress(move)
        self.progress[move.vshard] = progress
        started = self._clock()
        try:
            await self._carry_out(move, progress)
        except (ClusterError, OSError) as e:
            progress.phase = "aborting"
            log.warning(
                "vshard %d: move %d from group %d to group %d aborted: %s",
                move.vshard,
                move.move_id,
                move.source,
                move.target,
                e,
            )
            await self._abort(move, str(e))
        finally:
            self._pacer.ended(started, self._clock())
            self.progress.pop(move.vshard, None)
            self._running.pop(move.vshard, None)
            # The vShard's next move may have been begun while this one was ending (the flip
            # answers requesters before the release): a round skipped it, so run one now
            # instead of on the next timed round.
            self.wake()

    async def _carry_out(self, move: VShardMove, progress: MoveProgress) -> None:
        v, s, t, move_id = move.vshard, move.source, move.target, move.move_id
        command = self._vshards.command
        progress.phase = "preparing"
        await self._checked(t, [command("incoming", v, s, move_id)])
        await self._checked_here(s, [command("track", v, t, move_id)])
        progress.phase = "copying"
        await self._import(move, progress, delta=False)
        progress.phase = "frozen"
        frozen_at = self._clock()
        await self._checked_here(s, [command("freeze", v, t, move_id)])
        froze_ms = (self._clock() - frozen_at) * 1000
        if self._frozen_delay_s:
            await asyncio.sleep(self._frozen_delay_s)  # the failpoint: a slow pause, on purpose
        await self._import(move, progress, delta=True)
        pause_s = self._clock() - frozen_at
        if pause_s > self._pause_budget_s:
            raise MoveAborted(
                f"the pause reached {pause_s * 1000:.0f} ms before the flip "
                f"(budget {self._pause_budget_s * 1000:.0f} ms)"
            )
        progress.phase = "flipping"
        flip_at = self._clock()
        refused = await self._propose_metadata(MetadataEntry((FinishVShardMove(v, move_id),)))
        flipped_at = self._clock()
        if refused is not None:
            raise MoveAborted(f"group 0 refused the flip: {refused}")
        # Committed: from here on the move is done whatever happens; converge ends the marks
        # if this node dies before the two steps below.
        progress.phase = "releasing"
        await asyncio.gather(
            self._checked(t, [command("activate", v, 0, move_id)]),
            self._checked_here(s, [command("release", v, t, move_id)]),
        )
        pause_ms = (self._clock() - frozen_at) * 1000
        log.info(
            "vshard %d moved from group %d to group %d (move %d, paused %.1f ms: freeze %.1f, "
            "delta %.1f, flip %.1f, release %.1f)",
            v,
            s,
            t,
            move_id,
            pause_ms,
            froze_ms,
            (flip_at - frozen_at) * 1000 - froze_ms,
            (flipped_at - flip_at) * 1000,
            (self._clock() - flipped_at) * 1000,
        )

    async def _import(self, move: VShardMove, progress: MoveProgress, *, delta: bool) -> None:
        chunks = self._vshards.export(move.source, move.vshard, move.move_id, delta)
        progress.chunks += len(chunks)
        for chunk in chunks:
            await self._checked(move.target, [chunk])
            progress.chunks_done += 1

    async def _checked(self, group: int, commands: list[bytes]) -> None:
        for result in await self._steps.propose(group, commands):
            self._vshards.check(result)

    async def _checked_here(self, group: int, commands: list[bytes]) -> None:
        """A step of the source group: only while this node still leads it (the export reads
        this node's replica, so the mover must be where the freeze applied first)."""
        engine = self._engine()
        if engine.leader(group) != self._node_id:
            raise MoveAborted(f"this node no longer leads group {group}")
        proposed = await engine.propose_batch(group, commands, kind="kv")
        for result in proposed.results:
            self._vshards.check(result)

    async def _abort(self, move: VShardMove, reason: str) -> None:
        """Group 0 first (so no flip can follow), then undo the marks; what fails here is left to
        `converge` on the next rounds."""
        entry = MetadataEntry((AbortVShardMove(move.vshard, move.move_id, reason[:500]),))
        try:
            refused = await self._propose_metadata(entry)
        except ClusterError as e:
            log.warning("vshard %d: abort not recorded yet (%s); next round", move.vshard, e)
            return
        if refused is not None:
            log.info("vshard %d: abort refused: %s", move.vshard, refused)
        self.wake()  # converge ends the marks by group 0's outcome, whichever it was
