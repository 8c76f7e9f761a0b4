"""Disk faults on a real node's Raft log and identity file (issue 13 part 7), on a real 3-node
cluster: for each kind of damage the node either refuses to start, exits non-zero within a bound
and says why in its log (never a Python traceback, never a process left answering errors), or it
recovers; either way every acknowledged key stays readable with its value from the cluster, and
a node that came back serves them too.

The catalog's cases (a byte changed in every key, truncations, page flags) are in
test_catalog_integrity.py; the WAL's own byte-level recovery in rust/wal/tests; a lost tail and a
lost catalog, with the way back, in test_rejoin_multiprocess.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import walfile
from nodedb_cluster.client import Client
from nodedb_cluster.localcluster import LocalCluster, NodeProcess, leader_of

pytestmark = pytest.mark.multiprocess

KEYS = 200
EXIT_OR_READY_S = 30.0


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
    statuses = {i: await cluster.status(i) for i in cluster.nodes}
    groups = {int(g["group_id"]) for s in statuses.values() for g in s["groups"]}
    leaders = {leader_of(statuses, g) for g in groups}
    return cluster.nodes[max(i for i in cluster.nodes if i not in leaders)]


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


DAMAGE: dict[str, Callable[[NodeProcess], str]] = {
    "bit_flip_inside_a_middle_record": _flip_inside_a_middle_record,
    "record_header_length_changed": _flip_a_record_header,
    "identity_file_damaged": _damage_the_identity,
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
    code = await node.wait_exit(EXIT_OR_READY_S)
    tail = node.log_tail()
    assert code != 0, tail
    assert expected in tail, tail
    assert "Traceback" not in tail, tail
    # The cluster never lost a write: the two healthy nodes serve every acknowledged key.
    others = [n.addr for n in cluster.nodes.values() if n is not node]
    await _readable(cluster, others, acked)

    # The way back named in every message: rejoin as a fresh replica, keeping the node id.
    node.config = dataclasses.replace(node.config, rejoin=True)
    await node.start()
    await node.wait_ready()
    await cluster.wait_for(
        lambda s: (
            all(node.node_id in g["voters"] for g in s[node.node_id]["groups"])
            and len(s[node.node_id]["groups"]) == 3
        ),
        cluster.nodes,
        60.0,
        f"node {node.node_id} a voter of every group again",
    )
    await _readable(cluster, [node.addr], acked)
