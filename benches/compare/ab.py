"""A/B of `nodedb-cluster bench` variants, interleaved in ONE invocation, with CPU per operation.

    python benches/compare/ab.py --clients 64 --duration 8 --rounds 3 \\
        "NODEDB_TRANSPORT_WORKERS=2" "NODEDB_TRANSPORT_WORKERS=1" "--driver=native"

Each variant is a space-separated list of `NAME=value` environment settings (inherited by the
node processes the bench starts) and `--flag=value` bench arguments. Rounds alternate the
variants so the machine's load drifts over all of them alike. Besides ops/s and latency, each
run samples the CPU time (/proc, user + system, every thread) of the client process and of each
node process over the middle 40 % of the run and divides it by the operations: CPU per write
moves far less with the shared machine's load than throughput does.

Refuses a debug build of the Rust core; every run is bounded (the bench's own bounds plus a
timeout here).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from checks import add_rounds_and_duration, is_debug_build

CLK_TCK = os.sysconf("SC_CLK_TCK")
START_WAIT_S = 60.0
RUN_TIMEOUT_EXTRA_S = 120.0


@dataclass(frozen=True)
class Result:
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_op: dict[str, float]


def cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def processes(bench_pid: int) -> dict[str, int]:
    """The bench process and the node processes it started (`cli start --config nodeN.toml`)."""
    out = {"client": bench_pid}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"nodedb_cluster.cli" in args and b"start" in args:
            config = next((a for a in args if a.endswith(b".toml")), b"")
            out[os.path.basename(config.decode()).removesuffix(".toml")] = int(entry)
    return out


def run(variant: str, base_args: list[str], duration_s: float) -> Result:
    env = dict(os.environ)
    args = list(base_args)
    for token in variant.split():
        if token.startswith("--"):
            args += token.split("=", 1)
        else:
            name, value = token.split("=", 1)
            env[name] = value
    bench = subprocess.Popen(
        ["nodedb-cluster", "bench", *args, "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + START_WAIT_S
        while len(processes(bench.pid)) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)  # nodes starting: no event to await from outside the bench
        time.sleep(3.0 + 0.3 * duration_s)  # skip warm-up and the first 30 % of the run
        procs = processes(bench.pid)
        before = {name: cpu_s(pid) for name, pid in procs.items()}
        t0 = time.monotonic()
        time.sleep(0.4 * duration_s)
        after = {name: cpu_s(pid) for name, pid in procs.items()}
        window_s = time.monotonic() - t0
        out, _ = bench.communicate(timeout=duration_s + RUN_TIMEOUT_EXTRA_S)
    finally:
        if bench.poll() is None:
            bench.kill()
    doc = json.loads(out.strip().splitlines()[-1])
    ops = float(doc["ops_per_s"])
    cpu: dict[str, float] = {}
    for name in procs:
        a, b = before.get(name), after.get(name)
        if a is not None and b is not None and ops > 0:
            cpu[name] = (b - a) / window_s / ops * 1e6
    return Result(ops, float(doc["p50_ms"]), float(doc["p99_ms"]), cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=64)
    add_rounds_and_duration(ap, duration_s=8.0, rounds=3)
    ap.add_argument("variants", nargs="+", help='e.g. "NODEDB_TRANSPORT_WORKERS=1 --driver=native"')
    ns = ap.parse_args()
    if is_debug_build():
        return 2
    base = ["--clients", str(ns.clients), "--duration", str(ns.duration)]
    results: dict[str, list[Result]] = {v: [] for v in ns.variants}
    for _ in range(ns.rounds):
        for variant in ns.variants:
            r = run(variant, base, ns.duration)
            results[variant].append(r)
            cpu = " ".join(f"{k}={v:.1f}" for k, v in sorted(r.cpu_us_per_op.items()))
            print(
                f"{variant:45s} {r.ops_per_s:9,.0f} ops/s  p50 {r.p50_ms:.3f}  "
                f"p99 {r.p99_ms:.3f}  CPU us/op {cpu} total={sum(r.cpu_us_per_op.values()):.1f}",
                flush=True,
            )
    print("medians:")
    for variant, rs in results.items():
        total = statistics.median(sum(r.cpu_us_per_op.values()) for r in rs)
        print(
            f"{variant:45s} {statistics.median(r.ops_per_s for r in rs):9,.0f} ops/s  "
            f"p50 {statistics.median(r.p50_ms for r in rs):.3f}  CPU us/op total {total:.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
