"""64 writers as one client or as several: does a second wave in flight raise W64?

    python benches/compare/waves.py [--rounds 3] [--duration 6] [--driver native]

On one local 3-node cluster, alternating within each round: one client with 64 closed-loop
callers, then 2 clients of 32 and 4 of 16 running at once (each its own `Client`, connection
and write session). If the cluster overlapped independent waves (the leader proposing one
while it waits for the followers' acknowledgements of another), the split rows would match or
beat the single client; if the rows sum to less, the waves are served one round at a time and
every extra request only adds its fixed cost. Also prints W64 in all three placements (asyncio,
native, embedded) so a build's ceiling can be read from one invocation (BENCHMARKS.md, issue 14).

Refuses a debug build of the Rust core; every load is bounded by `--duration` and the bench's
own limits; traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from typing import Any

from checks import add_rounds_and_duration, is_debug_build

from nodedb_cluster.bench import (
    Driver,
    LoadSpec,
    Summary,
    bench_client,
    bench_embedded,
    with_local_cluster,
)

SPLITS = (1, 2, 4)
WARMUP_S = 2.0


def ops(summary: Summary) -> float:
    return summary.ops_per_s


async def body(
    addrs: list[str], creds: Any, rounds: int, duration_s: float, driver: Driver
) -> None:
    await bench_client(addrs, creds, LoadSpec(clients=16, duration_s=WARMUP_S), quiet=True)
    split_ops: dict[int, list[float]] = {n: [] for n in SPLITS}
    placement_ops: dict[str, list[float]] = {p: [] for p in ("asyncio", "native", "embedded")}
    for r in range(rounds):
        for n in SPLITS:
            runs = await asyncio.gather(
                *(
                    bench_client(
                        addrs,
                        creds,
                        LoadSpec(clients=64 // n, duration_s=duration_s, seed=i + 1),
                        quiet=True,
                        driver=driver,
                    )
                    for i in range(n)
                )
            )
            total = sum(ops(s) for s in runs)
            p50 = statistics.median(s.p50_ms for s in runs)
            split_ops[n].append(total)
            print(f"round {r} {driver} {n}x{64 // n}: {total:9,.0f} ops/s  p50 {p50:.3f} ms")
        for placement in placement_ops:
            spec = LoadSpec(clients=64, duration_s=duration_s)
            if placement == "embedded":
                s = await bench_embedded(addrs, creds, spec, quiet=True)
            else:
                s = await bench_client(
                    addrs,
                    creds,
                    spec,
                    quiet=True,
                    driver="native" if placement == "native" else "asyncio",
                )
            placement_ops[placement].append(ops(s))
            print(f"round {r} W64 {placement}: {ops(s):9,.0f} ops/s")
        sys.stdout.flush()
    print("medians:")
    for n, values in split_ops.items():
        print(f"  {driver} {n}x{64 // n}: {statistics.median(values):9,.0f} ops/s")
    for placement, values in placement_ops.items():
        print(f"  W64 {placement}: {statistics.median(values):9,.0f} ops/s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_rounds_and_duration(ap, duration_s=6.0, rounds=3)
    ap.add_argument("--driver", choices=("asyncio", "native"), default="native")
    ns = ap.parse_args()
    if is_debug_build():
        return 2

    async def run(addrs: list[str], creds: Any) -> None:
        await body(addrs, creds, ns.rounds, ns.duration, ns.driver)

    # Operator credentials: the embedded row starts load inside the nodes (BENCH_LOAD).
    asyncio.run(with_local_cluster(run, quiet=True, operator=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
