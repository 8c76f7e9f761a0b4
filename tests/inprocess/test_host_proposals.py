"""The embedding API's proposal queue over real QUIC: proposals made in one turn of the loop
reach a leader as ONE HOST_PROPOSE with an outcome each, and a leader from before batches
(version 1 only) still gets every command, one by one, without a batch being tried on each call;
more commands than one batch carries go in several.
The leaders here are transports whose handlers speak the wire contract (rust/wire/src/host.rs):
the queue's remote side needs no engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import msgpack
import pytest
from nodedb_cluster_core import PAYLOAD_BYTES_MAX

from nodedb_cluster import host_proposals
from nodedb_cluster.errors import InvalidRequest, RaftNotLeader
from nodedb_cluster.host_proposals import ProposalQueue
from nodedb_cluster.raft import RaftEngine
from nodedb_cluster.transport import Insecure, Peer, Reply, Transport
from nodedb_cluster.wire import MessageKind

LOCAL = "127.0.0.1:0"
DEADLINE_S = 5.0


class Leader:
    """Answers HOST_PROPOSE: each command's result is the command reversed, and a command
    b"elsewhere" is answered not_leader (node 3). `batches=False` is a build from before
    version 2, which refused any newer version unread."""

    def __init__(self, batches: bool) -> None:
        self.batches = batches
        self.requests: list[tuple[int, int]] = []
        """(version, commands) per request served."""
        self.refused = 0

    async def __call__(self, peer: Peer, kind: int, payload: bytes) -> Reply:
        if not self.batches and msgpack.unpackb(payload).get("v", 1) > 1:
            self.refused += 1  # the old build's words, which the sender recognizes
            raise InvalidRequest("HostPropose version 2 is newer than this build's 1")
        version, items = _commands(msgpack.unpackb(payload))
        self.requests.append((version, len(items)))
        outcomes: list[dict[str, object]] = [
            {"outcome": "not_leader", "leader": 3}
            if command == b"elsewhere"
            else {"outcome": "applied", "index": 1, "result": command[::-1]}
            for _, command in items
        ]
        answer = outcomes[0] if version == 1 else {"outcomes": outcomes}
        return MessageKind.HOST_PROPOSE_RESPONSE, msgpack.packb(answer, use_bin_type=True)


def _commands(doc: dict[str, object]) -> tuple[int, list[tuple[int, bytes]]]:
    """(version, [(group, command)]) of a request of either version, as the contract reads it."""
    if doc.get("v", 1) == 1:
        return 1, [(cast(int, doc["group"]), cast(bytes, doc["command"]))]
    items = cast(list[dict[str, object]], doc["items"])
    return 2, [(cast(int, i["group"]), cast(bytes, i["command"])) for i in items]


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Transport, Transport]]:
    proposer, leader = Transport(1, LOCAL, Insecure()), Transport(2, LOCAL, Insecure())
    proposer.register_peer(2, leader.local_addr)
    try:
        yield proposer, leader
    finally:
        await proposer.close()
        await leader.close()


async def _propose_all(queue: ProposalQueue, commands: list[bytes]) -> list[bytes | Exception]:
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    calls = (queue.propose(2, 7, c, deadline) for c in commands)
    return list(await asyncio.gather(*calls, return_exceptions=True))


def _queue(proposer: Transport) -> ProposalQueue:
    return ProposalQueue(1, cast(RaftEngine, None), proposer)  # no local group: never used


async def test_proposals_of_one_turn_go_as_one_request_with_an_outcome_each(
    pair: tuple[Transport, Transport],
) -> None:
    proposer, transport = pair
    leader = Leader(batches=True)
    transport.serve(leader)
    queue = _queue(proposer)
    out = await _propose_all(queue, [b"ab", b"elsewhere", b"cd", b""])
    assert [out[0], out[2], out[3]] == [b"ba", b"dc", b""]
    assert isinstance(out[1], RaftNotLeader)
    assert out[1].leader_id == 3
    assert leader.requests == [(2, 4)]
    await queue.close()


async def test_a_leader_from_before_batches_gets_each_command_alone(
    pair: tuple[Transport, Transport],
) -> None:
    proposer, transport = pair
    leader = Leader(batches=False)
    transport.serve(leader)
    queue = _queue(proposer)
    assert await _propose_all(queue, [b"ab", b"cd", b"ef"]) == [b"ba", b"dc", b"fe"]
    assert (leader.refused, sorted(leader.requests)) == (1, [(1, 1)] * 3)
    # Remembered: the next turn's commands go one by one at once, with no batch refused first.
    assert await _propose_all(queue, [b"gh", b"ij"]) == [b"hg", b"ji"]
    assert (leader.refused, len(leader.requests)) == (1, 5)
    await queue.close()


async def test_more_commands_than_a_batch_carries_go_in_several(
    pair: tuple[Transport, Transport], monkeypatch: pytest.MonkeyPatch
) -> None:
    proposer, transport = pair
    leader = Leader(batches=True)
    transport.serve(leader)
    monkeypatch.setattr(host_proposals, "HOST_ITEMS_MAX", 3)  # 65,536 in the wire schema
    queue = _queue(proposer)
    commands = [b"c%d" % i for i in range(7)]
    assert await _propose_all(queue, commands) == [c[::-1] for c in commands]
    assert sorted(leader.requests) == [(2, 1), (2, 3), (2, 3)]
    await queue.close()


async def test_commands_over_one_frame_go_in_several(pair: tuple[Transport, Transport]) -> None:
    """Found by an embedding probe: a turn's commands for one leader went in one request
    whatever their size, and a request over the frame limit failed every one of them."""
    proposer, transport = pair
    leader = Leader(batches=True)
    transport.serve(leader)
    queue = _queue(proposer)
    big = PAYLOAD_BYTES_MAX // 2 + 1  # two of them do not fit one frame; each alone does
    commands = [b"a" * big, b"b" * big, b"c"]
    assert await _propose_all(queue, commands) == [c[::-1] for c in commands]
    assert sorted(leader.requests) == [(2, 1), (2, 2)]
    await queue.close()
