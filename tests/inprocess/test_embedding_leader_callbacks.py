"""`node.data.on_leader_change`: a callback's last report per group is the leader this node
knows, whenever the changes land. Found by an embedding probe: a host that did synchronous
work right after registering never heard of a change made in that gap (the first report and
the watcher's starting view were taken at different moments), and kept a stale leader for
good. The engine here is a stand-in whose leaders the test changes at exact points; the
reports go through the real `DataGroups`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import pytest

from nodedb_cluster.embedding import DataGroups
from nodedb_cluster.raft import RaftEngine
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.transport import Transport

WAIT_S = 5.0
"""Bound on a callback's convergence (it happens within a few loop turns)."""


class Leaders:
    """The engine's leader view and epoch (`RaftEngine.leaders`, `wait_leaders_changed`)."""

    def __init__(self) -> None:
        self.epoch = 1
        self.view: dict[int, tuple[int | None, int]] = {0: (1, 1), 1: (1, 1), 2: (2, 1)}
        self._waiters: list[asyncio.Future[None]] = []

    def leaders(self) -> tuple[int, list[tuple[int, int | None, int]]]:
        return self.epoch, [(g, leader, term) for g, (leader, term) in self.view.items()]

    def leader(self, group: int) -> int | None:
        return self.view[group][0]

    def change(self, group: int, leader: int | None, term: int) -> None:
        self.view[group] = (leader, term)
        self.epoch += 1
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait_leaders_changed(self, since: int, timeout_ms: int) -> int:
        if since == self.epoch:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(timeout_ms / 1000):
                    await waiter
            except TimeoutError:
                pass
        return self.epoch

    async def wait_stopped(self) -> str:
        await asyncio.get_running_loop().create_future()  # never, here
        return "stopped"


class Told:
    """What a callback was told, per group; `converged` once it matches the engine's view."""

    def __init__(self, engine: Leaders) -> None:
        self.engine = engine
        self.last: dict[int, tuple[int | None, int]] = {}
        self.calls: list[tuple[int, int | None, int]] = []
        self.converged = asyncio.Event()

    def __call__(self, group: int, leader: int | None, term: int) -> None:
        self.calls.append((group, leader, term))
        self.last[group] = (leader, term)
        self.check()

    def check(self) -> None:
        wanted = {g: lt for g, lt in self.engine.view.items() if g != 0}
        if {g: lt[0] for g, lt in self.last.items()} == {g: lt[0] for g, lt in wanted.items()}:
            self.converged.set()
        else:
            self.converged.clear()

    async def until_converged(self) -> None:
        self.check()
        async with asyncio.timeout(WAIT_S):
            await self.converged.wait()


@pytest.fixture
async def groups() -> AsyncIterator[tuple[DataGroups, Leaders]]:
    engine = Leaders()
    data = DataGroups(
        1,
        cast(RaftEngine, engine),
        cast(Transport, None),  # proposals are not made here
        lambda: RoutingTable.bootstrap(2, 1),
        host=True,
    )
    try:
        yield data, engine
    finally:
        await data.close()


async def test_a_change_right_after_registering_is_reported(
    groups: tuple[DataGroups, Leaders],
) -> None:
    data, engine = groups
    told = Told(engine)
    data.on_leader_change(told)
    engine.change(1, 3, 2)  # the host still busy: the loop has not run since registering
    await told.until_converged()
    assert told.last[1] == (3, 2)
    assert told.calls.count((1, 3, 2)) == 1


async def test_every_callback_converges_however_changes_and_registrations_interleave(
    groups: tuple[DataGroups, Leaders],
) -> None:
    data, engine = groups
    first = Told(engine)
    data.on_leader_change(first)
    await first.until_converged()
    engine.change(2, None, 2)  # the watcher's wake is queued ...
    second = Told(engine)
    data.on_leader_change(second)  # ... before this registration's first report
    engine.change(2, 3, 2)
    engine.change(1, 2, 2)
    for told in (first, second):
        await told.until_converged()
    assert second.last == {1: (2, 2), 2: (3, 2)}
    assert len(second.calls) == len(set(second.calls)), "no report is repeated"


async def test_a_stopped_callback_is_told_nothing_more(groups: tuple[DataGroups, Leaders]) -> None:
    data, engine = groups
    stopped, going = Told(engine), Told(engine)
    stop = data.on_leader_change(stopped)
    data.on_leader_change(going)
    await going.until_converged()
    stop()
    engine.change(1, 2, 2)
    await going.until_converged()
    assert (1, 2, 2) not in stopped.calls
