"""node.kv in one process: real nodes over real QUIC on 127.0.0.x, real logs with fsync."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nodedb_cluster import wire
from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.config import ClusterConfig
from nodedb_cluster.errors import ClusterError, InvalidRequest, RemoteError, Timeout
from nodedb_cluster.formation.start import start_cluster
from nodedb_cluster.kv import IN_CALL_ANSWERS_MAX, StaleRead, Unavailable
from nodedb_cluster.localcluster import free_port
from nodedb_cluster.node import Node
from nodedb_cluster.raft import GroupStatus
from nodedb_cluster.routing import vshard_for_key

FORM_TIMEOUT_S = 30.0


async def start_nodes(tmp_path: Path, size: int, **overrides: object) -> list[Node]:
    hosts = [f"127.0.0.{i}" for i in range(1, size + 1)]
    port = free_port(hosts)
    seeds = tuple(parse_socket_addr(f"{h}:{port}") for h in hosts)

    async def one(i: int) -> Node:
        fields: dict[str, object] = {
            "node_id": i,
            "listen_addr": seeds[i - 1],
            "seed_nodes": seeds,
            "data_dir": tmp_path / f"node{i}",
            "insecure_transport": True,
            "num_groups": 2,
        }
        fields.update(overrides)
        return await start_cluster(ClusterConfig(**fields))  # type: ignore[arg-type]

    return list(await asyncio.gather(*(one(i) for i in range(1, size + 1))))


async def wait_formed(nodes: list[Node], voters: int) -> dict[int, dict[int, GroupStatus]]:
    """Until every group on every node has `voters` voters and a leader (bounded)."""
    deadline = time.monotonic() + FORM_TIMEOUT_S
    while time.monotonic() < deadline:
        seen: dict[int, dict[int, GroupStatus]] = {}
        for node in nodes:
            status = await node.status()
            seen[node.config.node_id] = {g.group_id: g for g in status.groups}
        groups = {g for per_node in seen.values() for g in per_node}
        if groups and all(
            len(per_node.get(g, GroupStatus(g, "follower", 0, None, 0, 0, 0, 0)).voters) >= voters
            and per_node[g].leader_id
            for per_node in seen.values()
            for g in per_node
        ):
            return seen
        await asyncio.sleep(0.1)  # raft state has no push channel here: poll, bounded
    raise AssertionError(f"cluster not formed within {FORM_TIMEOUT_S} s")


@contextlib.asynccontextmanager
async def formed(tmp_path: Path, size: int = 3, **overrides: object) -> AsyncIterator[list[Node]]:
    """`size` nodes, every group with `size` voters and a leader; shut down on exit."""
    nodes = await start_nodes(tmp_path, size, **overrides)
    try:
        await wait_formed(nodes, size)
        yield nodes
    finally:
        for node in nodes:
            await node.shutdown()


def leading(nodes: list[Node], group: int) -> Node:
    """The node that leads `group` by its own engine's account."""
    return next(
        n for n in nodes if n.engine is not None and n.engine.leader(group) == n.config.node_id
    )


@pytest.fixture
async def three(tmp_path: Path) -> AsyncIterator[list[Node]]:
    async with formed(tmp_path) as nodes:
        yield nodes


async def test_routing_from_every_node_reaches_the_right_group(three: list[Node]) -> None:
    keys = [b"route:%d" % i for i in range(120)]
    for i, key in enumerate(keys):
        await three[i % 3].kv.put(key, b"v" + key)
    routing = three[0].metadata.routing
    data_groups = [g for g in routing.group_ids if g != 0]
    for node in three:
        for key in keys:
            expected_group = routing.group_for_vshard(vshard_for_key(key))
            assert node.kv.group_of(key) == expected_group
            # Through the API from this node, then directly in the group's replica here (once
            # it applied through a read index: a follower applies after the leader answered).
            assert await node.kv.get(key) == b"v" + key
            engine = node.engine
            assert engine is not None
            await engine.read_index(expected_group)
            assert engine.kv_get(expected_group, key) == b"v" + key
            for other in data_groups:
                if other != expected_group:
                    assert engine.kv_get(other, key) is None


