"""Issue 16's placement figures on real processes, in ONE invocation:

    python benches/compare/elastic.py [--mib 256] [--value-bytes 1024] [--clients 64]

1. A 3-node mTLS cluster (RF 3, four data groups, rebalance every second) is loaded with
   `--mib` of KV data (`put_many` batches).
2. Writes run from `--clients` asyncio callers of one `Client` (single puts, each bounded by the
   client's 5 s deadline) through everything below; every failure is counted.
3. Nodes 4 and 5 start: time until the replicas are spread (3/3/2/2/2, no learner) and the KV
   bytes moved per second (every move copies one group: its bytes are the data size / 4).
4. Node 5 is decommissioned (PLACEMENT_REQUEST, as `nodedb-cluster decommission` sends): time until
   it is DECOMMISSIONED with its replicas back on nodes 1-4.
5. Writes stop; every key loaded in step 1 is read back and compared.
Refuses a debug build of the Rust core; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from checks import is_debug_build

from nodedb_cluster import wire
from nodedb_cluster.client import CLIENT_NODE_ID, Client
from nodedb_cluster.localcluster import LocalCluster, Status, data_group_views
from nodedb_cluster.placement_control import encode_placement_request
from nodedb_cluster.transport import Transport

DATA_GROUPS = 4
BATCH = 500
LOADERS = 8
SETTLE_TIMEOUT_S = 600.0


def spread(nodes: list[int]) -> Callable[[dict[int, Status]], bool]:
    def check(statuses: dict[int, Status]) -> bool:
        v = data_group_views(statuses)
        if len(v) != DATA_GROUPS:
            return False
        counts: Counter[int] = Counter()
        for g in v.values():
            voters, learners = g["voters"], g["learners"]
            assert isinstance(voters, list)
            assert isinstance(learners, list)
            if len(voters) != 3 or learners or not set(voters) <= set(nodes):
                return False
            counts.update(int(n) for n in voters)
        per_node = [counts.get(n, 0) for n in nodes]
        return max(per_node) - min(per_node) <= 1

    return check


async def load(client: Client, mib: int, value_bytes: int) -> int:
    keys = mib * (1 << 20) // value_bytes
    value = b"v" * value_bytes
    next_batch = iter(range(0, keys, BATCH))

    async def loader() -> None:
        for start in next_batch:
            items = [(f"k{i}".encode(), value) for i in range(start, min(start + BATCH, keys))]
            await client.put_many(items, timeout_s=30)

    await asyncio.gather(*(loader() for _ in range(LOADERS)))
    return keys


class Writers:
    """`n` asyncio callers of `client` writing single puts (each bounded by the client's
    deadline) until stopped; every outcome is counted by kind."""

    def __init__(self, client: Client, n: int) -> None:
        self.client = client
        self.stopping = asyncio.Event()
        self.ops = Counter[str]()
        self.tasks = [asyncio.ensure_future(self.write(i)) for i in range(n)]

    async def write(self, n: int) -> None:
        i = 0
        while not self.stopping.is_set():
            try:
                await self.client.put(f"w{n}-{i}".encode(), b"x" * 100)
                self.ops["ok"] += 1
            except Exception as e:  # every failure counts; the kind is kept
                self.ops[f"error:{type(e).__name__}"] += 1
            i += 1

    async def stop(self) -> dict[str, object]:
        """Stops them; the counts as `writes` and `write_errors`."""
        self.stopping.set()
        await asyncio.gather(*self.tasks)
        errors = sum(v for k, v in self.ops.items() if k != "ok")
        return {"writes": dict(self.ops), "write_errors": errors}


async def decommission(cluster: LocalCluster, node_id: int) -> None:
    """Asks node 1 to decommission `node_id` (PLACEMENT_REQUEST, as `nodedb-cluster
    decommission` sends it)."""
    admin = Transport(CLIENT_NODE_ID, "127.0.0.1:0", cluster.admin_credentials, rpc_timeout=10)
    try:
        kind, _ = await admin.send_rpc_to_addr(
            cluster.nodes[1].addr,
            wire.MessageKind.PLACEMENT_REQUEST,
            encode_placement_request("decommission", node_id=node_id),
        )
        assert kind == wire.MessageKind.PLACEMENT_RESPONSE
    finally:
        await admin.close()


async def read_back_ok(client: Client, keys: int, value_bytes: int) -> bool:
    """Whether a sample of the keys `load` wrote reads back intact."""
    sample = [f"k{i}".encode() for i in range(0, keys, max(1, keys // 2000))]
    values = await client.get_many(sample)
    return all(v == b"v" * value_bytes for v in values)


async def main(args: argparse.Namespace) -> dict[str, object]:
    base = Path(tempfile.mkdtemp(prefix="nodedb-elastic-"))
    overrides: dict[str, object] = {"rebalance_interval_ms": 1000}
    if args.concurrent_moves:
        overrides["rebalance_concurrent_moves_max"] = args.concurrent_moves
    cluster = LocalCluster(base, 5, overrides=overrides)
    result: dict[str, object] = {"mib": args.mib, "value_bytes": args.value_bytes}
    try:
        await cluster.start([1, 2, 3])
        await cluster.wait_for(spread([1, 2, 3]), [1, 2, 3], 60, "RF 3 on three nodes")
        addrs = [cluster.nodes[n].addr for n in (1, 2, 3)]
        async with Client(addrs, cluster.client_credentials) as client:
            t = time.monotonic()
            keys = await load(client, args.mib, args.value_bytes)
            result["load_s"] = round(time.monotonic() - t, 1)
            print(f"loaded {keys} keys ({args.mib} MiB) in {result['load_s']} s", file=sys.stderr)
            writers = Writers(client, args.clients)
            t = time.monotonic()
            await cluster.start([4, 5])
            await cluster.wait_for(
                spread([1, 2, 3, 4, 5]), cluster.nodes, SETTLE_TIMEOUT_S, "spread"
            )
            grow_s = time.monotonic() - t
            moved_mib = 4 * args.mib / DATA_GROUPS  # 12 replicas: 4/4/4/0/0 -> 3/3/2/2/2
            result["grow_s"] = round(grow_s, 1)
            result["grow_moved_mib"] = moved_mib
            result["grow_mib_per_s"] = round(moved_mib / grow_s, 1)
            print(
                f"nodes 4, 5 balanced in {grow_s:.1f} s ({moved_mib:.0f} MiB moved)",
                file=sys.stderr,
            )

            t = time.monotonic()
            await decommission(cluster, 5)

            def retired(statuses: dict[int, Status]) -> bool:
                states = {int(n[0]): n[2] for n in statuses[1]["nodes"]}
                return states.get(5) == "DECOMMISSIONED" and spread([1, 2, 3, 4])(statuses)

            await cluster.wait_for(retired, [1, 2, 3, 4], SETTLE_TIMEOUT_S, "decommissioned")
            result["decommission_s"] = round(time.monotonic() - t, 1)
            print(f"node 5 decommissioned in {result['decommission_s']} s", file=sys.stderr)
            result.update(await writers.stop())
            result["read_back_ok"] = await read_back_ok(client, keys, args.value_bytes)
    finally:
        await cluster.close()
        shutil.rmtree(base, ignore_errors=True)
    return result


def load_arguments(doc: str, clients: int, clients_help: str) -> argparse.ArgumentParser:
    """The arguments of a placement bench: the data loaded first and the writers beside."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="KV data loaded first (MiB)")
    parser.add_argument("--value-bytes", type=int, default=1024, help="bytes per value")
    parser.add_argument("--clients", type=int, default=clients, help=clients_help)
    return parser


def run_release(
    main: Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, object]]],
    ns: argparse.Namespace,
) -> None:
    """Runs a bench's `main` and prints its result as JSON; refuses a debug build of the core."""
    if is_debug_build():
        sys.exit(2)
    print(json.dumps(asyncio.run(main(ns)), sort_keys=True))


if __name__ == "__main__":
    parser = load_arguments(__doc__, 64, "writers during the moves")
    parser.add_argument(
        "--concurrent-moves",
        type=int,
        default=0,
        help="rebalance_concurrent_moves_max (0: default)",
    )
    run_release(main, parser.parse_args())
