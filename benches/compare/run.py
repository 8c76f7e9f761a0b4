"""nodedb-cluster vs etcd vs PySyncObj: the same workload, on this machine, in ONE invocation.

    python benches/compare/run.py [--duration 10] [--json out.json]

Workloads (3 members on 127.0.0.1-3, 100-byte values, closed-loop clients):
  W1 writes, 1 client;  W64 writes, 64 clients;  RW64 90 % reads / 10 % writes, 64 clients
  (+ nodedb `put_many` batches of 1000). Reads are linearizable on both nodedb (ReadIndex) and
etcd (its default Get). Every nodedb and etcd write is fsynced before it is acknowledged;
PySyncObj (pip pysyncobj==0.3.17, driven by ../shared/anchors/pysyncobj at its best tuning:
batching off (its batching waits for a 100 ms tick), log compaction off) does not fsync at
all, and only writes.

nodedb runs in two placements: "client" (a separate process, `nodedb_cluster.Client` over
QUIC + mTLS; the etcd ratios use this) and "embedded" (the clients run inside the node processes
on `node.kv`). etcd (Debian etcd-server 3.4, installed here if missing) is driven by
benches/compare/etcdload (Go gRPC, built offline against Debian's golang-etcd-server-dev).
The client placement runs twice: "nodedb-client" with the callers as asyncio coroutines (what a
Python user's code pays), and "nodedb-client-native" with the callers in Rust on the same
`Client` core (`Client.start_native_load`: same routing, sessions, coalescing, retries): a load
generator of the same efficiency class as etcdload, so that row compares the clusters.

Refuses a debug build of the Rust core. Every load is bounded in time; traffic stays on loopback;
only processes started here are stopped, by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from checks import is_debug_build

from nodedb_cluster.bench import (
    Driver,
    LoadSpec,
    Summary,
    bench_client,
    bench_embedded,
    with_local_cluster,
)

HERE = Path(__file__).resolve().parent
ANCHORS = Path(os.environ.get("NODEDB_ANCHORS", HERE.parents[2] / "shared" / "anchors"))
APT_PACKAGES = ["etcd-server", "etcd-client", "golang-go", "golang-etcd-server-dev"]
ETCD_CLIENT_PORTS = (23790, 23791, 23792)
ETCD_PEER_PORTS = (23800, 23801, 23802)
WARMUP_S = 2.0


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def load_doc() -> dict[str, float]:
    """The machine's 1-minute load average when a cell ends: on a shared machine it says how
    much the other jobs weighed on that cell."""
    return {"loadavg_1m": round(os.getloadavg()[0], 2)}


# --- nodedb -----------------------------------------------------------------------------------


async def nodedb_all(duration_s: float) -> dict[str, dict[str, Any]]:
    specs = {
        "W1": LoadSpec(clients=1, duration_s=duration_s),
        "W64": LoadSpec(clients=64, duration_s=duration_s),
        "RW64": LoadSpec(clients=64, duration_s=duration_s, read_fraction=0.9, keyspace=10_000),
        "BATCH": LoadSpec(clients=8, duration_s=duration_s, batch=1000),
    }

    async def body(addrs: list[str], creds: Any) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        # Warm-up (connections, leader caches), not measured.
        await bench_client(addrs, creds, LoadSpec(clients=16, duration_s=WARMUP_S), quiet=True)
        for name, spec in specs.items():
            for placement in ("client", "client-native", "embedded"):
                if placement == "client-native" and spec.batch:
                    continue  # the native driver runs single puts and gets
                log(f"nodedb {placement} {name} ...")
                summary: Summary
                if placement == "embedded":
                    summary = await bench_embedded(addrs, creds, spec, quiet=True)
                else:
                    driver: Driver = "native" if placement == "client-native" else "asyncio"
                    summary = await bench_client(addrs, creds, spec, quiet=True, driver=driver)
                log("  " + summary.line())
                out[f"nodedb-{placement}/{name}"] = {**summary.to_doc(), **load_doc()}
        return out

    # Admin credentials: the embedded rows start load over BENCH_LOAD (admins only); an admin may
    # do everything a client may, at the same cost per request.
    return await with_local_cluster(body, quiet=True, operator=True)


# --- etcd -------------------------------------------------------------------------------------


def ensure_etcd_tools(build_dir: Path) -> Path:
    if (
        shutil.which("etcd") is None
        or shutil.which("go") is None
        or not Path("/usr/share/gocode/src/go.etcd.io/etcd/clientv3").exists()
    ):
        log("installing " + " ".join(APT_PACKAGES))
        subprocess.run(
            ["apt-get", "install", "-y", *APT_PACKAGES],
            check=True,
            timeout=900,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    build_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "etcdload" / "main.go", build_dir / "main.go")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{build_dir / 'gopath'}:/usr/share/gocode",
        "GOFLAGS": "",
        "GOCACHE": str(build_dir / "gocache"),
    }
    subprocess.run(
        ["go", "build", "-o", "etcdload", "main.go"],
        cwd=build_dir,
        env=env,
        check=True,
        timeout=900,
    )
    return build_dir / "etcdload"


def start_etcd(base: Path) -> list[subprocess.Popen[bytes]]:
    cluster = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(ETCD_PEER_PORTS))
    procs = []
    for i, (cp, pp) in enumerate(zip(ETCD_CLIENT_PORTS, ETCD_PEER_PORTS, strict=True)):
        logf = (base / f"etcd{i}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    "etcd",
                    "--name",
                    f"m{i}",
                    "--data-dir",
                    str(base / f"m{i}"),
                    "--listen-client-urls",
                    f"http://127.0.0.1:{cp}",
                    "--advertise-client-urls",
                    f"http://127.0.0.1:{cp}",
                    "--listen-peer-urls",
                    f"http://127.0.0.1:{pp}",
                    "--initial-advertise-peer-urls",
                    f"http://127.0.0.1:{pp}",
                    "--initial-cluster",
                    cluster,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "nodedb-compare",
                    "--logger",
                    "zap",
                    "--log-level",
                    "warn",
                ],
                stdout=logf,
                stderr=logf,
                start_new_session=True,
            )
        )
    eps = ",".join(f"127.0.0.1:{p}" for p in ETCD_CLIENT_PORTS)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ok = subprocess.run(
            ["etcdctl", "--endpoints", eps, "endpoint", "health"],
            capture_output=True,
            env={**os.environ, "ETCDCTL_API": "3"},
            timeout=10,
            check=False,
        )
        if ok.returncode == 0:
            return procs
        time.sleep(0.5)  # etcd has no readiness push: poll, bounded
    stop(procs)
    raise RuntimeError("etcd cluster not healthy within 30 s")


def etcd_leader() -> str:
    eps = ",".join(f"127.0.0.1:{p}" for p in ETCD_CLIENT_PORTS)
    out = subprocess.run(
        ["etcdctl", "--endpoints", eps, "endpoint", "status", "-w", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    for e in json.loads(out.stdout):
        if e["Status"]["leader"] == e["Status"]["header"]["member_id"]:
            return str(e["Endpoint"])
    raise RuntimeError("etcd has no leader")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def etcd_all(duration_s: float, work: Path) -> dict[str, dict[str, Any]]:
    tool = ensure_etcd_tools(work / "etcdload")
    base = work / "etcd"
    base.mkdir()
    procs = start_etcd(base)
    out: dict[str, dict[str, Any]] = {}
    try:
        leader = etcd_leader()
        runs = {
            "W1": ["-clients", "1", "-conns", "1"],
            "W64": ["-clients", "64", "-conns", "1"],
            "RW64": ["-clients", "64", "-conns", "1", "-read-frac", "0.9"],
        }
        for name, flags in runs.items():
            log(f"etcd {name} ...")
            res = subprocess.run(
                [
                    str(tool),
                    "-endpoints",
                    leader,
                    "-duration",
                    f"{duration_s}s",
                    "-warmup",
                    f"{WARMUP_S}s",
                    "-val-size",
                    "100",
                    *flags,
                ],
                capture_output=True,
                text=True,
                timeout=duration_s + 180,
                check=True,
            )
            doc = json.loads(res.stdout.strip().splitlines()[-1])
            log(f"  {doc}")
            out[f"etcd/{name}"] = {**doc, **load_doc()}
    finally:
        stop(procs)
    return out


# --- PySyncObj --------------------------------------------------------------------------------


def pysyncobj_all(duration_s: float, work: Path) -> dict[str, dict[str, Any]]:
    try:
        import pysyncobj  # noqa: F401
    except ImportError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "pysyncobj==0.3.17"], check=True, timeout=300
        )
    driver = work / "pysyncobj"
    shutil.copytree(ANCHORS / "pysyncobj", driver)  # the anchor writes results next to itself
    shutil.copy(ANCHORS / "common.py", work / "common.py")  # its shared helper
    os.chmod(driver, 0o755)
    runs = {
        "W1": ["--mode", "seq", "--nobatch"],
        "W64": [
            "--mode",
            "inflight",
            "--inflight",
            "64",
            "--nobatch",
            "--compact-min",
            "10000000",
        ],
    }
    out: dict[str, dict[str, Any]] = {}
    for name, flags in runs.items():
        log(f"pysyncobj {name} ...")
        res = subprocess.run(
            [
                sys.executable,
                str(driver / "run_bench.py"),
                *flags,
                "--runs",
                "1",
                "--duration",
                str(duration_s),
                "--warmup",
                str(WARMUP_S),
            ],
            capture_output=True,
            text=True,
            timeout=duration_s + 180,
            check=True,
            cwd=driver,
        )
        line = next(x for x in res.stdout.splitlines() if x.startswith("{"))
        doc = json.loads(line)
        log(f"  {doc}")
        out[f"pysyncobj/{name}"] = {**doc, **load_doc()}
    return out


# --- table ------------------------------------------------------------------------------------


def table(results: dict[str, dict[str, Any]]) -> str:
    def row(key: str) -> tuple[float, float, float, float] | None:
        d = results.get(key)
        if d is None or "error" in d:
            return None
        ops = float(d.get("ops_per_s", 0.0))
        load = float(d.get("loadavg_1m", -1))
        return ops, float(d.get("p50_ms", -1)), float(d.get("p99_ms", -1)), load

    lines = [
        "| workload | system | ops/s | p50 ms | p99 ms | ops/s vs etcd | p50 vs etcd | p99 vs etcd "
        "| load 1m |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    systems = ["nodedb-client", "nodedb-client-native", "nodedb-embedded", "etcd", "pysyncobj"]
    for w in ("W1", "W64", "RW64", "BATCH"):
        base = row(f"etcd/{w}")
        for s in systems:
            r = row(f"{s}/{w}")
            if r is None:
                continue
            ratio = f"{r[0] / base[0]:.2f}x" if base else "-"
            p50r = f"{r[1] / base[1]:.2f}x" if base and base[1] > 0 else "-"
            load = f"{r[3]:.1f}" if r[3] >= 0 else "-"
            p99r = f"{r[2] / base[2]:.2f}x" if base and base[2] > 0 else "-"
            lines.append(
                f"| {w} | {s} | {r[0]:,.0f} | {r[1]:.2f} | {r[2]:.2f} | {ratio} | {p50r} | {p99r} "
                f"| {load} |"
            )
    best_pso = max((row(f"pysyncobj/{w}") or (0.0, 0, 0, 0))[0] for w in ("W1", "W64"))
    for system in ("nodedb-client", "nodedb-client-native"):
        nd = row(f"{system}/W64")
        if nd and best_pso:
            lines.append(f"\n{system} W64 vs PySyncObj best: {nd[0] / best_pso:.2f}x")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    ap.add_argument("--json", type=Path, help="also write every result here")
    ap.add_argument("--skip", action="append", default=[], choices=("etcd", "pysyncobj"))
    args = ap.parse_args()
    if is_debug_build():
        return 2
    if not 1 <= args.duration <= 120:
        print("--duration must be in 1..120 s", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="nodedb-compare-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        results.update(asyncio.run(nodedb_all(args.duration)))
        if "etcd" not in args.skip:
            results.update(etcd_all(args.duration, work))
        if "pysyncobj" not in args.skip:
            results.update(pysyncobj_all(args.duration, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
