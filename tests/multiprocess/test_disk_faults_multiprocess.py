"""Disk faults on a real node's Raft log, identity file and catalog (issue 13 parts 2, 4 and 7),
on a real 3-node cluster. For each kind of damage the node refuses to start, exits non-zero
within a bound and says why in its log (never a Python traceback, never a process left answering
errors); the two healthy nodes keep every acknowledged key; and the way back every message names,
`start --rejoin`, brings the node back as a fresh replica of what was damaged, keeping its node
id, with every acknowledged key readable through it.

- A follower whose newest WAL segment lost its last acknowledged entry (the tail zeroed from the
  middle of that record, or cut at its boundary: what recovery must take for a torn write).
- Damage before the tail (a bit flipped inside a record followed by others, a changed length).
- A damaged `raft/IDENTITY`.
- A bootstrap seed whose catalog is gone: it never founds a second cluster on its old log.

The catalog's byte-level cases are in test_catalog_integrity.py; the WAL's own recovery in
rust/wal/tests; a full disk in test_no_space*.py.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from nodedb_cluster.client import Client
from nodedb_cluster.localcluster import LocalCluster, NodeProcess, Status, leader_of
from support import walfile

pytestmark = pytest.mark.multiprocess

KEYS = 200
EXIT_OR_READY_S = 30.0
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


async def _write(cluster: LocalCluster, prefix: bytes) -> dict[bytes, bytes]:
    addrs = [n.addr for n in cluster.nodes.values()]
    acked: dict[bytes, bytes] = {}
    async with Client(addrs, cluster.client_credentials) as client:
        for start in range(0, KEYS, 50):
            batch = {b"%s%d" % (prefix, i): b"v%d" % i for i in range(start, start + 50)}
            await client.put_many(list(batch.items()))
            acked.update(batch)
    return acked


async def _readable(cluster: LocalCluster, addrs: list[str], acked: dict[bytes, bytes]) -> None:
    async with Client(addrs, cluster.client_credentials) as client:
        keys = list(acked)
        assert await client.get_many(keys) == [acked[k] for k in keys]


async def _follower(cluster: LocalCluster) -> NodeProcess:
    """A node leading no group, once every replica applied all its leader committed. A follower
    applies an entry only once a later message told it the entry committed; its acknowledgement,
    sent when it persisted the entry, has then reached the leader (but for a race of a
    millisecond), so a cut of its last entry loses one the leader knows it acknowledged."""

    def settled(statuses: dict[int, Status]) -> bool:
        groups = {int(g["group_id"]) for s in statuses.values() for g in s["groups"]}
        for group_id in groups:
            leader = leader_of(statuses, group_id)
            if not leader:
                return False
            copies = [
                g for s in statuses.values() for g in s["groups"] if g["group_id"] == group_id
            ]
            commit = next(
                g["commit"] for g in statuses[leader]["groups"] if g["group_id"] == group_id
            )
            if any(g["applied"] != commit for g in copies):
                return False
        return True

    statuses = await cluster.wait_for(settled, cluster.nodes, CATCH_UP_S, "replicas settled")
    groups = {int(g["group_id"]) for s in statuses.values() for g in s["groups"]}
    leaders = {leader_of(statuses, g) for g in groups}
    return cluster.nodes[max(i for i in cluster.nodes if i not in leaders)]


def _data_groups(statuses: dict[int, Status]) -> list[int]:
    return sorted({int(g["group_id"]) for s in statuses.values() for g in s["groups"]} - {0})


async def _wait_exit_with(node: NodeProcess, *needles: str) -> str:
    try:
        code = await node.wait_exit(EXIT_OR_READY_S)
    except TimeoutError:
        tail = node.log_tail()
        pytest.fail(f"node {node.node_id} still running after {EXIT_OR_READY_S} s:\n{tail}")
    tail = node.log_tail()
    assert code != 0, f"node {node.node_id} exited 0:\n{tail}"
    for needle in needles:
        assert needle in tail, f"{needle!r} not in the log of node {node.node_id}:\n{tail}"
    assert "Traceback" not in tail, tail
    return tail


async def _readable_through(cluster: LocalCluster, node_id: int, acked: dict[bytes, bytes]) -> None:
    await _readable(cluster, [cluster.nodes[node_id].addr], acked)


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


def _newest_segment(node: NodeProcess) -> Path:
    return walfile.segments(node.config.data_dir / "raft")[-1]


def _flip_inside_a_middle_record(node: NodeProcess) -> str:
    """One flipped bit in the payload of a record followed by valid records: mid-file damage."""
    segment = _newest_segment(node)
    records = walfile.records(segment)
    victim = records[len(records) // 2]
    with segment.open("r+b") as f:
        f.seek(victim.offset + walfile.FRAME_HEADER_BYTES)
        byte = f.read(1)
        f.seek(victim.offset + walfile.FRAME_HEADER_BYTES)
        f.write(bytes([byte[0] ^ 0x10]))
    return "corrupt log"


def _flip_a_record_header(node: NodeProcess) -> str:
    """A changed length field in the header of the first record after the segment header."""
    segment = _newest_segment(node)
    first = walfile.records(segment)[0]
    with segment.open("r+b") as f:
        f.seek(first.offset + 4)
        f.write(b"\xff\xff\x00\x00")
    return "corrupt log"


def _damage_the_identity(node: NodeProcess) -> str:
    path = node.config.data_dir / "raft" / "IDENTITY"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    return "IDENTITY is damaged"


def _damage_a_snapshot_file(node: NodeProcess) -> str:
    """One byte changed in the middle of a group's snapshot file, its size kept (every group
    holds one from its founding)."""
    snapshots = sorted((node.config.data_dir / "snapshots").glob("g*-i*.snap"))
    path = max(snapshots, key=lambda p: p.stat().st_size)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x20
    path.write_bytes(bytes(raw))
    return "corrupt snapshot"


def _cut_at_the_last_entry_boundary(node: NodeProcess) -> str:
    """The newest segment cut (zeroed) at the boundary before its last entry record: whole
    records lost, as if never written."""
    segment = _newest_segment(node)
    records = walfile.records(segment)
    last_entry = max(
        (r for r in records if r.kind == walfile.KIND_ENTRY and r.group_id != 0),
        key=lambda r: r.offset,
    )
    end = records[-1].offset + records[-1].length
    walfile.zero_from(segment, last_entry.offset, end)
    return "lost entries this node acknowledged"


def _delete_every_segment(node: NodeProcess) -> str:
    """Every log segment gone, the identity file and snapshots kept (operator probe, session 31:
    the node came back an empty replica without a word; with every node's log gone, all three
    came up Ready and no group ever had a leader)."""
    for segment in (node.config.data_dir / "raft").glob("*.wal*"):
        segment.unlink()
    return "holds no Raft log segment"


def _delete_the_raft_dir(node: NodeProcess) -> str:
    shutil.rmtree(node.config.data_dir / "raft")
    return "holds no Raft log segment"


DAMAGE: dict[str, Callable[[NodeProcess], str]] = {
    "every_segment_deleted": _delete_every_segment,
    "raft_dir_deleted": _delete_the_raft_dir,
    "bit_flip_inside_a_middle_record": _flip_inside_a_middle_record,
    "record_header_length_changed": _flip_a_record_header,
    "identity_file_damaged": _damage_the_identity,
    "snapshot_file_damaged": _damage_a_snapshot_file,
    "cut_at_the_last_entry_record_boundary": _cut_at_the_last_entry_boundary,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
async def test_damaged_raft_state_is_refused_with_a_reason_and_loses_no_acknowledged_write(
    cluster: LocalCluster, damage: str
) -> None:
    acked = await _write(cluster, b"k")
    node = await _follower(cluster)
    assert await node.stop() == 0
    expected = DAMAGE[damage](node)

    await node.start()
    await _wait_exit_with(node, expected, "--rejoin")
    # The cluster never lost a write: the two healthy nodes serve every acknowledged key.
    others = [n.addr for n in cluster.nodes.values() if n is not node]
    await _readable(cluster, others, acked)

    # The way back named in every message: rejoin as a fresh replica, keeping the node id.
    node.config = dataclasses.replace(node.config, rejoin=True)
    await node.start()
    await node.wait_ready()
    await _wait_caught_up(cluster, node.node_id)
    await _readable_through(cluster, node.node_id, acked)


async def test_a_follower_that_lost_its_acknowledged_tail_refuses_then_rejoins(
    cluster: LocalCluster,
) -> None:
    acked = await _write(cluster, b"a")
    victim = await _follower(cluster)
    victim_id = victim.node_id
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
    discarded = f"discarded its copy of group {last_entry.group_id}"
    assert discarded in victim.log_path.read_text()  # the whole log: raft-rs's lines follow it
    await _wait_caught_up(cluster, victim_id)
    await _readable_through(cluster, victim_id, acked)
    more = await _write(cluster, b"b")
    await _readable_through(cluster, victim_id, {**acked, **more})
    # Stays a healthy member after another ordinary restart (no flag needed any more).
    victim.config = dataclasses.replace(victim.config, rejoin=False)
    assert await victim.stop() == 0
    await victim.start()
    await victim.wait_ready()
    await _wait_caught_up(cluster, victim_id)


async def test_a_seed_that_lost_its_catalog_never_founds_a_second_cluster(
    cluster: LocalCluster,
) -> None:
    acked = await _write(cluster, b"c")
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
    await _readable_through(cluster, 1, acked)


async def test_force_bootstrap_over_a_log_without_catalog_founds_a_new_cluster_keeping_the_old_log(
    tmp_path: Path,
) -> None:
    """Whole-cluster disaster recovery: nothing else is left, the operator says so."""
    cluster = LocalCluster(tmp_path, 1, overrides={"num_groups": 1})
    try:
        await cluster.start()
        node = cluster.nodes[1]
        before = await cluster.status(1)
        assert await node.stop() == 0
        shutil.rmtree(node.config.data_dir / "catalog")
        await node.start()
        await _wait_exit_with(node, "holds a Raft log", "--force-bootstrap")

        node.config = dataclasses.replace(node.config, force_bootstrap=True)
        await node.start()
        await node.wait_ready()
        after = await cluster.status(1)
        assert after["cluster_id"] != before["cluster_id"]
        assert list(node.config.data_dir.glob("discarded-*/raft/*.wal")), "old log not kept aside"
        async with Client([node.addr], cluster.client_credentials) as client:
            await client.put(b"k", b"v")
            assert await client.get(b"k") == b"v"
    finally:
        await cluster.close()


async def test_a_leader_snapshot_damaged_while_it_runs_is_replaced_and_the_follower_catches_up(
    tmp_path: Path,
) -> None:
    """An operator's byte editor on a running leader's snapshot file (size kept): a follower
    that needs that snapshot still gets one (the leader finds the damage while sending, logs it
    naming the file and builds a new snapshot), and the damaged file is gone. Before, every
    retry sent the damaged file and the follower refused it, so it never caught up."""
    cluster = LocalCluster(tmp_path, 3, overrides={"num_groups": 1})
    try:
        await cluster.start()
        await cluster.wait_formed(30.0)
        statuses = {i: await cluster.status(i) for i in cluster.nodes}
        leader = cluster.nodes[leader_of(statuses, 1)]
        follower = next(n for n in cluster.nodes.values() if n is not leader)
        assert await follower.stop() == 0
        # Past the default snapshot threshold (32 MiB applied): the leader snapshots and
        # compacts its log, so the follower can only catch up from a snapshot.
        value = b"v" * (256 << 10)
        others = [n.addr for n in cluster.nodes.values() if n is not follower]
        acked: dict[bytes, bytes] = {}
        async with Client(others, cluster.client_credentials) as client:
            for batch in range(36):
                items = [(b"big%d-%d" % (batch, i), value) for i in range(4)]
                await client.put_many(items)
                acked.update(items)
        snapshots = leader.config.data_dir / "snapshots"
        newest = max(snapshots.glob("g1-i*.snap"))
        assert int(newest.name.split("-i")[1].split("-")[0]) > 10, "a snapshot past founding"
        raw = bytearray(newest.read_bytes())
        raw[len(raw) // 2] ^= 0x20
        newest.write_bytes(bytes(raw))

        await follower.start()
        await follower.wait_ready()
        await _wait_caught_up(cluster, follower.node_id)
        await _readable_through(cluster, follower.node_id, acked)
        assert not newest.exists(), "a new snapshot replaced the damaged file"
        log = leader.log_path.read_text(errors="replace")
        assert "snapshot file damaged" in log, log[-4000:]
        assert str(newest) in log
    finally:
        await cluster.close()
