"""A node restarted at another address (a re-IPed host, a rescheduled pod): real `nodedb-cluster
start` processes, mTLS, SWIM at its defaults.

Goal: the node records its new address through group 0 and every member dials it there. Method:
a 3-node LocalCluster; node 3 is stopped, its certificate issued again for 127.0.0.4 over
the same key (`gen-certs --renew n3=127.0.0.4`: peers pin the key and check the address they
dial against the certificate), and started there. Then node 1 is stopped, so a write commits
only if node 2 reaches node 3 at its new address; a Client given only that address is served,
and SWIM on node 2 hears node 3 ALIVE."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.client import Client
from nodedb_cluster.config import SWIM_PORT_OFFSET
from nodedb_cluster.localcluster import LocalCluster, NodeProcessError, Status, free_port
from nodedb_cluster.transport import ca_key_path, renew_node_credentials

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
        mover.config = dataclasses.replace(
            mover.config,
            listen_addr=parse_socket_addr(f"127.0.0.4:{port}"),
            swim_udp_addr=parse_socket_addr(f"127.0.0.4:{port + SWIM_PORT_OFFSET}"),
        )
        # Peers check the address they dial against the certificate: one that names the old
        # address only is refused at start, saying how to issue it again over the same key.
        with pytest.raises(NodeProcessError, match=rf"--renew n{MOVER}=127\.0\.0\.4"):
            await cluster.start([MOVER])
        certs = tmp_path / "certs"
        renew_node_credentials(
            certs / "ca.pem",
            ca_key_path(certs),
            certs / f"n{MOVER}.pem",
            certs / f"n{MOVER}.key",
            sans=["127.0.0.4"],
        )
        await cluster.start([MOVER])
        assert f"node {MOVER} restarts at {mover.addr}" in mover.log_path.read_text()
        await cluster.wait_for(
            lambda s: all(knows(st, MOVER, mover.addr) for st in s.values()),
            cluster.nodes,
            RECORDED_WITHIN_S,
            f"every node to know node {MOVER} at {mover.addr}",
        )
        await cluster.wait_for(
            lambda s: hears_alive(s[2], MOVER),
            [2],
            RECORDED_WITHIN_S,
            f"SWIM on node 2 to hear node {MOVER} ALIVE at its new address",
        )
        await cluster.nodes[1].stop()
        # Nodes 2 and 3 are a majority of every group only if they reach each other.
        async with Client([cluster.nodes[2].addr, mover.addr], creds) as c:
            await c.put(b"after", b"2")
        async with Client([mover.addr], creds) as c:
            assert await c.get_many([b"before", b"after"]) == [b"1", b"2"]
        statuses = {i: await cluster.status(i) for i in (2, MOVER)}
        assert not any(knows(st, MOVER, old) for st in statuses.values())
        for i in (2, MOVER):
            assert "Traceback" not in cluster.nodes[i].log_path.read_text(), i
    finally:
        await cluster.close()
