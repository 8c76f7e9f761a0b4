"""The embedding API through `start_cluster(config, state_machine=...)` on 3 real node processes
(the README's example, examples/replicated_counters.py, is the host program): proposals from
any node (followers forward one hop), linearizable reads on followers, locate, leader-change
callbacks across a leader kill, node.kv refused on host groups, HOST_PROPOSE refused from a
client certificate, concurrent proposals travelling to the leader together, a batch answered
per command, a killed node restarting onto the same counters, and a node whose host state
machine raised (or hung) stopping, a host whose empty state snapshots to no byte
(tests/support/failing_counters.py), and SIGTERM ending a host through `node.shutdown()`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from nodedb_cluster import wire
from nodedb_cluster.client import CLIENT_NODE_ID
from nodedb_cluster.errors import PermissionDenied
from nodedb_cluster.host_proposals import decode_outcomes, encode_batch, encode_propose
from nodedb_cluster.localcluster import LocalCluster, Status, data_group_views
from nodedb_cluster.transport import Transport
from support.cli_run import cred_flags, run_cli
from support.failing_counters import BROKEN_MARKER, HUNG_MARKER
from support.metrics_scrape import scrape, serve_metrics_on_every_node

pytestmark = pytest.mark.multiprocess

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "replicated_counters.py"
FAILING_HOST = Path(__file__).resolve().parents[1] / "support" / "failing_counters.py"
EXIT_WITHIN_S = 10.0
"""The failing node's host process exits within this of the raise (the engine stops at once)."""


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    c = LocalCluster(tmp_path, 3, program=(str(EXAMPLE), "node"))
    serve_metrics_on_every_node(c)
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


HOST_PROPOSE_SERVED = 'nodedb_transport_request_duration_seconds_count{kind="HostPropose"}'
"""How many HOST_PROPOSE requests a node served (the transport's histogram, by kind)."""


async def _host_proposes_served(cluster: LocalCluster, node_id: int) -> float:
    text = await asyncio.to_thread(scrape, cluster, node_id)
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == HOST_PROPOSE_SERVED:
            return float(value)
    return 0.0


async def _served_after(cluster: LocalCluster, node_id: int, before: float) -> float:
    """The count once it moved past `before` (/metrics refreshes once a second: poll, bounded)."""
    async with asyncio.timeout(10):
        while True:
            served = await _host_proposes_served(cluster, node_id)
            if served > before:
                return served
            await asyncio.sleep(0.2)


async def test_concurrent_proposals_on_a_follower_reach_the_leader_together_and_apply_once(
    cluster: LocalCluster,
) -> None:
    """64 increments started in one turn of a follower's loop: each applied once with its own
    result, carried by a handful of HOST_PROPOSE requests, not 64 (one per command before)."""
    where = (await cluster.nodes[1].request({"op": "locate", "key": "burst"}))["location"]
    leader = where["leader"]
    follower = next(i for i in cluster.nodes if i != leader)
    before = await _host_proposes_served(cluster, leader)
    doc = await cluster.nodes[follower].request({"op": "incr", "key": "burst", "times": 64})
    assert doc == {"ok": True, "values": list(range(1, 65))}, doc
    served = await _served_after(cluster, leader, before)
    assert served - before <= 8, served - before
    for i in cluster.nodes:
        assert await cluster.nodes[i].request({"op": "get", "key": "burst"}) == {
            "ok": True,
            "value": 64,
        }


async def test_a_batch_is_answered_per_command_and_a_bad_one_fails_alone(
    cluster: LocalCluster,
) -> None:
    """A HOST_PROPOSE of version 2 from a node certificate: a command for group 0 (the
    metadata group, never the host's) is refused by itself; the others apply, in order."""
    where = (await cluster.nodes[1].request({"op": "locate", "key": "b"}))["location"]
    leader, group = where["leader"], where["group"]
    incr = msgpack.packb([b"b", 5])
    items = [(group, incr), (0, incr), (group, incr)]
    async with Transport(3, "127.0.0.1:0", cluster.node_credentials(3)) as node3:
        kind, reply = await node3.send_rpc_to_addr(
            cluster.nodes[leader].addr, wire.MessageKind.HOST_PROPOSE, encode_batch(items, 5000)
        )
    assert kind == wire.MessageKind.HOST_PROPOSE_RESPONSE
    applied, refused, again = decode_outcomes(reply, 3, leader)
    assert isinstance(applied, dict)
    assert isinstance(refused, dict)
    assert isinstance(again, dict)
    assert (applied["outcome"], applied["result"]) == ("applied", b"5")
    assert (again["outcome"], again["result"]) == ("applied", b"10")
    assert applied["index"] < again["index"]
    assert (refused["outcome"], refused["code"]) == ("failed", "InvalidRequest")
    assert "metadata group" in refused["message"]
    assert await cluster.nodes[2].request({"op": "get", "key": "b"}) == {"ok": True, "value": 10}


