"""Revocation on real processes (issue 12, part 4): a 3-node mTLS cluster whose nodes load
`tls_crl_path`; a client certificate is revoked with `nodedb-cluster revoke`, node 1 gets SIGHUP,
and the same client is refused by node 1, on its open connection and on a new one. A broken CRL
on a later SIGHUP is refused with a logged error and the revocation stays in force."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nodedb_cluster import wire
from nodedb_cluster.client import CLIENT_NODE_ID
from nodedb_cluster.errors import ClusterError, HandshakeError
from nodedb_cluster.localcluster import LocalCluster, NodeProcess
from nodedb_cluster.transport import Mtls, Transport, ca_key_path, revoke_node_credentials

pytestmark = pytest.mark.multiprocess

LOG_WAIT_S = 10.0


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    crl = tmp_path / "c" / "crl.pem"
    c = LocalCluster(tmp_path / "c", 3, overrides={"tls_crl_path": crl, "num_groups": 1})
    assert isinstance(c.client_credentials, Mtls)
    certs = c.client_credentials.ca.parent
    revoke_node_credentials(certs / "ca.pem", ca_key_path(certs), [], crl)  # an empty CRL
    try:
        await c.start()
        yield c
    finally:
        await c.close()


async def wait_log(node: NodeProcess, text: str) -> None:
    """Until the node's log holds `text` (a node has no push channel to the test), bounded."""
    async with asyncio.timeout(LOG_WAIT_S):
        while True:
            if text in node.log_tail():
                return
            await asyncio.sleep(0.05)  # a log file has no push channel: poll, bounded


async def status(transport: Transport, addr: str) -> int:
    kind, _ = await transport.send_rpc_to_addr(addr, wire.MessageKind.STATUS_REQUEST, b"")
    return kind


async def test_a_revoked_client_is_refused_after_sighup(cluster: LocalCluster) -> None:
    client = cluster.client_credentials
    assert isinstance(client, Mtls)
    node1, node2 = cluster.nodes[1], cluster.nodes[2]
    crl = cluster.base_dir / "crl.pem"
    async with Transport(CLIENT_NODE_ID, "127.0.0.1:0", client, rpc_timeout=3.0) as old:
        assert await status(old, node1.addr) == wire.MessageKind.STATUS_RESPONSE
        revoked = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "nodedb_cluster.cli", "revoke", "--ca-dir",
             str(client.ca.parent), "--cert", str(client.cert), "--crl", str(crl)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert revoked.returncode == 0, revoked.stderr
        assert node1.proc is not None
        os.kill(node1.proc.pid, signal.SIGHUP)
        await wait_log(node1, "1 connection(s) of revoked peers closed")
        # The open connection was closed by the node; the redial is refused as revoked.
        with pytest.raises(ClusterError):
            await status(old, node1.addr)
        with pytest.raises(HandshakeError, match="revoked"):
            await status(old, node1.addr)
    async with Transport(CLIENT_NODE_ID, "127.0.0.1:0", client, rpc_timeout=3.0) as new:
        with pytest.raises(HandshakeError, match="revoked"):
            await status(new, node1.addr)
        # Node 2 was not told yet: it still serves the client (a reload is per node).
        assert await status(new, node2.addr) == wire.MessageKind.STATUS_RESPONSE
    # A broken CRL on the next SIGHUP: logged, refused, the revocation stays, the node runs.
    crl.write_text("not a CRL")
    os.kill(node1.proc.pid, signal.SIGHUP)
    await wait_log(node1, "not reloaded, the one in force stays")
    assert node1.running
    admin = cluster.admin_credentials
    async with Transport(CLIENT_NODE_ID, "127.0.0.1:0", admin, rpc_timeout=3.0) as ops:
        assert await status(ops, node1.addr) == wire.MessageKind.STATUS_RESPONSE
    async with Transport(CLIENT_NODE_ID, "127.0.0.1:0", client, rpc_timeout=3.0) as again:
        with pytest.raises(HandshakeError, match="revoked"):
            await status(again, node1.addr)
