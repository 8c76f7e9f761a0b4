"""Test/bench harness: SWIM member processes (tests/support/swim_node.py) on 127.0.0.x.

Each process's stdout is read by a task that appends events to `events` and wakes waiters, so a
test awaits a condition (with a deadline) instead of sleeping. `kill` is SIGKILL, `pause` and
`resume` are SIGSTOP/SIGCONT."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from support.raft_cluster import free_udp_addr

NODE = Path(__file__).with_name("swim_node.py")
START_TIMEOUT_S = 30.0
SECRET_HEX = os.urandom(32).hex()


@dataclass
class SwimEvent:
    observer: int
    node: int
    state: str
    incarnation: int
    wall_ms: int


@dataclass
class SwimProcCluster:
    n: int
    probe_interval_ms: int = 1000
    addrs: dict[int, str] = field(default_factory=dict)
    procs: dict[int, asyncio.subprocess.Process] = field(default_factory=dict)
    events: list[SwimEvent] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        self.addrs = {i: free_udp_addr(f"127.0.0.{i}") for i in range(1, self.n + 1)}
        peers = ",".join(f"{i}={a}" for i, a in self.addrs.items())
        for i, addr in self.addrs.items():
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(NODE),
                str(i),
                addr,
                peers,
                SECRET_HEX,
                str(self.probe_interval_ms),
                stdout=asyncio.subprocess.PIPE,
            )
            self.procs[i] = proc  # registered first, so close() reaps it whatever happens next
            assert proc.stdout is not None
            async with asyncio.timeout(START_TIMEOUT_S):
                line = await proc.stdout.readline()
            if not line or json.loads(line) != {"ready": i}:
                raise RuntimeError(f"swim node {i} did not start: {line!r}")
            self._readers.append(asyncio.ensure_future(self._read(i, proc)))

    async def _read(self, observer: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            doc = json.loads(line)
            event = SwimEvent(observer, doc["node"], doc["state"], doc["inc"], doc["wall_ms"])
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Await `predicate()` becoming true (re-checked on every event); False on timeout."""
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(predicate)
        except TimeoutError:
            return False
        return True

    def first(self, observer: int, node: int, state: str, after_wall_ms: int = 0) -> int | None:
        for e in self.events:
            if (e.observer, e.node, e.state) == (
                observer,
                node,
                state,
            ) and e.wall_ms >= after_wall_ms:
                return e.wall_ms
        return None

    def live(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.returncode is None]

    def kill(self, node_id: int) -> None:
        self.procs[node_id].send_signal(signal.SIGKILL)

    def pause(self, node_id: int) -> None:
        self.procs[node_id].send_signal(signal.SIGSTOP)

    def resume(self, node_id: int) -> None:
        self.procs[node_id].send_signal(signal.SIGCONT)

    async def close(self) -> None:
        for p in self.procs.values():
            if p.returncode is None:
                p.send_signal(signal.SIGCONT)
                p.send_signal(signal.SIGKILL)
        for p in self.procs.values():
            async with asyncio.timeout(10):
                await p.wait()
        for r in self._readers:
            r.cancel()
