"""The loop bridge across `close()` (`nodedb_cluster.loop_bridge`): every call made before or
after a core closes settles, and the loop stops watching the core's bridge once none is owed.

A completion pushed after the loop stopped watching never settled its future: a node whose
engine stopped during its restart, while the restart awaited an engine call, hung for good
instead of exiting (CI, session 18). The KV client's calls that outlive `close` are in
test_client_core.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nodedb_cluster.errors import ClusterError, EngineStopped, Timeout, TransportClosed
from nodedb_cluster.raft import RaftEngine, RaftSettings
from nodedb_cluster.transport import Insecure, Peer, Transport
from nodedb_cluster.wire import MessageKind

SETTLE_BOUND_S = 5.0
FAILPOINT = "NODEDB_FAILPOINT_DRIVER_PANIC_AFTER_MS"
FAST = RaftSettings(tick_interval_ms=20)


def _watched(fd: int) -> bool:
    """Whether the running loop watches `fd` (removing a reader says whether there was one)."""
    return asyncio.get_running_loop().remove_reader(fd)


def _engine(tmp_path: Path) -> tuple[Transport, RaftEngine]:
    t = Transport(1, "127.0.0.1:0", Insecure())
    t.register_peer(1, t.local_addr)
    t.register_peer(2, "127.0.0.2:9")  # never runs: a group with it as voter has no quorum
    return t, RaftEngine(1, tmp_path / "n1", t, None, FAST)


async def test_engine_calls_in_flight_at_close_settle_and_the_bridge_is_let_go(
    tmp_path: Path,
) -> None:
    t, engine = _engine(tmp_path)
    await engine.add_group(1, [1, 2], "kv")
    epoch, _ = engine.leaders()
    calls = [
        asyncio.ensure_future(engine.read_index(1, 30_000)),
        asyncio.ensure_future(engine.wait_leaders_changed(epoch, 30_000)),
        *(asyncio.ensure_future(engine.statuses()) for _ in range(8)),
    ]
    await asyncio.sleep(0)  # every call is with the engine
    await engine.close()
    async with asyncio.timeout(SETTLE_BOUND_S):
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(outcomes[0], EngineStopped), outcomes[0]
    assert outcomes[1] == epoch
    assert all(isinstance(o, (list, EngineStopped)) for o in outcomes[2:]), outcomes
    assert engine._core.calls_unresolved == 0
    assert not _watched(engine._core.bridge_fd())
    # A call after close is still answered, and the bridge let go again.
    with pytest.raises(EngineStopped):
        await asyncio.wait_for(engine.groups(), SETTLE_BOUND_S)
    assert not _watched(engine._core.bridge_fd())
    await t.close()


async def test_an_engine_call_past_its_timeout_settles_once_and_is_not_owed(
    tmp_path: Path,
) -> None:
    """A reply raced by its timer (the engine's proposals and reads): the timer's Timeout
    settles the call, and the call the reply would have settled is no longer owed."""
    t, engine = _engine(tmp_path)
    await engine.add_group(1, [1, 2], "kv")  # no quorum: the read waits for a leader
    with pytest.raises(Timeout):
        await asyncio.wait_for(engine.read_index(1, 200), SETTLE_BOUND_S)
    assert engine._core.calls_unresolved == 0
    await engine.close()
    assert not _watched(engine._core.bridge_fd())
    await t.close()


async def test_calls_back_to_back_while_the_engine_stops_itself_all_settle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the node does: the engine stops on its own (a driver panic), a watcher closes it, and
    a restart's calls keep coming meanwhile. Repeated: the interleaving varies each time."""
    monkeypatch.setenv(FAILPOINT, "30")
    for attempt in range(10):
        t, engine = _engine(tmp_path / str(attempt))

        async def restart_calls(engine: RaftEngine = engine) -> ClusterError:
            while True:
                try:
                    await engine.groups()
                    await engine.statuses()
                except ClusterError as e:
                    return e

        async def watcher(engine: RaftEngine = engine) -> None:
            await engine.wait_stopped()
            await engine.close()

        callers = [asyncio.ensure_future(restart_calls()) for _ in range(3)]
        async with asyncio.timeout(SETTLE_BOUND_S):
            await watcher()
            errors = await asyncio.gather(*callers)
        assert all(isinstance(err, EngineStopped) for err in errors), errors
        assert all("driver thread panicked" in str(err) for err in errors), errors
        assert engine._core.calls_unresolved == 0
        assert not _watched(engine._core.bridge_fd())
        await t.close()


async def test_a_transport_rpc_in_flight_at_close_settles_and_the_bridge_is_let_go() -> None:
    server = Transport(2, "127.0.0.2:0", Insecure())
    arrived, answer = asyncio.Event(), asyncio.Event()

    async def slow(peer: Peer, kind: int, payload: bytes) -> tuple[int, bytes]:
        arrived.set()
        await answer.wait()
        return (MessageKind.PONG, payload)

    server.serve(slow)
    client = Transport(1, "127.0.0.1:0", Insecure())
    call = asyncio.ensure_future(client.send_rpc_to_addr(server.local_addr, MessageKind.PING, b"x"))
    await asyncio.wait_for(arrived.wait(), SETTLE_BOUND_S)
    await client.close()
    answer.set()
    with pytest.raises(TransportClosed):
        await asyncio.wait_for(call, SETTLE_BOUND_S)
    assert client._core.calls_unresolved == 0
    assert not _watched(client._core.bridge_fd())
    with pytest.raises(TransportClosed):
        await client.send_rpc_to_addr(server.local_addr, MessageKind.PING, b"")
    assert not _watched(client._core.bridge_fd())
    await server.close()
