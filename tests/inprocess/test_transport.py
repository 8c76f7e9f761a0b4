"""The QUIC transport driven from asyncio, two transports in one process on 127.0.0.1.

Goal: every capability of the Python API behaves as documented over real sockets: round trips,
many in flight on one connection, typed errors (Timeout, Unreachable, HandshakeError, FrameError,
RemoteError, UnknownPeer, TransportClosed), refusals (other CA, insecure vs mTLS, pin), garbage on a
live stream, one-way frames, port release on close, and an event loop that never blocks.
Every wait is bounded by the transport's own timeouts or `asyncio.timeout`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nodedb_cluster.errors import (
    BindError,
    CredentialsError,
    FrameError,
    HandshakeError,
    InvalidAddress,
    RemoteError,
    Timeout,
    TransportClosed,
    UnknownPeer,
    Unreachable,
)
from nodedb_cluster.transport import (
    Insecure,
    Mtls,
    Peer,
    Reply,
    Transport,
    ca_key_path,
    generate_cluster_credentials,
    issue_node_credentials,
    revoke_node_credentials,
)
from nodedb_cluster.wire import MessageKind, encode_frame

LOCAL = "127.0.0.1:0"


async def echo(peer: Peer, kind: int, payload: bytes) -> Reply:
    return (MessageKind.PONG, payload)


@pytest.fixture
def creds(tmp_path: Path) -> list[Mtls]:
    nodes = [(f"n{i}", ["127.0.0.1"]) for i in range(1, 4)]
    return generate_cluster_credentials(tmp_path, "test", nodes)


@pytest.fixture
async def pair(creds: list[Mtls]) -> AsyncIterator[tuple[Transport, Transport]]:
    server = Transport(1, LOCAL, creds[0], rpc_timeout=2.0)
    client = Transport(2, LOCAL, creds[1], rpc_timeout=2.0)
    server.serve(echo)
    client.register_peer(1, server.local_addr, server.spki_pin)
    yield server, client
    await client.close()
    await server.close()


async def test_round_trip_and_many_in_flight_on_one_connection(
    pair: tuple[Transport, Transport],
) -> None:
    server, client = pair
    assert await client.send_rpc(1, MessageKind.PING, b"hello") == (MessageKind.PONG, b"hello")
    payloads = [i.to_bytes(4, "little") * 16 for i in range(300)]
    replies = await asyncio.gather(*(client.send_rpc(1, MessageKind.PING, p) for p in payloads))
    assert [payload for _, payload in replies] == payloads
    many = await client.send_rpc_many(1, MessageKind.PING, payloads)
    assert [payload for _, payload in many] == payloads
    metrics = client.metrics()
    assert metrics["rpcs_sent"] == 601
    assert metrics["connections_opened"] == 1, "one connection per peer, reused"
    assert server.metrics()["rpcs_received"] == 601


async def test_handler_sees_the_peer_and_its_pin(creds: list[Mtls]) -> None:
    seen: list[tuple[str, bytes | None]] = []

    async def record(peer: Peer, kind: int, payload: bytes) -> Reply:
        seen.append((peer.addr, peer.spki_pin))
        return (MessageKind.PONG, b"")

    async with Transport(1, LOCAL, creds[0]) as server, Transport(2, LOCAL, creds[1]) as client:
        server.serve(record)
        await client.send_rpc_to_addr(server.local_addr, MessageKind.PING, b"")
    assert seen == [(client.local_addr, creds[1].spki_pin())]


async def test_handler_exception_becomes_remote_error(pair: tuple[Transport, Transport]) -> None:
    server, client = pair

    class Refused(Exception):
        code = "refused"

    async def refuse(peer: Peer, kind: int, payload: bytes) -> Reply:
        raise Refused("no thanks")

    server.serve(refuse)
    with pytest.raises(RemoteError) as info:
        await client.send_rpc(1, MessageKind.JOIN_REQUEST, b"")
    assert (info.value.code, info.value.message) == ("refused", "no thanks")

    async def bad_shape(peer: Peer, kind: int, payload: bytes) -> Reply:
        return (999, b"")  # not a kind

    server.serve(bad_shape)
    with pytest.raises(RemoteError) as info:
        await client.send_rpc(1, MessageKind.PING, b"")
    assert info.value.code == "bad_handler_reply"
    assert server.metrics()["handler_errors"] == 2


async def test_a_peers_failing_requests_are_logged_once_per_interval(
    pair: tuple[Transport, Transport], caplog: pytest.LogCaptureFixture
) -> None:
    """Found by an attack probe: each malformed control payload from a client certificate was
    a WARNING line (500 in 0.2 s). One line per peer, kind and error class per 10 s, the rest
    counted into the next; every request still gets its error."""
    server, client = pair

    async def malformed(peer: Peer, kind: int, payload: bytes) -> Reply:
        raise ValueError(f"cannot decode {payload!r}")

    server.serve(malformed)
    caplog.set_level(logging.WARNING, logger="nodedb_cluster.transport")
    for i in range(30):
        with pytest.raises(RemoteError):
            await client.send_rpc(1, MessageKind.PING, bytes([i]))
    lines = [r for r in caplog.records if "raised" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert server.metrics()["handler_errors"] == 30


async def test_handlers_that_suspend_reply_and_fail_like_immediate_ones(
    pair: tuple[Transport, Transport],
) -> None:
    server, client = pair

    async def later(peer: Peer, kind: int, payload: bytes) -> Reply:
        for _ in range(3):  # suspend several times: the handler continues in a Task
            await asyncio.sleep(0)
        if payload == b"fail":
            raise LookupError("after suspending")
        return (MessageKind.PONG, payload[::-1])

    server.serve(later)
    assert await client.send_rpc(1, MessageKind.PING, b"abc") == (MessageKind.PONG, b"cba")
    with pytest.raises(RemoteError) as info:
        await client.send_rpc(1, MessageKind.PING, b"fail")
    assert info.value.code == "LookupError"
    replies = await asyncio.gather(*(client.send_rpc(1, 1, bytes([i])) for i in range(50)))
    assert [p for _, p in replies] == [bytes([i]) for i in range(50)]


async def test_slow_handler_times_out_typed_and_bounded(creds: list[Mtls]) -> None:
    release = asyncio.Event()

    async def stall(peer: Peer, kind: int, payload: bytes) -> Reply:
        await release.wait()
        return (MessageKind.PONG, b"")

    async with (
        Transport(1, LOCAL, creds[0]) as server,
        Transport(2, LOCAL, creds[1], rpc_timeout=0.3) as client,
    ):
        server.serve(stall)
        started = time.monotonic()
        with pytest.raises(Timeout) as info:
            await client.send_rpc_to_addr(server.local_addr, MessageKind.PING, b"")
        assert info.value.timeout_ms == 300
        assert time.monotonic() - started < 1.5
        release.set()
        assert client.metrics()["errors.timeout"] == 1


async def test_silent_address_times_out_and_unknown_peer_is_typed(creds: list[Mtls]) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{silent.getsockname()[1]}"
        async with Transport(2, LOCAL, creds[1], rpc_timeout=0.3) as client:
            with pytest.raises(Timeout):
                await client.send_rpc_to_addr(addr, MessageKind.PING, b"")
            with pytest.raises(UnknownPeer):
                await client.send_rpc(77, MessageKind.PING, b"")
            with pytest.raises(InvalidAddress):
                client.register_peer(5, "not-an-address")
            with pytest.raises(FrameError):
                await client.send_rpc_to_addr(addr, 999, b"")


async def test_event_loop_keeps_running_while_requests_wait(creds: list[Mtls]) -> None:
    release = asyncio.Event()

    async def stall(peer: Peer, kind: int, payload: bytes) -> Reply:
        await release.wait()
        return (MessageKind.PONG, payload)

    async with Transport(1, LOCAL, creds[0]) as server, Transport(2, LOCAL, creds[1]) as client:
        server.serve(stall)
        pending = asyncio.ensure_future(
            client.send_rpc_to_addr(server.local_addr, MessageKind.PING, b"x")
        )
        ticks = 0
        for _ in range(50):  # the loop turns while the request is outstanding
            await asyncio.sleep(0)
            ticks += 1
        assert not pending.done()
        assert ticks == 50
        release.set()
        async with asyncio.timeout(5):
            assert await pending == (MessageKind.PONG, b"x")


async def test_another_ca_is_refused_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ours = generate_cluster_credentials(tmp_path / "a", "a", [("n1", ["127.0.0.1"])])[0]
    theirs = generate_cluster_credentials(tmp_path / "b", "b", [("n2", ["127.0.0.1"])])[0]
    async with Transport(1, LOCAL, ours) as server, Transport(2, LOCAL, theirs) as client:
        server.serve(echo)
        with pytest.raises(HandshakeError) as info:
            await client.send_rpc_to_addr(server.local_addr, MessageKind.PING, b"")
        assert "is not issued by the CA we trust" in str(info.value)
        assert client.metrics()["errors.handshake"] == 1


async def test_insecure_and_mtls_refuse_each_other(
    creds: list[Mtls], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="nodedb_cluster.transport")
    insecure = Transport(2, LOCAL, Insecure())
    # A client endpoint (it never serves) does not warn: its user asked for --insecure.
    assert "INSECURE" not in caplog.text
    assert insecure.metrics()["insecure"] == 1
    assert insecure.metrics()["insecure_transports_total"] >= 1
    async with Transport(1, LOCAL, creds[0]) as secure, insecure:
        secure.serve(echo)
        insecure.serve(echo)  # answering strangers unauthenticated: say so
        assert "node 2: INSECURE transport" in caplog.text
        assert secure.metrics()["insecure"] == 0
        with pytest.raises(HandshakeError) as info:
            await insecure.send_rpc_to_addr(secure.local_addr, MessageKind.PING, b"")
        assert "certificate required" in str(info.value)
        with pytest.raises(HandshakeError) as info:
            await secure.send_rpc_to_addr(insecure.local_addr, MessageKind.PING, b"")
        assert "is not issued by the CA we trust" in str(info.value)


async def test_pin_mismatch_is_refused(creds: list[Mtls]) -> None:
    async with Transport(1, LOCAL, creds[0]) as server, Transport(2, LOCAL, creds[1]) as client:
        server.serve(echo)
        client.register_peer(1, server.local_addr, creds[2].spki_pin())
        with pytest.raises(HandshakeError) as info:
            await client.send_rpc(1, MessageKind.PING, b"")
        assert "SPKI pin" in str(info.value)
        client.register_peer(1, server.local_addr, creds[0].spki_pin())
        assert await client.send_rpc(1, MessageKind.PING, b"ok") == (MessageKind.PONG, b"ok")


async def test_garbage_on_a_live_stream_then_a_normal_rpc_on_the_same_connection(
    pair: tuple[Transport, Transport],
) -> None:
    server, client = pair
    addr = server.local_addr
    await client.send_rpc(1, MessageKind.PING, b"")
    connection = client.pooled_connection_id(addr)
    assert connection is not None
    garbage = [
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x01",
        encode_frame(MessageKind.PING, b"payload")[:-1] + b"?",
    ]
    for data in garbage:
        answer = await client.send_raw_for_tests(addr, data)
        assert isinstance(answer, int), "the server resets the stream instead of answering"
    metrics = server.metrics()
    assert metrics["decode_errors"] == 3
    assert metrics["decode_errors.wrong_version"] == 1
    assert metrics["decode_errors.too_short"] == 1
    assert metrics["decode_errors.checksum_mismatch"] == 1
    assert metrics["streams_reset"] == 3
    assert await client.send_rpc(1, MessageKind.PING, b"still fine") == (
        MessageKind.PONG,
        b"still fine",
    )
    assert client.pooled_connection_id(addr) == connection
    assert server.metrics()["connections_accepted"] == 1


async def test_oneway_frames_reach_the_python_handler(creds: list[Mtls]) -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue(maxsize=32)

    async def sink(peer: Peer, kind: int, payload: bytes) -> None:
        await received.put(payload)

    async with Transport(1, LOCAL, creds[0]) as server, Transport(2, LOCAL, creds[1]) as client:
        server.serve(sink)
        client.register_peer(1, server.local_addr)
        server.register_peer(2, client.local_addr)  # Raft frames are members only
        for i in range(10):
            await client.send_oneway(1, MessageKind.RAFT_BATCH, bytes([i]))
        got = set()
        async with asyncio.timeout(5):
            for _ in range(10):
                got.add(await received.get())
        assert got == {bytes([i]) for i in range(10)}
        assert server.metrics()["oneway_received"] == 10


async def test_rust_echo_handler_takes_precedence_over_python(
    pair: tuple[Transport, Transport],
) -> None:
    server, client = pair

    async def never(peer: Peer, kind: int, payload: bytes) -> Reply:
        raise AssertionError("the Rust handler answers Ping")

    server.serve(never)
    server.register_echo_handler(MessageKind.PING)
    assert await client.send_rpc(1, MessageKind.PING, b"r") == (MessageKind.PONG, b"r")


async def test_close_releases_the_port_at_once(creds: list[Mtls]) -> None:
    first = Transport(1, LOCAL, creds[0])
    addr = first.local_addr
    with pytest.raises(BindError):
        Transport(9, addr, creds[0])
    await first.close()
    await first.close()  # idempotent
    assert first.closed
    with pytest.raises(TransportClosed):
        await first.send_rpc_to_addr(addr, MessageKind.PING, b"")
    second = Transport(1, addr, creds[0])
    assert second.local_addr == addr
    await second.close()


async def test_restarted_peer_is_reached_again(creds: list[Mtls]) -> None:
    server = Transport(1, LOCAL, creds[0])
    server.serve(echo)
    addr = server.local_addr
    async with Transport(2, LOCAL, creds[1]) as client:
        client.register_peer(1, addr, server.spki_pin)
        await client.send_rpc(1, MessageKind.PING, b"")
        await server.close()
        restarted = Transport(1, addr, creds[0])
        restarted.serve(echo)
        assert await client.send_rpc(1, MessageKind.PING, b"back") == (MessageKind.PONG, b"back")
        assert client.metrics()["connections_opened"] == 2
        await restarted.close()


def test_credentials_files_are_private_and_issuable(tmp_path: Path, creds: list[Mtls]) -> None:
    for path in [creds[0].ca, creds[0].cert, creds[0].key, ca_key_path(tmp_path)]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    ca_key = ca_key_path(tmp_path)
    later = issue_node_credentials(creds[0].ca, ca_key, "n9", ["127.0.0.1"], tmp_path)
    assert len(later.spki_pin()) == 32
    assert later.spki_pin() != creds[0].spki_pin()
    junk = tmp_path / "junk.pem"
    junk.write_text("nope")
    with pytest.raises(CredentialsError):
        Transport(1, LOCAL, Mtls(junk, junk, junk))


async def test_dropping_an_unclosed_transport_frees_its_port(creds: list[Mtls]) -> None:
    import gc

    lost = Transport(1, LOCAL, creds[0])
    addr = lost.local_addr
    del lost
    gc.collect()
    again = Transport(1, addr, creds[0])  # would raise BindError if the socket were still held
    await again.close()


async def test_send_rpc_many_raises_the_first_error_and_serve_none_unplugs(
    pair: tuple[Transport, Transport],
) -> None:
    server, client = pair

    async def picky(peer: Peer, kind: int, payload: bytes) -> Reply:
        if payload == b"bad":
            raise ValueError("bad payload")
        return (MessageKind.PONG, payload)

    server.serve(picky)
    with pytest.raises(RemoteError) as info:
        await client.send_rpc_many(1, MessageKind.PING, [b"a", b"bad", b"c"])
    assert info.value.code == "ValueError"
    assert await client.send_rpc_many(1, MessageKind.PING, []) == []
    server.serve(None)
    with pytest.raises(RemoteError) as info:
        await client.send_rpc(1, MessageKind.PING, b"")
    assert info.value.code == "no_handler"
    async with asyncio.timeout(5):
        await client.probe_bridge()  # the loop bridge round trip itself completes


async def test_a_revoked_leaf_is_refused(tmp_path: Path, creds: list[Mtls]) -> None:
    crl = revoke_node_credentials(
        creds[0].ca, ca_key_path(tmp_path), [creds[1].cert], tmp_path / "r.crl"
    ).path
    server_creds, revoked_creds, fine_creds = (dataclasses.replace(c, crls=(crl,)) for c in creds)
    async with (
        Transport(1, LOCAL, server_creds) as server,
        Transport(2, LOCAL, revoked_creds) as revoked,
        Transport(3, LOCAL, fine_creds) as fine,
    ):
        server.serve(echo)
        with pytest.raises(HandshakeError) as info:
            await revoked.send_rpc_to_addr(server.local_addr, MessageKind.PING, b"")
        assert "revoked" in str(info.value)
        assert await fine.send_rpc_to_addr(server.local_addr, MessageKind.PING, b"ok") == (
            MessageKind.PONG,
            b"ok",
        )


async def test_peer_closing_mid_request_is_unreachable(creds: list[Mtls]) -> None:
    entered = asyncio.Event()

    async def stall(peer: Peer, kind: int, payload: bytes) -> Reply:
        entered.set()
        await asyncio.Event().wait()  # never answers; cancelled by close()
        raise AssertionError("unreachable")

    server = Transport(1, LOCAL, creds[0])
    server.serve(stall)
    async with Transport(2, LOCAL, creds[1]) as client:
        pending = asyncio.ensure_future(
            client.send_rpc_to_addr(server.local_addr, MessageKind.PING, b"")
        )
        async with asyncio.timeout(5):
            await entered.wait()
        await server.close()
        with pytest.raises(Unreachable) as info:
            async with asyncio.timeout(5):
                await pending
        assert "closed" in str(info.value)
        assert client.metrics()["errors.unreachable"] == 1


def test_a_transport_belongs_to_the_first_loop_that_uses_it(creds: list[Mtls]) -> None:
    transport = Transport(1, LOCAL, creds[0])

    async def use() -> None:
        await transport.probe_bridge()

    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(use())
        with pytest.raises(RuntimeError, match="another event loop"):
            asyncio.run(use())
        first.run_until_complete(transport.close())
    finally:
        first.close()


WORKERS_PROBE = """
import asyncio, os, sys, time
from nodedb_cluster.transport import Insecure, Transport

