"""A cluster whose data directories were written by a build from before issue 14 restarts on
this one and serves what it held (issue 14: "a node from before the change restarts on its old
data").

The fixture (`tests/fixtures/old_data.tar.xz`, made by `tests/support/make_old_data_fixture.py`
under the commit its manifest names) is three nodes' directories after a SIGTERM: the catalog
and group 0 of a formed cluster, KV data in every group, deletes, a CAS chain, exactly-once
sessions, and one group snapshotted by that build with entries after the snapshot in its log.
"""

from __future__ import annotations

import asyncio
import json
import tarfile
from pathlib import Path

import pytest

from nodedb_cluster.client import Client
from nodedb_cluster.localcluster import LocalCluster
from support import old_data as od

pytestmark = pytest.mark.multiprocess

FIXTURE = Path(__file__).parent.parent / "fixtures" / "old_data.tar.xz"
FORMED_S = 30.0


async def check_everything_old_is_there(client: Client, hot_group: int) -> None:
    assert client.group_of(od.HOT_KEY) == hot_group, "the same key lands in the same group"
    expected = od.expected()
    assert await client.get_many(list(expected)) == list(expected.values())


def unpack(base: Path) -> dict[str, object]:
    """The fixture's directories under `base`; its manifest."""
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(base, filter="data")
    manifest: dict[str, object] = json.loads((base / od.MANIFEST).read_text())
    snapshots = list(base.glob(f"node*/snapshots/g{manifest['hot_group']}-*.snap"))
    assert len(snapshots) == 3, "each node holds the old build's snapshot of the hot group"
    return manifest


@pytest.mark.timeout(2 * FORMED_S + 60)  # its own bounds: two formations, then reads
async def test_a_cluster_written_before_issue_14_restarts_on_this_build_and_loses_nothing(
    tmp_path: Path,
) -> None:
    manifest = unpack(tmp_path)
    hot_group = int(str(manifest["hot_group"]))
    # The old certificates (peers pin each other's keys) and the old addresses.
    cluster = LocalCluster(tmp_path, 3, port=int(str(manifest["port"])))
    try:
        await cluster.start()
        await cluster.wait_formed(FORMED_S)
        addrs = [n.addr for n in cluster.nodes.values()]
        async with Client(addrs, cluster.client_credentials) as client:
            await check_everything_old_is_there(client, hot_group)
            # Writes go on from where the old build stopped, in every group.
            assert await client.cas(od.CAS_KEY, b"%d" % od.CAS_STEPS, b"after")
            await client.put_many([(b"new%d" % i, b"%d" % i) for i in range(200)])
            await client.put(od.HOT_KEY, b"hot-after")
        # And the directories, now written by this build too, restart again.
        await asyncio.gather(*(n.stop() for n in cluster.nodes.values()))
        await cluster.start()
        await cluster.wait_formed(FORMED_S)
        async with Client(addrs, cluster.client_credentials) as client:
            assert await client.get(od.CAS_KEY) == b"after"
            assert await client.get(od.HOT_KEY) == b"hot-after"
            news = await client.get_many([b"new%d" % i for i in range(200)])
            assert news == [b"%d" % i for i in range(200)]
            old = {k: v for k, v in od.expected().items() if k not in (od.CAS_KEY, od.HOT_KEY)}
            assert await client.get_many(list(old)) == list(old.values())
    finally:
        await cluster.close()
    # Group 0 replays entries its catalog had not saved while the engine opens, before the node
    # serves: that path once raised in `on_metadata_change` ("serves no KV requests").
    for node in cluster.nodes.values():
        log = node.log_path.read_text(errors="replace")
        assert "Traceback" not in log, node.log_tail()
        assert " ERROR " not in log, node.log_tail()
