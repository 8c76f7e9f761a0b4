"""Multi-Raft engine from Python, in one process: three engines, each on its own real QUIC
transport (127.0.0.1-3), in one asyncio loop. Claims: proposals (single and batch) resolve after
apply with per-entry results on the built-in KV groups; a Python state machine (group 0) gets
committed entries in batches, identically ordered on every node, and is snapshotted/restored;
errors are the typed classes of nodedb_cluster.errors.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nodedb_cluster.errors import (
    ConfigError,
    CorruptLog,
    EngineStopped,
    InvalidRequest,
    LeadershipLost,
    RaftNotLeader,
    UnknownGroup,
)
from nodedb_cluster.raft import (
    Proposed,
    RaftEngine,
    RaftSettings,
    StateMachine,
    kv_cas,
    kv_put,
    kv_result,
)
from nodedb_cluster.transport import Insecure, Transport

DEADLINE_S = 20.0
FAST = RaftSettings(tick_interval_ms=20)


@dataclass
class LogMachine:
    """A Python state machine recording every applied (index, payload) in order."""

    applied: list[tuple[int, bytes]] = field(default_factory=list)
    batches: int = 0

    def apply_batch(self, entries: list[tuple[int, bytes]]) -> list[bytes]:
        self.batches += 1
        self.applied.extend(entries)
        return [b"applied:" + data for _, data in entries]

    def snapshot(self) -> bytes:
        return b"".join(
            i.to_bytes(8, "little") + len(d).to_bytes(4, "little") + d for i, d in self.applied
        )

    def restore(self, data: bytes) -> None:
        out: list[tuple[int, bytes]] = []
        pos = 0
        while pos < len(data):
            i = int.from_bytes(data[pos : pos + 8], "little")
            n = int.from_bytes(data[pos + 8 : pos + 12], "little")
            out.append((i, data[pos + 12 : pos + 12 + n]))
            pos += 12 + n
        self.applied = out


@dataclass
class Node:
    node_id: int
    transport: Transport
    engine: RaftEngine
    machines: dict[int, LogMachine]


async def start_node(
    node_id: int,
    data_dir: Path,
    transport: Transport,
    settings: RaftSettings,
    machine: Callable[[], LogMachine] = LogMachine,
) -> Node:
    machines: dict[int, LogMachine] = {}

    def factory(group_id: int) -> StateMachine:
        machines[group_id] = machine()
        return machines[group_id]

    engine = RaftEngine(node_id, data_dir / f"n{node_id}", transport, factory, settings)
    return Node(node_id, transport, engine, machines)


async def make_cluster(
    tmp_path: Path, settings: RaftSettings, machine: Callable[[], LogMachine] = LogMachine
) -> list[Node]:
    transports = [Transport(i, f"127.0.0.{i}:0", Insecure()) for i in (1, 2, 3)]
    for t in transports:
        for u in transports:
            t.register_peer(u.node_id, u.local_addr)
    return [await start_node(t.node_id, tmp_path, t, settings, machine) for t in transports]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[list[Node]]:
    nodes = await make_cluster(tmp_path, FAST)
    yield nodes
    for n in nodes:
        await n.engine.close()
        await n.transport.close()


POLL_S = 0.01
POLLS_MAX = int(DEADLINE_S / POLL_S)


async def leader_of(nodes: list[Node], group_id: int) -> Node:
    """Polls status: leadership changes have no event to await from Python. Bounded."""
    for _ in range(POLLS_MAX):
        for n in nodes:
            if (await n.engine.status(group_id)).role == "leader":
                return n
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"no leader of group {group_id} within {DEADLINE_S} s")


async def until(pred: Callable[[], bool], what: str) -> None:
    """Polls `pred`: another node's apply has no event here. Bounded."""
    for _ in range(POLLS_MAX):
        if pred():
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"not within {DEADLINE_S} s: {what}")


async def test_kv_groups_replicate_with_results_and_identical_state(cluster: list[Node]) -> None:
    voters = [1, 2, 3]
    for n in cluster:
        for g in range(1, 9):
            await n.engine.add_group(g, voters, "kv")
    for g in range(1, 9):
        leader = await leader_of(cluster, g)
        out = await leader.engine.propose(g, kv_put(b"k", b"v%d" % g))
        assert kv_result(out.result) == ("ok", None)
        batch = await leader.engine.propose_batch(
            g, [kv_put(b"a", b"1"), kv_cas(b"a", b"0", b"2"), kv_cas(b"a", b"1", b"3")]
        )
        assert batch.index > out.index
        assert [kv_result(r)[0] for r in batch.results] == ["ok", "cas_mismatch", "ok"]
        assert await leader.engine.kv_read(g, b"a") == b"3"
    for g in range(1, 9):
        await until(
            lambda g=g: len({n.engine.kv_digest(g) for n in cluster}) == 1,
            f"group {g} converges",
        )
    m = cluster[0].engine.metrics()
    assert m["inbound_decode_errors"] == 0
    # Every group's status in one request, as the one-group request answers it.
    engine = cluster[0].engine
    all_groups = await engine.statuses()
    assert [s.group_id for s in all_groups] == await engine.groups()
    for s in all_groups:
        one = await engine.status(s.group_id)
        assert (s.voters, s.learners, s.term) == (one.voters, one.learners, one.term)


