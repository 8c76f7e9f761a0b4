"""The replicated KV across real node processes (mTLS, fsync): a separate-process `Client`, a
leader SIGKILLed under load, and the CLI's put/get/delete."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nodedb_cluster.client import Client
from nodedb_cluster.localcluster import LocalCluster, leader_of
from nodedb_cluster.transport import Mtls
from support.cli_run import cred_flags, run_cli

pytestmark = pytest.mark.multiprocess

CLI = [sys.executable, "-m", "nodedb_cluster.cli"]
WRITERS = 8
WRITES_PER_WRITER_MAX = 3000
AFTER_FAILOVER_S = 2.0
LARGE_VALUE_BYTES = 40 << 20


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    c = LocalCluster(tmp_path, 3, overrides={"allow_bench_load": True})
    try:
        await c.start()
        await c.wait_formed(30.0)
        yield c
    finally:
        await c.close()


async def test_writes_continue_without_errors_across_a_leader_kill(cluster: LocalCluster) -> None:
    addrs = [n.addr for n in cluster.nodes.values()]
    async with Client(addrs, cluster.client_credentials) as client:
        group = client.group_of(b"w0:0")
        statuses = {i: await cluster.status(i) for i in cluster.nodes}
        victim = leader_of(statuses, group)
        assert victim
        acked: dict[bytes, bytes] = {}
        killed_at: list[float] = []
        slowest = [0.0]
        enough_before_kill = asyncio.Event()

        async def writer(w: int) -> None:
            for n in range(WRITES_PER_WRITER_MAX):
                if killed_at and time.monotonic() - killed_at[0] > AFTER_FAILOVER_S:
                    return
                key, value = b"w%d:%d" % (w, n), b"%d" % n
                t0 = time.monotonic()
                await client.put(key, value)  # must not raise: retried within its deadline
                slowest[0] = max(slowest[0], time.monotonic() - t0)
                acked[key] = value
                if len(acked) >= 200:
                    enough_before_kill.set()

        async def killer() -> None:
            await enough_before_kill.wait()
            cluster.nodes[victim].kill()
            killed_at.append(time.monotonic())

        kill_task = asyncio.ensure_future(killer())
        await asyncio.wait_for(asyncio.gather(*(writer(w) for w in range(WRITERS))), 60)
        await kill_task
        assert killed_at, "the writers finished before the kill"
        writes_after_kill = len(acked)
        assert slowest[0] < 5.0
        survivors = [i for i in cluster.nodes if i != victim]
        after = await cluster.wait_for(
            lambda s: leader_of(s, group) not in (0, victim), survivors, 10.0, "new leader"
        )
        assert leader_of(after, group) != victim
        keys = list(acked)
        assert await client.get_many(keys) == [acked[k] for k in keys]
        assert writes_after_kill >= 200


async def test_status_and_locate_name_the_leaders_elected_after_a_kill(
    cluster: LocalCluster,
) -> None:
    """The routing table's leaders (status's LEADS column, `locate`, a new client's first
    request) follow Raft's: once the node leading every group is SIGKILLed, each survivor's
    status counts the new leaders within seconds. Before, the table named the dead node for
    as long as it stayed a voter (LEADS 0 everywhere once it was removed)."""
    statuses = {i: await cluster.status(i) for i in cluster.nodes}
    groups = sorted({int(g["group_id"]) for g in statuses[1]["groups"]} - {0})
    victim = leader_of(statuses, groups[0])
    assert victim
    assert all(leader_of(statuses, g) == victim for g in groups)
    cluster.nodes[victim].kill()
    survivors = [i for i in cluster.nodes if i != victim]

    def leads_follow_raft(s: dict[int, Any]) -> bool:
        live = Counter(leader_of(s, g) for g in groups)
        if 0 in live or victim in live:
            return False
        want = {n: live.get(n, 0) for n in cluster.nodes}
        return all({int(p[0]): int(p[2]) for p in doc["placement"]} == want for doc in s.values())

    after = await cluster.wait_for(leads_follow_raft, survivors, 15.0, "LEADS naming new leaders")
    code, out, err = await run_cli(
        "locate",
        "k7",
        "--json",
        "--addr",
        cluster.nodes[survivors[0]].addr,
        *cred_flags(cluster.client_credentials),
    )
    assert code == 0, err
    where = json.loads(out)
    assert where["leader"] == leader_of(after, int(where["group"]))


DOWN_S = 3.0
"""How long the restarted node stays down while the leader keeps sending to it (its QUIC probes
back off meanwhile, as after any crash)."""
HEARS_LEADER_S = 0.7
"""A restarted node hears the leader within this (measured 0.2 s, status polls included): the
leader drops its connection to the dead process as soon as the new one dials it. Before, it
sent into that connection until its next QUIC probe drew a stateless reset: 1.1-1.3 s here."""
FAILOVER_S = 2.0
"""Leader SIGKILL -> first acknowledged write, when the election needs the restarted node: one
election timeout (<= 1 s) plus the client's detection, with room for a loaded machine."""


