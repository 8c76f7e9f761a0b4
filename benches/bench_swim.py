"""SWIM detection time and soak at defaults on 5 real processes; checker throughput.

Run: python benches/bench_swim.py [--trials 10] [--soak-secs 120]
     (10-minute soak: python benches/bench_swim.py --trials 0 --soak-secs 600)

1. Detection: per trial a fresh 5-process cluster (tests/support/swim_node.py, defaults: 1 s period,
   500 ms probe timeout, k=3, suspicion 4 x max(1, log10 n) s), 3 s warm-up, SIGKILL of one node;
   reports kill -> first suspicion anywhere and kill -> dead at every survivor (median, p90, max),
   as ratios of the issue-7 targets (3 s, 12 s).
2. Soak: one 5-process cluster; every 30 s one node (in turn) is SIGSTOPped for 1 s. Counts DEAD
   and SUSPECT events about any node (all stay live): the target is zero DEAD.
3. Checker: 10k ops over 100 keys with unique values, through the fast path (baseline) and forced
   through the search (a trailing delete disables the fast path), same invocation.
Refuses a debug build of the Rust core (the figures would not be comparable with the others).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from nodedb_cluster.checker import Op, OpKind, Outcome, check
from support.checker_histories import generate
from support.swim_cluster import SwimProcCluster

SUSPECT_TARGET_MS = 3000
DEAD_TARGET_MS = 12000
TRIAL_TIMEOUT_S = 30.0


def _pct(xs: list[int], q: float) -> int:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def detection(trials: int, seed: int) -> None:
    rng = random.Random(seed)
    suspects: list[int] = []
    deads: list[int] = []
    for t in range(trials):
        cluster = SwimProcCluster(5)
        try:
            await cluster.start()
            await asyncio.sleep(3.0)  # warm-up: a schedule, not a synchronisation
            victim = rng.randint(1, 5)
            survivors = [i for i in range(1, 6) if i != victim]
            kill_ms = time.time_ns() // 1_000_000
            cluster.kill(victim)
            ok = await cluster.wait_for(
                lambda c=cluster, v=victim, s=survivors, k=kill_ms: all(
                    c.first(i, v, "DEAD", k) for i in s
                ),
                TRIAL_TIMEOUT_S,
            )
            if not ok:
                print(f"trial {t}: node {victim} NOT declared dead within {TRIAL_TIMEOUT_S} s")
                continue
            s_ms = min(
                x
                for i in survivors
                if (x := cluster.first(i, victim, "SUSPECT", kill_ms)) is not None
            )
            d_ms = max(cluster.first(i, victim, "DEAD", kill_ms) or 0 for i in survivors)
            suspects.append(s_ms - kill_ms)
            deads.append(d_ms - kill_ms)
            print(f"trial {t}: killed {victim}: suspected {suspects[-1]} ms, dead {deads[-1]} ms")
        finally:
            await cluster.close()
    if not suspects:
        return
    for name, xs, target in (
        ("suspected", suspects, SUSPECT_TARGET_MS),
        ("dead", deads, DEAD_TARGET_MS),
    ):
        med = statistics.median(xs)
        print(
            f"{name}: n={len(xs)} median {med:.0f} ms p90 {_pct(xs, 0.9)} ms max {max(xs)} ms; "
            f"median/target {med / target:.2f}, "
            f"within target {sum(x <= target for x in xs)}/{len(xs)}"
        )


async def soak(soak_secs: int, every_s: float = 30.0, pause_s: float = 1.0) -> None:
    cluster = SwimProcCluster(5)
    try:
        await cluster.start()
        start = time.monotonic()
        pauses = 0
        while time.monotonic() - start + every_s <= soak_secs:
            await asyncio.sleep(every_s - pause_s)  # the fault schedule
            victim = pauses % 5 + 1
            cluster.pause(victim)
            await asyncio.sleep(pause_s)
            cluster.resume(victim)
            pauses += 1
        await asyncio.sleep(max(0.0, soak_secs - (time.monotonic() - start)))
        dead = [e for e in cluster.events if e.state == "DEAD"]
        suspect = [e for e in cluster.events if e.state == "SUSPECT"]
        print(
            f"soak {soak_secs} s, {pauses} pauses of {pause_s} s every {every_s} s: "
            f"DEAD events {len(dead)} (target 0), SUSPECT events {len(suspect)}"
        )
    finally:
        await cluster.close()


def checker_bench(seed: int) -> None:
    rng = random.Random(seed)
    keys = [f"k{i}" for i in range(100)]
    ops = generate(rng, 10_000, 20, keys, unique=True, kinds=(OpKind.PUT, OpKind.GET))
    tail = [
        Op(10_000 + i, 99, OpKind.DELETE, k, outcome=Outcome.OK, invoke_ms=1e9, complete_ms=1e9 + 1)
        for i, k in enumerate(keys)
    ]
    runs: dict[str, list[float]] = {"fast path (baseline)": [], "search": []}
    for _ in range(5):
        for name, history in (("fast path (baseline)", ops), ("search", ops + tail)):
            t0 = time.perf_counter()
            assert check(history).verdict.value == "ok"
            runs[name].append(time.perf_counter() - t0)
    base = statistics.median(runs["fast path (baseline)"])
    for name, xs in runs.items():
        med = statistics.median(xs)
        print(f"checker 10k ops/100 keys, {name}: median {med * 1000:.0f} ms ({med / base:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--soak-secs", type=int, default=120)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    profile = str(importlib.import_module("nodedb_cluster_core").build_profile())
    if profile != "release":
        sys.exit(f"bench_swim refuses a {profile!r} build of nodedb_cluster_core")
    print(f"seed {args.seed}")
    checker_bench(args.seed)
    if args.trials:
        asyncio.run(detection(args.trials, args.seed))
    if args.soak_secs:
        asyncio.run(soak(args.soak_secs))


if __name__ == "__main__":
    main()
