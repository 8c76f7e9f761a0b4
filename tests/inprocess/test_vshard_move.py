"""A vShard moved between two data groups by hand, through the data plane's API (the steps the
mover runs: docs/KV.md, "vShard moves"), on 3 real nodes (in-process, real QUIC, real logs),
with a `Client` writing all along: nothing acknowledged is lost, nothing applies twice, clients
with stale routes are redirected, writes during the pause go through after it, and an aborted
move leaves the vShard where it was."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
from test_kv import formed
from test_kv_sessions import converged, leader_of

from nodedb_cluster import vshard_mover, wire
from nodedb_cluster.client import Client
from nodedb_cluster.errors import ClusterError, InvalidRequest, VShardMoved, VShardPaused
from nodedb_cluster.metadata.commands import AssignVShard, BeginVShardMove, MetadataEntry
from nodedb_cluster.node import Node
from nodedb_cluster.raft import (
    RaftEngine,
    kv_check_result,
    kv_put,
    kv_result,
    kv_session,
    kv_vshard_command,
)
from nodedb_cluster.routing import vshard_for_key
from nodedb_cluster.transport import Insecure

CALL_BOUND_S = 10.0
WRITERS = 4


@pytest.fixture
async def three(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[Node]]:
    """Three nodes whose movers run no timed rounds: the steps these tests drive by hand have
    no move in group 0, so a timed round would end their marks midway (a dead mover's, as far
    as it can tell). Rounds woken by group 0's moves still run."""
    monkeypatch.setattr(vshard_mover, "ROUND_INTERVAL_S", 3600.0)
    async with formed(tmp_path, num_groups=2) as nodes:
        yield nodes


async def engine_of(nodes: list[Node], group: int) -> RaftEngine:
    engine = (await leader_of(nodes, group)).engine
    assert engine is not None
    return engine


MOVE_ID = 7
"""The move id of the moves below (group 0 hands them out; here the test does)."""


async def step(nodes: list[Node], group: int, op: str, vshard: int, other: int = 0) -> None:
    """One vShard step of move MOVE_ID proposed to `group` (through its leader), checked."""
    engine = await engine_of(nodes, group)
    command = kv_vshard_command(op, vshard, other, MOVE_ID)
    done = await engine.propose_batch(group, [command], kind="kv")
    kv_check_result(done.results[0])


async def copy(nodes: list[Node], source: int, target: int, vshard: int, delta: bool) -> int:
    """The source leader's export proposed to the target; the number of chunks."""
    chunks = (await engine_of(nodes, source)).kv_vshard_export(source, vshard, MOVE_ID, delta, 256)
    target_engine = await engine_of(nodes, target)
    for chunk in chunks:
        done = await target_engine.propose_batch(target, [chunk], kind="kv")
        kv_check_result(done.results[0])
    return len(chunks)


def keys_of(vshard: int, n: int, prefix: bytes) -> list[bytes]:
    out: list[bytes] = []
    i = 0
    while len(out) < n:
        key = prefix + b":%d" % i
        if vshard_for_key(key) == vshard:
            out.append(key)
        i += 1
    return out


class Writers:
    """Clients writing keys of the vShard in a loop; each remembers what was acknowledged."""

    def __init__(self, client: Client, keys: list[bytes]) -> None:
        self.client = client
        self.keys = keys
        self.acked: dict[bytes, bytes] = {}
        self.errors: list[BaseException] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run(w)) for w in range(WRITERS)]

    async def _run(self, w: int) -> None:
        n = 0
        while not self._stop.is_set():
            key = self.keys[(w + n * WRITERS) % len(self.keys)]
            value = b"w%d-%d" % (w, n)
            try:
                await self.client.put(key, value, timeout_s=CALL_BOUND_S)
            except Exception as e:
                self.errors.append(e)
                return
            self.acked[key] = value
            n += 1

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), CALL_BOUND_S * 2)


