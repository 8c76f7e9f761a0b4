"""A way back from a lost log tail or a lost catalog (issue 13 parts 2 and 4), on real processes.

A follower whose newest WAL segment lost its last acknowledged entry (the tail zeroed from the
middle of that record: what recovery must take for a torn write) refuses to serve with a message
naming the group, the indexes and the log; `start --rejoin` brings it back as a fresh replica of
the damaged groups, keeping its node id, and every acknowledged key is readable through it.
A bootstrap seed whose catalog is gone refuses to found a second cluster on its old log; with
`--rejoin` it rejoins the cluster it belongs to.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import walfile
from nodedb_cluster.client import Client
from nodedb_cluster.localcluster import LocalCluster, NodeProcess, Status, leader_of

pytestmark = pytest.mark.multiprocess

KEYS = 300
EXIT_WAIT_S = 30.0
CATCH_UP_S = 60.0


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    c = LocalCluster(tmp_path, 3, overrides={"num_groups": 2})
    try:
        await c.start()
        await c.wait_formed(30.0)
        yield c
    finally:
        await c.close()


async def _write_keys(cluster: LocalCluster, prefix: bytes) -> dict[bytes, bytes]:
    addrs = [n.addr for n in cluster.nodes.values()]
    acked: dict[bytes, bytes] = {}
    async with Client(addrs, cluster.client_credentials) as client:
        for start in range(0, KEYS, 50):
            batch = {b"%s%d" % (prefix, i): b"v%d" % i for i in range(start, start + 50)}
            await client.put_many(list(batch.items()))
            acked.update(batch)
    return acked


def _data_groups(statuses: dict[int, Status]) -> list[int]:
    return sorted({int(g["group_id"]) for s in statuses.values() for g in s["groups"]} - {0})


async def _wait_exit_with(node: NodeProcess, *needles: str) -> str:
    code = await node.wait_exit(EXIT_WAIT_S)
    tail = node.log_tail()
    assert code != 0, f"node {node.node_id} exited 0:\n{tail}"
    for needle in needles:
        assert needle in tail, f"{needle!r} not in the log of node {node.node_id}:\n{tail}"
    assert "Traceback" not in tail, tail
    return tail


async def _all_readable_through(
    cluster: LocalCluster, node_id: int, acked: dict[bytes, bytes]
) -> None:
    async with Client([cluster.nodes[node_id].addr], cluster.client_credentials) as client:
        keys = list(acked)
        assert await client.get_many(keys) == [acked[k] for k in keys]


async def _wait_caught_up(cluster: LocalCluster, node_id: int) -> dict[int, Status]:
    """Until `node_id` is a voter of every group again and holds the same KV state as the
    group's leader (applied index, key count and digest of its replica)."""

    def caught_up(statuses: dict[int, Status]) -> bool:
        mine = {int(g["group_id"]): g for g in statuses[node_id]["groups"]}
        for group_id in _data_groups(statuses):
            leader = leader_of(statuses, group_id)
            if not leader or group_id not in mine or node_id not in mine[group_id]["voters"]:
                return False
            theirs = {int(g["group_id"]): g for g in statuses[leader]["groups"]}[group_id]
            if mine[group_id]["kv"][1:] != theirs["kv"][1:]:
                return False
        return 0 in mine and node_id in mine[0]["voters"]

    return await cluster.wait_for(caught_up, cluster.nodes, CATCH_UP_S, f"node {node_id} back")


async def test_a_follower_that_lost_its_acknowledged_tail_refuses_then_rejoins(
    cluster: LocalCluster,
) -> None:
    acked = await _write_keys(cluster, b"a")
    statuses = {i: await cluster.status(i) for i in cluster.nodes}
    leaders = {leader_of(statuses, g) for g in [0, *_data_groups(statuses)]}
    victim_id = max(i for i in cluster.nodes if i not in leaders)
    victim = cluster.nodes[victim_id]
    assert await victim.stop() == 0

    raft_dir = victim.config.data_dir / "raft"
    segment = walfile.segments(raft_dir)[-1]
    records = walfile.records(segment)
    last_entry = max(
        (r for r in records if r.kind == walfile.KIND_ENTRY and r.group_id != 0),
        key=lambda r: r.offset,
    )
    end = records[-1].offset + records[-1].length
    walfile.zero_from(segment, last_entry.offset + last_entry.length // 2, end)

    await victim.start()
    await _wait_exit_with(
        victim,
        "lost entries this node acknowledged",
        f"g{last_entry.group_id}: log ends at index",
        "--rejoin",
        str(raft_dir),
    )

    victim.config = dataclasses.replace(victim.config, rejoin=True)
    await victim.start()
    await victim.wait_ready()
    assert f"discarded its copy of group {last_entry.group_id}" in victim.log_tail()
    await _wait_caught_up(cluster, victim_id)
    await _all_readable_through(cluster, victim_id, acked)
    more = await _write_keys(cluster, b"b")
    await _all_readable_through(cluster, victim_id, {**acked, **more})
    # Stays a healthy member after another ordinary restart (no flag needed any more).
    victim.config = dataclasses.replace(victim.config, rejoin=False)
    assert await victim.stop() == 0
    await victim.start()
    await victim.wait_ready()
    await _wait_caught_up(cluster, victim_id)


async def test_a_seed_that_lost_its_catalog_never_founds_a_second_cluster(
    cluster: LocalCluster,
) -> None:
    acked = await _write_keys(cluster, b"c")
    seed = cluster.nodes[1]  # the smallest seed: the one that bootstraps
    before = await cluster.status(1)
    assert await seed.stop() == 0
    shutil.rmtree(seed.config.data_dir / "catalog")

    await seed.start()
    await _wait_exit_with(seed, "holds a Raft log", "--rejoin", "--force-bootstrap")

    seed.config = dataclasses.replace(seed.config, rejoin=True)
    await seed.start()
    await seed.wait_ready()
    statuses = await _wait_caught_up(cluster, 1)
    assert statuses[1]["cluster_id"] == before["cluster_id"]
    assert list(seed.config.data_dir.glob("discarded-*/raft/*.wal")), "old log not kept aside"
    await _all_readable_through(cluster, 1, acked)