async def test_node_kv_is_refused_on_host_groups(cluster: LocalCluster) -> None:
    doc = await cluster.nodes[1].request({"op": "kv_put", "key": "x"})
    assert not doc["ok"]
    assert doc["error"].startswith("NotEmbedded")
    assert "node.data" in doc["error"]


@pytest.mark.timeout(30 + 60 + 30)  # its own bounds: formation, the new group's replicas, CLIs
async def test_host_groups_never_begin_a_vshard_move(tmp_path: Path) -> None:
    """Only the built-in KV can hand a vShard to another group. On host groups a requested
    move is refused with the reason, and the rebalancer holds the vShard balance of a group
    added by `add-groups` instead of beginning moves that nothing could carry out (they stayed
    in flight forever and used up the concurrency limit that replica moves also count)."""
    c = LocalCluster(
        tmp_path, 3, program=(str(EXAMPLE), "node"), overrides={"rebalance_interval_ms": 300}
    )
    try:
        await c.start()
        await c.wait_formed(30.0)
        admin = ["--addr", c.nodes[1].addr, *cred_flags(c.admin_credentials)]
        code, out, err = await run_cli("add-groups", "--count", "1", "--json", *admin)
        assert code == 0, err
        (added,) = [g[0] for g in json.loads(out)["groups"]]

        def new_group_replicated(statuses: dict[int, Status]) -> bool:
            view = data_group_views(statuses).get(added)
            return view is not None and len(view["voters"]) == 3 and not view["learners"]

        statuses = await c.wait_for(new_group_replicated, c.nodes, 60, "the new group at RF 3")
        assert all(not s["vshard_moves"] for s in statuses.values())
        code, out, err = await run_cli(
            "move-vshard", "--vshard", "5", "--to-group", str(added), "--no-wait", *admin
        )
        assert code == 1
        assert "cannot move vShards between groups" in out + err
        code, out, err = await run_cli("rebalance", "--dry-run", "--json", *admin)
        assert code == 0, err
        plan = json.loads(out)
        assert not [m for m in plan["moves"] if m["move"] == "MoveVShard"], plan
        assert any("cannot move vShards" in h for h in plan["held"]), plan
        statuses = {n: await c.status(n) for n in c.nodes}
        assert all(not s["vshard_moves"] for s in statuses.values()), "no move ever began"
        doc = await c.nodes[2].request({"op": "incr", "key": "k", "by": 1})
        assert doc == {"ok": True, "value": 1}, doc
    finally:
        await c.close()


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


async def _formed_with_k_at_3(c: LocalCluster) -> None:
    """Start the host processes, await formation, and count "k" up to 3 through each node."""
    await c.start()
    await c.wait_formed(30.0)
    for i in range(3):
        assert (await c.nodes[1 + i % 3].request({"op": "incr", "key": "k", "by": 1}))["ok"]


async def _leader_and_followers(c: LocalCluster, key: str) -> tuple[dict[str, Any], int, int]:
    """Where `key` lives, and its two followers: the one the test breaks, the one that goes on."""
    where: dict[str, Any] = (await c.nodes[1].request({"op": "locate", "key": key}))["location"]
    victim = next(i for i in c.nodes if i != where["leader"])
    survivor = next(i for i in c.nodes if i not in (victim, where["leader"]))
    return where, victim, survivor