async def test_get_after_put_from_any_node_is_linearizable(three: list[Node]) -> None:
    for writer in three:
        for reader in three:
            key = b"lin:%d:%d" % (writer.config.node_id, reader.config.node_id)
            await writer.kv.put(key, key)
            assert await reader.kv.get(key) == key
            assert await reader.kv.get(key, read="lease") == key
    many = [(b"many:%d" % i, b"%d" % i) for i in range(2000)]
    await three[1].kv.put_many(many)
    assert await three[2].kv.get_many([k for k, _ in many]) == [v for _, v in many]


async def test_reads_inside_the_lease_take_no_quorum_round_and_share_engine_requests(
    three: list[Node],
) -> None:
    key = b"lease"
    g = three[0].kv.group_of(key)
    statuses = {n.config.node_id: await n.status() for n in three}
    leader_id = next(
        x.leader_id for s in statuses.values() for x in s.groups if x.group_id == g and x.leader_id
    )
    leader = next(n for n in three if n.config.node_id == leader_id)
    await leader.kv.put(key, b"1")  # a commit from here starts the lease
    engine = leader.engine
    assert engine is not None

    def rounds() -> int:
        return engine.metrics()["read_index_requests"]

    def local() -> int:
        return engine.metrics()["read_lease_local"]

    before, local_before = rounds(), local()
    assert await leader.kv.get(key, read="lease") == b"1"
    assert await leader.kv.get(key) == b"1"
    assert rounds() == before  # lease and linearizable: no ReadIndex request...
    assert local() == local_before + 2  # ...answered here from the lease
    # In the leader's own process such a read is answered within the call: it never suspends
    # (no request, no thread hand-off, no loop wake-up).
    call = leader.kv.get(key)
    with pytest.raises(StopIteration) as answered:
        call.send(None)
    assert answered.value.value == b"1"
    assert local() == local_before + 3
    before = rounds()
    values = await asyncio.gather(*(leader.kv.get(key) for _ in range(64)))
    assert values == [b"1"] * 64
    assert rounds() - before <= 2  # 64 reads, at most two shared requests


async def test_reads_answered_in_the_call_do_not_starve_the_loop(three: list[Node]) -> None:
    key = b"tight-loop"
    g = three[0].kv.group_of(key)
    leader = leading(three, g)
    await leader.kv.put(key, b"1")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    other = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)  # the ticker starts
    start = ticks
    reads = 20 * IN_CALL_ANSWERS_MAX
    for _ in range(reads):
        assert await leader.kv.get(key) == b"1"
    other.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await other
    # Each read is answered within its call; every IN_CALL_ANSWERS_MAX of them the caller
    # yields once and the other task runs.
    assert ticks - start >= reads // IN_CALL_ANSWERS_MAX - 1


async def test_a_read_answered_in_the_call_never_outlives_a_leadership_transfer(
    three: list[Node],
) -> None:
    key = b"handed-over"
    g = three[0].kv.group_of(key)
    old = leading(three, g)
    new = next(n for n in three if n is not old)
    old_engine, new_engine = old.engine, new.engine
    assert old_engine is not None
    assert new_engine is not None
    await old.kv.put(key, b"1")
    assert await old.kv.get(key) == b"1"  # from its lease, within the call
    local = old_engine.metrics()["read_lease_local"]
    await old_engine.transfer_leader(g, new.config.node_id)
    deadline = asyncio.get_running_loop().time() + 10.0
    epoch, _ = new_engine.leaders()
    while new_engine.leader(g) != new.config.node_id:
        left_ms = int((deadline - asyncio.get_running_loop().time()) * 1000)
        assert left_ms > 0, "the transfer did not complete"
        epoch = await new_engine.wait_leaders_changed(epoch, left_ms)
    await new.kv.put(key, b"2")
    # The old leader's lease ended when the transfer began: its own reads now go by request
    # and see the new leader's write.
    assert await old.kv.get(key) == b"2"
    assert await old.kv.get(key, read="lease") == b"2"
    assert old_engine.metrics()["read_lease_local"] == local