def _group_status(status: dict[str, object], group: int) -> dict[str, object]:
    groups = status.get("groups")
    assert isinstance(groups, list)
    for g in groups:
        assert isinstance(g, dict)
        if g.get("group_id") == group:
            return g
    raise AssertionError(f"group {group} not in status")


async def test_a_restarted_node_is_heard_at_once_and_elects_the_next_leader(
    cluster: LocalCluster,
) -> None:
    """Issue 13 (failover tail): a follower SIGKILLed while the leader writes, restarted, then the
    leader SIGKILLed: the two survivors (one just restarted) elect a leader within one election,
    because the restarted node hears its peers at once."""
    addrs = [n.addr for n in cluster.nodes.values()]
    async with Client(addrs, cluster.client_credentials, timeout_s=5.0) as client:
        key = b"restart-then-kill"
        group = client.group_of(key)
        statuses = {i: await cluster.status(i) for i in cluster.nodes}
        leader = leader_of(statuses, group)
        assert leader
        restarted = next(i for i in cluster.nodes if i != leader)
        stop = asyncio.Event()

        async def writer() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                await client.put(key, b"%d" % n)

        writing = asyncio.ensure_future(writer())
        try:
            cluster.nodes[restarted].kill()
            await cluster.nodes[restarted].wait_exit(5.0)
            await asyncio.sleep(DOWN_S)  # the scenario: the node stays down while writes go on
            await cluster.nodes[restarted].start()
            await cluster.nodes[restarted].wait_ready()
            ready = time.monotonic()
            await cluster.wait_for(
                lambda s: _group_status(s[restarted], group).get("leader") == leader,
                [restarted],
                5.0,
                "the restarted node names the leader",
            )
            heard_after = time.monotonic() - ready
        finally:
            stop.set()
            await asyncio.wait_for(writing, 10.0)
        assert heard_after < HEARS_LEADER_S, f"heard the leader {heard_after:.2f} s after READY"
        cluster.nodes[leader].kill()
        killed = time.monotonic()
        await client.put(key, b"after")  # retried within its deadline; must not raise
        took = time.monotonic() - killed
        assert took < FAILOVER_S, f"first write after the kill took {took:.2f} s"
        assert await client.get(key) == b"after"


async def test_client_through_any_single_node_and_typed_timeout(cluster: LocalCluster) -> None:
    for node in cluster.nodes.values():
        async with Client([node.addr], cluster.client_credentials) as client:
            key = b"via:%d" % node.node_id
            await client.put(key, b"x")
            assert await client.get(key) == b"x"
            assert await client.cas(key, b"x", b"y")
            assert await client.get(key, read="lease") == b"y"
    async with Client([cluster.nodes[1].addr], cluster.client_credentials) as client:
        for node in cluster.nodes.values():
            assert await client.get_many_at(node.node_id, [b"via:1"], max_staleness_s=5.0) == [b"y"]