async def test_a_host_state_machine_that_raises_stops_its_node_and_the_others_go_on(
    tmp_path: Path,
) -> None:
    """A follower's host store fails while it applies a batch: that node stops and its host
    process exits with the reason (group, entries, the raise and where), instead of moving on
    with a state that now differs from its replicas'. The other two go on; repaired, the node
    restarts, applies the entry again, and reads what the others read."""
    c = LocalCluster(tmp_path, 3, program=(str(FAILING_HOST), "node"))
    try:
        await _formed_with_k_at_3(c)
        nodes = c.nodes
        where, victim, survivor = await _leader_and_followers(c, "k")
        broken = nodes[victim].config.data_dir / BROKEN_MARKER
        broken.touch()
        doc = await nodes[where["leader"]].request({"op": "incr", "key": "k", "by": "fail"})
        assert doc == {"ok": True, "value": 4}, doc
        assert await nodes[victim].wait_exit(EXIT_WITHIN_S) == 1
        log = nodes[victim].log_tail()
        assert f"state machine of g{where['group']} failed to apply entries" in log, log
        assert "OSError: [Errno 5] the host's store failed" in log, log
        assert "failing_counters.py:" in log, log
        assert f"node {victim} failed: " in log, log
        assert "Traceback" not in log, log
        for by, value in ((10, 14), (100, 114)):  # the other two go on
            doc = await nodes[survivor].request({"op": "incr", "key": "k", "by": by})
            assert doc == {"ok": True, "value": value}, doc
        broken.unlink()  # repaired: the restart applies the entry again, then catches up
        await nodes[victim].start()
        await nodes[victim].wait_ready()
        assert await nodes[victim].request({"op": "get", "key": "k"}) == {"ok": True, "value": 114}
    finally:
        await c.close()


async def test_a_host_whose_empty_state_is_the_empty_snapshot_forms_and_replicates(
    tmp_path: Path,
) -> None:
    """The replicas added at formation each receive the founder's snapshot of an empty state;
    a host may encode that as `b""`. Its one empty chunk used to loop the receiver's driver
    thread for good: no replica was ever promoted, and status and shutdown hung."""
    c = LocalCluster(tmp_path, 3, program=(str(FAILING_HOST), "node-empty-state"))
    try:
        await _formed_with_k_at_3(c)
        nodes = c.nodes
        for i in nodes:
            assert await nodes[i].request({"op": "get", "key": "k"}) == {"ok": True, "value": 3}
    finally:
        await c.close()


STALL_MAX_MS = 1500
"""The hung node's watchdog bound in the test (60 s by default)."""


async def test_a_host_state_machine_that_hangs_stops_its_node_and_the_others_go_on(
    tmp_path: Path,
) -> None:
    """A follower's host store hangs inside `apply_batch` (a lock nobody releases): its
    driver thread makes no progress, so the watchdog stops the node and its host process exits
    with that reason, instead of staying up and serving nothing. The other two go on; repaired,
    it restarts and reads what they read."""
    c = LocalCluster(
        tmp_path,
        3,
        program=(str(FAILING_HOST), "node"),
        overrides={"driver_stall_max_ms": STALL_MAX_MS},
    )
    try:
        await c.start()
        await c.wait_formed(30.0)
        nodes = c.nodes
        assert (await nodes[1].request({"op": "incr", "key": "k", "by": 1}))["ok"]
        where, victim, survivor = await _leader_and_followers(c, "k")
        hung = nodes[victim].config.data_dir / HUNG_MARKER
        hung.touch()
        doc = await nodes[where["leader"]].request({"op": "incr", "key": "k", "by": "hang"})
        assert doc == {"ok": True, "value": 2}, doc
        assert await nodes[victim].wait_exit(STALL_MAX_MS / 1000 + EXIT_WITHIN_S) == 1
        log = nodes[victim].log_tail()
        assert "the driver thread made no progress for" in log, log
        assert f"node {victim} failed: " in log, log
        doc = await nodes[survivor].request({"op": "incr", "key": "k", "by": 10})
        assert doc == {"ok": True, "value": 12}, doc
        hung.unlink()
        await nodes[victim].start()
        await nodes[victim].wait_ready()
        assert await nodes[victim].request({"op": "get", "key": "k"}) == {"ok": True, "value": 12}
    finally:
        await c.close()


async def test_sigterm_ends_the_host_through_node_shutdown(cluster: LocalCluster) -> None:
    """Found by an embedding probe: the example host had no SIGTERM handler, so `kill -TERM`
    (systemd, docker stop) ended it with no `node.shutdown()` (exit status -15)."""
    assert (await cluster.nodes[1].request({"op": "incr", "key": "t", "by": 1}))["ok"]
    assert await cluster.nodes[3].stop() == 0  # SIGTERM; the host returned from run_node
    doc = await cluster.nodes[1].request({"op": "incr", "key": "t", "by": 1})
    assert doc == {"ok": True, "value": 2}, doc
