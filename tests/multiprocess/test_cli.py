"""The `nodedb-cluster` command as a user runs it: real subprocesses, real exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
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
    assert result.stderr.count("\n") == 1, result.stderr  # the reason, once
    assert "invalid --node-id: " in result.stderr  # the flag as typed, not the config key


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


CLIENT_COMMANDS = (
    ("status",),
    ("get", "k"),
    ("put", "k", "v"),
    ("delete", "k"),
    ("audit",),
    ("join-token", "--node-id", "4"),
)


def test_a_dead_address_is_named_in_one_wording_by_every_client_command() -> None:
    # A real address nobody listens on (a bound, silent UDP socket: QUIC gets no answer).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{silent.getsockname()[1]}"
        flags = ["--addr", addr, "--insecure", "--timeout", "0.5"]
        for command in CLIENT_COMMANDS:
            result = run(*command, *flags)
            assert result.returncode == 3, (command, result.stderr)
            assert (
                result.stderr
                == f"nodedb-cluster: peer {addr} unreachable: no answer within 0.5 s\n"
            )
            assert result.stdout == ""
            # --insecure is the user's choice: no warning about the client's own endpoint.
            assert "INSECURE" not in result.stderr
            as_json = run(*command, *flags, "--json")
            assert as_json.returncode == 3
            assert as_json.stdout == ""
            assert json.loads(as_json.stderr) == {
                "addr": addr,
                "error": f"peer {addr} unreachable: no answer within 0.5 s",
                "exit_code": 3,
                "type": "Unreachable",
            }
        # The address from the environment is the same address.
        env = {**os.environ, "NODEDB_CLUSTER_ADDR": addr}
        from_env = subprocess.run(
            [*CLI, "status", "--insecure", "--timeout", "0.5"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )
        assert from_env.returncode == 3
        assert addr in from_env.stderr


def test_a_start_failure_prints_its_reason_once(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        result = run(
            "start",
            "--node-id=1",
            f"--listen-addr={addr}",
            f"--seed-nodes={addr}",
            f"--data-dir={tmp_path / 'n1'}",
            "--insecure-transport",
        )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert [line for line in lines if "Address already in use" in line] == [
        f"nodedb-cluster: node 1 failed: cannot bind {addr}: Address already in use (os error 98)"
    ], result.stderr


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
    assert {m[0] for m in doc["members"]} == {1, 3}  # SWIM's view, on by default
    # Without credentials an mTLS node cannot be asked at all.
    insecure = await asyncio.to_thread(
        run, "status", "--addr", cluster.nodes[2].addr, "--insecure", "--timeout", "2"
    )
    assert insecure.returncode == 1


async def test_kv_commands_print_one_json_object_with_credentials_from_the_environment(
    cluster: LocalCluster,
) -> None:
    creds = cluster.client_credentials
    assert isinstance(creds, Mtls)
    env = {
        **os.environ,
        "NODEDB_CLUSTER_ADDR": cluster.nodes[1].addr,
        "NODEDB_CLUSTER_CA": str(creds.ca),
        "NODEDB_CLUSTER_CERT": str(creds.cert),
        "NODEDB_CLUSTER_KEY": str(creds.key),
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )

    put = await asyncio.to_thread(cli, "put", "greeting", "hello")
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout) == {"key": "greeting", "written": True}
    got = await asyncio.to_thread(cli, "get", "greeting")
    assert json.loads(got.stdout) == {"key": "greeting", "found": True, "value": "hello"}
    deleted = await asyncio.to_thread(cli, "delete", "greeting")
    assert json.loads(deleted.stdout) == {"key": "greeting", "deleted": True}
    missing = await asyncio.to_thread(cli, "get", "greeting")
    assert missing.returncode == 1  # absent: the documented exit code, and still one object
    assert json.loads(missing.stdout) == {"key": "greeting", "found": False, "value": None}
    # A client certificate may not issue join tokens: refused (1), as one JSON object on stderr.
    refused = await asyncio.to_thread(cli, "join-token", "--node-id", "4")
    assert refused.returncode == 1
    error = json.loads(refused.stderr)
    assert error["exit_code"] == 1
    assert error["type"] == "PermissionDenied"


async def test_sigterm_shuts_a_node_down_cleanly(cluster: LocalCluster) -> None:
    node = cluster.nodes[3]
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGTERM)
    assert await node.wait_exit() == 0
    # The whole log: lines forwarded while it shuts down may push this one out of the tail.
    assert "shutting down" in node.log_path.read_text(errors="replace")


@pytest.mark.timeout(180 + 30)  # its own bound: the demo subprocess, 180 s
def test_demo_forms_replicates_fails_over_and_recovers() -> None:
    result = run("demo", timeout_s=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo OK" in result.stdout
    assert "lost: []" in result.stdout