async def test_a_fresh_clients_large_put_is_given_the_time_to_move_its_bytes(
    cluster: LocalCluster,
) -> None:
    """A 40 MiB value put by a client with no answer times behind it: its attempt bound (0.3 s
    for a small request) grows with the bytes it carries (peer_health TRANSFER_BYTES_PER_S_MIN),
    so it is acknowledged within the default deadline instead of being retried until it runs out
    while every attempt marks the leader down; it reads back from every node."""
    value = bytes(range(256)) * (LARGE_VALUE_BYTES // 256)
    addrs = [n.addr for n in cluster.nodes.values()]
    async with Client(addrs, cluster.client_credentials) as client:
        await client.put(b"large", value)
    for node in cluster.nodes.values():
        async with Client([node.addr], cluster.client_credentials) as client:
            assert await client.get(b"large") == value


async def test_a_routing_refresh_does_not_wait_on_a_source_that_stopped_answering(
    cluster: LocalCluster,
) -> None:
    """The node that answered last is asked first; paused (its socket bound, so the ask hangs
    until the RPC timeout), the refresh takes the next node's answer within the hedge."""
    addrs = [n.addr for n in cluster.nodes.values()]
    async with Client(addrs, cluster.client_credentials, timeout_s=5.0) as client:
        first = next(n for n in cluster.nodes.values() if n.addr == client._sources()[0])
        assert client._answered == [first.addr]
        first.pause()
        try:
            t0 = time.monotonic()
            await client.connect()
            took = time.monotonic() - t0
        finally:
            first.resume()
        assert took < 1.0, f"the refresh took {took:.2f} s (the RPC timeout is 5 s)"
        assert client._answered != [first.addr]
        await client.put(b"after-refresh", b"1")


def _cli(*args: str, creds: Mtls) -> subprocess.CompletedProcess[str]:
    flags = ["--ca", str(creds.ca), "--cert", str(creds.cert), "--key", str(creds.key)]
    return subprocess.run(
        [*CLI, "--log-level", "warning", *args[:1], *flags, *args[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_cli_put_get_delete_round_trip(cluster: LocalCluster) -> None:
    creds = cluster.client_credentials
    assert isinstance(creds, Mtls)
    addr2, addr3 = cluster.nodes[2].addr, cluster.nodes[3].addr

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return _cli(*args, creds=creds)

    put = await asyncio.to_thread(run, "put", "--addr", addr2, "greeting", "hello world")
    assert put.returncode == 0, put.stderr
    got = await asyncio.to_thread(run, "get", "--addr", addr3, "greeting")
    assert got.returncode == 0, got.stderr
    assert got.stdout == "hello world\n"
    deleted = await asyncio.to_thread(run, "delete", "--addr", addr3, "greeting")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.strip() == "deleted"
    missing = await asyncio.to_thread(run, "get", "--addr", addr2, "greeting")
    assert missing.returncode == 1
    assert "not found" in missing.stderr
    insecure = await asyncio.to_thread(
        subprocess.run,
        [*CLI, "get", "--addr", addr2, "--insecure", "--timeout", "2", "greeting"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert insecure.returncode == 1  # an mTLS cluster refuses an unauthenticated client


@pytest.mark.parametrize(
    ("placement", "driver"),
    [("client", "asyncio"), ("client", "native"), ("embedded", "asyncio")],
)
async def test_bench_command_reports_throughput_and_percentiles(
    cluster: LocalCluster, placement: str, driver: str
) -> None:
    # Load inside the nodes is an operator's action (BENCH_LOAD: admin certificates only).
    creds = cluster.admin_credentials if placement == "embedded" else cluster.client_credentials
    assert isinstance(creds, Mtls)
    addrs = [a for n in cluster.nodes.values() for a in ("--addr", n.addr)]
    flags = ["--ca", str(creds.ca), "--cert", str(creds.cert), "--key", str(creds.key)]
    args = [*CLI, "--log-level", "warning", "bench", *addrs, *flags, "--placement", placement]
    args += ["--driver", driver]
    args += ["--clients", "4", "--duration", "1", "--read-fraction", "0.5", "--keyspace", "50"]
    result = await asyncio.to_thread(
        subprocess.run, [*args, "--json"], capture_output=True, text=True, timeout=90, check=False
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert doc["placement"] == (placement if driver == "asyncio" else "client-native")
    assert doc["errors"] == 0
    assert doc["writes"] > 0
    assert doc["reads"] > 0
    assert 0 < doc["p50_ms"] <= doc["p99_ms"] <= doc["p999_ms"]
    assert doc["fsync_before_ack"] is True


def test_help_lists_the_kv_commands() -> None:
    result = subprocess.run(
        [*CLI, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    for command in ("put", "get", "delete", "bench"):
        assert command in result.stdout
