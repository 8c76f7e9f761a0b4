"""docs/JOIN.md's formation scenarios with real processes: each node is a `nodedb-cluster start`
process on 127.0.0.N with its own data_dir, killed with SIGKILL where the scenario says so.

Test configs shorten the join schedule (max_backoff_secs=2) and the RPC timeout so the suite stays
fast; the production schedule's arithmetic is unit-tested in test_retry.py/test_join_client.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.catalog import Catalog
from nodedb_cluster.cli_support import EXIT_UNREACHABLE
from nodedb_cluster.formation.retry import JoinRetryPolicy
from nodedb_cluster.localcluster import LocalCluster, NodeProcessError, Status, leader_of
from nodedb_cluster.transport import ca_key_path, renew_node_credentials
from support.cli_run import cred_flags, run_cli
from support.metrics_scrape import scrape, serve_metrics_on_every_node

pytestmark = pytest.mark.multiprocess

FAST = {"rpc_timeout_ms": 2000}
STOP_WHILE_JOINING_S = 5.0


def cluster_ids(statuses: dict[int, Status]) -> set[str]:
    return {s["cluster_id"] for s in statuses.values()}


def sees_all(n: int) -> Callable[[dict[int, Status]], bool]:
    return lambda statuses: all(len(s["nodes"]) == n for s in statuses.values())


def data_groups_at_rf(rf: int) -> Callable[[dict[int, Status]], bool]:
    def check(statuses: dict[int, Status]) -> bool:
        for s in statuses.values():
            for g in s["groups"]:
                is_data_leader = g["role"] == "leader" and g["group_id"] != 0
                if is_data_leader and (len(g["voters"]) != rf or g["learners"]):
                    return False
        leaders = {
            g["group_id"] for s in statuses.values() for g in s["groups"] if g["role"] == "leader"
        }
        return len(leaders) == 5  # group 0 + the 4 data groups each have a leader

    return check


MakeCluster = Callable[..., LocalCluster]


@pytest.fixture
async def make_cluster(tmp_path: Path) -> AsyncIterator[MakeCluster]:
    clusters: list[LocalCluster] = []

    def make(size: int, **overrides: object) -> LocalCluster:
        cluster = LocalCluster(
            tmp_path / f"c{len(clusters)}", size, overrides={**FAST, **overrides}
        )
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        await cluster.close()


async def test_three_nodes_join_one_bootstrapper(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    await cluster.start([1])
    await cluster.start([2, 3])
    statuses = await cluster.wait_for(sees_all(3), cluster.nodes, 15, "a 3-node topology")
    assert len(cluster_ids(statuses)) == 1
    assert all(s["lifecycle"] == "ready" for s in statuses.values())
    # RF=3: every data group ends with exactly three voters and no learner left behind.
    await cluster.wait_for(data_groups_at_rf(3), cluster.nodes, 20, "every group at RF voters")
    # Every node's metadata view converges: same topology version and routing epoch.
    converged = await cluster.wait_for(
        lambda s: len({(x["topology_version"], x["routing_epoch"]) for x in s.values()}) == 1,
        cluster.nodes,
        10,
        "one topology version and routing epoch everywhere",
    )
    assert {x["metadata_applied_index"] for x in converged.values()} != {0}


async def test_five_simultaneous_starts_form_exactly_one_cluster(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(5)
    t0 = time.monotonic()
    await cluster.start()  # all five at once; only 127.0.0.1 may bootstrap
    statuses = await cluster.wait_for(sees_all(5), cluster.nodes, 10, "a 5-node topology")
    assert time.monotonic() - t0 < 10  # spawn -> every node Ready with the whole topology
    assert len(cluster_ids(statuses)) == 1
    assert all(s["lifecycle"] == "ready" for s in statuses.values())
    await cluster.wait_for(data_groups_at_rf(3), cluster.nodes, 30, "RF=3 with 5 nodes")


async def test_join_through_a_follower_follows_the_redirect(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    await cluster.start([1, 2])
    await cluster.wait_for(sees_all(2), [1, 2], 15, "two nodes")
    # Node 3 knows only node 2 (a follower of group 0): it must be redirected to node 1.
    node3 = cluster.nodes[3]
    node3.config = replace(node3.config, seed_nodes=(cluster.nodes[2].config.listen_addr,))
    await cluster.start([3])
    statuses = await cluster.wait_for(sees_all(3), cluster.nodes, 15, "three nodes")
    assert len(cluster_ids(statuses)) == 1
    assert "redirected" in cluster.nodes[3].log_path.read_text()  # the tail is raft-rs's by now


async def test_new_node_joins_after_the_bootstrap_leader_died(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(4)
    await cluster.start([1, 2, 3])
    await cluster.wait_for(data_groups_at_rf(3), [1, 2, 3], 20, "RF=3 on three nodes")
    cluster.nodes[1].kill()
    await cluster.nodes[1].wait_exit()
    await cluster.wait_for(lambda s: leader_of(s, 0) in (2, 3), [2, 3], 15, "a new leader")
    await cluster.start([4])  # seeds list node 1 first: unreachable, then the survivors
    statuses = await cluster.wait_for(sees_all(4), [2, 3, 4], 15, "node 4 admitted")
    assert len(cluster_ids(statuses)) == 1


async def test_restarted_node_comes_back_on_its_own_catalog(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    await cluster.start()
    before = await cluster.wait_for(sees_all(3), cluster.nodes, 15, "three nodes")
    cluster.nodes[3].kill()
    await cluster.nodes[3].wait_exit()
    await cluster.start([3])
    after = await cluster.wait_for(sees_all(3), cluster.nodes, 15, "node 3 back")
    assert cluster_ids(after) == cluster_ids(before)
    assert "restarting" in cluster.nodes[3].log_path.read_text().lower()


async def test_node_id_reused_with_another_address_is_refused(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    await cluster.start([1, 2])
    await cluster.wait_for(sees_all(2), [1, 2], 15, "two nodes")
    impostor = cluster.nodes[3]
    port = impostor.config.listen_addr.port
    # Node 2's key, with a certificate that names node 3's address (a node refuses to start on
    # one that does not name its listen address): the join itself must refuse it.
    certs = cluster.base_dir / "certs"
    cert, key = certs / "n2-at-3.pem", certs / "n2-at-3.key"
    cert.write_bytes((certs / "n2.pem").read_bytes())
    key.write_bytes((certs / "n2.key").read_bytes())
    key.chmod(0o600)
    renew_node_credentials(certs / "ca.pem", ca_key_path(certs), cert, key, sans=["127.0.0.3"])
    impostor.config = replace(
        impostor.config,
        node_id=2,  # node 2's id (and its certificate: a node proves its id), at node 3's address
        listen_addr=parse_socket_addr(f"127.0.0.3:{port}"),
        join_retry=JoinRetryPolicy(max_attempts=1, max_backoff_secs=0),
        tls_cert_path=cert,
        tls_key_path=key,
    )
    await impostor.start()
    with pytest.raises(NodeProcessError, match="exited with 1"):
        await impostor.wait_ready(20)
    assert "already in use" in impostor.log_tail()


async def test_all_seeds_unreachable_fails_after_the_schedule(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(
        3, rpc_timeout_ms=500, join_retry=JoinRetryPolicy(max_attempts=2, max_backoff_secs=1)
    )
    # Node 2 starts alone: the bootstrapper (node 1) and node 3 are down.
    await cluster.nodes[2].start()
    with pytest.raises(NodeProcessError, match="exited with 1"):
        await cluster.nodes[2].wait_ready(30)
    log = cluster.nodes[2].log_tail()
    assert "Joining(attempt=2)" in log
    assert "formation failed" in log


async def test_node_killed_during_its_own_join_converges_after_restart(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(3)
    await cluster.start([1, 2])
    await cluster.wait_for(sees_all(2), [1, 2], 15, "two nodes")
    node3 = cluster.nodes[3]
    await node3.start()
    node3.kill()  # somewhere between spawning and Ready
    await node3.wait_exit()
    await cluster.start([3])
    statuses = await cluster.wait_for(sees_all(3), cluster.nodes, 20, "node 3 converged")
    assert len(cluster_ids(statuses)) == 1


async def test_a_node_told_to_stop_while_it_joins_exits_at_once(make_cluster: MakeCluster) -> None:
    """SIGTERM (a service manager's stop) to a node still retrying its join: it exits 0 at once,
    having written nothing of the cluster. It used to run the whole retry schedule first (106 s
    with the default one, past systemd's 90 s before its SIGKILL)."""
    cluster = make_cluster(3)  # the default join schedule
    node = cluster.nodes[2]
    await node.start()  # the bootstrapper (node 1) and node 3 are down: node 2 keeps retrying
    await node.wait_log("Joining(attempt=0)")
    stopping = time.monotonic()
    assert await node.stop() == 0, node.log_tail()
    assert time.monotonic() - stopping < STOP_WHILE_JOINING_S, node.log_tail()
    assert "stopped before it joined the cluster" in node.log_tail()
    catalog = Catalog.open(node.config.data_dir)
    try:
        assert not catalog.is_bootstrapped(), "nothing of a cluster was written"
    finally:
        catalog.close()


@pytest.mark.multiprocess
async def test_a_joining_node_says_so_on_metrics_and_to_status(make_cluster: MakeCluster) -> None:
    """A node waiting for its seeds (minutes, with the default schedule) says so from its first
    second: `/metrics` shows the lifecycle, `status` answers with it, and any other request is
    refused naming it. Before, `/metrics` came up only once the node was Ready and every
    request got the transport's `peer error no_handler: no handler for StatusRequest(6)`."""
    cluster = make_cluster(3)
    serve_metrics_on_every_node(cluster)
    node = cluster.nodes[2]
    await node.start()  # its seeds are down: it keeps retrying its join
    await node.wait_log("Joining(attempt=0)")
    text = await asyncio.to_thread(scrape, cluster, 2)
    assert 'nodedb_lifecycle_state{state="joining"} 1.0' in text, text
    assert 'nodedb_lifecycle_state{state="ready"} 0.0' in text, text
    code, out, err = await run_cli(
        "status", "--addr", node.addr, *cred_flags(cluster.client_credentials)
    )
    assert code == 0, err
    assert "node 2  lifecycle joining" in out, out
    code, _, err = await run_cli(
        "audit", "--addr", node.addr, *cred_flags(cluster.admin_credentials)
    )
    assert code == EXIT_UNREACHABLE, err
    assert "node 2 is joining: it serves requests once it is ready" in err, err
    assert await node.stop() == 0, node.log_tail()
    assert "raised" not in node.log_tail(), "a refused request is a state, not a warning"