async def test_a_moved_vshard_keeps_every_write_and_redirects_clients(three: list[Node]) -> None:
    routing = three[0].metadata.routing
    vshard = next(v for v in range(1024) if routing.group_for_vshard(v) == 1)
    source, target = 1, 2
    keys = keys_of(vshard, 40, b"mv")
    addrs = [str(n.config.listen_addr) for n in three]
    async with (
        Client(addrs, Insecure()) as writer,
        Client(addrs, Insecure()) as stale,
    ):
        for key in keys:
            await writer.put(key, b"before")
        # A session write applied at the source before the move, then overwritten there: its
        # retry at the target after the move must answer its first result, not apply again.
        s_engine = await engine_of(three, source)
        retried = [kv_session(0x5E55, 1, 1, kv_put(keys[0], b"session-write"))]
        first = await s_engine.propose_batch(source, retried, kind="kv")
        await writer.put(keys[0], b"overwritten")

        writers = Writers(writer, keys[4:])
        await step(three, target, "incoming", vshard, source)
        await step(three, source, "track", vshard, target)
        bulk = await copy(three, source, target, vshard, delta=False)
        assert bulk > 1, "256-byte chunks"
        await step(three, source, "freeze", vshard, target)
        # Writes during the pause wait it out (Paused, retried) and land after it.
        during = asyncio.create_task(writer.put(keys[1], b"during-pause", timeout_s=CALL_BOUND_S))
        await asyncio.sleep(0.05)  # let it meet the pause at least once
        assert not during.done(), "paused, not refused"
        await copy(three, source, target, vshard, delta=True)
        # The flip, as group 0 records it; then the target serves v and the source lets go.
        assert (
            await three[0].propose_metadata(MetadataEntry((AssignVShard(vshard, target),))) is None
        )
        await step(three, target, "activate", vshard)
        await step(three, source, "release", vshard, target)
        await asyncio.wait_for(during, CALL_BOUND_S)
        await asyncio.sleep(0.2)  # the writers keep going through the new route for a while
        await writers.stop()
        assert writers.errors == []
        assert writers.acked, "the writers wrote"

        # Every acknowledged write is at the target; the source holds nothing of v.
        expected = {keys[0]: b"overwritten", keys[1]: b"during-pause"} | writers.acked
        assert stale.group_of(keys[0]) == source, "its routing is from before the flip"
        for key, value in expected.items():
            assert await writer.get(key) == value, key
            # A client with a stale route is redirected (Moved) and served by the target.
            assert await stale.get(key) == value, key
        assert stale.group_of(keys[0]) == target, "the Moved answer re-routed it"
        # ... and made it fetch a fresh table in the background.
        deadline = time.monotonic() + CALL_BOUND_S
        while stale.routing.group_for_vshard(vshard) != target:
            assert time.monotonic() < deadline, "no fresh routing table"
            await asyncio.sleep(0.01)  # the refresh has no event of its own: poll, bounded
        await stale.put(keys[2], b"through-a-stale-route")
        t_engine = await engine_of(three, target)
        await t_engine.read_index(target)
        assert t_engine.kv_get(target, keys[2]) == b"through-a-stale-route"
        await converged(three, source)
        for node in three:
            assert node.engine is not None
            assert vshard not in {v for v, _, _ in node.engine.kv_vshard_stats(source)}
            assert all(node.engine.kv_get(source, k) is None for k in keys)
        assert s_engine.kv_vshard_states(source) == {vshard: ("moved", target, MOVE_ID)}
        assert t_engine.kv_vshard_states(target) == {}

        retry = await t_engine.propose_batch(target, retried, kind="kv")
        assert kv_result(retry.results[0]) == kv_result(first.results[0]) == ("ok", None)
        assert await writer.get(keys[0]) == b"overwritten", "the retry did not apply again"
        # The source answers commands on v with Moved, never applying them.
        moved = await s_engine.propose_batch(source, [kv_put(keys[3], b"x")], kind="kv")
        with pytest.raises(VShardMoved) as info:
            kv_check_result(moved.results[0])
        assert info.value.group_id == target
        await converged(three, source)
        await converged(three, target)


async def unmarked(nodes: list[Node], *groups: int) -> None:
    """`groups` converged, and no vShard of theirs is marked on any node."""
    for group in groups:
        await converged(nodes, group)
    for node in nodes:
        assert node.engine is not None
        for group in groups:
            assert node.engine.kv_vshard_states(group) == {}