async def test_python_state_machine_gets_batches_in_the_same_order_everywhere(
    cluster: list[Node],
) -> None:
    for n in cluster:
        await n.engine.add_group(0, [1, 2, 3], "python")
    leader = await leader_of(cluster, 0)
    results = await asyncio.gather(*(leader.engine.propose(0, b"cmd-%d" % i) for i in range(200)))
    assert all(r.result == b"applied:cmd-%d" % i for i, r in enumerate(results))
    await until(lambda: all(len(n.machines[0].applied) == 200 for n in cluster), "all applied")
    sequences = [n.machines[0].applied for n in cluster]
    assert sequences[0] == sequences[1] == sequences[2]
    # 200 concurrent proposals arrive in far fewer apply calls (batched per round).
    assert leader.machines[0].batches < 200


async def test_proposals_made_together_get_an_entry_and_an_index_each(
    cluster: list[Node],
) -> None:
    """`propose_each` (the embedding API's queue): one crossing, but every command its own
    entry, so the host's apply sees one index per command; a follower refuses each one."""
    for n in cluster:
        await n.engine.add_group(0, [1, 2, 3], "python")
    leader = await leader_of(cluster, 0)
    commands = [b"cmd-%d" % i for i in range(20)]
    done = await leader.engine.propose_each(0, commands, kind="python")
    assert all(isinstance(d, Proposed) for d in done)
    indexes = [d.index for d in done if isinstance(d, Proposed)]
    assert indexes == list(range(indexes[0], indexes[0] + 20))
    results = [d.result for d in done if isinstance(d, Proposed)]
    assert results == [b"applied:" + c for c in commands]
    await until(lambda: all(len(n.machines[0].applied) == 20 for n in cluster), "all applied")
    assert leader.machines[0].applied == list(zip(indexes, commands, strict=True))
    follower = next(n for n in cluster if n is not leader)
    refused = await follower.engine.propose_each(0, [b"x", b"y"], kind="python")
    assert all(isinstance(r, RaftNotLeader) for r in refused)
    assert (await follower.engine.propose_each(0, [], kind="python")) == []


async def test_a_proposal_no_entry_can_hold_is_refused_and_the_engine_goes_on(
    cluster: list[Node],
) -> None:
    """70,000 commands were committed everywhere and applied as nothing; a 70 MB command
    stopped the leader's engine (its log refused the record)."""
    for n in cluster:
        await n.engine.add_group(0, [1, 2, 3], "python")
    leader = await leader_of(cluster, 0)
    with pytest.raises(InvalidRequest, match="at most 65536"):
        await leader.engine.propose_batch(0, [b"c"] * 70_000)
    with pytest.raises(InvalidRequest, match="one frame to a follower"):
        await leader.engine.propose(0, b"x" * (70 << 20))
    after = await leader.engine.propose(0, b"after")
    await until(lambda: all(len(n.machines[0].applied) == 1 for n in cluster), "all applied")
    assert leader.machines[0].applied == [(after.index, b"after")]


async def test_typed_errors(cluster: list[Node]) -> None:
    for n in cluster:
        await n.engine.add_group(1, [1, 2, 3], "kv")
    leader = await leader_of(cluster, 1)
    follower = next(n for n in cluster if n is not leader)
    await leader.engine.propose(1, kv_put(b"x", b"1"))
    with pytest.raises(RaftNotLeader) as e:
        await follower.engine.propose(1, kv_put(b"x", b"2"))
    assert e.value.leader_id == leader.node_id
    assert e.value.retryable
    with pytest.raises(UnknownGroup):
        await leader.engine.propose(77, b"x")
    with pytest.raises(ConfigError):
        await leader.engine.add_group(0, [1, 2, 3], "kv")
    with pytest.raises(ConfigError):
        await leader.engine.propose(1, b"x", timeout_ms=0)
    # A follower can serve a linearizable read (ReadIndex forwarded to the leader).
    idx = await follower.engine.read_index(1)
    assert idx >= 1
    assert follower.engine.kv_get(1, b"x") == b"1"


