"""What a proposer on a follower waits for, on a real three-node cluster in this process (found
by an embedding probe, session 31): a forwarded command is answered within its caller's
deadline, not the transport's RPC bound (it was `OutcomeUnknown` at 5 s for commands that then
applied), and a leader's `Busy` (raft dropped the command unappended: the uncommitted limit full,
a leadership transfer) is retried within the deadline like the same refusal on the leader
(it was a `RemoteError` to the caller, though nothing was in any log)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nodedb_cluster.node import Node
from nodedb_cluster.raft import StateMachine
from support.host_cluster import host_cluster

RPC_TIMEOUT_MS = 1000
SLOW_APPLY_S = 2.5
"""How long the command `b"slow"` takes to apply: longer than the RPC bound."""
BIG_BYTES = 40 << 20
ROUNDS_MAX = 4
"""Each round: 2 x 40 MiB from a follower in one turn, two requests (a request holds under
64 MiB) that arrive together, the second past the leader's 32 MiB of uncommitted entries while
the first is not yet committed; rounds until one was refused so (each must succeed whole)."""


class Sizes:
    """Answers each command with its index, keeping only its size (the big commands' bytes are
    not held three times over)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def apply_batch(self, entries: list[tuple[int, bytes]]) -> list[bytes]:
        out = []
        for index, command in entries:
            if command == b"slow":
                time.sleep(SLOW_APPLY_S)  # the driver thread's own wait, the GIL let go
            self.sizes.append(len(command))
            out.append(b"ok:%d" % index)
        return out

    def snapshot(self) -> bytes:
        return b",".join(b"%d" % n for n in self.sizes)

    def restore(self, data: bytes) -> None:
        self.sizes = [int(n) for n in data.split(b",")] if data else []


def _sizes(group_id: int) -> StateMachine:
    return Sizes()


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[dict[int, Node]]:
    async with host_cluster(
        tmp_path, _sizes, num_groups=1, rpc_timeout_ms=RPC_TIMEOUT_MS
    ) as running:
        yield running


def _follower(nodes: dict[int, Node]) -> Node:
    leader = nodes[1].data.locate(group=1).leader
    assert leader is not None
    return next(n for node_id, n in nodes.items() if node_id != leader)


async def test_a_forwarded_command_is_answered_within_its_callers_deadline(
    nodes: dict[int, Node],
) -> None:
    follower = _follower(nodes)
    began = time.monotonic()
    result = await follower.data.propose(b"slow", group=1, timeout_s=SLOW_APPLY_S + 10)
    took = time.monotonic() - began
    assert result.startswith(b"ok:"), result
    assert took >= SLOW_APPLY_S > RPC_TIMEOUT_MS / 1000, "it waited past the RPC bound"


async def test_a_leaders_busy_is_retried_within_the_deadline(nodes: dict[int, Node]) -> None:
    follower = _follower(nodes)
    leader_id = nodes[1].data.locate(group=1).leader
    assert leader_id is not None
    leader = nodes[leader_id]
    busy_before = leader.metrics()["raft_proposals_busy"]
    for round_ in range(ROUNDS_MAX):
        results = await asyncio.gather(
            *(
                follower.data.propose(bytes([round_, i]) * (BIG_BYTES // 2), group=1, timeout_s=30)
                for i in range(2)
            )
        )
        assert all(r.startswith(b"ok:") for r in results), results
        if leader.metrics()["raft_proposals_busy"] > busy_before:
            return
    pytest.fail(f"no command was refused busy in {ROUNDS_MAX} rounds: the retry was not exercised")
