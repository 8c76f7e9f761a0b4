"""start_cluster in one process: bootstrap, status, metrics, clean shutdown and restart in place."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.config import ClusterConfig
from nodedb_cluster.errors import ClusterError, ConfigError, FormationFailed
from nodedb_cluster.formation.retry import JoinRetryPolicy
from nodedb_cluster.formation.start import start_cluster
from nodedb_cluster.lifecycle import STATE_LABELS, Failed, LifecycleTracker
from nodedb_cluster.localcluster import free_port
from nodedb_cluster.metadata.commands import (
    AddNode,
    MetadataEntry,
    PutSetting,
    RemoveNode,
    SetNodeState,
)
from nodedb_cluster.metrics import members_of, serve_metrics, take_scrape
from nodedb_cluster.metrics_families import Scrape
from nodedb_cluster.topology import NodeInfo, NodeState

SAVE_FAILURE_PROPOSALS_MAX = 50
"""Metadata proposals made until one finds the catalog's failed save (it fails right behind
the first apply; the bound only keeps the loop finite)."""


def config(tmp_path: Path, port: int, **overrides: object) -> ClusterConfig:
    addr = parse_socket_addr(f"127.0.0.1:{port}")
    fields: dict[str, object] = {
        "node_id": 1,
        "listen_addr": addr,
        "seed_nodes": (addr,),
        "data_dir": tmp_path / "node1",
        "insecure_transport": True,
        "num_groups": 2,
    }
    fields.update(overrides)
    return ClusterConfig(**fields)  # type: ignore[arg-type]


async def test_bootstrap_status_shutdown_and_restart_in_the_same_process(tmp_path: Path) -> None:
    port = free_port(["127.0.0.1"])
    cfg = config(tmp_path, port)
    node = await start_cluster(cfg)
    status = await node.status()
    assert status.lifecycle == "ready"
    assert status.nodes == ((1, f"127.0.0.1:{port}", "ACTIVE"),)
    assert {g.group_id: g.role for g in status.groups} == {0: "leader", 1: "leader", 2: "leader"}
    assert status.vshards_per_group == {1: 512, 2: 512}
    assert await node.propose_metadata(MetadataEntry((PutSetting("k", "v"),))) is None
    cluster_id = node.cluster_id
    await node.shutdown()

    # Same data_dir, same port, same process: restart from the catalog.
    tracker = LifecycleTracker()
    again = await start_cluster(cfg, tracker=tracker)
    try:
        labels = [t.next.label for t in tracker.history]
        assert labels == ["restarting", "ready"]
        assert again.cluster_id == cluster_id
        restarted = await again.status()
        assert restarted.settings == {"replication_factor": 3, "data_state_machine": "kv", "k": "v"}
        assert restarted.metadata_applied_index >= status.metadata_applied_index
        # The restarted sole voter elected itself at once and serves writes again.
        assert again.engine is not None
        assert (await again.engine.status(0)).role == "leader"
        assert await again.propose_metadata(MetadataEntry((PutSetting("k", "w"),))) is None
    finally:
        await again.shutdown()


async def test_a_metadata_change_queued_behind_a_shutdown_changes_nothing(
    tmp_path: Path,
) -> None:
    """Group 0's applier queues its callback on the loop; one that runs after the shutdown
    began found the engine no longer serving KV and raised (CI, session 22)."""
    node = await start_cluster(config(tmp_path, free_port(["127.0.0.1"])))
    state = node.metadata
    topology = state.topology.copy()
    other = dataclasses.replace(topology[1], node_id=2, addr=parse_socket_addr("127.0.0.2:1"))
    topology.add(other)
    changed = dataclasses.replace(state, topology=topology)
    await node.shutdown()
    node.on_metadata_change(changed)  # raised ClusterError: "serves no KV requests"


async def test_a_restart_at_another_address_records_it_and_one_held_by_a_member_is_refused(
    tmp_path: Path,
) -> None:
    """A re-IPed host or rescheduled pod: the node restarts where it is told and records its
    new address through group 0 (its peers dial what the topology says). An address another
    member holds is refused before the node serves, naming that member."""
    port, other = free_port(["127.0.0.1"]), free_port(["127.0.0.1"])
    cfg = config(tmp_path, port)
    first = await start_cluster(cfg)
    await first.shutdown()
    moved = config(tmp_path, other, seed_nodes=(cfg.listen_addr,))
    again = await start_cluster(moved)
    try:
        recorded = await _wait_for(lambda: again.metadata.topology[1].addr == moved.listen_addr)
        assert recorded, f"still {again.metadata.topology[1].addr}"
        assert (await again.status()).nodes == ((1, f"127.0.0.1:{other}", "ACTIVE"),)
        assert await again.propose_metadata(MetadataEntry((PutSetting("k", "v"),))) is None
        # A second member, then node 1 told to take its address: refused.
        two = dataclasses.replace(
            again.metadata.topology[1], node_id=2, addr=parse_socket_addr(f"127.0.0.2:{port}")
        )
        assert await again.propose_metadata(MetadataEntry((AddNode(two),))) is None
    finally:
        await again.shutdown()
    tracker = LifecycleTracker()
    with pytest.raises(ConfigError) as refused:
        await start_cluster(config(tmp_path, port, listen_addr=two.addr), tracker=tracker)
    assert refused.value.field == "listen_addr"
    assert f"127.0.0.2:{port} belongs to node 2" in str(refused.value)
    assert isinstance(tracker.state, Failed)


async def _wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Poll `condition` (group 0 applies on its own thread; no event tells the test) until
    true or `timeout_s`; whether it became true."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)  # polling a state with a bound, not synchronisation
    return True


async def test_a_catalog_that_can_no_longer_be_written_stops_the_node(tmp_path: Path) -> None:
    """A metadata save that fails for another reason than space (here the catalog closed under
    the node) leaves applied metadata that no restart of this process could keep: the next
    metadata batch stops the engine, and the node is marked Failed with the reason, rather
    than serve on. (A restart replays the entries from the Raft log.)"""
    node = await start_cluster(config(tmp_path, free_port(["127.0.0.1"])))
    try:
        node.catalog.close()
        stopped: list[ClusterError] = []
        for i in range(SAVE_FAILURE_PROPOSALS_MAX):  # the save fails behind the apply
            try:
                await node.propose_metadata(MetadataEntry((PutSetting("k", str(i)),)))
            except ClusterError as e:
                stopped.append(e)
                break
        assert stopped, "a metadata batch after the failed save stops the engine"
        async with asyncio.timeout(10):
            await node.failed.wait()
        assert isinstance(node.lifecycle.state, Failed)
        assert node.failure is not None
        assert "state machine of g0 failed to apply entries" in node.failure, node.failure
    finally:
        await node.shutdown()


async def test_metrics_endpoint_serves_prometheus_text(tmp_path: Path) -> None:
    port = free_port(["127.0.0.1"])
    node = await start_cluster(config(tmp_path, port))
    with socket.socket() as probe:  # a free TCP port (SocketAddr refuses port 0)
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    server = await serve_metrics(node, parse_socket_addr(f"127.0.0.1:{metrics_port}"))
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        text = body.decode()
        assert 'nodedb_lifecycle_state{state="ready"} 1.0' in text
        assert 'nodedb_raft_role{group="0",role="leader"} 1.0' in text
        assert "nodedb_transport_insecure" in text
    finally:
        server.close()
        await node.shutdown()


async def test_all_seeds_unreachable_ends_failed_with_the_last_error(tmp_path: Path) -> None:
    port = free_port(["127.0.0.1"])
    dead = parse_socket_addr(f"127.0.0.1:{free_port(['127.0.0.1'])}")
    cfg = config(
        tmp_path,
        port,
        node_id=2,
        seed_nodes=(dead,),
        rpc_timeout_ms=300,
        join_retry=JoinRetryPolicy(max_attempts=2, max_backoff_secs=0),
    )
    tracker = LifecycleTracker()
    with pytest.raises(FormationFailed) as excinfo:
        await start_cluster(cfg, tracker=tracker)
    assert str(dead) in str(excinfo.value)
    assert isinstance(tracker.state, Failed)
    assert [t.next.label for t in tracker.history].count("joining") == 3


async def test_a_node_removed_from_the_topology_is_no_longer_a_transport_peer(
    tmp_path: Path,
) -> None:
    """Raft is taken only from registered peers: removal from the topology unregisters."""
    port = free_port(["127.0.0.1"])
    node = await start_cluster(config(tmp_path, port))
    try:
        for node_id in (5, 6):
            info = NodeInfo(node_id, parse_socket_addr(f"127.0.0.{node_id}:1"), NodeState.ACTIVE, 1)
            assert await node.propose_metadata(MetadataEntry((AddNode(info),))) is None
        assert await node.propose_metadata(MetadataEntry((RemoveNode(5),))) is None
        node.on_metadata_change(node.metadata)  # what group 0's apply hook ran already
        assert node.transport.unregister_peer(5) is False, "removed: no longer registered"
        assert node.transport.unregister_peer(6) is True, "still a member: registered"
    finally:
        await node.shutdown()


async def test_a_decommissioned_node_is_no_member_swims_gauges_count(tmp_path: Path) -> None:
    """Found by an operator probe: a decommissioned node, stopped as `decommission` says,
    stayed DEAD in every survivor's `nodedb_swim_members`, and `NodeDBNodeDead` fired for good.
    SWIM knows node 7 (from the topology); once decommissioned, no gauge counts it."""
    port = free_port(["127.0.0.1"])
    swim = parse_socket_addr(f"127.0.0.1:{free_port(['127.0.0.1'])}")
    node = await start_cluster(config(tmp_path, port, swim_udp_addr=swim))
    try:
        gone = parse_socket_addr("127.0.0.7:1")
        info = NodeInfo(7, gone, NodeState.ACTIVE, 1, swim_addr=gone)
        assert await node.propose_metadata(MetadataEntry((AddNode(info),))) is None
        assert await _wait_for(
            lambda: (
                node.membership is not None
                and any(m.node_id == 7 for m in node.membership.members())
            )
        )
        scrape = Scrape(lifecycle="ready", lifecycle_states=STATE_LABELS)
        take_scrape(node, scrape)
        assert sum(scrape.swim_members.values()) == 1, "a member: counted"
        retire = SetNodeState(7, NodeState.DECOMMISSIONED)
        assert await node.propose_metadata(MetadataEntry((retire,))) is None
        take_scrape(node, scrape)
        assert sum(scrape.swim_members.values()) == 0, scrape.swim_members
        assert 7 not in members_of(node)
    finally:
        await node.shutdown()


async def test_a_restart_asking_for_more_groups_says_it_is_read_at_bootstrap_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port(["127.0.0.1"])
    node = await start_cluster(config(tmp_path, port))
    await node.shutdown()
    again = await start_cluster(config(tmp_path, port, num_groups=8))
    try:
        assert len((await again.status()).groups) == 3, "group 0 and the 2 it was founded with"
        assert "num_groups 8 is read when a cluster is bootstrapped only; this one has 2" in (
            caplog.text
        )
    finally:
        await again.shutdown()


async def test_the_cluster_has_one_replication_factor_recorded_when_it_was_bootstrapped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nodes with different `replication_factor`s undid each other's placement. The founder
    records its value in group 0; a node whose config says otherwise uses the cluster's, with a
    warning naming both."""
    port = free_port(["127.0.0.1"])
    node = await start_cluster(config(tmp_path, port, replication_factor=1))
    try:
        assert node.metadata.settings["replication_factor"] == 1
        assert "differs from the cluster's" not in caplog.text
    finally:
        await node.shutdown()
    again = await start_cluster(config(tmp_path, port, replication_factor=3))
    try:
        assert again.config.replication_factor == 1, "the cluster's, not this config's"
        assert (
            "replication_factor 3 in node 1's config differs from the cluster's 1, recorded in "
            "group 0 when it was bootstrapped: the cluster's is used"
        ) in caplog.text
    finally:
        await again.shutdown()