async def test_closed_engine_fails_typed(tmp_path: Path) -> None:
    t = Transport(1, "127.0.0.1:0", Insecure())
    t.register_peer(1, t.local_addr)
    n = await start_node(1, tmp_path, t, FAST)
    await n.engine.add_group(1, [1], "kv")
    await leader_of([n], 1)
    await n.engine.close()
    with pytest.raises(EngineStopped):
        await n.engine.propose(1, kv_put(b"k", b"v"))
    await t.close()


@dataclass
class DecodingMachine(LogMachine):
    """Decodes a received snapshot off the driver thread and only swaps it in on it."""

    decoded_on: list[int] = field(default_factory=list)
    applied_on: set[int] = field(default_factory=set)
    installs: int = 0

    def apply_batch(self, entries: list[tuple[int, bytes]]) -> list[bytes]:
        self.applied_on.add(threading.get_ident())
        return super().apply_batch(entries)

    def decode_snapshot(self, data: bytes) -> LogMachine:
        self.decoded_on.append(threading.get_ident())
        decoded = LogMachine()
        decoded.restore(data)
        return decoded

    def install(self, state: LogMachine) -> None:
        self.installs += 1
        self.applied = state.applied

    def restore(self, data: bytes) -> None:
        if self.applied:  # a restart restores into an empty machine; a transfer must not
            raise AssertionError("a received snapshot went to restore(), not install()")
        super().restore(data)


@pytest.mark.parametrize("machine", [LogMachine, DecodingMachine])
async def test_python_group_snapshot_is_sent_in_chunks_to_a_lagging_peer(
    tmp_path: Path, machine: Callable[[], LogMachine]
) -> None:
    """With `decode_snapshot` and `install`, the lagging node decodes the snapshot on the
    engine's snapshot thread, not on the driver thread that applies, and swaps it in."""
    settings = RaftSettings(
        tick_interval_ms=20, snapshot_threshold_entries=50, install_snapshot_chunk_bytes=1024
    )
    nodes = await make_cluster(tmp_path, settings, machine)
    try:
        for n in nodes:
            await n.engine.add_group(0, [1, 2, 3], "python")
        leader = await leader_of(nodes, 0)
        lagger = next(n for n in nodes if n is not leader)
        # Cut the lagging node off, write past two snapshot thresholds, then let it back in.
        for n in nodes:
            if n is not lagger:
                n.transport.unregister_peer(lagger.node_id)
        for i in range(150):
            await leader.engine.propose(0, b"entry-%03d-" % i + b"x" * 40)
        assert (await leader.engine.status(0)).snapshot_index > 0
        for n in nodes:
            if n is not lagger:
                n.transport.register_peer(lagger.node_id, lagger.transport.local_addr)
        await until(lambda: len(lagger.machines[0].applied) == 150, "lagger catches up")
        assert lagger.machines[0].applied == leader.machines[0].applied
        assert lagger.engine.metrics()["snapshots_installed"] >= 1
        got = lagger.machines[0]
        if isinstance(got, DecodingMachine):
            assert got.installs >= 1
            assert got.decoded_on
            assert got.applied_on
            assert not got.applied_on.intersection(got.decoded_on), "decoded on the driver"
    finally:
        for n in nodes:
            await n.engine.close()
            await n.transport.close()


async def test_python_state_machine_restores_from_its_snapshot_on_restart(tmp_path: Path) -> None:
    t = Transport(1, "127.0.0.1:0", Insecure())
    t.register_peer(1, t.local_addr)
    n = await start_node(1, tmp_path, t, FAST)
    await n.engine.add_group(0, [1], "python")
    await leader_of([n], 0)
    for i in range(30):
        await n.engine.propose(0, b"e%d" % i)
    await n.engine.snapshot_now(0)
    for i in range(30, 40):
        await n.engine.propose(0, b"e%d" % i)
    before = list(n.machines[0].applied)
    await n.engine.close()
    # Same data_dir, new engine: restore() from the snapshot, then the log after it re-applies.
    n2 = await start_node(1, tmp_path, t, FAST)
    await until(lambda: len(n2.machines[0].applied) == 40, "restart re-applies the log tail")
    assert n2.machines[0].applied == before
    status = await n2.engine.status(0)
    assert status.snapshot_index > 0
    await n2.engine.close()
    await t.close()


