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

from nodedb_cluster.kv import OutcomeUnknown, _written
from nodedb_cluster.node import Node
from nodedb_cluster.raft import kv_cas, kv_put, kv_result
from nodedb_cluster.session import WriteSession

CONVERGE_TIMEOUT_S = 10.0


def test_acked_below_is_the_lowest_unfinished_seq() -> None:
    s = WriteSession(client_id=7)
    assert s.acked_below == 1
    seqs, cmds = s.wrap([kv_put(b"a", b"1"), kv_put(b"b", b"2"), kv_put(b"c", b"3")])
    assert seqs == [1, 2, 3]
    assert len(cmds) == 3
    assert s.acked_below == 1
    s.finish([2])
    assert s.acked_below == 1, "seq 1 still open"
    s.finish([1])
    assert s.acked_below == 3
    (seq4,), _ = s.wrap([kv_put(b"d", b"4")])
    assert seq4 == 4
    assert s.in_flight == 2
    s.finish([3, 4])
    assert s.acked_below == 5
    assert s.in_flight == 0


def test_two_sessions_get_different_ids() -> None:
    assert WriteSession().client_id != WriteSession().client_id


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
    a, b = three[0].kv, three[1].kv
    group = a.group_of(key)
    leader = await leader_of(three, group)
    assert leader.engine is not None
    seqs, cmds = a.session.wrap([kv_put(key, b"from-a")])
    first = await leader.engine.propose_batch(group, cmds)
    await b.put(key, b"from-b")
    retry = await leader.engine.propose_batch(group, cmds)
    a.session.finish(seqs)
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
    seqs, cmds = router.session.wrap([kv_cas(key, b"v1", b"v2")])
    first = await leader.engine.propose_batch(group, cmds)
    retry = await leader.engine.propose_batch(group, cmds)
    router.session.finish(seqs)
    assert kv_result(first.results[0])[0] == "ok"
    assert kv_result(retry.results[0])[0] == "ok", "not a mismatch against its own write"
    assert await router.cas(key, b"v2", b"v3")
    assert await three[1].kv.get(key) == b"v3"


async def test_a_late_copy_of_a_finished_write_is_refused_and_reported_unknown(
    three: list[Node],
) -> None:
    key = b"session:late"
    router = three[1].kv
    group = router.group_of(key)
    leader = await leader_of(three, group)
    assert leader.engine is not None
    seqs, late = router.session.wrap([kv_put(key, b"old")])
    await leader.engine.propose_batch(group, late)
    router.session.finish(seqs)
    await router.put(key, b"new")  # carries acked_below past the first seq
    out = await leader.engine.propose_batch(group, late)
    assert kv_result(out.results[0]) == ("duplicate", None)
    with pytest.raises(OutcomeUnknown):
        _written(group, out.results[0])
    assert await router.get(key) == b"new"
    await converged(three, group)


async def test_writes_through_every_api_are_in_the_session(three: list[Node]) -> None:
    router = three[0].kv
    before = router.session.acked_below
    await router.put(b"s:1", b"1")
    await router.put_many([(b"s:%d" % i, b"x") for i in range(2, 12)])
    assert await router.delete(b"s:2")
    assert await router.cas(b"s:3", b"x", b"y")
    assert router.session.acked_below == before + 13
    assert router.session.in_flight == 0
