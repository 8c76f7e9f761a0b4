"""A whole cluster restarted at other addresses at once (a data-centre move, pods rescheduled
together): real `nodedb-cluster start` processes, mTLS, SWIM at its defaults.

Goal: the nodes find each other although every catalog names addresses nobody listens at any
more. Method: a 3-node LocalCluster is stopped; each node's certificate is issued again for
127.0.1.<id> over the same key and its config points its listen address and its seeds at the
new addresses (what an operator moving the cluster edits), then all three start. Each tells its
seeds where it listens (PEER_ADDRESS), so Raft flows, group 0 elects, and every node records its
new address. Before, each dialled the old addresses for good: no leader, nothing served."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.client import Client
from nodedb_cluster.localcluster import LocalCluster, Status, free_port

pytestmark = pytest.mark.multiprocess

RECORDED_WITHIN_S = 60.0


def knows_all(status: Status, addrs: dict[int, str]) -> bool:
    known = {int(n[0]): n[1] for n in status["nodes"]}
    return all(known.get(node_id) == addr for node_id, addr in addrs.items())


@pytest.mark.timeout(180)
async def test_a_cluster_moved_to_new_addresses_at_once_finds_itself(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, 3, overrides={"num_groups": 2})
    creds = cluster.client_credentials
    try:
        await cluster.start()
        await cluster.wait_formed(60)
        async with Client([n.addr for n in cluster.nodes.values()], creds) as c:
            await c.put(b"before", b"1")
        old = {i: n.addr for i, n in cluster.nodes.items()}
        await asyncio.gather(*(n.stop() for n in cluster.nodes.values()))
        for node_id in cluster.nodes:
            host = f"127.0.1.{node_id}"
            cluster.readdress(node_id, host, free_port([host]))
        new = {i: n.addr for i, n in cluster.nodes.items()}
        seeds = tuple(parse_socket_addr(a) for a in new.values())
        for node in cluster.nodes.values():
            node.config = replace(node.config, seed_nodes=seeds)
        await cluster.start()
        await cluster.wait_for(
            lambda s: all(knows_all(st, new) for st in s.values()),
            list(cluster.nodes),
            RECORDED_WITHIN_S,
            "every node to know every node at its new address",
        )
        async with Client(list(new.values()), creds) as c:
            assert await c.get(b"before") == b"1"
            await c.put(b"after", b"2")
            assert await c.get(b"after") == b"2"
        statuses = {i: await cluster.status(i) for i in cluster.nodes}
        for st in statuses.values():
            assert not set(old.values()) & {n[1] for n in st["nodes"]}
        for node in cluster.nodes.values():
            assert "Traceback" not in node.log_path.read_text(), node.node_id
    finally:
        await cluster.close()
