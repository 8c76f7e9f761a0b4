"""Fail fast: a node whose Raft engine stops on its own (here: a panic on the driver thread, from
the failpoint) says why once, is marked Failed and exits non-zero within a second, so a
supervisor restarts it; it never lingers answering errors. Also while it is still restarting:
then the reason is the last line it writes."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.config import ClusterConfig
from nodedb_cluster.formation.start import start_cluster
from nodedb_cluster.lifecycle import Failed
from nodedb_cluster.localcluster import free_port
from support.cli_run import run_cli

FAILPOINT = "NODEDB_FAILPOINT_DRIVER_PANIC_AFTER_MS"
PANIC_AFTER_MS = 1500
RESTART_EXIT_BOUND_S = 20.0


async def _start(config_path: Path, panic_after_ms: str | None) -> asyncio.subprocess.Process:
    env = {**os.environ}
    if panic_after_ms is not None:
        env[FAILPOINT] = panic_after_ms
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nodedb_cluster.cli",
        "start",
        "--config",
        str(config_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def _ready(proc: asyncio.subprocess.Process) -> None:
    """Await the node's READY line (its start's last step), bounded."""
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        ready = await proc.stdout.readline()
    assert ready.startswith(b"READY "), ready


def _config_file(tmp_path: Path) -> Path:
    config_path = tmp_path / "n1.toml"
    config_path.write_text(_config(tmp_path).to_toml())
    return config_path


def _config(tmp_path: Path) -> ClusterConfig:
    addr = parse_socket_addr(f"127.0.0.1:{free_port(['127.0.0.1'])}")
    return ClusterConfig(
        node_id=1,
        listen_addr=addr,
        seed_nodes=(addr,),
        data_dir=tmp_path / "n1",
        insecure_transport=True,
        num_groups=2,
    )


@pytest.mark.multiprocess
async def test_a_node_whose_engine_dies_exits_non_zero_within_a_second(tmp_path: Path) -> None:
    proc = await _start(_config_file(tmp_path), str(PANIC_AFTER_MS))
    try:
        await _ready(proc)
        async with asyncio.timeout(PANIC_AFTER_MS / 1000 + 10):
            _, err = await proc.communicate()
        exited_at = time.time()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = err.decode(errors="replace")
    assert proc.returncode == 1, text
    assert "failed: raft engine stopped: driver thread panicked: failpoint" in text, text
    stopped_lines = [
        line for line in text.splitlines() if "ERROR" in line and "the Raft engine stopped" in line
    ]
    assert len(stopped_lines) == 1, "the reason is logged once"
    logged_at = datetime.datetime.strptime(stopped_lines[0][:23], "%Y-%m-%d %H:%M:%S,%f")
    assert exited_at - logged_at.timestamp() < 1.0, "exits within a second of the engine stopping"


@pytest.mark.multiprocess
async def test_a_node_whose_engine_dies_while_it_restarts_exits_with_the_reason_last(
    tmp_path: Path,
) -> None:
    """The engine stops at several points of the restart (its open, the first requests, the
    reconcile round): each time the process exits 1 within a bound, and its last line names the
    panic (not a request the dead engine dropped, nor the core's records forwarded on the way
    out). A restart awaiting an engine request once hung here for good."""
    config_path = _config_file(tmp_path)
    formed = await _start(config_path, None)
    await _ready(formed)
    formed.terminate()
    async with asyncio.timeout(30):
        assert await formed.wait() == 0
    for panic_after_ms in ("0", "5", "20", "60"):
        code, _, text = await run_cli(
            "start",
            "--config",
            str(config_path),
            timeout_s=RESTART_EXIT_BOUND_S,
            env={**os.environ, FAILPOINT: panic_after_ms},
        )
        assert code == 1, text
        assert "Traceback" not in text, text
        last = text.strip().splitlines()[-1]
        assert last.startswith("nodedb-cluster: node 1 failed: raft engine stopped: "), text
        assert "driver thread panicked: failpoint" in last, text


@pytest.mark.multiprocess
@pytest.mark.parametrize("taken", ["metrics", "swim"])
async def test_a_node_whose_metrics_or_swim_port_is_taken_exits_before_it_forms(
    tmp_path: Path, taken: str
) -> None:
    """Another process holds the node's metrics (TCP) or SWIM (UDP) port: the start fails with
    the address and the OS's reason as its last line, before anything of a cluster is written.
    It used to bootstrap first and then die (a traceback, for metrics): a joining node would
    have become a member that never ran. Started again with the port free, it forms."""
    config = _config(tmp_path)
    if taken == "metrics":
        port = free_port(["127.0.0.1"])
        config = replace(config, metrics_addr=parse_socket_addr(f"127.0.0.1:{port}"))
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        expected = f"cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    else:
        assert config.swim_udp_addr is not None
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        holder.bind(config.swim_udp_addr.as_tuple())
        expected = f"cannot bind SWIM UDP {config.swim_udp_addr}: Address already in use"
    config_path = tmp_path / "n1.toml"
    config_path.write_text(config.to_toml())
    try:
        code, _, text = await run_cli("start", "--config", str(config_path), timeout_s=30)
    finally:
        holder.close()
    assert code == 1, text
    assert "Traceback" not in text, text
    assert text.strip().splitlines()[-1] == f"nodedb-cluster: node 1 failed: {expected}", text
    assert not (config.data_dir / "raft").exists(), "nothing of a cluster was written"
    formed = await _start(config_path, None)
    try:
        await _ready(formed)
    finally:
        formed.terminate()
        async with asyncio.timeout(30):
            await formed.wait()


@pytest.mark.multiprocess
async def test_a_second_process_on_a_running_nodes_data_dir_exits_before_reading_it(
    tmp_path: Path,
) -> None:
    """A second `start` on the data dir of a running node (another port, and `--rejoin`, which
    moves a damaged log aside) is refused with the holder's pid before it reads the data dir:
    the running node's Raft log stays where it is and the node keeps serving. Before, the copy
    read the catalog and logged an address change before the log's own lock refused it (and
    given another `--node-id` as well, `--rejoin` moved the running node's log aside first)."""
    config = _config(tmp_path)
    config_path = tmp_path / "n1.toml"
    config_path.write_text(config.to_toml())
    running = await _start(config_path, None)
    try:
        await _ready(running)
        log_files = sorted(p.name for p in (config.data_dir / "raft").iterdir())
        elsewhere = parse_socket_addr(f"127.0.0.2:{free_port(['127.0.0.2'])}")
        copy_path = tmp_path / "copy.toml"
        copy = replace(config, listen_addr=elsewhere, swim_udp_addr=None, rejoin=True)
        copy_path.write_text(copy.to_toml())
        code, _, text = await run_cli("start", "--config", str(copy_path), timeout_s=30)
        assert code == 1, text
        last = text.strip().splitlines()[-1]
        assert "is in use by another process" in last, text
        assert f"(pid {running.pid})" in last, text
        assert "restarts at" not in text, "nothing of the data dir was read"
        assert sorted(p.name for p in (config.data_dir / "raft").iterdir()) == log_files
        assert not list(config.data_dir.glob("discarded-*"))
        addr = str(config.listen_addr)
        code, out, text = await run_cli("status", "--addr", addr, "--insecure", "--json")
        assert code == 0, text
        assert json.loads(out)["lifecycle"] == "ready", "the running node is untouched"
    finally:
        running.terminate()
        async with asyncio.timeout(30):
            await running.wait()
    assert running.returncode == 0


async def test_an_embedded_node_is_marked_failed_and_stops_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAILPOINT, str(PANIC_AFTER_MS))
    node = await start_cluster(_config(tmp_path))
    try:
        async with asyncio.timeout(PANIC_AFTER_MS / 1000 + 5):
            await node.failed.wait()
        assert isinstance(node.lifecycle.state, Failed)
        assert node.failure is not None
        assert "panicked" in node.failure
        async with asyncio.timeout(5):
            await node.shutdown()  # returns once the shutdown the node began itself is done
        assert node.transport.closed
    finally:
        await node.shutdown()
