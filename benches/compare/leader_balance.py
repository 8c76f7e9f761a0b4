"""Leader balance on vs off: the same client workload against two fresh 3-node clusters,
alternating, in ONE invocation (the A/B behind `ClusterConfig.balance_leaders`' default).

    python benches/compare/leader_balance.py [--rounds 2] [--duration 10] [--clients 64]

Off: every data group stays led by the bootstrap node (as before balancing). On: the
reconciler spreads the data-group leaders (2/1/1 of 4 on 3 nodes). Refuses a debug core.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from checks import is_debug_build

from nodedb_cluster.bench import LoadSpec, Summary, bench_client, bench_embedded
from nodedb_cluster.localcluster import LocalCluster

BALANCE_TIMEOUT_S = 30.0


async def one(balance: bool, spec: LoadSpec, placement: str) -> tuple[Summary, dict[int, int]]:
    base = Path(tempfile.mkdtemp(prefix="nodedb-balance-"))
    cluster = LocalCluster(
        base, 3, overrides={"balance_leaders": balance, "allow_bench_load": True}
    )
    try:
        await cluster.start()

        def formed(s: dict[int, dict[str, object]]) -> bool:
            for st in s.values():
                groups = st["groups"]
                assert isinstance(groups, list)
                if not all(len(g["voters"]) == 3 and g["leader"] for g in groups):
                    return False
                leaders = [g["leader"] for g in groups if g["group_id"] != 0]
                if balance and max(leaders.count(n) for n in (1, 2, 3)) > 2:
                    return False
            return True

        await cluster.wait_for(formed, cluster.nodes, BALANCE_TIMEOUT_S, "formed (and balanced)")
        status = await cluster.status(1)
        leaders = {g["group_id"]: g["leader"] for g in status["groups"]}
        addrs = [n.addr for n in cluster.nodes.values()]
        if placement == "embedded":
            summary = await bench_embedded(addrs, cluster.admin_credentials, spec, quiet=True)
        else:
            summary = await bench_client(addrs, cluster.client_credentials, spec, quiet=True)
        return summary, leaders
    finally:
        await cluster.close()
        shutil.rmtree(base, ignore_errors=True)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--placement", choices=("client", "embedded"), default="client")
    args = ap.parse_args()
    if is_debug_build():
        sys.exit(2)
    spec = LoadSpec(clients=args.clients, duration_s=args.duration)
    results: dict[bool, list[Summary]] = {False: [], True: []}
    for r in range(args.rounds):
        for balance in (False, True):
            s, leaders = await one(balance, spec, args.placement)
            results[balance].append(s)
            print(
                f"round {r + 1} balance={'on ' if balance else 'off'} {s.writes_per_s:9,.0f} w/s "
                f"p50 {s.p50_ms:6.2f} ms p99 {s.p99_ms:6.2f} ms errors {s.errors} "
                f"leaders {leaders}",
                flush=True,
            )
    off = statistics.median(s.writes_per_s for s in results[False])
    on = statistics.median(s.writes_per_s for s in results[True])
    print(f"median writes/s: off {off:,.0f}, on {on:,.0f}: on/off {on / off:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
