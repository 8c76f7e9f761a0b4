"""Exactly-once writes: client sessions deduplicated by the replicated KV state machine.

The interleaving that broke linearizability before sessions (fault harness seeds 1029 and 1095):
client A's put is retried after an unknown outcome, client B writes the key in between, and A's
retry lands last. Here the retry is the SAME bytes proposed again through the real log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_kv import formed

from nodedb_cluster.node import Node
from nodedb_cluster.raft import kv_cas, kv_put, kv_result, kv_session

CONVERGE_TIMEOUT_S = 10.0


def in_session(client: int, seq: int, acked_below: int, command: bytes) -> list[bytes]:
    """One command as write `seq` of client session `client` (the bytes a client core sends
    and resends; its rules are unit-tested in nodedb-kv's session module)."""
    return [kv_session(client, seq, acked_below, command)]


@pytest.fixture
async def three(tmp_path: Path) -> AsyncIterator[list[Node]]:
    async with formed(tmp_path, num_groups=1) as nodes:
        yield nodes


async def leader_of(nodes: list[Node], group: int) -> Node:
    for node in nodes:
        status = await node.status()
        for g in status.groups:
            if g.group_id == group and g.role == "leader":
                return node
    raise AssertionError(f"no leader of group {group}")


async def converged(nodes: list[Node], group: int) -> None:
    """Every replica's (applied index, keys, digest) equal, bounded."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    while True:
        digests = set()
        for n in nodes:
            assert n.engine is not None
            digests.add(n.engine.kv_digest(group))
        if len(digests) == 1:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"replicas differ: {digests}")
        await asyncio.sleep(0.05)  # apply progress has no push channel here: poll, bounded


async def test_a_retry_after_another_clients_write_does_not_apply_again(
    three: list[Node],
) -> None:
    key = b"session:k"
    b = three[1].kv
    group = b.group_of(key)
    leader = await leader_of(three, group)
    assert leader.engine is not None
    cmds = in_session(0xA, 1, 1, kv_put(key, b"from-a"))
    first = await leader.engine.propose_batch(group, cmds)
    await b.put(key, b"from-b")
    retry = await leader.engine.propose_batch(group, cmds)
    assert kv_result(retry.results[0]) == kv_result(first.results[0]) == ("ok", None)
    assert retry.index > first.index, "the retry went through the log"
    for node in three:
        assert await node.kv.get(key) == b"from-b"
    await converged(three, group)


async def test_a_retried_cas_answers_its_first_result(three: list[Node]) -> None:
    key = b"session:cas"
    await three[0].kv.put(key, b"v1")
    router = three[2].kv
    group = router.group_of(key)
    leader = await leader_of(three, group)
    assert leader.engine is not None
    cmds = in_session(0xC, 1, 1, kv_cas(key, b"v1", b"v2"))
    first = await leader.engine.propose_batch(group, cmds)
    retry = await leader.engine.propose_batch(group, cmds)
    assert kv_result(first.results[0])[0] == "ok"
    assert kv_result(retry.results[0])[0] == "ok", "not a mismatch against its own write"
    assert await router.cas(key, b"v2", b"v3")
    assert await three[1].kv.get(key) == b"v3"


async def test_a_late_copy_of_a_finished_write_is_refused_as_a_duplicate(
    three: list[Node],
) -> None:
    key = b"session:late"
    kv = three[1].kv
    group = kv.group_of(key)
    leader = await leader_of(three, group)
    assert leader.engine is not None
    late = in_session(0xD, 1, 1, kv_put(key, b"old"))
    await leader.engine.propose_batch(group, late)
    # The session's next write says every seq below 2 is finished: seq 1's result is dropped.
    await leader.engine.propose_batch(group, in_session(0xD, 2, 2, kv_put(key, b"new")))
    out = await leader.engine.propose_batch(group, late)
    assert kv_result(out.results[0]) == ("duplicate", None)  # never applied a second time
    assert await kv.get(key) == b"new"
    await converged(three, group)


async def test_writes_through_every_api_are_in_the_session(three: list[Node]) -> None:
    kv = three[0].kv
    before = kv.acked_below
    await kv.put(b"s:1", b"1")
    await kv.put_many([(b"s:%d" % i, b"x") for i in range(2, 12)])
    assert await kv.delete(b"s:2")
    assert await kv.cas(b"s:3", b"x", b"y")
    assert kv.acked_below == before + 13
    assert kv.writes_in_flight == 0
