"""The KV client's request path: Rust client core vs the Python `KvRouter`, interleaved.

    python benches/compare/client_path.py [--duration 5] [--rounds 3] [--json out.json]

One 3-node mTLS cluster (`with_local_cluster`, as benches/compare/run.py), one `Client` in this
process. Each round runs every workload twice, back to back: through `Client` (the Rust core,
rust/py/src/kv_client.rs) and through `client.router` (the Python `KvRouter` without an
engine, the path `Client` used before), so machine load hits both alike. Reports per-path
medians over the rounds and the ratio core / Python. Refuses a debug build.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import nodedb_cluster_core

from nodedb_cluster.bench import LoadRun, LoadSpec, prefill, run_load, summarize, with_local_cluster
from nodedb_cluster.client import Client
from nodedb_cluster.transport import Credentials

WORKLOADS = ("W1", "W64", "RW64", "BATCH")


def specs(duration_s: float) -> dict[str, LoadSpec]:
    return {
        "W1": LoadSpec(clients=1, duration_s=duration_s),
        "W64": LoadSpec(clients=64, duration_s=duration_s),
        "RW64": LoadSpec(clients=64, duration_s=duration_s, read_fraction=0.9, keyspace=10_000),
        "BATCH": LoadSpec(clients=8, duration_s=duration_s, batch=1000),
    }


async def measure(
    duration_s: float, rounds: int, workloads: tuple[str, ...]
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    out: dict[str, dict[str, list[dict[str, Any]]]] = {
        w: {"core": [], "python": []} for w in workloads
    }

    async def body(addrs: list[str], creds: Credentials) -> None:
        async with Client(addrs, creds) as client:
            await prefill(client, specs(duration_s)["RW64"])
            warm = LoadSpec(clients=16, duration_s=1.0)
            for kv in (client, client.router):
                await run_load(kv, warm, LoadRun())
            for r in range(rounds):
                for name, spec in specs(duration_s).items():
                    if name not in workloads:
                        continue
                    for path, kv in (("core", client), ("python", client.router)):
                        run = LoadRun()
                        await run_load(kv, spec, run)
                        summary = summarize(path, spec, [run])
                        print(f"round {r} {name:<5} {summary.line()}", file=sys.stderr)
                        out[name][path].append(summary.to_doc())

    await with_local_cluster(body, quiet=True)
    return out


def table(results: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    lines = [
        "| workload | path | ops/s median (runs) | p50 ms | p99 ms | core / python |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, paths in results.items():
        med = {p: statistics.median(d["ops_per_s"] for d in runs) for p, runs in paths.items()}
        for path, runs in paths.items():
            ops = ", ".join(f"{d['ops_per_s']:,.0f}" for d in runs)
            p50 = statistics.median(d["p50_ms"] for d in runs)
            p99 = statistics.median(d["p99_ms"] for d in runs)
            ratio = f"{med['core'] / med['python']:.2f}x" if path == "core" else ""
            lines.append(
                f"| {name} | {path} | {med[path]:,.0f} ({ops}) | {p50:.2f} | {p99:.2f} | {ratio} |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--only", action="append", choices=WORKLOADS, help="run only these")
    args = ap.parse_args()
    if nodedb_cluster_core.build_profile() != "release":
        print("refusing to benchmark a debug build of nodedb_cluster_core", file=sys.stderr)
        return 2
    if not (1 <= args.duration <= 60 and 1 <= args.rounds <= 9):
        print("--duration must be in 1..60 s and --rounds in 1..9", file=sys.stderr)
        return 2
    results = asyncio.run(measure(args.duration, args.rounds, tuple(args.only or WORKLOADS)))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