def workers() -> int:
    tasks = os.listdir("/proc/self/task")
    names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks]
    return sum(n == "nodedb-transpor" for n in names)

async def main() -> None:
    expected = int(sys.argv[1])
    async with Transport(1, "127.0.0.1:0", Insecure()):
        # A new thread takes its name when it starts running: poll (bounded) until the
        # expected count shows, then check that no further worker appears.
        deadline = time.monotonic() + 5.0
        while workers() < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        print(workers())

asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("value", "cpus", "workers"), [("1", None, 1), ("3", None, 3), ("3", 1, 3), (None, 1, 1)]
)
def test_transport_workers_follow_the_environment_and_the_host(
    value: str | None, cpus: int | None, workers: int
) -> None:
    """The override wins; without it a process limited to 1 CPU (a small host) gets one
    worker. The larger-host default is the pure rule's (`cargo test -p nodedb-transport`)."""
    env = {k: v for k, v in os.environ.items() if k != "NODEDB_TRANSPORT_WORKERS"}
    if value is not None:
        env["NODEDB_TRANSPORT_WORKERS"] = value
    allowed = sorted(os.sched_getaffinity(0))
    out = subprocess.run(
        [sys.executable, "-c", WORKERS_PROBE, str(workers)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, allowed[:cpus]),
    )
    assert int(out.stdout.strip()) == workers


def test_a_bad_transport_worker_count_is_refused_naming_the_variable() -> None:
    env = {**os.environ, "NODEDB_TRANSPORT_WORKERS": "0"}
    out = subprocess.run(
        [sys.executable, "-c", WORKERS_PROBE, "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode != 0
    assert "NODEDB_TRANSPORT_WORKERS" in out.stderr
