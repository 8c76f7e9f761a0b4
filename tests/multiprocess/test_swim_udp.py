"""SWIM over real UDP sockets on 127.0.0.x: several asyncio nodes in one process, and separate
processes killed with SIGKILL.

Goal: the shell carries the machine's promises onto real sockets — members converge, a closed
(crashed) node is declared dead by all within the issue-7 bounds, a forged datagram from a real
socket is dropped and counted, the event queue stays bounded. Waits are condition waits with
deadlines (a short probe interval keeps in-process tests fast; the process test uses defaults)."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.membership import MemberState, SwimConfig, SwimNode
from nodedb_cluster.membership.shell import SwimError
from support.raft_cluster import free_udp_addr
from support.swim_cluster import SwimEvent, SwimProcCluster

SECRET = os.urandom(32)
FAST = SwimConfig(probe_interval_ms=200, probe_timeout_ms=100, suspicion_min_ms=600)


async def wait_until(pred: object, timeout_s: float, step_event: asyncio.Event) -> bool:
    """Re-check `pred` whenever a membership event fires, until `timeout_s`."""
    assert callable(pred)
    try:
        async with asyncio.timeout(timeout_s):
            while not pred():
                step_event.clear()
                await step_event.wait()
    except TimeoutError:
        return False
    return True


async def start_nodes(n: int, config: SwimConfig) -> tuple[list[SwimNode], asyncio.Event]:
    addrs = [parse_socket_addr(free_udp_addr(f"127.0.0.{i}")) for i in range(1, n + 1)]
    changed = asyncio.Event()
    nodes = [SwimNode(i + 1, addrs[i], config, SECRET) for i in range(n)]
    for node in nodes:
        node.subscribe(lambda _e: changed.set())
        await node.start([(j + 1, addrs[j]) for j in range(n)])
    return nodes, changed


def view(node: SwimNode) -> dict[int, MemberState]:
    return {m.node_id: m.state for m in node.members()}


async def test_in_process_nodes_detect_a_crash_over_real_udp() -> None:
    nodes, changed = await start_nodes(5, FAST)
    try:
        stream = nodes[0].events()
        crashed = nodes[2]
        crash_s = time.monotonic()
        await crashed.close(leave=False)  # no farewell: a crash
        survivors = [n for n in nodes if n is not crashed]
        assert await wait_until(
            lambda: all(view(n)[3] is MemberState.DEAD for n in survivors), 10.0, changed
        )
        elapsed_s = time.monotonic() - crash_s
        # Bound at FAST timings: two passes of 4 members + timeout, with slack for a loaded host.
        assert elapsed_s < 2 * 4 * 0.2 + 0.2 + FAST.suspicion_timeout_ms(5) / 1000 + 2.0
        for n in survivors:
            assert {i: s for i, s in view(n).items() if i != 3} == {
                i: MemberState.ALIVE for i in (1, 2, 4, 5) if i != n.node_id
            }
        async with asyncio.timeout(5):
            seen = []
            async for event in stream:
                seen.append((event.node_id, event.state))
                if (3, MemberState.DEAD) in seen:
                    break
        assert (3, MemberState.SUSPECT) in seen
    finally:
        for n in nodes:
            await n.close()


async def test_graceful_close_is_seen_as_left() -> None:
    nodes, changed = await start_nodes(3, FAST)
    try:
        await nodes[1].close()
        assert await wait_until(
            lambda: view(nodes[0])[2] is MemberState.LEFT and view(nodes[2])[2] is MemberState.LEFT,
            5.0,
            changed,
        )
    finally:
        for n in nodes:
            await n.close()


async def test_forged_datagrams_from_a_real_socket_are_dropped_and_counted() -> None:
    nodes, _ = await start_nodes(2, FAST)
    try:
        target = nodes[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.9", 0))
            s.sendto(b"\x00" * 64, target.addr.as_tuple())  # wrong tag
            s.sendto(b"x" * (FAST.datagram_bytes_max + 10), target.addr.as_tuple())
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            m = target.metrics()
            if m["dropped_bad_mac"] >= 1 and m["dropped_oversize"] >= 1:
                break
            await asyncio.sleep(0.01)  # polling a counter: no event exists for a dropped datagram
        m = target.metrics()
        assert (m["dropped_bad_mac"], m["dropped_oversize"]) == (1, 1)
        assert view(target) == {2: MemberState.ALIVE}
    finally:
        for n in nodes:
            await n.close()


async def test_an_events_consumer_is_released_by_close() -> None:
    nodes, _ = await start_nodes(1, FAST)
    seen: list[object] = []

    async def consume() -> None:
        async for e in nodes[0].events():
            seen.append(e)

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0)  # let the consumer reach its wait
    await nodes[0].close()
    async with asyncio.timeout(5):
        await task
    assert seen == []  # a lone node has no members, hence no events


async def test_bind_failure_is_a_typed_error() -> None:
    with pytest.raises(SwimError):
        await SwimNode(1, parse_socket_addr("192.0.2.1:7946"), FAST, SECRET).start()


async def test_event_queue_is_bounded_and_drops_the_oldest() -> None:
    config = SwimConfig(
        probe_interval_ms=200, probe_timeout_ms=100, suspicion_min_ms=600, event_queue_max=1
    )
    nodes, _ = await start_nodes(3, config)
    try:
        # Seeding node 1 produced two ALIVE events (nodes 2 and 3); the queue keeps the newest.
        assert nodes[0].metrics()["events_dropped"] == 1
        async with asyncio.timeout(5):
            first = await anext(aiter(nodes[0].events()))
        assert (first.node_id, first.state) == (3, MemberState.ALIVE)
    finally:
        for n in nodes:
            await n.close()


@pytest.mark.multiprocess
async def test_processes_kill_minus_9_is_declared_dead_within_the_bounds() -> None:
    cluster = SwimProcCluster(5)  # defaults: 1 s period, 500 ms timeout, k=3, 4x suspicion
    try:
        await cluster.start()
        ids = range(1, 6)
        victim = 4
        kill_ms = time.time_ns() // 1_000_000
        cluster.kill(victim)
        survivors = [i for i in ids if i != victim]
        assert await cluster.wait_for(
            lambda: all(cluster.first(i, victim, "DEAD", kill_ms) for i in survivors), 20.0
        )
        suspect_ms = min(
            t for i in survivors if (t := cluster.first(i, victim, "SUSPECT", kill_ms)) is not None
        )
        dead_ms = max(cluster.first(i, victim, "DEAD", kill_ms) or 0 for i in survivors)
        print(f"suspected after {suspect_ms - kill_ms} ms, all dead after {dead_ms - kill_ms} ms")
        # Issue 7's targets are 3 s (suspected) and 12 s (dead). Suspicion waits for some survivor
        # to probe the victim; four survivors each probing it once per 4-period round leave a ~6%
        # chance that none does within 2 s, so one run asserts 5 s here and benches/bench_swim.py
        # reports the distribution against 3 s over many kills.
        assert suspect_ms - kill_ms <= 5000
        assert dead_ms - kill_ms <= 12000
        live_dead = [e for e in cluster.events if e.node != victim and e.state == "DEAD"]
        assert live_dead == []
        # On a loaded 2-core machine a live node's loop can stall past the 500 ms probe timeout
        # and be suspected; SWIM's answer is refutation (a higher incarnation), never death.
        suspected = [e for e in cluster.events if e.node != victim and e.state == "SUSPECT"]

        def refuted(s: SwimEvent) -> bool:
            return any(
                (e.observer, e.node, e.state) == (s.observer, s.node, "ALIVE")
                and e.incarnation > s.incarnation
                for e in cluster.events
            )

        assert await cluster.wait_for(lambda: all(refuted(s) for s in suspected), 10.0), (
            f"suspicions of live nodes not refuted: {[s for s in suspected if not refuted(s)]}"
        )
    finally:
        await cluster.close()
