"""Leader balance on real nodes: with `balance_leaders` the reconcilers spread the data-group
leaders that bootstrap left on one node, and the KV keeps serving through the hand-overs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from test_kv import formed

from nodedb_cluster.node import Node

BALANCE_TIMEOUT_S = 20.0


async def data_leaders(nodes: list[Node]) -> dict[int, int]:
    """group -> leader for the data groups, as node 1's replicas see them."""
    status = await nodes[0].status()
    return {g.group_id: g.leader_id or 0 for g in status.groups if g.group_id != 0}


async def test_leaders_spread_over_the_nodes_and_writes_go_on(tmp_path: Path) -> None:
    async with formed(tmp_path, 3, num_groups=4, balance_leaders=True) as nodes:
        deadline = time.monotonic() + BALANCE_TIMEOUT_S
        while True:
            leaders = await data_leaders(nodes)
            per_node = [list(leaders.values()).count(n) for n in (1, 2, 3)]
            if all(leaders.values()) and max(per_node) - min(per_node) <= 1:
                break
            assert time.monotonic() < deadline, f"leaders not balanced: {leaders}"
            await nodes[0].kv.put(b"during", b"x")  # writes keep working meanwhile
            await asyncio.sleep(0.1)  # leadership has no push channel here: poll, bounded
        keys = [b"bal:%d" % i for i in range(40)]
        for i, key in enumerate(keys):
            await nodes[i % 3].kv.put(key, key)
        for i, key in enumerate(keys):
            assert await nodes[(i + 1) % 3].kv.get(key) == key
        assert await data_leaders(nodes) == leaders, "balanced: no further hand-overs"


async def test_without_balance_the_bootstrap_node_keeps_leading(tmp_path: Path) -> None:
    async with formed(tmp_path, 3, num_groups=4) as nodes:
        await nodes[0].kv.put(b"k", b"v")
        for node in nodes:
            await node.reconcile_once()
        assert set((await data_leaders(nodes)).values()) == {1}
