"""Revocation and renewal on real processes (issue 12, part 4): a 3-node mTLS cluster whose
nodes load `tls_crl_path`; a client certificate is revoked with `nodedb-cluster revoke`, node 1
gets SIGHUP, and the same client is refused by node 1, on its open connection and on a new one. A
broken CRL on a later SIGHUP is refused with a logged error and the revocation stays in force.

Renewal: peers pin a node's key, so a node given a new key pair refuses to start (its peers would
refuse it for good); `gen-certs --renew` gives it a new certificate for the key it has, and it
rejoins and catches up."""

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
from nodedb_cluster.client import CLIENT_NODE_ID, Client
from nodedb_cluster.errors import ClusterError, HandshakeError
from nodedb_cluster.faults.checks import convergence_problems
from nodedb_cluster.localcluster import LocalCluster, NodeProcess, NodeProcessError
from nodedb_cluster.transport import (
    Mtls,
    Transport,
    ca_key_path,
    certificate_not_after,
    revoke_node_credentials,
)

pytestmark = pytest.mark.multiprocess

LOG_WAIT_S = 10.0
FORMED_S = 30.0
CAUGHT_UP_S = 20.0


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


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodedb_cluster.cli", *map(str, args)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


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
            cli, "revoke", "--ca-dir", client.ca.parent, "--cert", client.cert, "--crl", crl
        )
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


async def test_a_node_renewed_over_its_key_rejoins_and_one_given_a_new_key_is_refused(
    cluster: LocalCluster,
) -> None:
    await cluster.wait_formed(FORMED_S)
    node3 = cluster.nodes[3]
    certs = cluster.base_dir / "certs"
    pem, key = certs / "n3.pem", certs / "n3.key"
    kept = {path: path.read_bytes() for path in (pem, key)}
    await node3.stop()
    # What `gen-certs` without --renew gives: a new key pair, which node 3's peers would refuse
    # (`unknown_sender`) for good: node 3 refuses to start with it, saying what to do instead.
    for path in kept:
        path.unlink()
    reissued = await asyncio.to_thread(cli, "gen-certs", "--out", certs, "--node", "n3=127.0.0.3")
    assert reissued.returncode == 0, reissued.stderr
    await node3.start()
    with pytest.raises(NodeProcessError, match="--renew n3"):
        await node3.wait_ready()
    assert not node3.running
    for path, data in kept.items():
        path.write_bytes(data)
    # Renewed over the key it had: same pin, new validity (30 days instead of 365).
    year_end = certificate_not_after(pem)
    renewed = await asyncio.to_thread(
        cli, "gen-certs", "--out", certs, "--renew", "n3", "--days", "30"
    )
    assert renewed.returncode == 0, renewed.stderr
    assert "n3: renewed until" in renewed.stdout
    assert year_end - certificate_not_after(pem) > 300 * 86_400
    assert key.read_bytes() == kept[key], "the key is only read"
    assert pem.read_bytes() != kept[pem]
    addrs = [cluster.nodes[i].addr for i in (1, 2)]
    async with Client(addrs, cluster.client_credentials) as client:
        await client.put_many([(b"while-away-%d" % i, b"x") for i in range(200)])
    await node3.start()
    await cluster.wait_for(
        lambda s: not convergence_problems(s, set(cluster.nodes), 3),
        cluster.nodes,
        CAUGHT_UP_S,
        "node 3 caught up: every replica of every group the same",
    )
