"""A decommissioned node (formation/retired.py): its restart refused from its own catalog, or from
the first peer that answers when it stopped while still draining; a running one stops once
retired and holding no replica."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.errors import NodeRetired, Unreachable
from nodedb_cluster.formation import retired
from nodedb_cluster.formation.retired import peers_verdict, retired_refusal, until_retired
from nodedb_cluster.topology import NodeInfo, NodeState


def node(node_id: int, state: NodeState = NodeState.ACTIVE) -> NodeInfo:
    return NodeInfo(node_id, parse_socket_addr(f"127.0.0.{node_id}:9400"), state, 1)


def status(*nodes: tuple[int, str]) -> bytes:
    doc = {"nodes": [[n, f"127.0.0.{n}:9400", state] for n, state in nodes]}
    return bytes(msgpack.packb(doc))


def test_only_a_decommissioned_or_unlisted_node_is_refused() -> None:
    refused = retired_refusal(4, NodeState.DECOMMISSIONED, "catalog /d/catalog")
    assert isinstance(refused, NodeRetired)
    assert "node 4 was decommissioned (catalog /d/catalog)" in str(refused)
    assert "join it as a new node" in str(refused)
    assert "no longer a member" in str(retired_refusal(4, None, "as node 1 reports"))
    for state in (NodeState.ACTIVE, NodeState.DRAINING, NodeState.JOINING):
        assert retired_refusal(4, state, "x") is None


async def test_the_first_peer_that_answers_decides() -> None:
    asked: list[str] = []
    answers = {
        "127.0.0.1:9400": Unreachable("127.0.0.1:9400", "no answer within 5 s"),
        "127.0.0.2:9400": status(),  # still starting: knows no topology
        "127.0.0.3:9400": status((1, "ACTIVE"), (4, "DECOMMISSIONED")),
    }

    async def send(addr: str) -> bytes:
        asked.append(addr)
        answer = answers[addr]
        if isinstance(answer, Exception):
            raise answer
        return answer

    peers = [node(3), node(1), node(4, NodeState.DRAINING), node(2)]
    refused = await peers_verdict(4, peers, send)
    assert isinstance(refused, NodeRetired)
    assert "as node 3 reports" in str(refused)
    assert asked == ["127.0.0.1:9400", "127.0.0.2:9400", "127.0.0.3:9400"], "not itself"


@pytest.mark.parametrize(
    ("answer", "refused"),
    [
        (status((1, "ACTIVE"), (4, "DRAINING")), False),  # still draining: restart, finish it
        (status((1, "ACTIVE")), True),  # removed
        (b"\xc1", False),  # unreadable: as no answer
        (status((1, "ACTIVE"), (4, "NO_SUCH_STATE")), False),
    ],
)
async def test_a_peers_answer(answer: bytes, refused: bool) -> None:
    async def send(addr: str) -> bytes:
        return answer

    verdict = await peers_verdict(4, [node(1)], send)
    assert (verdict is not None) == refused


class Draining:
    """A draining node as `until_retired` sees it: its own state in group 0, its replicas, and
    the status its peers answer, each changed by the test between polls."""

    def __init__(self, state: NodeState | None, held: list[int], peer_says: str) -> None:
        self.state = state
        self.held = held
        self.peer_says = peer_says
        self.polls = 0
        self.asked = 0
        self._polled = asyncio.Condition()

    async def groups(self) -> list[int]:
        async with self._polled:
            self.polls += 1
            self._polled.notify_all()
        return list(self.held)

    async def send(self, addr: str) -> bytes:
        self.asked += 1
        return status((1, "ACTIVE"), (4, self.peer_says))

    async def polled(self, more: int) -> None:
        """Until the watch has looked `more` more times (bounded)."""
        async with asyncio.timeout(5), self._polled:
            target = self.polls + more
            await self._polled.wait_for(lambda: self.polls >= target)

    async def until_retired(self) -> str | None:
        return await until_retired(
            4, lambda: self.state, self.groups, lambda: [node(1), node(4)], self.send
        )


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retired, "RETIREMENT_POLL_S", 0.01)


async def test_a_decommissioned_node_stops_at_once_whatever_stale_replica_it_runs() -> None:
    """Its peers unregistered it as they applied the retirement: a stale replica it still
    runs (one whose removal it never heard of) counts for nobody."""
    node4 = Draining(NodeState.DECOMMISSIONED, [0, 1], "DECOMMISSIONED")
    reason = await asyncio.wait_for(node4.until_retired(), 5)
    assert reason is not None
    assert "node 4 was decommissioned (as group 0 applied it here)" in reason
    assert node4.asked == 0, "its own group 0 said so"


async def test_a_drained_node_that_never_heard_asks_its_peers() -> None:
    """Out of group 0 before it applied its own retirement: its view says DRAINING for good."""
    node4 = Draining(NodeState.DRAINING, [0], "DECOMMISSIONED")
    reason = await asyncio.wait_for(node4.until_retired(), 5)
    assert reason is not None
    assert "as node 1 reports" in reason
    assert node4.asked == 1


async def test_a_node_still_draining_data_asks_nobody_and_runs_on() -> None:
    node4 = Draining(NodeState.DRAINING, [0, 3], "DECOMMISSIONED")
    watch = asyncio.ensure_future(node4.until_retired())
    await node4.polled(5)
    assert not watch.done()
    assert node4.asked == 0
    node4.held, node4.peer_says = [0], "DRAINING"  # drained; the retirement not yet applied
    await node4.polled(6)
    assert not watch.done()
    assert node4.asked == 1, "peers are asked once per 5 s, no more"
    node4.state = NodeState.ACTIVE  # no longer draining: the watch ends with nothing to do
    assert await asyncio.wait_for(watch, 5) is None


async def test_a_node_out_of_group_0_asks_its_peers_whatever_stale_replica_it_runs() -> None:
    """Embedding probe, session 31: its group 1 replica was removed while it could not hear,
    so it ran on until that replica was dropped as an orphan (30 s), serving its host, though
    a decommission removes group 0 last: out of it, the node asks."""
    node4 = Draining(NodeState.DRAINING, [1], "DECOMMISSIONED")
    reason = await asyncio.wait_for(node4.until_retired(), 5)
    assert reason is not None
    assert "as node 1 reports" in reason
    assert node4.asked == 1