@dataclass
class ViewMachine(LogMachine):
    """Captures its state on the driver thread and serializes it on the snapshot thread,
    where the writer waits until the test releases it."""

    writing: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    view_indexes: list[int] = field(default_factory=list)

    def snapshot_view(self) -> Callable[[], bytes]:
        captured = LogMachine(list(self.applied))
        self.view_indexes.append(self.applied[-1][0] if self.applied else 0)

        def write() -> bytes:
            self.writing.set()
            self.release.wait(DEADLINE_S)
            return captured.snapshot()

        return write


async def test_a_python_snapshot_view_is_written_while_the_engine_goes_on_applying(
    tmp_path: Path,
) -> None:
    """A host state that takes long to serialize: with `snapshot_view` its writer runs on the
    snapshot thread, and the driver goes on committing and applying (it used to call
    `snapshot()` itself, stopping every group's ticks for as long). The snapshot holds the
    state as of the view, and a restart restores it and applies the log after it."""
    settings = RaftSettings(tick_interval_ms=20, snapshot_threshold_entries=20)
    t = Transport(1, "127.0.0.1:0", Insecure())
    t.register_peer(1, t.local_addr)
    n = await start_node(1, tmp_path, t, settings, ViewMachine)
    await n.engine.add_group(0, [1], "python")
    await leader_of([n], 0)
    machine = n.machines[0]
    assert isinstance(machine, ViewMachine)
    first = (await n.engine.status(0)).snapshot_index  # the group's founding snapshot
    written = 0
    while not machine.writing.is_set():
        assert written < 200, "no snapshot view taken"
        await n.engine.propose(0, b"e%d" % written)
        written += 1
    # The writer is held on the snapshot thread: proposals still commit and apply.
    for i in range(written, written + 40):
        await asyncio.wait_for(n.engine.propose(0, b"e%d" % i), 5.0)
    assert len(machine.applied) == written + 40
    assert (await n.engine.status(0)).snapshot_index == first, "not written yet"
    machine.release.set()
    for _ in range(POLLS_MAX):
        if (snapshot_index := (await n.engine.status(0)).snapshot_index) > first:
            break
        await asyncio.sleep(POLL_S)
    viewed = machine.view_indexes[0]
    assert first < viewed < machine.applied[-1][0], "captured before the later entries"
    assert snapshot_index >= viewed
    before = list(machine.applied)
    await n.engine.close()
    again = await start_node(1, tmp_path, t, settings, ViewMachine)
    await until(lambda: again.machines[0].applied == before, "restart restores and re-applies")
    await again.engine.close()
    await t.close()


async def test_sole_voter_campaigns_at_once_and_leader_reports_matched(tmp_path: Path) -> None:
    t = Transport(1, "127.0.0.1:0", Insecure())
    t.register_peer(1, t.local_addr)
    # A long election timeout: without campaign() the group would stay leaderless for seconds.
    n = await start_node(1, tmp_path, t, RaftSettings(tick_interval_ms=1000))
    try:
        await n.engine.add_group(1, [1], "kv")
        await n.engine.campaign(1)
        out = await n.engine.propose(1, kv_put(b"k", b"v"), timeout_ms=900)
        s = await n.engine.status(1)
        assert s.role == "leader"
        assert dict(s.matched)[1] >= out.index
        assert s.voters_outgoing == ()
    finally:
        await n.engine.close()
        await t.close()


