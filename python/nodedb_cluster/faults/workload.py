"""The recorded load: N client tasks doing put/get/cas on a few keys with unique values.

Every operation goes into the checker's `HistoryRecorder` (invoke, then ok/fail/info).
Classification:
- a read that raised is `fail` (it changed nothing);
- a write (put, cas) that raised is `info`, whatever the error: after a timeout, a lost
  connection, a LeadershipLost or an `Unavailable` that followed one, the command may still
  commit. A worker whose op ended `info` continues as a new process id (the old one still has
  an operation open forever, as in Jepsen).
Bounded: `duration_s`, `ops_max` per worker, `op_timeout_s` per operation.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from nodedb_cluster.checker import HistoryRecorder, OpKind
from nodedb_cluster.client import Client
from nodedb_cluster.errors import ClusterError
from nodedb_cluster.transport import Credentials

OP_TIMEOUT_S: Final = 2.0
OPS_MAX_PER_WORKER: Final = 20_000
PROCESS_STRIDE: Final = 1000
"""Worker w's processes are w, w + 1000, w + 2000, ... (a new one after each `info`)."""
CONNECT_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    workers: int = 4
    keys: int = 6
    duration_s: float = 15.0
    op_timeout_s: float = OP_TIMEOUT_S
    ops_max_per_worker: int = OPS_MAX_PER_WORKER
    read_fraction: float = 0.45
    cas_fraction: float = 0.2
    """The rest are puts."""

    def key_names(self) -> list[str]:
        return [f"k{i}" for i in range(self.keys)]


CLIENT_RETRIES_UNKNOWN: Final = True
"""The harness's clients retry unknown write outcomes within the deadline, as users' clients do
by default: sessions make the retry exactly-once (docs/KV.md, "Sessions"). Before sessions this
was the one anomaly of the long run (seeds 1029 and 1095: a retried put landing after another
client's later write), so the checker now guards that fix."""


async def connect_client(
    addrs: Sequence[str], credentials: Credentials, timeout_s: float
) -> Client:
    """A connected Client, retrying while nodes come up; bounded by `CONNECT_TIMEOUT_S`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_TIMEOUT_S
    while True:
        client = Client(
            addrs, credentials, timeout_s=timeout_s, retry_unknown_writes=CLIENT_RETRIES_UNKNOWN
        )
        try:
            await client.connect()
            return client
        except ClusterError:
            await client.close()
            if loop.time() >= deadline:
                raise
        await asyncio.sleep(0.2)  # nodes not answering yet; nothing to await on


def now_ms() -> float:
    """The history's clock (monotonic); the nemesis stamps its faults with it too."""
    return time.monotonic_ns() / 1e6


async def _worker(
    worker: int,
    client: Client,
    spec: WorkloadSpec,
    history: HistoryRecorder,
    rng: random.Random,
    stop: asyncio.Event,
) -> None:
    process = worker
    last_seen: dict[str, str | None] = {}
    keys = spec.key_names()
    for seq in range(spec.ops_max_per_worker):
        if stop.is_set():
            return
        key = rng.choice(keys)
        kb = key.encode()
        roll = rng.random()
        t = spec.op_timeout_s
        if roll < spec.read_fraction:
            history.invoke(process, OpKind.GET, key, now_ms())
            try:
                got = await client.get(kb, timeout_s=t)
            except ClusterError:
                history.fail(process, now_ms())
                continue
            value = None if got is None else got.decode()
            last_seen[key] = value
            history.ok(process, now_ms(), value)
            continue
        new = f"w{worker}-{seq}"
        if roll < spec.read_fraction + spec.cas_fraction:
            expected = last_seen.get(key)
            history.invoke(process, OpKind.CAS, key, now_ms(), new, expected)
            try:
                swapped = await client.cas(
                    kb, None if expected is None else expected.encode(), new.encode(), timeout_s=t
                )
            except ClusterError:
                history.info(process)
                process += PROCESS_STRIDE
                continue
            history.ok(process, now_ms(), swapped)
            if swapped:
                last_seen[key] = new
            continue
        history.invoke(process, OpKind.PUT, key, now_ms(), new)
        try:
            await client.put(kb, new.encode(), timeout_s=t)
        except ClusterError:
            history.info(process)
            process += PROCESS_STRIDE
            continue
        history.ok(process, now_ms())
        last_seen[key] = new


async def run_workload(
    clients: Sequence[Client], spec: WorkloadSpec, history: HistoryRecorder, seed: int
) -> None:
    """All workers until `spec.duration_s` has passed (operations in flight then finish; one
    cancelled at the bound stays pending and becomes INFO when the recorder is closed)."""
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(
            _worker(
                w, clients[w % len(clients)], spec, history, random.Random(seed * 7919 + w), stop
            )
        )
        for w in range(spec.workers)
    ]
    try:
        await asyncio.wait(tasks, timeout=spec.duration_s)
        stop.set()
        async with asyncio.timeout(spec.op_timeout_s * 4 + 5):
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
