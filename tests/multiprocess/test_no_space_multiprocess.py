"""A real node process whose disk fills up (issue 13 part 5, on a tmpfs): it turns NO_SPACE
(status and metrics say so), refuses writes with a typed error naming its data dir, keeps
serving reads, never exits or lingers broken, and takes writes again by itself once space is
freed, with every acknowledged write still there."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nodedb_cluster.client import Client
from nodedb_cluster.errors import NoSpace, Timeout
from nodedb_cluster.localcluster import LocalCluster, Status
from support.tmpfs import fill, tmpfs

pytestmark = pytest.mark.multiprocess

FS_SIZE = "160m"
"""One preallocated 64 MiB log segment and the catalog fit; the log's reserve is then 16 MiB
(10 % of the filesystem, less than two segments)."""
LEFT_BYTES = 4 << 20
"""Space left by the other process's file: below the reserve, not yet a full disk."""
STATE_WAIT_S = 20.0
FILL_ATTEMPTS_MAX = 4


async def _fill_until_no_space(
    cluster: LocalCluster, fs: Path
) -> tuple[list[Path], dict[int, Status]]:
    """Fill the disk to `LEFT_BYTES` free and wait for NO_SPACE. A segment preparation that was
    still writing when the filler ran fails and gives its space back (the disk is then above
    the reserve again, rightly not NO_SPACE): the filler tops up, a bounded number of times."""
    blockers: list[Path] = []
    for attempt in range(FILL_ATTEMPTS_MAX):
        blockers.append(fill(fs, leave_bytes=LEFT_BYTES, name=f"blocker{attempt}"))
        try:
            statuses = await cluster.wait_for(
                lambda s: bool(s[1].get("no_space")), [1], STATE_WAIT_S / 4, "NO_SPACE"
            )
        except Timeout:
            continue
        return blockers, statuses
    pytest.fail(f"not NO_SPACE after {FILL_ATTEMPTS_MAX} fills to {LEFT_BYTES} bytes free")


async def test_a_node_whose_disk_fills_refuses_writes_serves_reads_and_resumes(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "mnt", FS_SIZE) as fs:
        data_dir = fs / "n1"
        cluster = LocalCluster(tmp_path / "c", 1, overrides={"data_dir": data_dir, "num_groups": 1})
        try:
            await cluster.start()
            await cluster.wait_formed(30.0)
            node = cluster.nodes[1]
            async with Client([node.addr], cluster.client_credentials) as client:
                acked = [(b"k%d" % i, b"v%d" % i) for i in range(200)]
                await client.put_many(acked)

                blockers, statuses = await _fill_until_no_space(cluster, fs)
                assert str(data_dir) in str(statuses[1]["no_space"])
                with pytest.raises(NoSpace) as refused:
                    await client.put(b"refused", b"x")
                assert str(data_dir) in str(refused.value)
                keys = [k for k, _ in acked]
                assert await client.get_many(keys) == [v for _, v in acked], "reads served"
                assert node.running

                for blocker in blockers:
                    blocker.unlink()
                await cluster.wait_for(
                    lambda s: not s[1].get("no_space"), [1], STATE_WAIT_S, "NO_SPACE cleared"
                )
                await client.put(b"after", b"1")
                assert await client.get(b"after") == b"1"
                assert await client.get(b"refused") is None
                assert await client.get_many(keys) == [v for _, v in acked]
            assert node.running
            log = node.log_tail()
            assert "Traceback" not in log
            # Said each way (operator probe, session 31: neither wrote a line).
            assert "writes refused until space is freed there" in log, log
            assert "NO_SPACE over" in log, log
        finally:
            await cluster.close()


async def test_a_node_on_a_read_only_data_dir_refuses_to_start_naming_it(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", FS_SIZE) as fs:
        data_dir = fs / "n1"
        cluster = LocalCluster(tmp_path / "c", 1, overrides={"data_dir": data_dir, "num_groups": 1})
        try:
            await cluster.start()
            node = cluster.nodes[1]
            assert await node.stop() == 0
            remount = await asyncio.create_subprocess_exec("mount", "-o", "remount,ro", str(fs))
            assert await remount.wait() == 0
            await node.start()
            assert await node.wait_exit(STATE_WAIT_S) != 0
            tail = node.log_tail()
            assert "Read-only file system" in tail, tail
            assert str(data_dir) in tail, tail
            assert "Traceback" not in tail, tail
        finally:
            await cluster.close()