async def test_corrupt_log_refuses_to_start_naming_file_and_offset(tmp_path: Path) -> None:
    t = Transport(1, "127.0.0.1:0", Insecure())
    t.register_peer(1, t.local_addr)
    n = await start_node(1, tmp_path, t, FAST)
    await n.engine.add_group(1, [1], "kv")
    await n.engine.campaign(1)
    for i in range(200):
        await n.engine.propose(1, kv_put(b"k%d" % i, b"v" * 100))
    await n.engine.close()
    segments = sorted((tmp_path / "n1" / "raft").glob("*.wal"))
    assert segments, "the engine writes its log under data_dir/raft"
    first = segments[0]
    data = bytearray(first.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0xFF
    first.write_bytes(bytes(data))
    try:
        with pytest.raises(CorruptLog) as e:
            await start_node(1, tmp_path, t, FAST)
        assert e.value.path.endswith(first.name)
        assert 0 < e.value.offset <= middle
    finally:
        await t.close()


@dataclass
class ExplodingMachine(LogMachine):
    """Raises on one payload while `broken`: the host's own store failed mid-batch."""

    broken: bool = True

    def apply_batch(self, entries: list[tuple[int, bytes]]) -> list[bytes]:
        if self.broken and any(data == b"boom" for _, data in entries):
            raise OSError(5, "the host's store failed")
        return super().apply_batch(entries)


async def test_a_raising_python_state_machine_stops_the_engine_and_applies_after_restart(
    tmp_path: Path,
) -> None:
    """Moving on after a raise would leave this replica's state unknown (batch boundaries
    differ between replicas): the engine stops, naming the group, the entries and the raise,
    and a restart with the store repaired applies the committed entry once."""
    machines: list[ExplodingMachine] = []

    def factory(_group: int) -> StateMachine:
        machines.append(ExplodingMachine())
        return machines[-1]

    t = Transport(1, "127.0.0.1:0", Insecure())
    t.register_peer(1, t.local_addr)
    engine = RaftEngine(1, tmp_path / "n1", t, factory, FAST)
    try:
        await engine.add_group(0, [1], "python")
        await engine.campaign(0)
        before = await engine.propose(0, b"before")
        # Committed, its apply failed: it applies after the restart below, so its outcome is
        # unknown to the proposer, never a plain failure a retry would apply twice.
        with pytest.raises(LeadershipLost):
            await engine.propose(0, b"boom")
        async with asyncio.timeout(DEADLINE_S):
            reason = await engine.wait_stopped()
        assert f"state machine of g0 failed to apply entries {before.index + 1}..=" in reason
        assert "OSError: [Errno 5] the host's store failed" in reason
        assert "test_raft.py:" in reason
        assert "in apply_batch" in reason
        assert "differ from the other replicas" in reason
        assert machines[0].applied == [(before.index, b"before")], "nothing after is applied"
        with pytest.raises(EngineStopped):
            await engine.propose(0, b"after")
    finally:
        await engine.close()
    repaired = await start_node(1, tmp_path, t, FAST)
    try:
        await until(
            lambda: [d for _, d in repaired.machines[0].applied] == [b"before", b"boom"],
            "the restarted engine applies the committed entry",
        )
        after = await repaired.engine.propose(0, b"after")
        assert after.result == b"applied:after"
        assert [d for _, d in repaired.machines[0].applied] == [b"before", b"boom", b"after"]
    finally:
        await repaired.engine.close()
        await t.close()


class TextMachine(LogMachine):
    """Returns text, not bytes: a bug in the host's machine."""

    def apply_batch(self, entries: list[tuple[int, bytes]]) -> list[bytes]:
        return ["applied" for _ in entries]  # type: ignore[misc]


class NoneMachine(LogMachine):
    """Forgets its return: a bug in the host's machine."""

    def apply_batch(self, entries: list[tuple[int, bytes]]) -> list[bytes]:
        return None  # type: ignore[return-value]


class ShortMachine(LogMachine):
    """Returns no result at all."""

    def apply_batch(self, entries: list[tuple[int, bytes]]) -> list[bytes]:
        return []


@pytest.mark.parametrize(
    ("machine", "why"),
    [
        (TextMachine, "apply_batch's result 0 is a str, not bytes (one bytes per command)"),
        (NoneMachine, "apply_batch returned a NoneType, not a list of bytes"),
        (ShortMachine, "0 results for 1 commands"),
    ],
)
async def test_a_python_state_machine_with_wrong_results_stops_the_engine(
    tmp_path: Path, machine: Callable[[], StateMachine], why: str
) -> None:
    t = Transport(1, "127.0.0.1:0", Insecure())
    t.register_peer(1, t.local_addr)
    engine = RaftEngine(1, tmp_path / "n1", t, lambda _g: machine(), FAST)
    try:
        await engine.add_group(0, [1], "python")
        await engine.campaign(0)
        with pytest.raises(LeadershipLost):  # committed, not applied here: outcome unknown
            await engine.propose(0, b"x")
        async with asyncio.timeout(DEADLINE_S):
            reason = await engine.wait_stopped()
        assert "state machine of g0 failed to apply entries" in reason
        assert why in reason
    finally:
        await engine.close()
        await t.close()


async def test_garbage_raft_frames_are_counted_and_dropped(cluster: list[Node]) -> None:
    for n in cluster:
        await n.engine.add_group(1, [1, 2, 3], "kv")
    leader = await leader_of(cluster, 1)
    victim = next(n for n in cluster if n is not leader)
    sender = next(n for n in cluster if n is not victim)
    for kind in (16, 17, 18):  # RaftBatch, SnapshotChunk, SnapshotAck
        await sender.transport.send_oneway(victim.node_id, kind, b"\x01garbage")
    await until(lambda: victim.engine.metrics()["inbound_decode_errors"] == 3, "garbage counted")
    # The group goes on.
    await leader.engine.propose(1, kv_put(b"after", b"1"))
    assert await victim.engine.kv_read(1, b"after") == b"1"
