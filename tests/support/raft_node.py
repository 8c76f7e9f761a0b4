"""Helper process for the multi-process Raft tests and benchmarks: one node (Transport +
RaftEngine) driven by JSON lines on stdin, one JSON line answer each on stdout.

Usage: python tests/support/raft_node.py NODE_ID DATA_DIR LISTEN_ADDR PEERS GROUPS [--learner G]
  PEERS = "1=127.0.0.1:7001,2=127.0.0.2:7002,..." (this node included); GROUPS = number of KV
  groups 1..GROUPS this node founds (ignored on restart: groups are recovered from the log);
  --learner G: start group G as an empty learner instead; --voters 1,2,3: founding voters
  (default: every peer); --tick-ms N: tick interval (default 100).
Prints `READY` once serving. Commands ({"op": ..., ...}) answer {"ok": value} or
{"err": "<ExceptionClass>", "msg": "..."}:
  status {group}; digest {group}; get {group, key}; leader_wait {group, timeout_s}
  load {group, count, concurrency, prefix, value_bytes}: puts through this node, returns
    {"acked": n, "errors": {class: n}, "latency_ms": [p50, p99], "elapsed_s": s}
  probe {group, key, deadline_s}: retry one put until committed; returns seconds taken
  missing {group, prefix, count}: indexes i whose key prefix+i is absent here;
  add_learner / promote {group, node}; metrics.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from nodedb_cluster.errors import ClusterError
from nodedb_cluster.raft import RaftEngine, RaftSettings, kv_put
from nodedb_cluster.transport import Insecure, Transport


def pct(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return 0.0
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


async def load(engine: RaftEngine, cmd: dict[str, Any]) -> dict[str, Any]:
    group, count, conc = int(cmd["group"]), int(cmd["count"]), int(cmd["concurrency"])
    prefix, value = str(cmd["prefix"]), b"v" * int(cmd.get("value_bytes", 100))
    next_i = 0
    acked = 0
    errors: dict[str, int] = {}
    lat_ms: list[float] = []

    async def worker() -> None:
        nonlocal next_i, acked
        while next_i < count:
            i = next_i
            next_i += 1
            t0 = time.perf_counter()
            try:
                await engine.propose(group, kv_put(f"{prefix}{i}".encode(), value))
            except ClusterError as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                continue
            lat_ms.append((time.perf_counter() - t0) * 1000)
            acked += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    elapsed = time.perf_counter() - t0
    lat_ms.sort()
    return {
        "acked": acked,
        "errors": errors,
        "latency_ms": [pct(lat_ms, 0.5), pct(lat_ms, 0.99)],
        "elapsed_s": elapsed,
        "latencies_ms": lat_ms if cmd.get("return_latencies") else [],
    }


async def probe(engine: RaftEngine, cmd: dict[str, Any]) -> float:
    """Retries one put (200 ms per attempt) until it commits here; seconds from the call."""
    t0 = time.perf_counter()
    deadline = t0 + float(cmd["deadline_s"])
    while time.perf_counter() < deadline:
        try:
            await engine.propose(int(cmd["group"]), kv_put(cmd["key"].encode(), b"p"), 200)
            return time.perf_counter() - t0
        except ClusterError:
            await asyncio.sleep(0.005)  # not leader yet / election in progress: retry soon
    raise TimeoutError(f"probe did not commit within {cmd['deadline_s']} s")


async def handle(engine: RaftEngine, cmd: dict[str, Any]) -> Any:
    op = cmd["op"]
    if op == "status":
        s = await engine.status(int(cmd["group"]))
        return {
            "role": s.role,
            "term": s.term,
            "leader_id": s.leader_id,
            "commit_index": s.commit_index,
            "applied_index": s.applied_index,
            "last_index": s.last_index,
            "snapshot_index": s.snapshot_index,
            "voters": list(s.voters),
            "learners": list(s.learners),
        }
    if op == "digest":
        return list(engine.kv_digest(int(cmd["group"])))
    if op == "missing":
        g, prefix, count = int(cmd["group"]), str(cmd["prefix"]), int(cmd["count"])
        return [i for i in range(count) if engine.kv_get(g, f"{prefix}{i}".encode()) is None]
    if op == "get":
        v = engine.kv_get(int(cmd["group"]), cmd["key"].encode())
        return None if v is None else v.decode()
    if op == "load":
        return await load(engine, cmd)
    if op == "probe":
        return await probe(engine, cmd)
    if op == "add_learner":
        return await engine.add_learner(int(cmd["group"]), int(cmd["node"]))
    if op == "promote":
        return await engine.promote(int(cmd["group"]), int(cmd["node"]))
    if op == "metrics":
        return engine.metrics()
    raise ValueError(f"unknown op {op!r}")


async def main(argv: list[str]) -> None:
    node_id, data_dir, listen, peers_arg, groups = (
        int(argv[0]),
        Path(argv[1]),
        argv[2],
        argv[3],
        int(argv[4]),
    )
    learner = int(argv[argv.index("--learner") + 1]) if "--learner" in argv else None
    tick_ms = int(argv[argv.index("--tick-ms") + 1]) if "--tick-ms" in argv else 100
    peers = {int(k): v for k, v in (p.split("=") for p in peers_arg.split(","))}
    voters = (
        [int(v) for v in argv[argv.index("--voters") + 1].split(",")]
        if "--voters" in argv
        else sorted(peers)
    )
    transport = Transport(node_id, listen, Insecure())
    for pid, addr in peers.items():
        transport.register_peer(pid, addr)
    engine = RaftEngine(node_id, data_dir, transport, None, RaftSettings(tick_interval_ms=tick_ms))
    existing = set(await engine.groups())
    if learner is not None:
        if learner not in existing:
            await engine.add_group(learner, None, "kv")
    else:
        for g in range(1, groups + 1):
            if g not in existing:
                await engine.add_group(g, voters, "kv")
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def answer(cmd: dict[str, Any]) -> None:
        try:
            out: dict[str, Any] = {"id": cmd.get("id"), "ok": await handle(engine, cmd)}
        except (ClusterError, ValueError, TimeoutError) as e:
            out = {"id": cmd.get("id"), "err": type(e).__name__, "msg": str(e)}
        print(json.dumps(out), flush=True)

    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        task = asyncio.create_task(answer(json.loads(line)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await engine.close()
    await transport.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
