"""SWIM wired into running nodes (in one process, real QUIC and UDP sockets on 127.0.0.x).

Goal: with swim_udp_addr and a cluster secret set, each node advertises its SWIM address in the
topology, seeds SWIM from it, reports members in `status()`, and when SWIM declares a node dead,
leader hints pointing at it are cleared and `on_member_dead` hooks run. Without a secret, SWIM
refuses to start unless swim_insecure is asked for by name."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.config import ClusterConfig
from nodedb_cluster.errors import ClusterError, ConfigError
from nodedb_cluster.formation.start import start_cluster
from nodedb_cluster.node import Node
from raft_cluster import free_udp_addr

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
        # The bootstrapper's entry carries its SWIM address; joiners are learned by SWIM itself
        # (their first ping), since JoinRequest has no swim_addr field yet (wire.py, issue 7 note).
        assert topo[1].swim_addr == nodes[0].config.swim_udp_addr
        assert "members" in (await nodes[0].status()).to_doc()

        dead: asyncio.Queue[int] = asyncio.Queue(maxsize=8)
        nodes[0].add_member_dead_hook(dead.put_nowait)
        group = nodes[0].metadata.routing.group_ids[0]
        nodes[0].kv.learn_leader(group, 3)  # pretend node 3 led this group
        assert nodes[0].kv.leader_hint(group) == 3
        victim = nodes.pop()
        assert victim.membership is not None
        await victim.membership.close(leave=False)  # SWIM goes silent as in a crash
        async with asyncio.timeout(DETECT_TIMEOUT_S):
            assert await dead.get() == 3
        assert nodes[0].kv.leader_hint(group) != 3
        member_states = {m[0]: m[1] for m in (await nodes[0].status()).members}
        assert member_states == {2: "ALIVE", 3: "DEAD"}
        await victim.shutdown()
    finally:
        for n in nodes:
            await n.shutdown()


async def test_swim_without_a_secret_is_refused_unless_insecure_by_name(tmp_path: Path) -> None:
    seed = free_udp_addr("127.0.0.1")
    with pytest.raises(ClusterError) as e:
        await start_cluster(node_config(tmp_path, 1, seed, None))
    cause: BaseException | None = e.value
    while cause is not None and not isinstance(cause, ConfigError):
        cause = cause.__cause__ or cause.__context__
    assert isinstance(cause, ConfigError)
    assert cause.field == "cluster_secret_path"
    node = await start_cluster(node_config(tmp_path, 1, seed, None, swim_insecure=True))
    try:
        assert node.membership is not None
        assert (await node.status()).members == ()
    finally:
        await node.shutdown()
    with pytest.raises(ConfigError) as refused:
        node_config(tmp_path, 1, seed, tmp_path / "s", swim_insecure=True)
    assert refused.value.field == "swim_insecure"
