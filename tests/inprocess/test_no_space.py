"""Disk full and torn-tail repairs, seen from Python (issue 13 parts 5 and 6).

Claims: on a real full disk (a tmpfs another file fills) the Raft engine does not stop: writes
raise `NoSpace` naming the data dir (`engine.no_space` and the metrics say so), reads are
served, and writes resume by themselves once the file is deleted. A remote client (the Rust
client core and the Python router) gets the same typed `NoSpace` at once, not retries until its
deadline. A torn tail repaired at open is reported (`recovery_repairs`, metrics) and logged once
at WARNING naming file, offset and bytes dropped.

Mounting a tmpfs needs root; those tests skip without it (tests/support/tmpfs.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from test_kv import formed

from nodedb_cluster.client import Client
from nodedb_cluster.errors import NoSpace, Timeout
from nodedb_cluster.formation.start import start_cluster
from nodedb_cluster.metrics import take_scrape
from nodedb_cluster.metrics_families import Scrape, families
from nodedb_cluster.raft import LogRepair, RaftEngine, RaftSettings, kv_put
from nodedb_cluster.transport import Insecure, Transport
from support import walfile
from support.tmpfs import fill, tmpfs

FAST = RaftSettings(tick_interval_ms=20)
DEADLINE_S = 20.0
POLL_S = 0.02


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs (skips the test unless root may mount), unmounted afterwards."""
    with tmpfs(tmp_path / "mnt", "32m") as fs:
        yield fs


@asynccontextmanager
async def lone_engine(data_dir: Path) -> AsyncIterator[RaftEngine]:
    """Node 1's engine on `data_dir`, sole voter and leader of KV group 1; closed afterwards."""
    transport = Transport(1, "127.0.0.1:0", Insecure())
    engine = RaftEngine(1, data_dir, transport, None, FAST)
    try:
        await engine.add_group(1, [1], "kv")
        await engine.campaign(1)
        yield engine
    finally:
        await engine.close()
        await transport.close()


async def until(pred: Callable[[], bool], what: str) -> None:
    """Polls `pred` (the engine's state has no event to await here). Bounded."""
    deadline = time.monotonic() + DEADLINE_S
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_S} s: {what}")
        await asyncio.sleep(POLL_S)


async def test_below_the_reserve_writes_are_refused_reads_served_and_resume_by_themselves(
    small_fs: Path,
) -> None:
    data_dir = small_fs / "n1"
    async with lone_engine(data_dir) as engine:
        await engine.propose(1, kv_put(b"before", b"1"))
        assert not engine.no_space
        assert engine.metrics()["no_space"] == 0
        # 1 MiB left: below the log's reserve (10 % of 32 MiB), the disk is not full yet.
        filler = fill(small_fs, leave_bytes=1 << 20)
        await until(lambda: engine.no_space, "NO_SPACE entered below the reserve")
        with pytest.raises(NoSpace) as refused:
            await engine.propose(1, kv_put(b"refused", b"x"))
        assert refused.value.data_dir == str(data_dir)
        assert str(data_dir) in str(refused.value)
        assert "resume by themselves" in str(refused.value)
        assert not refused.value.retryable
        metrics = engine.metrics()
        assert metrics["no_space"] == 1
        assert metrics["no_space_entered"] == 1
        assert metrics["proposals_no_space"] >= 1
        assert metrics["log_stalls"] == 0, "refused before the log itself met ENOSPC"
        assert await engine.kv_read(1, b"before") == b"1", "reads are served"
        # Space is freed: no restart, writes resume.
        filler.unlink()
        await until(lambda: not engine.no_space, "NO_SPACE left after freeing space")
        await engine.propose(1, kv_put(b"after", b"2"))
        assert await engine.kv_read(1, b"after") == b"2"
        assert engine.metrics()["no_space"] == 0


