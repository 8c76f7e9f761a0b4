"""The embedding API's write path: `node.data.propose` into a host state machine, 3 processes.

    python benches/compare/host_propose.py [--rounds 3] [--duration 6] [VARIANT ...]

Each round starts a local 3-node cluster whose node processes are this script (`node` mode:
`start_cluster(config, state_machine=...)` with a dict store, 16-byte keys, 100-byte values),
then runs closed-loop proposers inside the nodes for `--duration` seconds per cell:
  H1        1 proposer on the node leading fewest groups (forwarded one hop when it follows);
  H64       64 proposers split over the 3 nodes (like `bench --placement embedded`);
  H64-fwd   64 proposers on that node.
Then, as the same invocation's baseline, the built-in KV's `nodedb-cluster bench --placement
embedded --clients 64` (W64 embedded).

VARIANTs are space-separated `NAME=value` environment settings for one run of every cell, e.g.
`PYTHONPATH=/path/to/old/python:/path/to/old/core` for another build (its `start_cluster` and
`node.data` API must match); "" (the default) is this checkout as installed. Rounds alternate
the variants. Prints each cell's median ops/s and p50 over the rounds.

Refuses a debug build of the Rust core; every load is bounded by `--duration`; traffic stays
on loopback; the nodes are stopped at the end of each round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

HERE = Path(__file__).resolve()
CELLS = ("H1", "H64", "H64-fwd")
KEY_BYTES = 16
VALUE_BYTES = 100
WARMUP_S = 1.0
FORM_TIMEOUT_S = 60.0
REQUEST_SLACK_S = 30.0


class Store:
    """A dict keyed by the command's first 16 bytes: the cheapest honest host state machine."""

    def __init__(self) -> None:
        self.values: dict[bytes, bytes] = {}

    def apply_batch(self, entries: list[tuple[int, bytes]]) -> list[bytes]:
        for _index, command in entries:
            self.values[command[:KEY_BYTES]] = command[KEY_BYTES:]
        return [b""] * len(entries)

    def snapshot(self) -> bytes:
        return bytes(msgpack.packb(self.values))

    def snapshot_view(self) -> Callable[[], bytes]:
        values = dict(self.values)
        return lambda: bytes(msgpack.packb(values))

    def restore(self, data: bytes) -> None:
        self.values = dict(msgpack.unpackb(data, strict_map_key=False))


# --- inside a node process -------------------------------------------------------------------


async def load(node: Any, proposers: int, duration_s: float, tag: int) -> dict[str, Any]:
    latencies: list[float] = []
    stop = time.perf_counter() + duration_s
    value = b"v" * VALUE_BYTES

    async def proposer(p: int) -> None:
        i = 0
        while time.perf_counter() < stop:
            key = f"{tag:02d}{p:04d}{i:010d}".encode()[-KEY_BYTES:]
            started = time.perf_counter()
            await node.data.propose(key + value, key=key)
            latencies.append(time.perf_counter() - started)
            i += 1

    began = time.perf_counter()
    await asyncio.gather(*(proposer(p) for p in range(proposers)))
    latencies.sort()
    return {
        "ops": len(latencies),
        "elapsed_s": time.perf_counter() - began,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else None,
    }


async def serve_node(config_path: Path) -> None:
    from nodedb_cluster.cli_support import READY_PREFIX
    from nodedb_cluster.config import ClusterConfig
    from nodedb_cluster.formation.start import start_cluster

    config = ClusterConfig.from_toml(config_path)
    node = await start_cluster(config, state_machine=lambda _group: Store())
    print(READY_PREFIX + json.dumps({"node_id": config.node_id}), flush=True)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            request = json.loads(line)
            if request.get("op") == "leaders":
                leaders = [node.data.locate(group=g).leader for g in request["groups"]]
                answer: dict[str, Any] = {"ok": True, "leaders": leaders}
            else:
                answer = {"ok": True, **await load(node, **request["load"])}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    finally:
        await node.shutdown()


