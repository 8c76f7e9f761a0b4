"""The embedding API through `start_cluster(config, state_machine=...)` on 3 real node processes
(the README's example, examples/replicated_counters.py, is the host program): proposals from
any node (followers forward one hop), linearizable reads on followers, locate, leader-change
callbacks across a leader kill, node.kv refused on host groups, HOST_PROPOSE refused from a
client certificate, and a killed node restarting onto the same counters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nodedb_cluster import wire
from nodedb_cluster.client import CLIENT_NODE_ID
from nodedb_cluster.embedding import encode_propose
from nodedb_cluster.errors import PermissionDenied
from nodedb_cluster.localcluster import LocalCluster
from nodedb_cluster.transport import Transport

pytestmark = pytest.mark.multiprocess

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "replicated_counters.py"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    c = LocalCluster(tmp_path, 3, program=(str(EXAMPLE), "node"))
    try:
        await c.start()
        await c.wait_formed(30.0)
        yield c
    finally:
        await c.close()


async def test_proposals_from_every_node_apply_once_in_order_and_read_linearizably(
    cluster: LocalCluster,
) -> None:
    nodes = cluster.nodes
    values = []
    for i in range(12):  # round-robin: two of three calls start on a follower and forward
        doc = await nodes[1 + i % 3].request({"op": "incr", "key": "k", "by": 1})
        assert doc["ok"], doc
        values.append(doc["value"])
    assert values == list(range(1, 13))  # each applied exactly once, results from the leader
    for i in nodes:  # read_index then the local replica: every node sees the last write
        assert await nodes[i].request({"op": "get", "key": "k"}) == {"ok": True, "value": 12}
    where = [(await nodes[i].request({"op": "locate", "key": "k"}))["location"] for i in nodes]
    assert len({(w["vshard"], w["group"], tuple(w["voters"])) for w in where}) == 1
    assert sorted(where[0]["voters"]) == [1, 2, 3]
    assert where[0]["leader"] in (1, 2, 3)


async def test_node_kv_is_refused_on_host_groups(cluster: LocalCluster) -> None:
    doc = await cluster.nodes[1].request({"op": "kv_put", "key": "x"})
    assert not doc["ok"]
    assert doc["error"].startswith("NotEmbedded")
    assert "node.data" in doc["error"]


async def test_a_client_certificate_may_not_propose_into_the_hosts_log(
    cluster: LocalCluster,
) -> None:
    transport = Transport(CLIENT_NODE_ID, "127.0.0.1:0", cluster.client_credentials)
    try:
        with pytest.raises(PermissionDenied):
            await transport.send_rpc_to_addr(
                cluster.nodes[1].addr,
                wire.MessageKind.HOST_PROPOSE,
                encode_propose(1, b"\x92\xa1k\x01", 1000),
            )
    finally:
        await transport.close()
    assert await cluster.nodes[2].request({"op": "get", "key": "k"}) == {"ok": True, "value": 0}


async def test_a_leader_kill_is_reported_and_counters_continue_then_the_node_catches_up(
    cluster: LocalCluster,
) -> None:
    nodes = cluster.nodes
    for i in range(6):
        assert (await nodes[1 + i % 3].request({"op": "incr", "key": "c", "by": 1}))["ok"]
    where = (await nodes[1].request({"op": "locate", "key": "c"}))["location"]
    victim = where["leader"]
    survivors = [i for i in nodes if i != victim]
    nodes[victim].kill()
    for i in survivors:  # every survivor's callback names a new, live leader
        event = await nodes[i].wait_event(
            lambda e: e["group"] == where["group"] and e["leader"] not in (None, victim)
        )
        assert event["term"] >= 1
    for i in range(4):
        doc = await nodes[survivors[i % 2]].request({"op": "incr", "key": "c", "by": 10})
        assert doc == {"ok": True, "value": 6 + 10 * (i + 1)}, doc
    await nodes[victim].start()  # same data dir: the counters come back and catch up
    await nodes[victim].wait_ready()
    assert await nodes[victim].request({"op": "get", "key": "c"}) == {"ok": True, "value": 46}