async def test_a_disk_filled_to_the_last_byte_stalls_and_every_write_lands_once_freed(
    small_fs: Path,
) -> None:
    async with lone_engine(small_fs / "n1") as engine:
        filler = fill(small_fs)  # another process took the reserve too
        acknowledged: list[bytes] = []
        unknown: list[bytes] = []
        refused = False
        for i in range(10_000):
            key = b"k%d" % i
            try:
                await engine.propose(1, kv_put(key, b"v" * 1000), timeout_ms=500)
                acknowledged.append(key)
            except NoSpace:
                refused = True
                break
            except Timeout:
                unknown.append(key)  # its round is stalled on the full disk: outcome unknown
        assert refused, "writes were never refused"
        assert engine.no_space
        assert engine.metrics()["log_stalls"] >= 1, "the log's own write met ENOSPC"
        filler.unlink()
        await until(lambda: not engine.no_space, "NO_SPACE left after freeing space")
        for key in acknowledged + unknown:  # the stalled writes landed too, nothing lost
            assert await engine.kv_read(1, key) == b"v" * 1000, key
        await engine.propose(1, kv_put(b"after", b"2"))


async def test_a_remote_client_gets_no_space_at_once_not_retries(small_fs: Path) -> None:
    async with formed(small_fs, size=1) as nodes:
        node = nodes[0]
        assert node.engine is not None
        engine = node.engine
        addrs = [str(node.config.listen_addr)]
        async with Client(addrs, Insecure(), timeout_s=10.0) as client:
            await client.put(b"before", b"1")
            filler = fill(small_fs)
            await until(lambda: engine.no_space, "NO_SPACE entered")
            scrape = Scrape(lifecycle="ready", lifecycle_states=())
            take_scrape(node, scrape)
            exported = {m.name: m for m in families(scrape)}
            assert exported["nodedb_raft_no_space"].type == "gauge"
            assert exported["nodedb_raft_no_space"].samples[0].value == 1.0
            assert exported["nodedb_raft_no_space_entered"].type == "counter"
            started = time.monotonic()
            with pytest.raises(NoSpace) as refused:
                await client.put(b"refused", b"x")
            took = time.monotonic() - started
            assert took < 5.0, f"NoSpace retried for {took:.1f} s instead of raised"
            assert refused.value.data_dir == str(node.config.data_dir)
            assert await client.get(b"before") == b"1", "reads are served"
            filler.unlink()
            await until(lambda: not engine.no_space, "NO_SPACE left")
            await client.put(b"after", b"2")
            assert await client.get(b"after") == b"2"


async def test_a_torn_tail_repair_is_reported_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with formed(tmp_path, size=1) as nodes:
        node = nodes[0]
        await node.kv.put(b"k", b"v")
        assert node.engine is not None
        assert node.engine.recovery_repairs() == []
        data_dir = node.config.data_dir
        config = node.config
    # A write that never completed: 10 bytes after the last record, then zeros.
    segment = walfile.segments(data_dir / "raft")[-1]
    last = walfile.records(segment)[-1]
    end = last.offset + last.length
    with segment.open("r+b") as f:
        f.seek(end)
        f.write(b"\xab" * 10)
    with caplog.at_level(logging.WARNING, logger="nodedb_cluster.node"):
        node = await start_cluster(config)
    try:
        assert node.engine is not None
        assert node.engine.recovery_repairs() == [
            LogRepair(str(segment), end, 10, node.engine.recovery_repairs()[0].reason)
        ]
        metrics = node.engine.metrics()
        assert metrics["wal_torn_tail_repairs_total"] == 1
        assert metrics["wal_torn_tail_bytes_discarded_total"] == 10
        assert node.metrics()["raft_wal_torn_tail_repairs_total"] == 1
        logged = [r for r in caplog.records if "recovery repaired" in r.getMessage()]
        assert len(logged) == 1, [r.getMessage() for r in logged]
        line = logged[0].getMessage()
        assert str(segment) in line, line
        assert "10 bytes" in line, line
        assert f"offset {end}" in line, line
        assert logged[0].levelno == logging.WARNING
        assert await node.kv.get(b"k") == b"v"
    finally:
        await node.shutdown()
