"""Issue 16 parts 2-3 on real processes: a vShard moves between groups through the CLI while a
client writes to it (no error, nothing lost, the source keeps none of its keys); a move that
cannot flip within its pause budget aborts and leaves everything where it was; groups added to a
live cluster are bootstrapped, joined and filled with vShards by the rebalancer alone."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from nodedb_cluster import vshard_mover
from nodedb_cluster.client import Client
from nodedb_cluster.localcluster import LocalCluster, Status, data_group_views, leader_of
from nodedb_cluster.routing import vshard_for_key
from support.cli_run import cred_flags, run_cli

pytestmark = pytest.mark.multiprocess

FAST: dict[str, object] = {"rpc_timeout_ms": 2000, "rebalance_interval_ms": 0}
KEYS = 400
WRITES_MAX = 5_000
"""Bound on the writer that runs during a move (it stops when the move is over anyway)."""


def keys_of(group: int, statuses: dict[int, Status]) -> int:
    """Keys in `group` as its leader's replica holds them (status' kv digest)."""
    kv = data_group_views(statuses)[group]["kv"]
    assert isinstance(kv, list)
    return int(kv[1])


def formed(groups: int) -> Callable[[dict[int, Status]], bool]:
    def check(statuses: dict[int, Status]) -> bool:
        views = data_group_views(statuses)
        return len(views) == groups and all(
            len(g["voters"]) == 3 and not g["learners"] for g in views.values()
        )

    return check


async def write_during(client: Client, stop: asyncio.Event, prefix: str) -> list[int]:
    """Writes `prefix{i}` until `stop` (bounded); raises on the first failed write."""
    acked: list[int] = []
    for i in range(WRITES_MAX):
        if stop.is_set():
            break
        await client.put(f"{prefix}{i}".encode(), f"{i}".encode())
        acked.append(i)
    return acked


async def move(cluster: LocalCluster, vshard: int, to_group: int) -> dict[str, object]:
    admin = ["--addr", cluster.nodes[1].addr, *cred_flags(cluster.admin_credentials)]
    code, out, err = await run_cli(
        "move-vshard", "--vshard", str(vshard), "--to-group", str(to_group), "--json", *admin
    )
    assert code in (0, 1), err
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


async def test_a_vshard_moves_under_writes_and_nothing_is_lost(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "c", 3, overrides={**FAST, "num_groups": 2})
    try:
        await cluster.start()
        await cluster.wait_for(formed(2), cluster.nodes, 30, "two groups at RF 3")
        addrs = [n.addr for n in cluster.nodes.values()]
        async with Client(addrs, cluster.client_credentials) as client:
            vshard = vshard_for_key(b"k0")
            source = client.routing.group_for_vshard(vshard)
            target = 3 - source
            candidates = [f"k{i}".encode() for i in range(1, KEYS * 100)]
            moving = [*[k for k in candidates if vshard_for_key(k) == vshard][:20], b"k0"]
            others = [f"o{i}".encode() for i in range(KEYS)]
            for k in [*moving, *others]:
                await client.put(k, b"before")
            stop = asyncio.Event()
            # one writer on the moving vShard's key, one on the others
            writers = [
                asyncio.ensure_future(write_during(client, stop, "k0-")),
                asyncio.ensure_future(write_during(client, stop, "o-")),
            ]
            hot = asyncio.ensure_future(_hammer(client, b"k0", stop))
            doc = await move(cluster, vshard, target)
            stop.set()
            acked = await asyncio.gather(*writers)  # raises if any write failed
            hot_acked = await hot
        assert doc["outcome"] == "moved", doc
        async with Client([cluster.nodes[3].addr], cluster.client_credentials) as reader:
            assert reader.routing.group_for_vshard(vshard) == target
            hot_value = hot_acked.to_bytes(8, "big") if hot_acked else b"before"
            assert await reader.get(b"k0") == hot_value
            assert await reader.get_many(moving[:-1]) == [b"before"] * (len(moving) - 1)
            assert await reader.get_many(others) == [b"before"] * len(others)
            for prefix, done in zip(("k0-", "o-"), acked, strict=True):
                got = await reader.get_many([f"{prefix}{i}".encode() for i in done])
                assert got == [f"{i}".encode() for i in done], f"a {prefix} write is missing"
        # Every key once: had the source kept its copy of the vShard, the groups would hold
        # the moved keys twice.
        distinct = len(moving) + len(others) + sum(len(a) for a in acked)
        await cluster.wait_for(
            lambda s: keys_of(source, s) + keys_of(target, s) == distinct,
            cluster.nodes,
            10,
            f"{distinct} keys in the two groups",
        )
        print(f"moved vShard {vshard}: {doc}; writes meanwhile {[len(a) for a in acked]}")
    finally:
        await cluster.close()


async def _hammer(client: Client, key: bytes, stop: asyncio.Event) -> int:
    """Overwrite `key` with a counter until `stop` (bounded): the last acknowledged count."""
    last = 0
    for i in range(1, WRITES_MAX):
        if stop.is_set():
            break
        await client.put(key, i.to_bytes(8, "big"))
        last = i
    return last


async def test_a_move_over_its_pause_budget_aborts_and_keeps_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides: dict[str, object] = {**FAST, "num_groups": 2, "vshard_move_pause_budget_ms": 1}
    # A pause of a few ms is under 1 ms on a fast disk: the nodes' movers wait 20 ms once frozen.
    monkeypatch.setenv(vshard_mover.FAILPOINT_FROZEN_DELAY_MS, "20")
    cluster = LocalCluster(tmp_path / "c", 3, overrides=overrides)
    try:
        await cluster.start()
        await cluster.wait_for(formed(2), cluster.nodes, 30, "two groups at RF 3")
        addrs = [n.addr for n in cluster.nodes.values()]
        async with Client(addrs, cluster.client_credentials) as client:
            vshard = vshard_for_key(b"k0")
            source = client.routing.group_for_vshard(vshard)
            await client.put(b"k0", b"kept")
            doc = await move(cluster, vshard, 3 - source)
            assert str(doc["outcome"]).startswith("aborted"), doc
            assert client.routing.group_for_vshard(vshard) == source
            assert await client.get(b"k0") == b"kept"
            await client.put(b"k0", b"written after")  # the source serves the vShard again
            assert await client.get(b"k0") == b"written after"
    finally:
        await cluster.close()


def vshards_spread(groups: int) -> Callable[[dict[int, Status]], bool]:
    def check(statuses: dict[int, Status]) -> bool:
        views = data_group_views(statuses)
        if len(views) != groups or not formed(groups)(statuses):
            return False
        counts = Counter({g: int(v["vshards"]) for g, v in views.items()})
        return max(counts.values()) - min(counts.values()) <= 1024 * 0.2 / groups + 1

    return check


@pytest.mark.timeout(30 + 240 + 30)  # its own bounds: formation 30 s, filling 240 s
async def test_groups_added_to_a_live_cluster_are_filled(tmp_path: Path) -> None:
    cluster = LocalCluster(
        tmp_path / "c", 3, overrides={**FAST, "num_groups": 2, "rebalance_interval_ms": 500}
    )
    try:
        await cluster.start()
        await cluster.wait_for(formed(2), cluster.nodes, 30, "two groups at RF 3")
        addrs = [n.addr for n in cluster.nodes.values()]
        async with Client(addrs, cluster.client_credentials) as client:
            keys = [f"g{i}".encode() for i in range(KEYS)]
            for k in keys:
                await client.put(k, b"v")
            admin = ["--addr", cluster.nodes[2].addr, *cred_flags(cluster.admin_credentials)]
            code, out, err = await run_cli("add-groups", "--count", "2", "--json", *admin)
            assert code == 0, err
            added = json.loads(out)["groups"]
            assert [g[0] for g in added] == [3, 4]
            stop = asyncio.Event()
            writing = asyncio.ensure_future(write_during(client, stop, "w"))
            statuses = await cluster.wait_for(vshards_spread(4), cluster.nodes, 240, "filled")
            stop.set()
            acked = await writing
            assert await client.get_many(keys) == [b"v"] * KEYS
            got = await client.get_many([f"w{i}".encode() for i in acked])
            assert got == [f"{i}".encode() for i in acked]
        counts = {g: v["vshards"] for g, v in data_group_views(statuses).items()}
        print(f"vShards per group after adding 2 groups: {counts}; {len(acked)} writes meanwhile")
    finally:
        await cluster.close()


@pytest.mark.timeout(30 + 20 + 60 + 40)  # its own bounds: formation, copying, settling
async def test_a_mover_killed_mid_move_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL of the node running a move while it copies: the move ends (finished by the new
    leader of the source group, or aborted) with no move left in flight, and the vShard's keys
    are all readable and writable wherever it ends up. A fast host copies 25 MiB between two
    status polls: each mover holds the move 3 s once frozen (failpoint, within the 5 s pause
    budget), so the kill lands during the move on any host."""
    monkeypatch.setenv(vshard_mover.FAILPOINT_FROZEN_DELAY_MS, "3000")
    overrides: dict[str, object] = {**FAST, "num_groups": 2, "vshard_move_pause_budget_ms": 5000}
    cluster = LocalCluster(tmp_path / "c", 3, overrides=overrides)
    try:
        await cluster.start()
        await cluster.wait_for(formed(2), cluster.nodes, 30, "two groups at RF 3")
        addrs = [n.addr for n in cluster.nodes.values()]
        vshard = vshard_for_key(b"k0")
        # ~25 MiB in the moving vShard, so its copy takes long enough to be killed in.
        keys = [
            k for k in (f"big{i}".encode() for i in range(400_000)) if vshard_for_key(k) == vshard
        ]
        keys = keys[:100]
        value = b"x" * (256 << 10)
        async with Client(addrs, cluster.client_credentials) as client:
            source = client.routing.group_for_vshard(vshard)
            for k in keys:
                await client.put(k, value)
            statuses = await cluster.wait_for(lambda s: True, cluster.nodes, 5, "status")
            mover = leader_of(statuses, source)
            admin = ["--addr", cluster.nodes[mover].addr, *cred_flags(cluster.admin_credentials)]
            code, _, err = await run_cli(
                "move-vshard",
                "--vshard",
                str(vshard),
                "--to-group",
                str(3 - source),
                "--no-wait",
                *admin,
            )
            assert code == 0, err

            def copying(s: dict[int, Status]) -> bool:
                rows = s[mover].get("vshard_moves") or []
                return any(r[4] in ("copying", "frozen") for r in rows)

            await cluster.wait_for(copying, [mover], 20, "the move copying")
            cluster.nodes[mover].kill()
            await cluster.nodes[mover].stop()  # reaps the killed process
            await cluster.start([mover])
            others = [n for n in cluster.nodes if n != mover]

            def over(s: dict[int, Status]) -> bool:
                return all(not st.get("vshard_moves") for st in s.values())

            await cluster.wait_for(over, cluster.nodes, 60, "no move in flight")
            await client.connect()
            where = client.routing.group_for_vshard(vshard)
            assert await client.get_many(keys) == [value] * len(keys)
            await client.put(keys[0], b"after")
            assert await client.get(keys[0]) == b"after"
        print(f"vShard {vshard} ended in group {where} (source {source}); survivors {others}")
    finally:
        await cluster.close()
