"""`nodedb_cluster.Client` over its Rust core (rust/py/src/kv_client.rs) against 3 real nodes
(in-process, real QUIC on 127.0.0.x, real logs with fsync)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_kv import formed

from nodedb_cluster.client import Client
from nodedb_cluster.errors import ClusterError, InvalidRequest, Timeout, TransportClosed
from nodedb_cluster.kv import Unavailable
from nodedb_cluster.localcluster import free_port
from nodedb_cluster.node import Node
from nodedb_cluster.transport import Insecure

CALL_BOUND_S = 10.0


@pytest.fixture
async def three(tmp_path: Path) -> AsyncIterator[list[Node]]:
    async with formed(tmp_path) as nodes:
        yield nodes


@pytest.fixture
async def client(three: list[Node]) -> AsyncIterator[Client]:
    async with Client([str(n.config.listen_addr) for n in three], Insecure()) as c:
        yield c


def data_groups(node: Node) -> list[int]:
    return [g for g in node.metadata.routing.group_ids if g != 0]


async def test_every_operation_round_trips(client: Client, three: list[Node]) -> None:
    await client.put(b"a", b"1")
    assert await client.get(b"a") == b"1"
    assert await client.get(b"missing") is None
    assert await client.cas(b"a", b"1", b"2") is True
    assert await client.cas(b"a", b"1", b"3") is False, "expected value no longer there"
    assert await client.cas(b"new", None, b"n") is True, "None = absent"
    assert await client.get(b"a", read="lease") == b"2"
    assert await client.delete(b"a") is True
    assert await client.delete(b"a") is False
    items = [(b"many:%d" % i, b"%d" % i) for i in range(3000)]
    await client.put_many(items)
    keys = [k for k, _ in items]
    assert await client.get_many(keys) == [v for _, v in items]
    assert await client.get_many(keys[:50], read="follower", max_staleness_s=5.0) == [
        v for _, v in items[:50]
    ]
    assert await client.get_many([]) == []
    await client.put_many([])
    # The keys spread over every data group, and each group's replica holds them.
    groups = {client.group_of(k) for k in keys}
    assert groups == set(data_groups(three[0]))
    for node in three:
        engine = node.engine
        assert engine is not None
        key = keys[7]
        deadline = time.monotonic() + CALL_BOUND_S
        while engine.kv_get(client.group_of(key), key) != b"7":
            assert time.monotonic() < deadline, "replica never applied the put"
            await asyncio.sleep(0.05)  # followers apply asynchronously: poll, bounded


async def test_calls_of_one_loop_iteration_share_one_request_per_target(client: Client) -> None:
    await client.put_many([(b"warm:%d" % i, b"w") for i in range(64)])  # leaders learned
    before = client.requests_sent
    await asyncio.gather(*(client.put(b"c:%d" % i, b"v") for i in range(300)))
    sent = client.requests_sent - before
    # One request per (target, lane): at most 3 nodes lead the 2 data groups.
    assert 1 <= sent <= 3, sent
    before = client.requests_sent
    values = await asyncio.gather(*(client.get(b"c:%d" % i) for i in range(300)))
    assert values == [b"v"] * 300
    assert 1 <= client.requests_sent - before <= 3


async def test_session_floor_advances_and_nothing_stays_open(client: Client) -> None:
    core = client._core  # the session counters are the core's
    assert core.acked_below == 1
    assert core.writes_in_flight == 0
    await asyncio.gather(*(client.put(b"s:%d" % i, b"v") for i in range(100)))
    await client.put_many([(b"sm:%d" % i, b"v") for i in range(10)])
    assert core.writes_in_flight == 0
    assert core.acked_below == 111, "110 writes, each with its own seq, all finished"
    await client.get(b"s:1")
    assert core.acked_below == 111, "reads take no seq"


async def test_a_wrong_leader_is_learned_from_not_leader(client: Client, three: list[Node]) -> None:
    routing = three[0].metadata.routing
    group = client.group_of(b"hint")
    leader = routing.route(group).leader
    wrong = next(n.config.node_id for n in three if n.config.node_id != leader)
    # Routing that names a follower as every group's leader.
    client._core.set_routing(
        routing.vshard_to_group.tolist(),
        [(g, wrong, list(routing.route(g).voters)) for g in routing.group_ids],
    )
    assert client._core.leader_hint(group) == wrong
    await client.put(b"hint", b"v")
    assert client._core.leader_hint(group) == leader, "NotLeader's hint was learned"
    assert await client.get(b"hint") == b"v"


async def test_bad_input_is_refused_before_anything_is_sent(client: Client) -> None:
    before = client.requests_sent
    with pytest.raises(InvalidRequest, match="timeout must be positive"):
        await client.put(b"k", b"v", timeout_s=0)
    with pytest.raises(InvalidRequest, match="read level"):
        await client.get(b"k", read="bogus")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="max_staleness_s"):
        await client.get(b"k", read="follower", max_staleness_s=-1.0)
    await asyncio.sleep(0)  # a scheduled flush would run here
    assert client.requests_sent == before
    assert client._core.writes_in_flight == 0, "a refused write holds no seq"


async def test_unreachable_members_give_a_typed_error_within_the_deadline(
    client: Client,
) -> None:
    # Every group "led" by nodes nobody listens for: registered at a free UDP port. The
    # client's refresher would replace this table with the cluster's as soon as a group's
    # members all failed (a leaderless group makes the table stale): stopped, so the calls
    # have no way out but their deadline.
    assert client._refresher is not None
    client._refresher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await client._refresher
    client._refresher = None
    port = free_port(["127.0.0.1"])
    for fake in (901, 902, 903):
        client.transport.register_peer(fake, f"127.0.0.1:{port}")
    routing = client.routing
    client._core.set_routing(
        routing.vshard_to_group.tolist(),
        [(g, 901, [901, 902, 903]) for g in routing.group_ids],
    )
    start = time.monotonic()
    with pytest.raises((Timeout, Unavailable)):
        await asyncio.wait_for(client.put(b"lost", b"v", timeout_s=1.5), CALL_BOUND_S)
    with pytest.raises((Timeout, Unavailable)):
        await asyncio.wait_for(client.get(b"lost", timeout_s=1.5), CALL_BOUND_S)
    elapsed = time.monotonic() - start
    assert 1.5 <= elapsed < 1.5 * 2 + 2.0, elapsed
    assert client._core.writes_in_flight == 0, "the failed write's seq is finished"
    assert client._core.routing_stale(), "every member failed: the table is stale"


async def test_close_fails_pending_calls_and_refuses_new_ones(three: list[Node]) -> None:
    c = Client([str(n.config.listen_addr) for n in three], Insecure())
    await c.connect()
    calls = [asyncio.ensure_future(c.put(b"x:%d" % i, b"v")) for i in range(50)]
    await asyncio.sleep(0)  # queued, maybe sent
    await c.close()
    outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), CALL_BOUND_S)
    assert all(o is None or isinstance(o, ClusterError) for o in outcomes), outcomes
    assert c._core.calls_unresolved == 0
    # Nothing left to resolve: the loop no longer watches the core's bridge.
    assert not asyncio.get_running_loop().remove_reader(c._core.bridge_fd())
    with pytest.raises(TransportClosed):
        await c.put(b"after", b"v")


async def test_unconnected_client_says_so(three: list[Node]) -> None:
    c = Client([str(three[0].config.listen_addr)], Insecure())
    try:
        with pytest.raises(ClusterError, match="not connected"):
            await c.put(b"k", b"v")
    finally:
        await c.close()


async def test_native_load_writes_through_the_core_and_coalesces(client: Client) -> None:
    """The Rust load driver (rust/py/src/kv_load.rs): bounded by its duration, every write
    lands (read back through the ordinary path), reads find them, requests are coalesced."""
    keyspace, value = 40, b"v" * 16
    sent_before = client.requests_sent
    load, done = client.start_native_load(
        clients=16, duration_s=0.8, value_bytes=len(value), keyspace=keyspace, read_fraction=0.2
    )
    doc = await asyncio.wait_for(done, CALL_BOUND_S)
    writes, reads, errors = load.counts
    assert (doc["writes"], doc["reads"], doc["errors"]) == (writes, reads, errors)
    assert errors == 0, doc["first_error"]
    assert writes > 50
    assert reads > 0
    latencies = doc["latencies_us"]
    assert isinstance(latencies, bytes)
    assert len(latencies) == 4 * (writes + reads)
    assert 0.8 <= float(doc["elapsed_s"]) < 0.8 + CALL_BOUND_S  # type: ignore[arg-type]
    requests = client.requests_sent - sent_before
    assert requests < writes + reads, "calls freed by one reply leave together"
    stored = await client.get_many([b"bench:%010d" % i for i in range(keyspace)])
    assert stored.count(value) > keyspace // 2, "the load's puts are in the cluster"


async def test_native_load_refuses_bad_settings_naming_the_field(client: Client) -> None:
    for field, kwargs in [
        ("clients", {"clients": 0}),
        ("duration_s", {"duration_s": 0.0}),
        ("keyspace", {"keyspace": 0}),
        ("read_fraction", {"read_fraction": 1.5}),
    ]:
        args: dict[str, float] = {"clients": 1, "duration_s": 0.1, "value_bytes": 1}
        args |= {"keyspace": 1, **kwargs}
        with pytest.raises(ClusterError, match=field):
            client.start_native_load(**args)  # type: ignore[arg-type]