async def test_own_writes_in_flight_across_a_leadership_transfer_all_land_once(
    three: list[Node],
) -> None:
    """The leader's own writes go caller → driver → caller (no runtime worker); a transfer
    in the middle of a stream of them turns the rest into NotLeader answers from the driver
    thread, retried to the new leader: every write lands, and none twice."""
    g = three[0].kv.group_of(b"moving-0")
    old = leading(three, g)
    new = next(n for n in three if n is not old)
    assert old.engine is not None
    assert new.engine is not None
    keys = [k for k in (f"moving-{i}".encode() for i in range(2000)) if old.kv.group_of(k) == g]
    keys = keys[:400]
    started = asyncio.Event()

    async def writer(part: list[bytes]) -> None:
        for i, key in enumerate(part):
            await old.kv.put(key, key + b"=v")
            if i == 25:
                started.set()

    writers = [asyncio.create_task(writer(keys[i::4])) for i in range(4)]
    await asyncio.wait_for(started.wait(), 10.0)
    assert not all(w.done() for w in writers), "the writes ended before the transfer began"
    await old.engine.transfer_leader(g, new.config.node_id)
    await asyncio.wait_for(asyncio.gather(*writers), 30.0)
    assert new.engine.leader(g) == new.config.node_id
    values = await new.kv.get_many(keys)
    assert values == [k + b"=v" for k in keys]
    # Each CAS applies once: a chain of them from the old leader's node, now by request.
    await old.kv.put(keys[0], b"0")
    for i in range(20):
        assert await old.kv.cas(keys[0], str(i).encode(), str(i + 1).encode())
    assert await new.kv.get(keys[0]) == b"20"


async def test_a_leader_shut_down_under_its_own_writes_ends_every_call_and_loses_none(
    three: list[Node],
) -> None:
    """Shutdown while the leader's own writes are in flight (their batches run on the caller's
    and the driver's threads): every call ends, none hangs, and every acknowledged write is
    read back from the two nodes left."""
    g = three[0].kv.group_of(b"closing-0")
    old = leading(three, g)
    left = [n for n in three if n is not old]
    keys = [k for k in (f"closing-{i}".encode() for i in range(20_000)) if old.kv.group_of(k) == g]
    acked: list[bytes] = []
    ended: list[str] = []
    started = asyncio.Event()

    async def writer(part: list[bytes]) -> None:
        for i, key in enumerate(part):
            try:
                await old.kv.put(key, key)
            except ClusterError as e:
                ended.append(type(e).__name__)
                return
            acked.append(key)
            if i == 25:
                started.set()

    writers = [asyncio.create_task(writer(keys[i::4])) for i in range(4)]
    await asyncio.wait_for(started.wait(), 10.0)
    assert not all(w.done() for w in writers), "the writes ended before the shutdown began"
    await asyncio.wait_for(old.shutdown(), 30.0)
    await asyncio.wait_for(asyncio.gather(*writers), 10.0)  # every call ended
    assert len(ended) == 4, f"each writer's next call failed after the shutdown: {ended}"
    assert await asyncio.wait_for(left[0].kv.get_many(acked), 30.0) == acked


async def test_without_read_lease_every_linearizable_read_takes_a_quorum_round(
    tmp_path: Path,
) -> None:
    async with formed(tmp_path, read_lease=False) as three:
        key = b"no-lease"
        g = three[0].kv.group_of(key)
        leader = leading(three, g)
        engine = leader.engine
        assert engine is not None
        await leader.kv.put(key, b"1")
        before = engine.metrics()["read_index_requests"]
        for _ in range(5):
            assert await leader.kv.get(key) == b"1"
        assert engine.metrics()["read_index_requests"] == before + 5
        assert engine.metrics()["read_index_leased"] == 0
        assert engine.metrics()["read_lease_local"] == 0


async def test_cas_delete_and_missing_keys(three: list[Node]) -> None:
    kv = three[2].kv
    assert await kv.get(b"absent") is None
    assert await kv.cas(b"c", None, b"1")
    assert not await kv.cas(b"c", None, b"2")  # present now: expected-absent fails
    assert await kv.cas(b"c", b"1", b"3")
    assert await three[0].kv.get(b"c") == b"3"
    assert await kv.delete(b"c")
    assert not await kv.delete(b"c")
    assert await three[1].kv.get(b"c") is None


