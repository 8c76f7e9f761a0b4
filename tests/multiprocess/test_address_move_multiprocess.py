"""A node restarted at another address (a re-IPed host, a rescheduled pod): real `nodedb-cluster
start` processes, mTLS, SWIM at its defaults.

Goal: the node records its new address through group 0 and every member dials it there. Method:
a 3-node LocalCluster; node 3 is stopped, its certificate issued again for 127.0.0.4 over
the same key (`gen-certs --renew n3=127.0.0.4`: peers pin the key and check the address they
dial against the certificate), node 1 is stopped too, and node 3 is started at its new address.
A write then commits only if node 2 reaches node 3 there before any record of it (the record
itself needs nodes 2 and 3). Then: nodes 2 and 3 record it, SWIM on node 2 hears node 3 ALIVE,
node 1 restarts on its old catalog and learns it, and a Client given only the new address is
served."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodedb_cluster.client import Client
from nodedb_cluster.localcluster import LocalCluster, NodeProcessError, Status, free_port

pytestmark = pytest.mark.multiprocess

RECORDED_WITHIN_S = 30.0
MOVER = 3


def knows(status: Status, node_id: int, addr: str) -> bool:
    return any(int(n[0]) == node_id and n[1] == addr for n in status["nodes"])


def hears_alive(status: Status, node_id: int) -> bool:
    return any(int(m[0]) == node_id and m[1] == "ALIVE" for m in status["members"])


async def test_a_node_restarted_at_another_address_serves_its_groups_there(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, 3, overrides={"num_groups": 2})
    creds = cluster.client_credentials
    try:
        await cluster.start()
        await cluster.wait_formed(60)
        async with Client([n.addr for n in cluster.nodes.values()], creds) as c:
            await c.put(b"before", b"1")
        mover = cluster.nodes[MOVER]
        old = mover.addr
        await mover.stop()
        port = free_port(["127.0.0.4"])
        cert = tmp_path / "certs" / f"n{MOVER}.pem"
        naming_the_old = cert.read_bytes()
        cluster.readdress(MOVER, "127.0.0.4", port)
        # Peers check the address they dial against the certificate: one that names the old
        # address only is refused at start, saying how to issue it again over the same key.
        cert.write_bytes(naming_the_old)
        with pytest.raises(NodeProcessError, match=rf"--renew n{MOVER}=127\.0\.0\.4"):
            await cluster.start([MOVER])
        cluster.readdress(MOVER, "127.0.0.4", port)
        # Node 1 down too: the groups' majority is nodes 2 and 3, and node 2 knows node 3 only
        # at its old address until group 0 records the new one, which needs that majority.
        # Node 3 tells node 2 where it listens (PEER_ADDRESS) as it restarts.
        await cluster.nodes[1].stop()
        await cluster.start([MOVER])
        assert f"node {MOVER} restarts at {mover.addr}" in mover.log_path.read_text()
        async with Client([cluster.nodes[2].addr, mover.addr], creds) as c:
            await c.put(b"after", b"2")
        await cluster.wait_for(
            lambda s: all(knows(st, MOVER, mover.addr) for st in s.values()),
            [2, MOVER],
            RECORDED_WITHIN_S,
            f"nodes 2 and 3 to know node {MOVER} at {mover.addr}",
        )
        await cluster.wait_for(
            lambda s: hears_alive(s[2], MOVER),
            [2],
            RECORDED_WITHIN_S,
            f"SWIM on node 2 to hear node {MOVER} ALIVE at its new address",
        )
        # Node 1 restarts on a catalog that names the old address, and learns the new one from
        # group 0's log.
        await cluster.start([1])
        await cluster.wait_for(
            lambda s: knows(s[1], MOVER, mover.addr),
            [1],
            RECORDED_WITHIN_S,
            f"node 1 to know node {MOVER} at {mover.addr}",
        )
        async with Client([mover.addr], creds) as c:
            assert await c.get_many([b"before", b"after"]) == [b"1", b"2"]
        statuses = {i: await cluster.status(i) for i in cluster.nodes}
        assert not any(knows(st, MOVER, old) for st in statuses.values())
        for node in cluster.nodes.values():
            assert "Traceback" not in node.log_path.read_text(), node.node_id
    finally:
        await cluster.close()
