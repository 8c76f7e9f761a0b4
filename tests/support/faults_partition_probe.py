"""Run inside `unshare --net` by test_faults_chaos.py: proves a partition drops real packets.

Isolates the leader of a KV group with `Partitioner` (blackhole rules), waits until the other
two elect a new leader in a higher term and a write through a Client commits, heals, waits
until every replica converges; prints one JSON line with what it saw.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from nodedb_cluster.client import Client
from nodedb_cluster.faults.checks import convergence_problems
from nodedb_cluster.faults.injector import term_of
from nodedb_cluster.faults.netfault import Partitioner, prepare_private_netns
from nodedb_cluster.localcluster import LocalCluster, groups_formed, leader_of


async def main(base: Path) -> dict[str, object]:
    prepare_private_netns()
    cluster = LocalCluster(base, 3)
    try:
        await cluster.start()
        statuses = await cluster.wait_for(
            lambda s: groups_formed(s, 3), cluster.nodes, 60.0, "groups formed"
        )
        addrs = [n.addr for n in cluster.nodes.values()]
        async with Client(addrs, cluster.client_credentials, timeout_s=5.0) as client:
            key = b"probe"
            group = client.group_of(key)
            old_leader = leader_of(statuses, group)
            old_term = term_of(statuses, old_leader, group)
            part = Partitioner(cluster.nodes[1].config.listen_addr.port)
            isolated = str(cluster.nodes[old_leader].config.listen_addr.host)
            others = [
                str(n.config.listen_addr.host) for i, n in cluster.nodes.items() if i != old_leader
            ]
            part.isolate(isolated, others)
            t0 = time.monotonic()
            rest = [i for i in cluster.nodes if i != old_leader]
            after = await cluster.wait_for(
                lambda s: (
                    (lead := leader_of(s, group)) not in (0, old_leader)
                    and term_of(s, lead, group) > old_term
                ),
                rest,
                15.0,
                "a new leader on the majority side",
            )
            new_leader = leader_of(after, group)
            elected_s = time.monotonic() - t0
            await client.put(key, b"during-partition", timeout_s=10.0)
            part.heal()
            await cluster.wait_for(
                lambda s: groups_formed(s, 3) and not convergence_problems(s, {1, 2, 3}, 3),
                cluster.nodes,
                30.0,
                "convergence after heal",
            )
            value = await client.get(key, timeout_s=5.0)
            return {
                "group": group,
                "old_leader": old_leader,
                "old_term": old_term,
                "new_leader": new_leader,
                "new_term": term_of(after, new_leader, group),
                "elected_s": elected_s,
                "value_after_heal": None if value is None else value.decode(),
                "rules_left": len(part.rules),
            }
    finally:
        await cluster.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="nodedb-partition-") as d:
        print(json.dumps(asyncio.run(main(Path(d)))), flush=True)
    sys.exit(0)
