"""The `nodedb-cluster` command as a user runs it: real subprocesses, real exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nodedb_cluster.localcluster import LocalCluster
from nodedb_cluster.transport import Mtls, read_cert_identity

pytestmark = pytest.mark.multiprocess

CLI = [sys.executable, "-m", "nodedb_cluster.cli"]


def run(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )


def test_help_lists_every_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("start", "status", "gen-certs", "demo"):
        assert command in result.stdout


def test_bad_config_names_the_field_and_exits_2(tmp_path: Path) -> None:
    result = run(
        "start",
        "--node-id",
        "0",
        "--listen-addr",
        "127.0.0.1:9400",
        "--data-dir",
        str(tmp_path),
        "--insecure-transport",
    )
    assert result.returncode == 2
    assert "node_id" in result.stderr


def test_gen_certs_writes_private_files(tmp_path: Path) -> None:
    result = run(
        "gen-certs", "--out", str(tmp_path), "--node", "n1=127.0.0.1", "--node", "n2=127.0.0.2"
    )
    assert result.returncode == 0, result.stderr
    keys = sorted(p for p in tmp_path.rglob("*.key") if p.is_file())
    assert tmp_path / "ca-key" / "ca.key" in keys
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca-key").stat().st_mode) == 0o700


def test_gen_certs_adds_leaves_from_the_existing_ca(tmp_path: Path) -> None:
    first = run(
        "gen-certs", "--out", str(tmp_path), "--cluster-name", "prod", "--node", "n1=127.0.0.1"
    )
    assert first.returncode == 0, first.stderr
    ca_before = (tmp_path / "ca.pem").read_bytes()
    added = run(
        "gen-certs", "--out", str(tmp_path), "--node", "n4=127.0.0.4", "--admin", "ops=127.0.0.1"
    )
    assert added.returncode == 0, added.stderr
    assert (tmp_path / "ca.pem").read_bytes() == ca_before, "the CA is never replaced"
    assert read_cert_identity(tmp_path / "n4.pem").uri == "spiffe://prod/node/4"
    assert read_cert_identity(tmp_path / "ops.pem").uri == "spiffe://prod/admin/ops"
    again = run("gen-certs", "--out", str(tmp_path), "--node", "n4=127.0.0.4")
    assert again.returncode != 0
    assert "n4.pem exists" in again.stderr


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    c = LocalCluster(tmp_path / "c", 3)
    try:
        await c.start()
        yield c
    finally:
        await c.close()


async def test_status_over_mtls_as_table_and_json(cluster: LocalCluster) -> None:
    creds = cluster.client_credentials
    assert isinstance(creds, Mtls)
    args = [
        "status",
        "--addr",
        cluster.nodes[2].addr,
        "--ca",
        str(creds.ca),
        "--cert",
        str(creds.cert),
        "--key",
        str(creds.key),
    ]
    table = await asyncio.to_thread(run, *args)
    assert table.returncode == 0, table.stderr
    assert "lifecycle ready" in table.stdout
    assert "GROUP" in table.stdout
    doc = json.loads((await asyncio.to_thread(run, *args, "--json")).stdout)
    assert doc["node_id"] == 2
    assert doc["lifecycle"] == "ready"
    # Without credentials an mTLS node cannot be asked at all.
    insecure = await asyncio.to_thread(
        run, "status", "--addr", cluster.nodes[2].addr, "--insecure", "--timeout", "2"
    )
    assert insecure.returncode == 1


async def test_sigterm_shuts_a_node_down_cleanly(cluster: LocalCluster) -> None:
    node = cluster.nodes[3]
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGTERM)
    assert await node.wait_exit() == 0
    assert "shutting down" in node.log_tail()


def test_demo_forms_replicates_fails_over_and_recovers() -> None:
    result = run("demo", timeout_s=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo OK" in result.stdout
    assert "lost: []" in result.stdout
