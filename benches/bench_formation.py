"""Formation timings with real processes (issue 5): simultaneous start of 3 and of 5 nodes to
every node Ready and seeing the whole topology, and one more node joining a running 3-node cluster.

Run: `pytest benches/bench_formation.py -s -q -p no:cacheprovider` (prints the medians of
ROUNDS rounds; each round is a fresh cluster in a fresh directory). These are wall-clock process
timings — interpreter start-up included, as an operator sees them — so pytest-benchmark's
in-process timer does not apply.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from nodedb_cluster.localcluster import LocalCluster, Status

ROUNDS: Final = 5
FAST: Final = {"rpc_timeout_ms": 2000}


def _sees(n: int) -> Callable[[dict[int, Status]], bool]:
    return lambda s: all(len(st["nodes"]) == n for st in s.values())


async def _time_simultaneous_start(base: Path, size: int) -> float:
    cluster = LocalCluster(base, size, overrides=dict(FAST))
    try:
        t0 = time.monotonic()
        await cluster.start()
        await cluster.wait_for(_sees(size), cluster.nodes, 30, f"{size} nodes")
        return time.monotonic() - t0
    finally:
        await cluster.close()


async def _time_one_more_join(base: Path) -> float:
    cluster = LocalCluster(base, 4, overrides=dict(FAST))
    try:
        await cluster.start([1, 2, 3])
        await cluster.wait_for(_sees(3), [1, 2, 3], 30, "3 nodes")
        t0 = time.monotonic()
        await cluster.start([4])
        await cluster.wait_for(_sees(4), [4], 30, "node 4")
        return time.monotonic() - t0
    finally:
        await cluster.close()


def _report(name: str, samples: list[float]) -> str:
    return (
        f"{name}: median {statistics.median(samples):.2f} s "
        f"(min {min(samples):.2f}, max {max(samples):.2f}, {len(samples)} rounds)"
    )


async def test_formation_timings(tmp_path: Path) -> None:
    lines = []
    for size in (3, 5):
        samples = [
            await _time_simultaneous_start(tmp_path / f"s{size}-{r}", size) for r in range(ROUNDS)
        ]
        lines.append(_report(f"simultaneous start of {size} processes -> all Ready", samples))
    samples = [await _time_one_more_join(tmp_path / f"j{r}") for r in range(ROUNDS)]
    lines.append(_report("one more node joins a running 3-node cluster", samples))
    print("\n" + "\n".join(lines))
