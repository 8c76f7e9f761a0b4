"""SWIM wired into running nodes (in one process, real QUIC and UDP sockets on 127.0.0.x).

Goal: with swim_udp_addr and a cluster secret set, each node advertises its SWIM address in the
topology (the bootstrapper's own entry, joiners' through their JoinRequest), seeds SWIM from it,
reports members in `status()`, and when SWIM declares a node dead, the KV router's leader hint
naming it (learned from Raft, the node really leading a data group) is cleared and
`on_member_dead` hooks run (issue 7: "membership changes feed routing and status"). Without a
secret file, SWIM uses the cluster secret in the catalog (issue 12)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.config import ClusterConfig
from nodedb_cluster.errors import ConfigError
from nodedb_cluster.formation.start import start_cluster
from nodedb_cluster.membership.secret import read_cluster_secret
from nodedb_cluster.node import Node
from support.raft_cluster import free_udp_addr

DETECT_TIMEOUT_S = 20.0


def node_config(
    tmp_path: Path, i: int, seed: str, secret: Path | None, **kw: object
) -> ClusterConfig:
    listen = free_udp_addr(f"127.0.0.{i}")
    return ClusterConfig(
        node_id=i,
        listen_addr=parse_socket_addr(seed if i == 1 else listen),
        seed_nodes=(parse_socket_addr(seed),),
        data_dir=tmp_path / f"n{i}",
        insecure_transport=True,
        num_groups=2,
        swim_udp_addr=parse_socket_addr(free_udp_addr(f"127.0.0.{i}")),
        cluster_secret_path=secret,
        **kw,  # type: ignore[arg-type]
    )


POLL_S = 0.05


async def until(pred: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll Raft state (it has no change notification here) until `pred()`; bounded."""
    for _ in range(int(timeout_s / POLL_S)):
        if await pred():
            return
        await asyncio.sleep(POLL_S)  # a poll period, not a synchronisation
    raise AssertionError(f"not within {timeout_s} s: {what}")


async def wait_for(pred: object, changed: asyncio.Event, timeout_s: float) -> None:
    """Re-check `pred()` after every SWIM event on any node, until it holds or the deadline."""
    assert callable(pred)
    async with asyncio.timeout(timeout_s):
        while not await pred():
            changed.clear()
            await changed.wait()


async def test_nodes_run_swim_report_members_and_clear_dead_leader_hints(tmp_path: Path) -> None:
    secret = tmp_path / "cluster.secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)  # a node refuses a secret others can read
    seed = free_udp_addr("127.0.0.1")
    nodes: list[Node] = []
    try:
        for i in (1, 2, 3):
            nodes.append(await start_cluster(node_config(tmp_path, i, seed, secret)))

        async def all_alive() -> bool:
            for n in nodes:
                members = (await n.status()).members
                if sorted((m[0], m[1]) for m in members) != [
                    (j, "ALIVE") for j in (1, 2, 3) if j != n.config.node_id
                ]:
                    return False
            return True

        changed = asyncio.Event()
        for n in nodes:
            assert n.membership is not None
            n.membership.subscribe(lambda _e: changed.set())
        await wait_for(all_alive, changed, DETECT_TIMEOUT_S)
        topo = nodes[0].metadata.topology
        for n in nodes:  # joiners' entries too: JoinRequest carries the SWIM address
            assert topo[n.config.node_id].swim_addr == n.config.swim_udp_addr
        assert "members" in (await nodes[0].status()).to_doc()

        # Node 3 really leads a data group, and node 1's KV router learned so from Raft.
        engine = nodes[0].engine
        assert engine is not None
        group = next(g for g in nodes[0].metadata.routing.group_ids if g != 0)

        async def three_votes() -> bool:
            return 3 in (await engine.status(group)).voters

        await until(three_votes, DETECT_TIMEOUT_S, f"node 3 a voter of group {group}")
        leader = (await engine.status(group)).leader_id
        assert leader is not None
        owner = next(n for n in nodes if n.config.node_id == leader)
        assert owner.engine is not None
        await owner.engine.transfer_leader(group, 3)

        async def three_leads() -> bool:
            return (await engine.status(group)).leader_id == 3

        await until(three_leads, DETECT_TIMEOUT_S, f"node 3 leading group {group}")
        key = next(k for i in range(10_000) if nodes[0].kv.group_of(k := b"k%d" % i) == group)
        await nodes[0].kv.put(key, b"v")
        assert nodes[0].kv.leader_hint(group) == 3

        dead: asyncio.Queue[int] = asyncio.Queue(maxsize=8)
        nodes[0].add_member_dead_hook(dead.put_nowait)
        victim = nodes.pop()
        assert victim.membership is not None
        await victim.membership.close(leave=False)  # SWIM goes silent as in a crash
        async with asyncio.timeout(DETECT_TIMEOUT_S):
            assert await dead.get() == 3
        assert nodes[0].kv.leader_hint(group) != 3, "the KV core asks the live members first"
        member_states = {m[0]: m[1] for m in (await nodes[0].status()).members}
        assert member_states == {2: "ALIVE", 3: "DEAD"}
        await victim.shutdown()
    finally:
        for n in nodes:
            await n.shutdown()


async def test_swim_without_a_secret_file_uses_the_catalog_secret(tmp_path: Path) -> None:
    """Issue 12: the cluster secret made at bootstrap (and handed to joiners) keys SWIM, so no
    file is needed; a catalog without one (formed before it existed) still needs the file or
    swim_insecure by name."""
    seed = free_udp_addr("127.0.0.1")
    node = await start_cluster(node_config(tmp_path, 1, seed, None))
    try:
        assert node.membership is not None
        stored = await node.admission.secret()
        assert stored is not None
        assert len(stored) == 32
    finally:
        await node.shutdown()
    with pytest.raises(ConfigError) as missing:
        read_cluster_secret(node_config(tmp_path, 1, seed, None), None)
    assert missing.value.field == "cluster_secret_path"
    insecure = node_config(tmp_path, 1, seed, None, swim_insecure=True)
    assert read_cluster_secret(insecure, b"s" * 32) is None  # asked for by name: honoured
    with pytest.raises(ConfigError) as refused:
        node_config(tmp_path, 1, seed, tmp_path / "s", swim_insecure=True)
    assert refused.value.field == "swim_insecure"
