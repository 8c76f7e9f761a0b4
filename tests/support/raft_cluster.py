"""Test/benchmark harness: Raft node processes (tests/support/raft_node.py) on 127.0.0.x,
commands over their stdin/stdout, SIGKILL and restart on the same data_dir and address. Every
wait bounded."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NODE = Path(__file__).with_name("raft_node.py")
START_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 120.0


def free_udp_addr(host: str) -> str:
    """An address on `host` whose UDP port was free a moment ago (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return f"{host}:{s.getsockname()[1]}"


class NodeError(Exception):
    """A command answered with an error: `cls` is the nodedb_cluster.errors class name."""

    def __init__(self, cls: str, msg: str) -> None:
        super().__init__(f"{cls}: {msg}")
        self.cls = cls


@dataclass
class NodeProc:
    node_id: int
    data_dir: Path
    addr: str
    extra: list[str] = field(default_factory=list)
    proc: asyncio.subprocess.Process | None = None
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _waiters: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    _reader: asyncio.Task[None] | None = None

    async def start(self, peers: str, groups: int) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(NODE),
            str(self.node_id),
            str(self.data_dir),
            self.addr,
            peers,
            str(groups),
            *self.extra,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(START_TIMEOUT_S):
            line = await self.proc.stdout.readline()
        assert line.strip() == b"READY", f"node {self.node_id} did not start: {line!r}"
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            fut = self._waiters.pop(msg["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionError(f"node {self.node_id} exited"))
        self._waiters.clear()

    async def call(self, op: str, timeout_s: float = COMMAND_TIMEOUT_S, **args: Any) -> Any:
        assert self.proc is not None
        assert self.proc.stdin is not None
        cid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[cid] = fut
        self.proc.stdin.write(json.dumps({"id": cid, "op": op, **args}).encode() + b"\n")
        await self.proc.stdin.drain()
        async with asyncio.timeout(timeout_s):
            msg = await fut
        if "err" in msg:
            raise NodeError(msg["err"], msg["msg"])
        return msg["ok"]

    async def kill(self) -> None:
        """SIGKILL: no shutdown path runs."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            async with asyncio.timeout(START_TIMEOUT_S):
                await self.proc.wait()
        if self._reader is not None:
            async with asyncio.timeout(START_TIMEOUT_S):
                await self._reader

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                async with asyncio.timeout(START_TIMEOUT_S):
                    await self.proc.wait()
            except TimeoutError:
                pass
        await self.kill()


@dataclass
class ProcCluster:
    nodes: dict[int, NodeProc]
    groups: int

    @classmethod
    def plan(
        cls, root: Path, count: int, groups: int, extra: list[str] | None = None
    ) -> ProcCluster:
        nodes = {
            i: NodeProc(i, root / f"n{i}", free_udp_addr(f"127.0.0.{i}"), list(extra or []))
            for i in range(1, count + 1)
        }
        return cls(nodes, groups)

    def peers(self) -> str:
        return ",".join(f"{i}={n.addr}" for i, n in sorted(self.nodes.items()))

    async def start_all(self, ids: list[int] | None = None) -> None:
        chosen = [self.nodes[i] for i in (ids or sorted(self.nodes))]
        await asyncio.gather(*(n.start(self.peers(), self.groups) for n in chosen))

    async def stop_all(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes.values()))

    def live(self) -> list[NodeProc]:
        return [n for n in self.nodes.values() if n.proc is not None and n.proc.returncode is None]

    async def leader(self, group: int, deadline_s: float = 20.0) -> NodeProc:
        """Polls status (no leadership event crosses processes); bounded by `deadline_s`."""
        polls = int(deadline_s / 0.02)
        for _ in range(polls):
            for n in self.live():
                try:
                    if (await n.call("status", group=group))["role"] == "leader":
                        return n
                except NodeError:
                    pass
            await asyncio.sleep(0.02)
        raise AssertionError(f"no leader of group {group} within {deadline_s} s")

    async def converged(self, group: int, deadline_s: float = 30.0) -> list[int]:
        """Waits until every live node reports the same KV digest; returns it."""
        polls = int(deadline_s / 0.05)
        digests: list[list[int]] = []
        for _ in range(polls):
            digests = [await n.call("digest", group=group) for n in self.live()]
            # Same key count and content; applied index may differ by trailing no-ops.
            if all(d[1:] == digests[0][1:] for d in digests):
                return digests[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"group {group} did not converge: {digests}")
