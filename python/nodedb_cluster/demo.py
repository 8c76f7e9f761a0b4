"""`nodedb-cluster demo`: three real node processes that form, replicate, lose a leader, recover.

Everything runs on loopback under a temporary directory that is removed at the end (also on
Ctrl-C or failure, unless --keep). Writes are metadata-group proposals (cluster settings), each
acknowledged only after it is committed by a quorum and applied; after the leader is killed the
demo checks that every acknowledged write is still there on every surviving node.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import msgpack

from nodedb_cluster import wire
from nodedb_cluster.cli import format_status
from nodedb_cluster.client import CLIENT_NODE_ID
from nodedb_cluster.errors import ClusterError
from nodedb_cluster.localcluster import LocalCluster, Status
from nodedb_cluster.metadata.commands import MetadataEntry, PutSetting
from nodedb_cluster.node import encode_metadata_propose
from nodedb_cluster.transport import Transport

NODES: Final = 3
WRITES: Final = 20
FAILOVER_TIMEOUT_S: Final = 15.0


def say(text: str) -> None:
    print(text, flush=True)


async def run_demo(keep: bool = False) -> int:
    base = Path(tempfile.mkdtemp(prefix="nodedb-demo-"))
    cluster = LocalCluster(base, NODES)
    client = Transport(CLIENT_NODE_ID, "127.0.0.1:0", cluster.client_credentials)
    try:
        return await _demo(cluster, client)
    except (ClusterError, TimeoutError) as e:
        say(f"\ndemo FAILED: {e}")
        for node in cluster.nodes.values():
            say(f"--- log of node {node.node_id} (tail) ---\n{node.log_tail()}")
        return 1
    finally:
        await client.close()
        await cluster.close()
        if keep:
            say(f"data kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


async def _demo(cluster: LocalCluster, client: Transport) -> int:
    summary: list[str] = []
    say(f"1. starting {NODES} node processes at once (mTLS, seeds 127.0.0.1..{NODES})")
    t0 = time.monotonic()
    await cluster.start()
    formed = await cluster.wait_for(
        lambda s: all(len(st["nodes"]) == NODES for st in s.values()),
        cluster.nodes,
        30.0,
        "every node to see the whole topology",
    )
    formed_s = time.monotonic() - t0
    cluster_ids = {st["cluster_id"] for st in formed.values()}
    say(f"   formed one cluster {cluster_ids} in {formed_s:.2f} s\n")
    say(format_status(formed[1]))
    summary.append(f"formation: {NODES} nodes Ready, one cluster id, {formed_s:.2f} s")

    say(f"\n2. {WRITES} replicated writes (each acknowledged after quorum commit + apply)")
    acked: dict[str, str] = {}
    for i in range(WRITES):
        key, value = f"demo.key{i:02d}", f"value-{i}"
        target = cluster.nodes[1 + i % NODES].addr  # any node: followers forward to the leader
        await _put_setting(client, target, key, value)
        acked[key] = value
    say(f"   {len(acked)} writes acknowledged")

    leader = _leader_of(formed, 0)
    say(f"\n3. SIGKILL the metadata-group leader, node {leader}")
    cluster.nodes[leader].kill()
    t_kill = time.monotonic()
    survivors = [i for i in cluster.nodes if i != leader]
    after = await cluster.wait_for(
        lambda s: _leader_of(s, 0) not in (0, leader),
        survivors,
        FAILOVER_TIMEOUT_S,
        "a new metadata leader",
    )
    failover_s = time.monotonic() - t_kill
    new_leader = _leader_of(after, 0)
    say(f"   node {new_leader} leads group 0 after {failover_s:.2f} s")
    await _put_setting(client, cluster.nodes[new_leader].addr, "demo.after_failover", "ok")
    acked["demo.after_failover"] = "ok"
    # Followers apply what the leader acknowledged moments later: wait (bounded), then compare.
    try:
        after = await cluster.wait_for(
            lambda s: not _lost(acked, s), survivors, 5.0, "survivors to apply every write"
        )
    except ClusterError:
        after = {i: await cluster.status(i) for i in survivors}
    lost = _lost(acked, after)
    say(f"   acknowledged writes missing on survivors: {lost or 'none'}")
    summary.append(f"failover: new leader node {new_leader} in {failover_s:.2f} s; lost: {lost}")

    say(f"\n4. restarting node {leader} on its own data directory")
    await cluster.start([leader])
    healed = await cluster.wait_for(
        lambda s: (
            len({st["metadata_applied_index"] for st in s.values()}) == 1
            and not _lost(acked, {leader: s[leader]})
        ),
        cluster.nodes,
        30.0,
        "the restarted node to catch up",
    )
    say(f"   node {leader} rejoined and applied through {healed[leader]['metadata_applied_index']}")
    summary.append(f"recovery: node {leader} restarted, caught up, nothing lost")

    say("\nsummary")
    for line in summary:
        say(f"  - {line}")
    ok = not lost
    say("demo OK" if ok else "demo FAILED: acknowledged writes were lost")
    return 0 if ok else 1


async def _put_setting(client: Transport, addr: str, key: str, value: str) -> None:
    entry = MetadataEntry((PutSetting(key, value),)).encode()
    request = encode_metadata_propose(entry, forwarded=False)
    _kind, payload = await client.send_rpc_to_addr(addr, wire.MessageKind.METADATA_PROPOSE, request)
    reply = msgpack.unpackb(payload, raw=False)
    if not isinstance(reply, dict) or reply.get("not_leader") or reply.get("refused"):
        raise ClusterError(f"write {key} not acknowledged: {reply}")


def _leader_of(statuses: dict[int, Status], group_id: int) -> int:
    for status in statuses.values():
        for group in status["groups"]:
            if group["group_id"] == group_id and group["role"] == "leader":
                return int(group["leader"])
    return 0


def _lost(acked: dict[str, str], statuses: dict[int, Status]) -> list[str]:
    lost = []
    for status in statuses.values():
        settings = status.get("settings")
        assert isinstance(settings, dict)
        lost += [k for k, v in acked.items() if settings.get(k) != v]
    return sorted(set(lost))


if __name__ == "__main__":
    sys.exit(asyncio.run(run_demo()))
