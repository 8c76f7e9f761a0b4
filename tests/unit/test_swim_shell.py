"""The SWIM shell (`SwimNode`) on a loopback UDP socket, against the attack probe's findings 6
and 7 (session 30): nothing but `close` stops SWIM, and datagrams from sender ids outside the
topology are dropped and logged at a bounded rate.

Method: one `SwimNode` seeded with one peer, node 2, which is a plain socket the test reads; the
test waits for what the node sends (bounded waits on a queue, never a sleep) and injects datagrams
made with the secret."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

from nodedb_cluster.addr import SocketAddr, parse_socket_addr
from nodedb_cluster.clock import Clock, ManualClock
from nodedb_cluster.membership import Codec, MemberState, SwimConfig, SwimNode
from nodedb_cluster.membership.codec import U64_MAX, Message, MessageKind, Update
from nodedb_cluster.membership.shell import LOG_INTERVAL_MS
from support.raft_cluster import free_udp_addr

SECRET = b"test-cluster-secret-0123456789"
FAST = SwimConfig(probe_interval_ms=50, probe_timeout_ms=25, suspicion_min_ms=10_000)
CODEC = Codec(SECRET, FAST.datagram_bytes_max)
WAIT_S = 5.0
LOGGER = "nodedb_cluster.membership.shell"


class _Peer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[Message] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.received.put_nowait(CODEC.decode(data))


class Rig:
    def __init__(
        self, node: SwimNode, peer: _Peer, peer_addr: SocketAddr, sock: asyncio.DatagramTransport
    ) -> None:
        self.node, self.peer, self.peer_addr, self._sock = node, peer, peer_addr, sock

    def send(self, msg: Message) -> None:
        """A datagram made with the secret, from the peer's socket to the node."""
        self._sock.sendto(CODEC.encode(msg), self.node.addr.as_tuple())

    async def next_from_node(self, kind: MessageKind) -> Message:
        """The next datagram of `kind` the node sends the peer (bounded wait)."""
        async with asyncio.timeout(WAIT_S):
            while True:
                msg = await self.peer.received.get()
                if msg.kind is kind:
                    return msg


@contextlib.asynccontextmanager
async def started(clock: Clock | None = None) -> AsyncIterator[Rig]:
    loop = asyncio.get_running_loop()
    sock, peer = await loop.create_datagram_endpoint(_Peer, local_addr=("127.0.0.1", 0))
    host, port = sock.get_extra_info("sockname")[:2]
    peer_addr = parse_socket_addr(f"{host}:{port}")
    node = SwimNode(1, parse_socket_addr(free_udp_addr("127.0.0.1")), FAST, SECRET, clock=clock)
    await node.start([(2, peer_addr)])
    try:
        yield Rig(node, peer, peer_addr, sock)
    finally:
        await node.close(leave=False)
        sock.close()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with started() as r:
        yield r


def handled(node: SwimNode, count: int) -> asyncio.Event:
    """Set once the node's machine has taken `count` more datagrams."""
    machine = node._machine
    inner = machine.on_datagram
    done = asyncio.Event()
    seen = 0

    def counting(data: bytes, src: SocketAddr, now_ms: int) -> list[object]:
        nonlocal seen
        try:
            return inner(data, src, now_ms)  # type: ignore[return-value]
        finally:
            seen += 1
            if seen >= count:
                done.set()

    machine.on_datagram = counting  # type: ignore[method-assign,assignment]
    return done


async def test_a_raise_in_a_timer_tick_is_logged_and_swim_keeps_probing(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    machine = rig.node._machine
    real_tick = machine.tick
    calls = 0

    def tick_failing_once(now_ms: int) -> list[object]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected")
        return real_tick(now_ms)  # type: ignore[return-value]

    machine.tick = tick_failing_once  # type: ignore[method-assign,assignment]
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        # The shell used to leave its timer unarmed after a raise: no tick, no probe, ever again.
        await rig.next_from_node(MessageKind.PING)
    assert calls >= 2
    assert rig.node.metrics()["handler_errors"] == 1
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert "SWIM failed on a timer tick" in record.getMessage()
    assert record.exc_info is not None


async def test_a_raise_in_the_datagram_handler_is_logged_and_swim_keeps_answering(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    machine = rig.node._machine
    real = machine.on_datagram
    calls = 0

    def failing_once(data: bytes, src: SocketAddr, now_ms: int) -> list[object]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected")
        return real(data, src, now_ms)  # type: ignore[return-value]

    machine.on_datagram = failing_once  # type: ignore[method-assign,assignment]
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        rig.send(Message(MessageKind.PING, 11, 2))
        rig.send(Message(MessageKind.PING, 12, 2))
        ack = await rig.next_from_node(MessageKind.ACK)
    assert ack.seq == 12
    assert rig.node.metrics()["handler_errors"] == 1
    assert any("SWIM failed on a datagram" in r.getMessage() for r in caplog.records)


async def test_a_forged_claim_at_the_top_incarnation_does_not_stop_swim(rig: Rig) -> None:
    # The attack probe's datagram: "node 1 DEAD at 2^64 - 1". Node 1 refuses it (and used to
    # overflow the codec in its refutation, which stopped its SWIM for good).
    top = Update(1, rig.node.addr, MemberState.DEAD, U64_MAX)
    rig.send(Message(MessageKind.PING, 21, 2, (top,)))
    ack = await rig.next_from_node(MessageKind.ACK)
    assert ack.seq == 21
    start = rig.node.incarnation
    assert start < U64_MAX
    # One below the top is refuted at the top: the refutation encodes and goes out.
    near = Update(1, rig.node.addr, MemberState.DEAD, U64_MAX - 1)
    rig.send(Message(MessageKind.PING, 22, 2, (near,)))
    alive = Update(1, rig.node.addr, MemberState.ALIVE, U64_MAX)
    async with asyncio.timeout(WAIT_S):
        while alive not in (await rig.next_from_node(MessageKind.PING)).updates:
            pass
    assert rig.node.incarnation == U64_MAX
    # And it keeps probing (a fresh nonce each time).
    seqs = {(await rig.next_from_node(MessageKind.PING)).seq for _ in range(3)}
    assert len(seqs) == 3
    metrics = rig.node.metrics()
    assert metrics["updates_dropped_unrefutable"] == 1
    assert metrics["handler_errors"] == 0


async def test_unknown_senders_are_dropped_and_logged_at_a_bounded_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()  # moved by hand: the log interval passes without waiting for it
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        async with started(clock) as rig:
            done = handled(rig.node, 5)
            for seq in range(5):
                rig.send(Message(MessageKind.PING, seq, 99))
            async with asyncio.timeout(WAIT_S):
                await done.wait()
            lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
            assert len(lines) == 1
            assert "node id 99" in lines[0]
            assert str(rig.peer_addr) in lines[0]
            clock.advance(LOG_INTERVAL_MS)
            done = handled(rig.node, 1)
            rig.send(Message(MessageKind.PING, 6, 99))
            async with asyncio.timeout(WAIT_S):
                await done.wait()
            lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
            assert len(lines) == 2
            assert "4 more like it" in lines[1]
            assert [m.node_id for m in rig.node.members()] == [2]
            assert rig.node.metrics()["dropped_unknown_sender"] == 6
