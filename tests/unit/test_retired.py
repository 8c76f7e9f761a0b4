"""A decommissioned node's restart (formation/retired.py): refused from its own catalog, or from
the first peer that answers when it stopped while still draining."""

from __future__ import annotations

import msgpack
import pytest

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.errors import NodeRetired, Unreachable
from nodedb_cluster.formation.retired import peers_verdict, retired_refusal
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
