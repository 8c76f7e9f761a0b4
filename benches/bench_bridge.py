"""Why the bindings use their own loop bridge instead of pyo3-async-runtimes (ARCHITECTURE.md
proposed the latter): one empty Rust future awaited from asyncio, both ways, in the same run.

- `Transport.probe_bridge()`: our loop bridge — the future runs on the transport's tokio runtime;
  completion is queued and a socketpair byte wakes the loop, which drains completions in batches
  on its own thread (no tokio thread ever takes the GIL).
- `nodedb_cluster_core._probe_async_runtimes()`: pyo3-async-runtimes' `future_into_py` — its own
  tokio runtime; completion takes the GIL on a tokio thread and calls `call_soon_threadsafe`.

Run: `pytest benches/bench_bridge.py --benchmark-enable -p no:cacheprovider`
Serial (1 in flight) measures latency; 64 in flight (gather) measures throughput.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

import pytest

from nodedb_cluster.transport import Insecure, Transport

core: Any = importlib.import_module("nodedb_cluster_core")

CALLS: Final = 2000
IN_FLIGHT: Final = 64


async def _serial(probe: Callable[[], Awaitable[None]]) -> None:
    for _ in range(CALLS):
        await probe()


async def _concurrent(probe: Callable[[], Awaitable[None]]) -> None:
    for _ in range(CALLS // IN_FLIGHT):
        await asyncio.gather(*(probe() for _ in range(IN_FLIGHT)))


@pytest.fixture(scope="module")
def loop_and_transport() -> Any:
    loop = asyncio.new_event_loop()
    transport = loop.run_until_complete(_make_transport())
    yield loop, transport
    loop.run_until_complete(transport.close())
    loop.close()


async def _make_transport() -> Transport:
    return Transport(1, "127.0.0.1:0", Insecure())


@pytest.mark.parametrize("mode", ["serial", "64-in-flight"])
@pytest.mark.parametrize("bridge", ["loop-bridge", "pyo3-async-runtimes"])
def test_bridge_round_trip(
    benchmark: Any, record_summary: Any, loop_and_transport: Any, bridge: str, mode: str
) -> None:
    loop, transport = loop_and_transport
    probe = transport.probe_bridge if bridge == "loop-bridge" else core._probe_async_runtimes
    run = _serial if mode == "serial" else _concurrent
    benchmark.pedantic(lambda: loop.run_until_complete(run(probe)), rounds=15, warmup_rounds=2)
    record_summary(
        f"empty Rust future awaited, {mode}",
        bridge,
        benchmark,
        CALLS if mode == "serial" else (CALLS // IN_FLIGHT) * IN_FLIGHT,
        bridge == "pyo3-async-runtimes",
    )