async def test_an_aborted_move_leaves_the_vshard_at_its_source(three: list[Node]) -> None:
    routing = three[0].metadata.routing
    vshard = next(v for v in range(1024) if routing.group_for_vshard(v) == 2)
    source, target = 2, 1
    keys = keys_of(vshard, 20, b"ab")
    addrs = [str(n.config.listen_addr) for n in three]
    async with Client(addrs, Insecure()) as client:
        for key in keys:
            await client.put(key, b"v-" + key)
        await step(three, target, "incoming", vshard, source)
        await step(three, source, "track", vshard, target)
        await copy(three, source, target, vshard, delta=False)
        await step(three, source, "freeze", vshard, target)
        t_engine = await engine_of(three, target)
        paused = await t_engine.propose_batch(target, [kv_put(keys[0], b"x")], kind="kv")
        with pytest.raises(VShardPaused):
            kv_check_result(paused.results[0])
        during = asyncio.create_task(client.put(keys[0], b"after-abort", timeout_s=CALL_BOUND_S))
        await asyncio.sleep(0.05)
        assert not during.done()
        await requesters_see_refusals_only_when_they_announce_them(three, source, keys[1])
        late = (await engine_of(three, source)).kv_vshard_export(
            source, vshard, MOVE_ID, False, 1 << 20
        )
        # Abort (the pause budget ran out): the source serves v again, the target lets go.
        await step(three, source, "unfreeze", vshard)
        await step(three, target, "drop", vshard)
        await asyncio.wait_for(during, CALL_BOUND_S)
        assert await client.get(keys[0]) == b"after-abort"
        for key in keys[1:]:
            assert await client.get(key) == b"v-" + key
        await unmarked(three, source, target)
        await t_engine.read_index(target)
        assert all(t_engine.kv_get(target, k) is None for k in keys)
        # A late chunk of the aborted move is refused, never applied.
        refused = await t_engine.propose_batch(target, late, kind="kv")
        for result in refused.results:
            with pytest.raises(InvalidRequest, match="not incoming"):
                kv_check_result(result)
        with pytest.raises(InvalidRequest, match="plain"):
            await copy(three, source, target, vshard, delta=False)


STALE_FENCE = 1000
"""A move id above any group 0 hands out in these tests."""
MOVE_END_S = 10.0
"""A mover's move begun in group 0 has ended (finished or aborted) within this."""


