"""What an attack from a client certificate costs the writes beside it: the cluster, the
concurrent writer and the command line shared by the probes that measure it (session_churn.py,
read_stall.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

from checks import is_debug_build, variant_rounds

WRITER_WAIT_S = 60.0
CHILD_S = 600.0
"""One variant's child process, at most."""


class OneGroup(NamedTuple):
    cluster: Any  # nodedb_cluster.localcluster.LocalCluster (imported in the child only)
    statuses: dict[int, Any]
    addrs: list[str]
    creds: Any


def waits_doc(waits: list[float]) -> dict[str, float]:
    """p99 and max of a writer's waits, in ms."""
    waits = sorted(waits)
    return {"p99_ms": waits[int(len(waits) * 0.99)] * 1000, "max_ms": waits[-1] * 1000}


async def while_writing(
    addrs: Sequence[str],
    creds: object,
    attack: Callable[[], Awaitable[None]],
    term: Callable[[], Awaitable[int]],
) -> dict[str, object]:
    """The attack's seconds and the elections it caused (`term`'s rise), and the waits of a
    `Client` writing one key in a loop meanwhile (it stops with the attack)."""
    from nodedb_cluster.client import Client

    stop, waits = asyncio.Event(), []

    async def write() -> None:
        async with Client(list(addrs), creds) as writer:  # type: ignore[arg-type]
            while not stop.is_set():
                started = time.perf_counter()
                await writer.put(b"writer", b"1")
                waits.append(time.perf_counter() - started)

    before = await term()
    writing = asyncio.create_task(write())
    started = time.perf_counter()
    try:
        await attack()
    finally:
        took = time.perf_counter() - started
        stop.set()
        await asyncio.wait_for(writing, WRITER_WAIT_S)
    return {"seconds": took, **waits_doc(waits), "elections": await term() - before}


async def group_term(cluster: Any, group: int) -> int:
    """`group`'s term as node 1 reports it: how many elections it has had."""
    status = await cluster.status(1, 30.0)
    return sum(int(g["term"]) for g in status["groups"] if g["group_id"] == group)


@asynccontextmanager
async def one_group_cluster() -> AsyncIterator[OneGroup]:
    """A local 3-node cluster (mTLS) with one data group, in a temporary directory."""
    from nodedb_cluster.localcluster import LocalCluster

    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp), 3, overrides={"num_groups": 1})
        try:
            await cluster.start()
            statuses = await cluster.wait_formed(60.0)
            addrs = [n.addr for n in cluster.nodes.values()]
            yield OneGroup(cluster, statuses, addrs, cluster.client_credentials)
        finally:
            await cluster.close()


def probe_main(
    script: str,
    description: str,
    probe: Callable[[], Awaitable[dict[str, object]]],
    show: Callable[[str, dict[str, object]], None],
) -> int:
    """A probe's command line: with `--one`, `probe` here and its result as JSON; else each
    variant's result in a child of its own (`checks.variant_rounds`), each part shown by
    `show(name, part)`. Refuses a debug build of the Rust core."""
    ap = argparse.ArgumentParser(description=description.split("\n")[0])
    ap.add_argument("variants", nargs="*", default=[""], help='environment settings, or ""')
    ap.add_argument("--rounds", type=int, default=1, choices=range(1, 6))
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if is_debug_build():
        return 2
    if args.one:
        print(json.dumps(asyncio.run(probe())))
        return 0
    for title, result in variant_rounds(script, ["--one"], args.variants, args.rounds, CHILD_S):
        print(f"{title}:")
        for name, part in result.items():
            assert isinstance(part, dict)
            show(name, part)
    return 0
