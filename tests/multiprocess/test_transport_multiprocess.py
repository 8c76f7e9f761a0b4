"""Transports in separate OS processes (tests/support/transport_server.py is the peer).

Goal: the claims that are about processes hold with real processes: RPCs under mTLS across
processes, refusal of another CA and of an insecure client, and survival of a peer that is killed
(SIGKILL) and restarted on the same port while this node keeps running. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

import support
from nodedb_cluster.errors import HandshakeError, RemoteError
from nodedb_cluster.transport import Insecure, Mtls, Transport, generate_cluster_credentials
from nodedb_cluster.wire import JoinRequest, MessageKind

pytestmark = pytest.mark.multiprocess

SERVER = support.DIR / "transport_server.py"
START_TIMEOUT_SECS = 20.0


@asynccontextmanager
async def peer_process(
    listen: str, credentials: Mtls
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Start the helper; yield (process, bound address); always reap it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SERVER),
        "1",
        listen,
        str(credentials.ca),
        str(credentials.cert),
        str(credentials.key),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(START_TIMEOUT_SECS):
            line = (await proc.stdout.readline()).decode().split()
        assert line, "helper exited before it was ready"
        assert line[0] == "READY", f"helper did not start: {line!r}"
        yield proc, line[1]
    finally:
        if proc.returncode is None:
            proc.kill()
        async with asyncio.timeout(START_TIMEOUT_SECS):
            await proc.wait()


@pytest.fixture
def creds(tmp_path: Path) -> list[Mtls]:
    return generate_cluster_credentials(
        tmp_path, "mp", [("n1", ["127.0.0.1"]), ("n2", ["127.0.0.1"])]
    )


async def test_rpcs_across_processes_under_mtls(creds: list[Mtls]) -> None:
    async with (
        peer_process("127.0.0.1:0", creds[0]) as (_, addr),
        Transport(2, "127.0.0.1:0", creds[1]) as client,
    ):
        client.register_peer(1, addr, creds[0].spki_pin())
        assert await client.send_rpc(1, MessageKind.PING, b"hi") == (MessageKind.PONG, b"hi")
        payloads = [bytes([i]) * 64 for i in range(200)]
        replies = await asyncio.gather(*(client.send_rpc(1, MessageKind.PING, p) for p in payloads))
        assert [p for _, p in replies] == payloads
        # The helper's handler refuses joins: the error crosses the process boundary typed.
        join = JoinRequest(2, client.local_addr, 1, client.spki_pin).encode()
        with pytest.raises(RemoteError) as info:
            await client.send_rpc(1, MessageKind.JOIN_REQUEST, join)
        assert info.value.code == "ValueError"
        assert client.metrics()["connections_opened"] == 1


async def test_other_ca_and_insecure_clients_are_refused(tmp_path: Path, creds: list[Mtls]) -> None:
    (tmp_path / "other").mkdir()
    stranger = generate_cluster_credentials(tmp_path / "other", "x", [("s", ["127.0.0.1"])])[0]
    async with peer_process("127.0.0.1:0", creds[0]) as (_, addr):
        async with Transport(3, "127.0.0.1:0", stranger) as client:
            with pytest.raises(HandshakeError) as info:
                await client.send_rpc_to_addr(addr, MessageKind.PING, b"")
            assert "CA" in str(info.value)
        async with Transport(4, "127.0.0.1:0", Insecure()) as client:
            with pytest.raises(HandshakeError) as info:
                await client.send_rpc_to_addr(addr, MessageKind.PING, b"")
            assert "certificate required" in str(info.value)


async def test_peer_killed_and_restarted_on_the_same_port_is_reached_again(
    creds: list[Mtls],
) -> None:
    async with Transport(2, "127.0.0.1:0", creds[1], rpc_timeout=3.0) as client:
        async with peer_process("127.0.0.1:0", creds[0]) as (proc, addr):
            client.register_peer(1, addr, creds[0].spki_pin())
            assert await client.send_rpc(1, MessageKind.PING, b"1") == (MessageKind.PONG, b"1")
            proc.send_signal(signal.SIGKILL)
            async with asyncio.timeout(START_TIMEOUT_SECS):
                await proc.wait()
        async with peer_process(addr, creds[0]) as (_, again):
            assert again == addr
            # Same key → same stateless-reset key: the restarted peer resets the stale
            # connection and the client redials inside this very call.
            assert await client.send_rpc(1, MessageKind.PING, b"2") == (MessageKind.PONG, b"2")
        assert client.metrics()["connections_opened"] == 2
