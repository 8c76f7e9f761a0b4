"""`nodedb-cluster demo`: three real node processes that form, replicate, lose a leader, recover.

Everything runs on loopback under a temporary directory that is removed at the end (also on
Ctrl-C or failure, unless --keep). Writes go through the replicated KV (`nodedb_cluster.Client`:
key -> vShard -> group -> leader), each acknowledged only after it is fsynced and committed by a
quorum and applied; after the leader of the keys' group is killed the demo checks that every
acknowledged write is still there on every surviving node.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

from nodedb_cluster.cli_support import format_status
from nodedb_cluster.client import Client
from nodedb_cluster.errors import ClusterError
from nodedb_cluster.localcluster import LocalCluster, Status, leader_of

NODES: Final = 3
WRITES: Final = 20
FAILOVER_TIMEOUT_S: Final = 15.0


def say(text: str) -> None:
    print(text, flush=True)


async def run_demo(keep: bool = False) -> int:
    base = Path(tempfile.mkdtemp(prefix="nodedb-demo-"))
    # A throwaway local cluster, like the bench's: it may serve BENCH_LOAD to its admin.
    cluster = LocalCluster(base, NODES, overrides={"allow_bench_load": True})
    try:
        return await _demo(cluster)
    except (ClusterError, TimeoutError) as e:
        say(f"\ndemo FAILED: {e}")
        for node in cluster.nodes.values():
            say(f"--- log of node {node.node_id} (tail) ---\n{node.log_tail()}")
        return 1
    finally:
        await cluster.close()
        if keep:
            say(f"data kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


async def _demo(cluster: LocalCluster) -> int:
    summary: list[str] = []
    say(f"1. starting {NODES} node processes at once (mTLS, seeds 127.0.0.1..{NODES})")
    t0 = time.monotonic()
    await cluster.start()
    formed = await cluster.wait_for(
        lambda s: all(
            len(st["nodes"]) == NODES and all(len(g["voters"]) == NODES for g in st["groups"])
            for st in s.values()
        ),
        cluster.nodes,
        30.0,
        "every node to see the whole topology and every group its voters",
    )
    formed_s = time.monotonic() - t0
    cluster_ids = {st["cluster_id"] for st in formed.values()}
    say(f"   formed one cluster {cluster_ids} in {formed_s:.2f} s\n")
    say(format_status(formed[1]))
    summary.append(f"formation: {NODES} nodes Ready, one cluster id, {formed_s:.2f} s")

    addrs = [n.addr for n in cluster.nodes.values()]
    async with Client(addrs, cluster.client_credentials) as client:
        say(f"\n2. {WRITES} KV writes (each fsynced, committed by a quorum and applied first)")
        acked: dict[bytes, bytes] = {}
        for i in range(WRITES):
            key, value = b"demo.key%02d" % i, b"value-%d" % i
            await client.put(key, value)
            acked[key] = value
        say(f"   {len(acked)} writes acknowledged")
        group = client.group_of(b"demo.key00")
        leader = leader_of(await _statuses(cluster), group)
        say(f"\n3. SIGKILL node {leader}, the leader of data group {group}")
        cluster.nodes[leader].kill()
        t_kill = time.monotonic()
        survivors = [i for i in cluster.nodes if i != leader]
        after = await cluster.wait_for(
            lambda s: leader_of(s, group) not in (0, leader),
            survivors,
            FAILOVER_TIMEOUT_S,
            f"a new leader of group {group}",
        )
        failover_s = time.monotonic() - t_kill
        new_leader = leader_of(after, group)
        say(f"   node {new_leader} leads group {group} after {failover_s:.2f} s")
        await client.put(b"demo.after_failover", b"ok")
        acked[b"demo.after_failover"] = b"ok"
        lost = await _lost_on(client, acked, survivors)
        say(f"   acknowledged writes missing on survivors: {lost or 'none'}")
        summary.append(
            f"failover: new leader node {new_leader} in {failover_s:.2f} s; lost: {lost}"
        )

        say(f"\n4. restarting node {leader} on its own data directory")
        await cluster.start([leader])
        healed = await _lost_on(client, acked, [leader], wait_s=30.0)
        if healed:
            say(f"   node {leader} is missing {healed}")
            lost = lost or healed
        else:
            say(f"   node {leader} rejoined and holds every acknowledged write")
            summary.append(f"recovery: node {leader} restarted, caught up, nothing lost")

    say("\nsummary")
    for line in summary:
        say(f"  - {line}")
    ok = not lost
    say("demo OK" if ok else "demo FAILED: acknowledged writes were lost")
    return 0 if ok else 1


async def _statuses(cluster: LocalCluster) -> dict[int, Status]:
    return {i: await cluster.status(i) for i in cluster.nodes if cluster.nodes[i].running}


async def _lost_on(
    client: Client, acked: dict[bytes, bytes], node_ids: list[int], wait_s: float = 5.0
) -> list[str]:
    """Keys whose acknowledged value a node does not hold locally. Followers apply what the
    leader acknowledged moments later, so this waits (bounded) before it reports a loss."""
    keys = list(acked)
    deadline = time.monotonic() + wait_s
    while True:
        lost: set[str] = set()
        for node_id in node_ids:
            try:
                values = await client.get_many_at(node_id, keys, max_staleness_s=wait_s)
            except ClusterError:
                lost.add(f"(node {node_id} not serving yet)")
                continue
            lost |= {k.decode() for k, v in zip(keys, values, strict=True) if acked[k] != v}
        if not lost or time.monotonic() > deadline:
            return sorted(lost)
        await asyncio.sleep(0.2)  # a follower's apply has no push channel: poll, bounded


if __name__ == "__main__":
    sys.exit(asyncio.run(run_demo()))
