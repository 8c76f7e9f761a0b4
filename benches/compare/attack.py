"""What an attack from a client certificate costs the writes beside it: one helper for the
probes that measure it (session_churn.py, read_stall.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

WRITER_WAIT_S = 60.0


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
