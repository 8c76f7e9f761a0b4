"""Issue 16 on real processes: nodes 4 and 5 started next to a 3-node cluster (RF 3, four data
groups) end, by the rebalancer alone, with the replicas spread (3/3/2/2/2), no learner left, every
group led, and every acknowledged write readable; writes go on while replicas move, without an
error."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from nodedb_cluster import wire
from nodedb_cluster.client import Client
from nodedb_cluster.errors import PermissionDenied
from nodedb_cluster.localcluster import LocalCluster, Status, data_group_views
from nodedb_cluster.metadata.commands import MetadataEntry, SetNodeState
from nodedb_cluster.metadata.forward import encode_metadata_propose
from nodedb_cluster.topology import NodeState
from nodedb_cluster.transport import Transport
from support.cli_run import cred_flags, run_cli

pytestmark = pytest.mark.multiprocess

FAST = {"rpc_timeout_ms": 2000, "rebalance_interval_ms": 300}
DATA_GROUPS = 4
RETIRED_EXIT_S = 20.0
"""A retired node's own exit: its retirement's apply there, then a shutdown (~1 s here)."""
KEYS = 200
WRITES_MAX = 20_000
"""Bound on the writer that runs while replicas move (it stops at balance anyway)."""


def replicas(statuses: dict[int, Status]) -> Counter[int]:
    counts: Counter[int] = Counter()
    for g in data_group_views(statuses).values():
        voters = g["voters"]
        assert isinstance(voters, list)
        counts.update(int(v) for v in voters)
    return counts


def settled(nodes: int) -> Callable[[dict[int, Status]], bool]:
    """Every data group led, RF voters, no learner; replicas per node differ by one at most."""

    def check(statuses: dict[int, Status]) -> bool:
        views = data_group_views(statuses)
        if len(views) != DATA_GROUPS:
            return False
        for g in views.values():
            voters, learners = g["voters"], g["learners"]
            assert isinstance(voters, list)
            assert isinstance(learners, list)
            if len(voters) != 3 or learners:
                return False
        counts = replicas(statuses)
        per_node = [counts.get(n, 0) for n in range(1, nodes + 1)]
        return max(per_node) - min(per_node) <= 1

    return check


@pytest.mark.timeout(30 + 90 + 30)  # its own bounds: formation 30 s, rebalance 90 s
async def test_new_nodes_take_replicas_and_nothing_is_lost(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "c", 5, overrides=FAST)
    try:
        await cluster.start([1, 2, 3])
        await cluster.wait_for(settled(3), [1, 2, 3], 30, "RF 3 on three nodes")
        addrs = [cluster.nodes[n].addr for n in (1, 2, 3)]
        async with Client(addrs, cluster.client_credentials) as client:
            for i in range(KEYS):
                await client.put(f"k{i}".encode(), f"v{i}".encode())
            stop = asyncio.Event()
            acked: list[int] = []

            async def writer() -> None:
                for i in range(WRITES_MAX):
                    if stop.is_set():
                        return
                    await client.put(f"w{i}".encode(), b"x")
                    acked.append(i)

            writing = asyncio.ensure_future(writer())
            started = time.monotonic()
            await cluster.start([4, 5])
            statuses = await cluster.wait_for(settled(5), cluster.nodes, 90, "replicas spread")
            took_s = time.monotonic() - started
            stop.set()
            await writing  # raises if any write failed
        counts = replicas(statuses)
        assert sorted(counts.values()) == [2, 2, 2, 3, 3], counts
        # Each node's status lists every group once: its replicas, then the rest from group 0.
        for doc in statuses.values():
            here = [int(g["group_id"]) for g in doc["groups"]]
            there = [int(g["group_id"]) for g in doc["elsewhere"]]
            assert sorted(here + there) == list(range(DATA_GROUPS + 1)), (here, there)
        # Every acknowledged write reads back, through a client that starts at node 4.
        async with Client([cluster.nodes[4].addr], cluster.client_credentials) as reader:
            values = await reader.get_many([f"k{i}".encode() for i in range(KEYS)])
            assert values == [f"v{i}".encode() for i in range(KEYS)]
            written = await reader.get_many([f"w{i}".encode() for i in acked])
            assert all(v == b"x" for v in written), "an acknowledged write is missing"
        print(f"balanced {took_s:.1f} s after nodes 4 and 5 started; {len(acked)} writes meanwhile")
    finally:
        await cluster.close()


async def test_without_the_rebalancer_new_nodes_take_no_data_replicas(tmp_path: Path) -> None:
    """The control: with `rebalance_interval_ms = 0`, nodes 4 and 5 join (learners of the
    metadata group) but no data group gains or loses a replica."""
    cluster = LocalCluster(tmp_path / "c", 5, overrides={**FAST, "rebalance_interval_ms": 0})
    try:
        await cluster.start([1, 2, 3])
        await cluster.wait_for(settled(3), [1, 2, 3], 30, "RF 3 on three nodes")
        await cluster.start([4, 5])
        await cluster.wait_for(
            lambda s: all(len(st["nodes"]) == 5 for st in s.values()), cluster.nodes, 30, "joined"
        )
        # Several reconcile rounds (0.5 s each) and what would be many rebalance periods.
        await asyncio.sleep(3)  # observing that nothing happens: there is no event to await
        statuses = await cluster.wait_for(settled(3), [1, 2, 3], 10, "still RF 3 on 1-3")
        assert replicas(statuses) == Counter({1: 4, 2: 4, 3: 4})
    finally:
        await cluster.close()


async def test_decommission_moves_every_replica_off_then_retires_the_node(
    tmp_path: Path,
) -> None:
    """`nodedb-cluster decommission` (the real CLI, admin credentials) on a 4-node cluster:
    the node drains, its replicas land on the other three, it ends DECOMMISSIONED and out of
    every group, it stops by itself (exit 0, saying why), and every acknowledged write still
    reads back. Draining one
    of the remaining three is refused (RF 3 needs three ACTIVE nodes), `locate` names the new
    members and a dry-run rebalance finds nothing to move."""
    cluster = LocalCluster(tmp_path / "c", 4, overrides=FAST)
    try:
        await cluster.start([1, 2, 3])
        await cluster.wait_for(settled(3), [1, 2, 3], 30, "RF 3 on three nodes")
        await cluster.start([4])
        await cluster.wait_for(settled(4), cluster.nodes, 60, "replicas spread over four")
        addrs = [cluster.nodes[n].addr for n in (1, 2, 3)]
        async with Client(addrs, cluster.client_credentials) as client:
            for i in range(KEYS):
                await client.put(f"k{i}".encode(), f"v{i}".encode())
        admin = ["--addr", cluster.nodes[1].addr, *cred_flags(cluster.admin_credentials)]
        code, out, err = await run_cli("decommission", "--node-id", "4", "--json", *admin)
        assert code == 0, err
        assert json.loads(out)["state"] == "DECOMMISSIONED"
        statuses = await cluster.wait_for(settled(3), [1, 2, 3], 30, "RF 3 on 1-3 again")
        assert replicas(statuses) == Counter({1: 4, 2: 4, 3: 4})
        states = {int(n[0]): n[2] for n in statuses[1]["nodes"]}
        assert states[4] == "DECOMMISSIONED"
        # Nothing left to serve: it stops by itself as its retirement applies there.
        assert await cluster.nodes[4].wait_exit(RETIRED_EXIT_S) == 0
        assert "node 4 stopped: node 4 was decommissioned" in cluster.nodes[4].log_tail()
        # Its certificate, left on a recycled machine, speaks for nothing: no member-only kind
        # (here: setting itself ACTIVE again through a forwarded metadata proposal).
        back = MetadataEntry((SetNodeState(4, NodeState.ACTIVE),)).encode()
        async with Transport(4, "127.0.0.1:0", cluster.node_credentials(4)) as retired:
            with pytest.raises(PermissionDenied, match="node 4 is not a member"):
                await retired.send_rpc_to_addr(
                    cluster.nodes[1].addr,
                    wire.MessageKind.METADATA_PROPOSE,
                    encode_metadata_propose(back, True),
                )
        async with Client(addrs, cluster.client_credentials) as reader:
            values = await reader.get_many([f"k{i}".encode() for i in range(KEYS)])
        assert values == [f"v{i}".encode() for i in range(KEYS)]

        code, _, err = await run_cli("decommission", "--node-id", "3", "--no-wait", *admin)
        assert code != 0
        assert "below the replication factor 3" in err, err
        code, out, err = await run_cli("rebalance", "--dry-run", "--json", *admin)
        assert code == 0, err
        assert json.loads(out)["moves"] == []
        client_flags = ["--addr", cluster.nodes[2].addr, *cred_flags(cluster.client_credentials)]
        code, out, err = await run_cli("locate", "k7", "--json", *client_flags)
        assert code == 0, err
        where = json.loads(out)
        assert set(where) >= {"vshard", "group", "leader", "voters", "learners"}
        assert sorted(where["voters"]) == [1, 2, 3]
        # A client certificate may not decommission.
        code, _, err = await run_cli("decommission", "--node-id", "3", *client_flags)
        assert code != 0
        assert "PermissionDenied" in err or "permission" in err.lower(), err
    finally:
        await cluster.close()