async def test_a_key_over_the_limit_is_refused_before_it_leaves_and_nothing_applies(
    three: list[Node],
) -> None:
    """A key above 64 KiB can never be stored: every call naming one raises InvalidRequest,
    and a batch holding one applies none of its items. (A put of such a key used to answer
    success while its entry was refused at apply.)"""
    kv = three[1].kv
    limit = 64 << 10
    at_limit, over = b"a" * limit, b"o" * (limit + 1)
    await kv.put(at_limit, b"v")
    assert await three[2].kv.get(at_limit) == b"v"
    for call in (
        kv.put(over, b"v"),
        kv.get(over),
        kv.delete(over),
        kv.cas(over, None, b"v"),
        kv.get_many([b"k", over]),
        kv.put_many([(b"first", b"1"), (over, b"v")]),
    ):
        with pytest.raises(InvalidRequest, match=f"a key of {limit + 1} bytes exceeds"):
            await call
    assert await kv.get_many([b"first"]) == [None], "nothing of the refused batch applied"


async def test_write_through_a_node_that_is_no_member_of_the_group(tmp_path: Path) -> None:
    nodes = await start_nodes(tmp_path, 2, replication_factor=1)
    try:
        await wait_formed(nodes, 1)
        outsider = nodes[1]
        routing = outsider.metadata.routing
        assert [g for g in routing.groups_of_node(2) if g != 0] == []  # member of no data group
        before = outsider.kv.requests_sent
        await outsider.kv.put(b"far", b"away")
        await outsider.kv.put_many([(b"far%d" % i, b"x") for i in range(100)])
        assert outsider.kv.requests_sent > before  # one hop to the leader
        assert await outsider.kv.get(b"far") == b"away"
        assert await outsider.kv.get(b"far", read="follower") == b"away"
        assert await nodes[0].kv.get(b"far") == b"away"
        assert await outsider.kv.get_many([b"far%d" % i for i in range(100)]) == [b"x"] * 100
    finally:
        for node in nodes:
            await node.shutdown()


async def test_follower_read_refuses_when_staler_than_allowed(three: list[Node]) -> None:
    await three[0].kv.put(b"stale", b"1")
    g = three[0].kv.group_of(b"stale")
    statuses = [await n.status() for n in three]
    roles = {
        n.config.node_id: next(x.role for x in s.groups if x.group_id == g)
        for n, s in zip(three, statuses, strict=True)
    }
    follower = next(n for n in three if roles[n.config.node_id] == "follower")
    # A follower read may be stale by design: poll (bounded; a follower's apply has no event
    # here) until this follower serves the write from its own state.
    async with asyncio.timeout(5):
        while True:
            if await follower.kv.get(b"stale", read="follower", max_staleness_s=1.0) == b"1":
                break
            await asyncio.sleep(0.01)
    for node in three:
        if node is not follower:
            await node.shutdown()
    # Time passing is the condition under test: the last confirmation must age past the bound.
    await asyncio.sleep(0.6)
    t0 = time.monotonic()
    with pytest.raises(StaleRead) as refused:
        await follower.kv.get(b"stale", read="follower", max_staleness_s=0.3)
    assert refused.value.age_s > 0.3
    assert time.monotonic() - t0 < 2.0  # refused promptly, not at the 5 s deadline
    # A write without a quorum ends with a typed error at its deadline, not before or hung.
    t0 = time.monotonic()
    with pytest.raises((Timeout, Unavailable)):
        await follower.kv.put(b"stale", b"2", timeout_s=1.0)
    assert 0.9 < time.monotonic() - t0 < 3.0


async def test_malformed_kv_request_gets_a_typed_error_and_the_node_goes_on(
    three: list[Node],
) -> None:
    node = three[0]
    client = three[1].transport
    for payload in (b"\xc1", b"\x93\x01\x02\x03", b"\x81\xa2op\xa7propose"):
        with pytest.raises(RemoteError):
            await client.send_rpc(node.config.node_id, wire.MessageKind.KV_REQUEST, payload)
    with pytest.raises(InvalidRequest):
        await node.kv.get(b"k", read="bogus")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        await node.kv.put(b"k", b"v", timeout_s=0)
    await three[1].kv.put(b"after", b"garbage")
    assert await node.kv.get(b"after") == b"garbage"