async def test_a_move_refused_as_stale_at_the_target_aborts_once(
    three: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    """The target's fence is above the move group 0 begins (a later move of the vShard applied
    a step there): the mover's first step is refused as stale, and the mover aborts the move
    once (group 0 records the abort, nothing is retried), leaving every key at the source."""
    routing = three[0].metadata.routing
    vshard = next(v for v in range(1024) if routing.group_for_vshard(v) == 1)
    source, target = 1, 2
    keys = keys_of(vshard, 10, b"st")
    addrs = [str(n.config.listen_addr) for n in three]
    async with Client(addrs, Insecure()) as client:
        for key in keys:
            await client.put(key, b"v-" + key)
        t_engine = await engine_of(three, target)
        for op in ("incoming", "drop"):
            command = kv_vshard_command(op, vshard, source, STALE_FENCE)
            done = await t_engine.propose_batch(target, [command], kind="kv")
            kv_check_result(done.results[0])
        caplog.set_level(logging.INFO, logger="nodedb_cluster.vshard_mover")
        begin = BeginVShardMove(vshard, source, target, 1)
        assert await three[0].propose_metadata(MetadataEntry((begin,))) is None
        deadline = time.monotonic() + MOVE_END_S
        while any(n.metadata.vshard_moves.get(vshard) is not None for n in three):
            assert time.monotonic() < deadline, "the move did not end"
            await asyncio.sleep(0.05)  # group 0's local state: no event to await, bounded
        assert all(n.metadata.routing.group_for_vshard(vshard) == source for n in three)
        aborted = [r for r in caplog.records if "aborted" in r.getMessage()]
        assert len(aborted) == 1, [r.getMessage() for r in aborted]
        assert "refused as stale" in aborted[0].getMessage()
        for key in keys:
            assert await client.get(key) == b"v-" + key
        await unmarked(three, source, target)


async def test_back_to_back_moves_of_a_vshard_start_at_once(
    three: list[Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A move begun while the vShard's previous move is still ending (its flip is applied, its
    release not yet) starts as soon as that one ends, not on the mover's next timed round
    (made an hour here, so a missed wake fails the bound)."""
    monkeypatch.setattr(vshard_mover, "ROUND_INTERVAL_S", 3600.0)
    routing = three[0].metadata.routing
    vshard = next(v for v in range(1024) if routing.group_for_vshard(v) == 1)
    keys = keys_of(vshard, 10, b"bb")
    addrs = [str(n.config.listen_addr) for n in three]
    async with Client(addrs, Insecure()) as client:
        for key in keys:
            await client.put(key, b"v-" + key)
        for n in range(6):
            source, target = (1, 2) if n % 2 == 0 else (2, 1)
            await begin_move(three, vshard, source, target)
            await move_ended(three, vshard, target, MOVE_END_S)
        for key in keys:
            assert await client.get(key) == b"v-" + key


async def shown_resting(mover: Node, vshard: int) -> None:
    """Until `mover` shows its move of `vshard` resting (bounded)."""
    deadline = time.monotonic() + MOVE_END_S
    while (progress := mover.vshard_mover.progress.get(vshard)) is None or (
        progress.phase != "resting"
    ):
        assert time.monotonic() < deadline, f"the move of vshard {vshard} is not shown resting"
        await asyncio.sleep(0.005)  # the mover's local state: no event to await, bounded


async def begin_move(nodes: list[Node], vshard: int, source: int, target: int) -> None:
    begin = BeginVShardMove(vshard, source, target, 1)
    assert await nodes[0].propose_metadata(MetadataEntry((begin,))) is None


async def move_ended(nodes: list[Node], vshard: int, target: int, bound_s: float) -> None:
    """Group 0 (as node 1 applied it) shows the move over with `vshard` in `target`."""
    deadline = time.monotonic() + bound_s
    while (
        nodes[0].metadata.vshard_moves.get(vshard) is not None
        or nodes[0].metadata.routing.group_for_vshard(vshard) != target
    ):
        assert time.monotonic() < deadline, f"the move of vshard {vshard} did not end"
        await asyncio.sleep(0.005)  # group 0's local state: no event to await, bounded


async def test_a_node_rests_between_its_moves_and_status_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Moves are background work: after a move that took d, the next move of the same node
    starts d x (100 / duty - 1) later (duty 1 %: 99 d; the 2 s cap lifted so a loaded host's
    slow test steps cannot outlast the rest), shown as "resting" meanwhile. Each move is held
    30 ms once frozen (failpoint), so the rest is at least 3 s on any host."""
    monkeypatch.setattr(vshard_mover, "MOVE_REST_MAX_S", 3600.0)
    monkeypatch.setenv(vshard_mover.FAILPOINT_FROZEN_DELAY_MS, "30")
    async with formed(tmp_path, num_groups=2, vshard_move_duty_percent=1) as nodes:
        routing = nodes[0].metadata.routing
        first, second = [v for v in range(1024) if routing.group_for_vshard(v) == 1][:2]
        mover = await leader_of(nodes, 1)
        await begin_move(nodes, first, 1, 2)
        await move_ended(nodes, first, 2, MOVE_END_S)
        deadline = time.monotonic() + MOVE_END_S
        while mover.vshard_mover.progress.get(first) is not None:  # its mover has timed it
            assert time.monotonic() < deadline, "the first move's mover did not finish"
            await asyncio.sleep(0.005)  # the mover's local state: no event to await, bounded
        ended = time.monotonic()
        # The rest is the first move's measured time x 99 (the 30 ms hold plus a few ms of Raft
        # rounds on a fast host, more on a slow one): read it from the mover.
        rest_s = mover.vshard_mover.rest_left_s()
        assert rest_s > 0, "a move makes its node rest"
        await begin_move(nodes, second, 1, 2)
        await shown_resting(mover, second)
        status = await mover.status()
        assert next(m for m in status.vshard_moves if m[0] == second)[4] == "resting"
        await move_ended(nodes, second, 2, 60.0)
        assert time.monotonic() - ended >= rest_s, "the second move started after the rest"


async def test_a_move_whose_source_leader_changed_before_it_ran_is_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node that leads the source group when a move begins carries it out; a node that
    leads it only later rolls the move back instead of taking it over (the first mover may
    still be running: paused, or cut off), and every key stays where it was. The first move
    makes the leader rest (duty 1 %, no cap; held 100 ms once frozen, so at least 9.9 s on any
    host), and the second is seen resting there while leadership changes: each step is awaited
    (a leader transfer can fail, and the rest must not end before it lands)."""
    monkeypatch.setattr(vshard_mover, "MOVE_REST_MAX_S", 3600.0)
    monkeypatch.setenv(vshard_mover.FAILPOINT_FROZEN_DELAY_MS, "100")
    async with formed(tmp_path, num_groups=2, vshard_move_duty_percent=1) as nodes:
        routing = nodes[0].metadata.routing
        first, second = [v for v in range(1024) if routing.group_for_vshard(v) == 1][:2]
        keys = keys_of(second, 10, b"rb")
        for key in keys:
            await nodes[0].kv.put(key, b"v-" + key)
        mover = await leader_of(nodes, 1)
        await begin_move(nodes, first, 1, 2)
        await move_ended(nodes, first, 2, MOVE_END_S)
        await begin_move(nodes, second, 1, 2)
        await shown_resting(mover, second)
        heir = next(n for n in nodes if n is not mover)
        assert mover.engine is not None
        assert heir.engine is not None
        deadline = time.monotonic() + MOVE_END_S
        while heir.engine.leader(1) != heir.config.node_id:
            assert time.monotonic() < deadline, "group 1's leadership did not move"
            with contextlib.suppress(ClusterError):  # refused mid-change: asked again
                await mover.engine.transfer_leader(1, heir.config.node_id)
            await asyncio.sleep(0.05)  # leadership has no event to await here, bounded
        assert mover.vshard_mover.rest_left_s() > 0, "the leader moved within the rest"
        deadline = time.monotonic() + MOVE_END_S
        while nodes[0].metadata.vshard_moves.get(second) is not None:
            assert time.monotonic() < deadline, "the move was not rolled back"
            await asyncio.sleep(0.005)  # group 0's local state: no event to await, bounded
        assert all(n.metadata.routing.group_for_vshard(second) == 1 for n in nodes)
        for key in keys:
            assert await nodes[0].kv.get(key) == b"v-" + key
        for group in (1, 2):
            await converged(nodes, group)
            for node in nodes:
                assert node.engine is not None
                assert second not in node.engine.kv_vshard_states(group), "marks ended"


async def requesters_see_refusals_only_when_they_announce_them(
    nodes: list[Node], group: int, key: bytes
) -> None:
    """`key`'s vShard is frozen in `group`: a requester with `caps` 1 gets the per-item
    refusal; one without (every requester before vShard moves) gets an unknown outcome for the
    group's share, which it retries, never a value or an absence."""
    leader = await leader_of(nodes, group)
    sender = next(n for n in nodes if n is not leader)
    command = kv_put(key, b"x")

    async def ask(doc: dict[str, object]) -> dict[str, object]:
        kind, payload = await sender.transport.send_rpc(
            leader.config.node_id,
            wire.MessageKind.KV_REQUEST,
            bytes(msgpack.packb(doc, use_bin_type=True)),
        )
        assert kind == wire.MessageKind.KV_RESPONSE
        reply = msgpack.unpackb(payload, raw=False)
        assert isinstance(reply, dict)
        return reply

    propose: dict[str, object] = {"op": "propose_many", "gs": [group], "cmds": [command]}
    read: dict[str, object] = {"op": "read_many", "gs": [group], "keys": [key]}
    assert await ask(propose) == {"r": [None], "unk": [group]}
    assert await ask(read) == {"r": [None], "unk": [group]}
    new = await ask({**propose, "caps": 1})
    assert kv_result(new["r"][0]) == ("paused", None)  # type: ignore[index]
    assert await ask({**read, "caps": 1}) == {"r": [None], "vsp": [0]}


async def test_bad_steps_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="unknown vshard op"):
        kv_vshard_command("teleport", 1, 0, 1)
    with pytest.raises(ValueError, match=r"not in 0\.\.1024"):
        kv_vshard_command("track", 1024, 2, 1)
    with pytest.raises(ValueError, match=r"not in 0\.\.1024"):
        kv_vshard_command("track", -1, 2, 1)
    assert kv_vshard_command("freeze", 3, 2, 1) != kv_vshard_command("freeze", 3, 1, 1)
    assert kv_vshard_command("freeze", 3, 2, 1) != kv_vshard_command("freeze", 3, 2, 2)