# --- one run of every cell (a child process per variant) ------------------------------------


async def run_cells(duration_s: float) -> dict[str, Any]:
    from nodedb_cluster.localcluster import LocalCluster, data_group_views

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="nodedb-hostbench-") as tmp:
        cluster = LocalCluster(Path(tmp), 3, program=(str(HERE), "node"))
        try:
            await cluster.start()
            statuses = await cluster.wait_formed(FORM_TIMEOUT_S)
            groups = sorted(data_group_views(statuses))
            doc = await cluster.nodes[1].request({"op": "leaders", "groups": groups})
            follower = min(cluster.nodes, key=lambda n: doc["leaders"].count(n))
            timeout_s = duration_s + REQUEST_SLACK_S

            async def cell(shares: dict[int, int], seconds: float) -> dict[str, Any]:
                docs = await asyncio.gather(
                    *(
                        cluster.nodes[n].request(
                            {"load": {"proposers": k, "duration_s": seconds, "tag": n}},
                            timeout_s,
                        )
                        for n, k in shares.items()
                    )
                )
                ops = sum(d["ops"] for d in docs)
                elapsed = max(d["elapsed_s"] for d in docs)
                p50s = sorted(d["p50_ms"] for d in docs if d["p50_ms"] is not None)
                return {"ops_per_s": ops / elapsed, "p50_ms": p50s[len(p50s) // 2]}

            await cell({n: 4 for n in cluster.nodes}, WARMUP_S)
            out["H1"] = await cell({follower: 1}, duration_s)
            out["H64"] = await cell({1: 22, 2: 21, 3: 21}, duration_s)
            out["H64-fwd"] = await cell({follower: 64}, duration_s)
        finally:
            await cluster.close()
    return out


def kv_w64(duration_s: float) -> dict[str, Any]:
    """The built-in KV, embedded, 64 callers: the baseline of the same invocation."""
    argv = ["bench", "--placement", "embedded", "--clients", "64", "--json"]
    bench = subprocess.run(
        [sys.executable, "-m", "nodedb_cluster.cli", *argv, "--duration", str(duration_s)],
        capture_output=True,
        text=True,
        timeout=duration_s + 120,
        check=True,
    )
    kv = json.loads(bench.stdout.strip().splitlines()[-1])
    return {"ops_per_s": kv["ops_per_s"], "p50_ms": kv["p50_ms"]}


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "node":  # LocalCluster: node --config PATH
        asyncio.run(serve_node(Path(sys.argv[3])))
        return 0
    sys.path.insert(0, str(HERE.parent))
    from checks import add_rounds_and_duration, is_debug_build, variant_rounds

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_rounds_and_duration(ap, duration_s=6.0, rounds=3)
    ap.add_argument("--cells", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("variants", nargs="*", default=[""])
    args = ap.parse_args()
    if args.cells:  # one variant's run, in its own environment
        cells = asyncio.run(run_cells(args.duration))
        cells["KV-W64"] = kv_w64(args.duration)
        print(json.dumps(cells))
        return 0
    if is_debug_build():
        return 2
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}
    cell_args = ["--cells", "--duration", str(args.duration)]
    timeout_s = 4 * args.duration + 300
    for title, doc in variant_rounds(str(HERE), cell_args, args.variants, args.rounds, timeout_s):
        variant = title.split(" ", 2)[2]
        print(f"{title}: {json.dumps(doc)}", file=sys.stderr, flush=True)
        for name, cell in doc.items():
            assert isinstance(cell, dict)
            pair = (float(cell["ops_per_s"]), float(cell["p50_ms"]))
            results.setdefault(variant, {}).setdefault(name, []).append(pair)
    for variant, cells in results.items():
        print(f"{variant}:")
        for name in (*CELLS, "KV-W64"):
            runs = cells.get(name, [])
            ops = statistics.median(r[0] for r in runs)
            p50 = statistics.median(r[1] for r in runs)
            print(f"  {name:8s} median {ops:9,.0f} ops/s  p50 {p50:6.2f} ms  ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
