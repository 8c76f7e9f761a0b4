"""The embedding API's arguments, on a real three-node cluster in this process: a bad call to
`node.data.propose` (or `read_index`, `locate`) fails alone and at once with a typed error
naming its argument, the same on the group's leader and on a follower, and the commands other
callers proposed in the same turn of the loop are applied as if it had not been made. Found by
an embedding probe: one `str` command failed every proposal of its turn (on the leader they
waited out their deadline for `OutcomeUnknown`, on a follower the leader refused the whole
batch), one `timeout_s=1e7` made the leader refuse them all, and `inf`, `nan`, `group=-1`
raised bare OverflowError/ValueError."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from nodedb_cluster.embedding import COMMAND_BYTES_MAX
from nodedb_cluster.errors import ClusterError, InvalidRequest, UnknownGroup
from nodedb_cluster.node import Node
from nodedb_cluster.raft import StateMachine
from support.host_cluster import host_cluster

GOOD_CALLS = 20
"""Proposals made in the same turn as each bad call."""
TIMEOUT_S = 5.0
"""The good calls' deadline: an unaffected call answers long before it."""


class Counter:
    """Answers each command with its index: enough to see what was applied."""

    def __init__(self) -> None:
        self.applied: list[bytes] = []

    def apply_batch(self, entries: list[tuple[int, bytes]]) -> list[bytes]:
        self.applied += [command for _, command in entries]
        return [b"ok:%d" % index for index, _ in entries]

    def snapshot(self) -> bytes:
        return b"%d" % len(self.applied)

    def restore(self, data: bytes) -> None:
        self.applied = []


def _counter(group_id: int) -> StateMachine:
    return Counter()


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[dict[int, Node]]:
    async with host_cluster(tmp_path, _counter, num_groups=2) as running:
        yield running


BadCall = Callable[[Any], Coroutine[Any, Any, object]]
"""A call on `node.data` (typed Any: its arguments are wrong on purpose)."""

BAD_CALLS: list[tuple[str, BadCall, type[ClusterError], str]] = [
    ("command str", lambda d: d.propose("w", group=1), InvalidRequest, "command must be bytes"),
    ("command None", lambda d: d.propose(None, group=1), InvalidRequest, "command must be bytes"),
    (
        "command too big",
        lambda d: d.propose(bytes(COMMAND_BYTES_MAX + 1), group=1),
        InvalidRequest,
        f"a command holds at most {COMMAND_BYTES_MAX}",
    ),
    ("timeout 1e7", lambda d: d.propose(b"w", group=1, timeout_s=1e7), InvalidRequest, "timeout_s"),
    (
        "timeout inf",
        lambda d: d.propose(b"w", group=1, timeout_s=math.inf),
        InvalidRequest,
        "timeout_s",
    ),
    (
        "timeout nan",
        lambda d: d.propose(b"w", group=1, timeout_s=math.nan),
        InvalidRequest,
        "timeout_s",
    ),
    ("timeout -1", lambda d: d.propose(b"w", group=1, timeout_s=-1), InvalidRequest, "timeout_s"),
    ("timeout str", lambda d: d.propose(b"w", group=1, timeout_s="5"), InvalidRequest, "timeout_s"),
    ("group True", lambda d: d.propose(b"w", group=True), InvalidRequest, "group must be an int"),
    ("group 1.0", lambda d: d.propose(b"w", group=1.0), InvalidRequest, "group must be an int"),
    ("group -1", lambda d: d.propose(b"w", group=-1), UnknownGroup, "group -1"),
    ("group 2**64", lambda d: d.propose(b"w", group=2**64), UnknownGroup, f"group {2**64}"),
    ("key str", lambda d: d.propose(b"w", key="k"), InvalidRequest, "key must be bytes"),
    (
        "read timeout inf",
        lambda d: d.read_index(group=1, timeout_s=math.inf),
        InvalidRequest,
        "timeout_s",
    ),
    ("read group True", lambda d: d.read_index(group=True), InvalidRequest, "group must be"),
]


async def _locate_str_key(data: Any) -> object:
    return data.locate("k")


BAD_CALLS.append(("locate key str", _locate_str_key, InvalidRequest, "key must be bytes"))


async def test_a_bad_call_fails_alone_and_at_once_the_same_on_leader_and_follower(
    nodes: dict[int, Node],
) -> None:
    leader = nodes[1].data.locate(group=1).leader
    assert leader is not None
    follower = next(n for n in nodes if n != leader)
    for where, node_id in (("leader", leader), ("follower", follower)):
        data = nodes[node_id].data
        for name, call, error, says in BAD_CALLS:
            good = [
                asyncio.ensure_future(data.propose(b"good", group=1, timeout_s=TIMEOUT_S))
                for _ in range(GOOD_CALLS)
            ]
            bad = asyncio.ensure_future(call(data))
            await asyncio.sleep(0)  # one step: the bad call's checks ran, the turn's flush not yet
            refused_at_once = bad.done()
            results = await asyncio.gather(*good, return_exceptions=True)
            assert all(isinstance(r, bytes) and r.startswith(b"ok:") for r in results), (
                f"{where}, {name}: {results[:3]}"
            )
            assert refused_at_once, f"{where}, {name}: not refused at the call"
            with pytest.raises(error, match=says):
                bad.result()


async def test_the_largest_command_is_taken_on_leader_and_follower(nodes: dict[int, Node]) -> None:
    leader = nodes[1].data.locate(group=2).leader
    assert leader is not None
    follower = next(n for n in nodes if n != leader)
    command = bytes(COMMAND_BYTES_MAX)
    for node_id in (leader, follower):
        result = await nodes[node_id].data.propose(command, group=2, timeout_s=30.0)
        assert result.startswith(b"ok:")


async def test_bytes_like_commands_and_keys_and_the_longest_timeout_are_taken(
    nodes: dict[int, Node],
) -> None:
    leader = nodes[1].data.locate(group=1).leader
    assert leader is not None
    follower = next(n for n in nodes if n != leader)
    for node_id in (leader, follower):
        data = nodes[node_id].data
        assert (await data.propose(bytearray(b"ba"), group=1)).startswith(b"ok:")
        assert (await data.propose(memoryview(b"mv"), key=bytearray(b"k"))).startswith(b"ok:")
        assert (await data.propose(b"day", group=1, timeout_s=86_400)).startswith(b"ok:")
        assert data.locate(memoryview(b"k")) == data.locate(b"k")
