"""Write latency and leader changes while one data group grows to millions of keys.

    python benches/compare/bulk_load.py --keys 3000000 --rounds 1 \\
        "PYTHONPATH=/path/to/other/python:/path/to/other/core" ""

Each variant (a space-separated list of `NAME=value` settings for the child's environment; ""
for this checkout as installed) runs, in a child process of its own, a local 3-node cluster
(mTLS, one data group) and `put_many` batches of `--batch` new keys until the group holds
`--keys`, reporting per quarter of the load the batches' p50 / p99 / max latency and the terms
of groups 0 and 1 (a rise is an election). Rounds alternate the variants. What it measures: how
a write wave's latency grows with the data already in the group, which the state machine's
snapshots (copy-on-write views of the map) can make proportional to the group's size.

Refuses a debug build of the Rust core. Bounded: `--keys` (at most 10M), a timeout per child.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from checks import is_debug_build, variant_rounds

KEYS_MAX = 10_000_000
CHILD_TIMEOUT_S = 900.0
QUARTERS = 4


async def _load(keys: int, batch: int) -> dict[str, object]:
    from nodedb_cluster.client import Client
    from nodedb_cluster.localcluster import LocalCluster

    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp), 3, overrides={"num_groups": 1})
        try:
            await cluster.start()
            await cluster.wait_formed(60.0)

            async def terms() -> list[int]:
                status = await cluster.status(1, 30.0)
                return [int(g["term"]) for g in status["groups"]]

            addrs = [n.addr for n in cluster.nodes.values()]
            quarters: list[dict[str, object]] = []
            async with Client(addrs, cluster.client_credentials) as client:
                start = time.monotonic()
                before = await terms()
                per_quarter = -(-keys // QUARTERS)
                for q in range(QUARTERS):
                    latencies: list[float] = []
                    for first in range(q * per_quarter, min(keys, (q + 1) * per_quarter), batch):
                        pairs = [
                            (b"key-%09d" % k, b"v" * 40)
                            for k in range(first, min(keys, first + batch, (q + 1) * per_quarter))
                        ]
                        t = time.monotonic()
                        await client.put_many(pairs)
                        latencies.append(time.monotonic() - t)
                    latencies.sort()
                    after = await terms()
                    quarters.append(
                        {
                            "keys": min(keys, (q + 1) * per_quarter),
                            "p50_ms": statistics.median(latencies) * 1000,
                            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
                            "max_ms": latencies[-1] * 1000,
                            "elections": sum(a - b for a, b in zip(after, before, strict=True)),
                        }
                    )
                    before = after
                return {"seconds": time.monotonic() - start, "quarters": quarters}
        finally:
            await cluster.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("variants", nargs="*", default=[""], help='environment settings, or ""')
    ap.add_argument("--keys", type=int, default=3_000_000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=1, choices=range(1, 6))
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not 1 <= args.keys <= KEYS_MAX or not 1 <= args.batch <= 10_000:
        ap.error(f"--keys 1..{KEYS_MAX}, --batch 1..10000")
    if is_debug_build():
        return 2
    if args.one:
        print(json.dumps(asyncio.run(_load(args.keys, args.batch))))
        return 0
    one = ["--one", "--keys", str(args.keys), "--batch", str(args.batch)]
    for title, result in variant_rounds(__file__, one, args.variants, args.rounds, CHILD_TIMEOUT_S):
        print(f"{title}: {result['seconds']:.1f} s")
        for q in result["quarters"]:  # type: ignore[attr-defined]
            print(
                f"  to {q['keys']:>9,} keys: batch p50 {q['p50_ms']:6.1f} ms  "
                f"p99 {q['p99_ms']:6.1f} ms  max {q['max_ms']:6.1f} ms  "
                f"elections {q['elections']}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
