"""`nodedb-cluster chaos`: many seeded schedules in a row, a summary, exit 1 on any anomaly.

With partitions among the fault kinds the command re-executes itself in a private network
namespace (`netfault`), when it may (root, `unshare`); otherwise partitions are dropped from
the schedule with a note, and everything else still runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from nodedb_cluster.faults.nemesis import FAULT_KINDS, FaultKind
from nodedb_cluster.faults.netfault import (
    can_make_private_netns,
    in_private_netns,
    prepare_private_netns,
    reexec_in_private_netns,
)
from nodedb_cluster.faults.run import (
    SPARES_DEFAULT,
    RunResult,
    RunSpec,
    run_schedule,
)
from nodedb_cluster.faults.summary import summarize, write_summary
from nodedb_cluster.faults.workload import WorkloadSpec

SCHEDULES_MAX = 10_000
NODES_MAX = 32
"""Node slots (127.0.0.1..N, one process each) on one host."""


def add_chaos_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--schedules", type=int, default=3, metavar="N", help="runs, seeds SEED..SEED+N-1"
    )
    p.add_argument(
        "--seed", type=int, default=1, metavar="N", help="the first run's seed (default: 1)"
    )
    p.add_argument(
        "--duration-s", type=float, default=15.0, metavar="SECS", help="load per run (default: 15)"
    )
    p.add_argument("--nodes", type=int, default=3, metavar="N", help="cluster size (default: 3)")
    p.add_argument(
        "--spares",
        type=int,
        default=SPARES_DEFAULT,
        metavar="N",
        help=f"node slots only add_node faults start (default: {SPARES_DEFAULT})",
    )
    p.add_argument("--workers", type=int, default=4, metavar="N", help="client tasks (default: 4)")
    p.add_argument(
        "--keys", type=int, default=6, metavar="N", help="keys the workload uses (default: 6)"
    )
    p.add_argument(
        "--kinds",
        default=",".join(FAULT_KINDS),
        metavar="KIND,...",
        help=f"comma-separated subset of {','.join(FAULT_KINDS)}",
    )
    p.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="run directories (default: a tmp dir)"
    )
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="write the summary and runs here as JSON",
    )
    p.add_argument("--keep", action="store_true", help="keep run directories that passed")
    p.add_argument("--no-netns", action="store_true", help="never re-exec under unshare --net")


def _argv(args: argparse.Namespace) -> list[str]:
    out = [
        "chaos",
        f"--schedules={args.schedules}",
        f"--seed={args.seed}",
        f"--duration-s={args.duration_s}",
        f"--nodes={args.nodes}",
        f"--spares={args.spares}",
        f"--workers={args.workers}",
        f"--keys={args.keys}",
        f"--kinds={args.kinds}",
    ]
    out += [f"--out={args.out}"] if args.out else []
    out += [f"--json={args.json}"] if args.json else []
    out += ["--keep"] if args.keep else []
    return out


def run_chaos_command(args: argparse.Namespace) -> int:
    kinds: list[FaultKind] = []
    for name in filter(None, (k.strip() for k in args.kinds.split(","))):
        if name not in FAULT_KINDS:
            print(f"nodedb-cluster chaos: unknown fault kind {name!r}", file=sys.stderr)
            return 2
        kinds.append(name)
    if not 1 <= args.schedules <= SCHEDULES_MAX:
        print(f"nodedb-cluster chaos: --schedules must be 1..{SCHEDULES_MAX}", file=sys.stderr)
        return 2
    if not 1 <= args.nodes <= NODES_MAX or not 0 <= args.spares <= NODES_MAX - args.nodes:
        print(f"nodedb-cluster chaos: --nodes + --spares must be 1..{NODES_MAX}", file=sys.stderr)
        return 2
    if "partition" in kinds and not in_private_netns():
        if can_make_private_netns() and not args.no_netns:
            return reexec_in_private_netns(_argv(args))
        print("chaos: partitions need root + unshare; running without them", flush=True)
        kinds.remove("partition")
    if in_private_netns():
        prepare_private_netns()
        print("chaos: in a private network namespace (partitions enabled)", flush=True)
    out = args.out or Path(tempfile.mkdtemp(prefix="nodedb-chaos-"))
    out.mkdir(parents=True, exist_ok=True)
    workload = WorkloadSpec(workers=args.workers, keys=args.keys, duration_s=args.duration_s)
    results: list[RunResult] = []

    async def run_all() -> None:
        for i in range(args.schedules):
            spec = RunSpec(
                seed=args.seed + i,
                base_dir=out,
                nodes=args.nodes,
                spares=args.spares,
                workload=workload,
                kinds=tuple(kinds),
                keep_dirs=args.keep,
            )
            result = await run_schedule(spec, lambda s: print(s, flush=True))
            results.append(result)
            print(
                f"run seed={result.seed} {'PASS' if result.passed else 'FAIL'} "
                f"ops={result.ops} failovers_ms={[round(f) for f in result.failovers_ms]} "
                f"elections_ms={[round(f) for f in result.elections_ms]} "
                f"linearizable={result.linearizable} {result.linearizable_note}",
                flush=True,
            )
            if args.json:
                write_summary(args.json, results)

    try:
        asyncio.run(run_all())
    finally:
        print(f"chaos summary: {summarize(results)}", flush=True)
        if args.json:
            write_summary(args.json, results)
    return 0 if all(r.passed for r in results) else 1
