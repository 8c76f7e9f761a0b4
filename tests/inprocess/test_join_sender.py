"""`join_sender`: how a node sends its JoinRequests (docs/JOIN.md "Join (client side)": straight to
the address, no pooled connection, bounded by the rpc timeout), over real QUIC on 127.0.0.x.

Goal: every request goes on a connection dialled for it alone (the seed accepts one connection per
request; the joiner's pool stays empty, and a pooled connection that exists is neither used nor
replaced), and every failure (unreachable seed, wrong reply kind, undecodable reply, error reply)
becomes a `SendFailed` outcome within the rpc timeout. With `run_join` it follows a redirect from
one real seed to another.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from nodedb_cluster import wire
from nodedb_cluster.addr import SocketAddr, parse_socket_addr
from nodedb_cluster.errors import ClusterError
from nodedb_cluster.formation.join_client import (
    Rejected,
    SendFailed,
    join_sender,
    run_join,
)
from nodedb_cluster.formation.leader_hint import format_not_leader
from nodedb_cluster.formation.retry import JoinRetryPolicy
from nodedb_cluster.lifecycle import LifecycleTracker
from nodedb_cluster.transport import Insecure, Peer, Reply, Transport
from support.raft_cluster import free_udp_addr

RPC_TIMEOUT_S = 0.5
REQUEST = wire.JoinRequest(
    node_id=9, listen_addr="127.0.0.9:9400", wire_version=wire.WIRE_VERSION, spki_pin=None
)


class Seed:
    """A real transport answering JOIN_REQUEST with a fixed reply (None: an error reply); records
    the node ids asking."""

    def __init__(self, host: str, reply: Reply | None) -> None:
        self.transport = Transport(1, free_udp_addr(host), Insecure(), rpc_timeout=RPC_TIMEOUT_S)
        self.reply = reply
        self.asked: list[int] = []
        self.transport.serve(self._handle)

    @property
    def addr(self) -> SocketAddr:
        return parse_socket_addr(self.transport.local_addr)

    async def _handle(self, peer: Peer, kind: int, payload: bytes) -> Reply:
        if kind == wire.MessageKind.JOIN_REQUEST:
            self.asked.append(wire.JoinRequest.decode(payload).node_id)
        if self.reply is None:
            raise ClusterError("seed failed")
        return self.reply

    def accepted(self) -> int:
        return self.transport.metrics()["connections_accepted"]


def answer(response: wire.JoinResponse) -> Reply:
    return wire.MessageKind.JOIN_RESPONSE, response.encode()


@pytest.fixture
async def joiner() -> AsyncIterator[Transport]:
    t = Transport(9, free_udp_addr("127.0.0.9"), Insecure(), rpc_timeout=RPC_TIMEOUT_S)
    try:
        yield t
    finally:
        await t.close()


async def test_each_request_goes_on_its_own_connection_and_pools_nothing(
    joiner: Transport,
) -> None:
    seed = Seed("127.0.0.1", answer(wire.JoinResponse(success=False, error="not yet")))
    try:
        send = join_sender(joiner, REQUEST)
        for n in range(1, 4):
            assert await send(seed.addr) == Rejected("not yet")
            assert seed.accepted() == n  # one new connection per request
        assert joiner.pooled_connection_id(seed.addr) is None
        assert joiner.metrics()["connections_pooled"] == 0
        assert seed.asked == [9, 9, 9]
        # A pooled connection to the same seed (e.g. Raft traffic) is neither used nor replaced.
        await joiner.send_rpc_to_addr(seed.addr, wire.MessageKind.PING, wire.Ping(9, 1).encode())
        pooled = joiner.pooled_connection_id(seed.addr)
        assert pooled is not None
        assert await send(seed.addr) == Rejected("not yet")
        assert seed.accepted() == 5
        assert joiner.pooled_connection_id(seed.addr) == pooled
    finally:
        await seed.transport.close()


async def test_failures_become_send_failed_within_the_rpc_timeout(joiner: Transport) -> None:
    send = join_sender(joiner, REQUEST)
    silent = parse_socket_addr(free_udp_addr("127.0.0.2"))  # nobody listens there
    started = time.monotonic()
    outcome = await send(silent)
    assert isinstance(outcome, SendFailed)
    assert time.monotonic() - started < 2 * RPC_TIMEOUT_S
    for reply in [
        (wire.MessageKind.PONG, b""),  # the wrong kind
        (wire.MessageKind.JOIN_RESPONSE, b"\xc1"),  # not msgpack
        None,  # the seed's handler failed: an Error reply
    ]:
        seed = Seed("127.0.0.3", reply)
        try:
            outcome = await send(seed.addr)
            assert isinstance(outcome, SendFailed), outcome
        finally:
            await seed.transport.close()
    assert joiner.metrics()["connections_pooled"] == 0


async def test_run_join_follows_a_redirect_between_real_seeds(joiner: Transport) -> None:
    leader = Seed("127.0.0.5", answer(wire.JoinResponse(success=True, cluster_id="c1")))
    follower = Seed(
        "127.0.0.4",
        answer(wire.JoinResponse(success=False, error=format_not_leader(leader.addr))),
    )
    try:
        response = await run_join(
            [follower.addr],  # only the follower is a seed; the leader is learned from it
            JoinRetryPolicy(max_attempts=1, max_backoff_secs=0),
            join_sender(joiner, REQUEST),
            LifecycleTracker(),
        )
        assert response.cluster_id == "c1"
        assert (follower.asked, leader.asked) == ([9], [9])
    finally:
        await leader.transport.close()
        await follower.transport.close()
