"""The join server's decision (JOIN.md "Join (server side)"), checked case by case."""

from __future__ import annotations

import pytest

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.formation.join_server import (
    NOT_LEADER_UNKNOWN,
    Admit,
    AlreadyMember,
    JoinView,
    Reject,
    decide_join,
)
from nodedb_cluster.formation.leader_hint import parse_leader_hint
from nodedb_cluster.metadata.commands import AddGroupLearner, AddNode
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.topology import NodeInfo, NodeState, Topology

ADDR1 = parse_socket_addr("127.0.0.1:9400")


def view(**overrides: object) -> JoinView:
    fields: dict[str, object] = {
        "is_metadata_leader": True,
        "metadata_leader_addr": ADDR1,
        "topology": Topology([NodeInfo(1, ADDR1, NodeState.ACTIVE, 1)]),
        "routing": RoutingTable.bootstrap(2, 1),
        "replication_factor": 3,
        "wire_version_min": 1,
        "wire_version_max": 1,
    }
    fields.update(overrides)
    return JoinView(**fields)  # type: ignore[arg-type]


def test_follower_redirects_to_the_leader_with_the_contract_text() -> None:
    decision = decide_join(2, "127.0.0.2:9400", 1, None, view(is_metadata_leader=False))
    assert isinstance(decision, Reject)
    assert parse_leader_hint(decision.text) == ADDR1


def test_follower_without_a_known_leader_says_so() -> None:
    v = view(is_metadata_leader=False, metadata_leader_addr=None)
    assert decide_join(2, "127.0.0.2:9400", 1, None, v) == Reject(NOT_LEADER_UNKNOWN)
    assert parse_leader_hint(NOT_LEADER_UNKNOWN) is None


@pytest.mark.parametrize("addr", ["nonsense", "127.0.0.2", "127.0.0.2:0", "example.com:9400"])
def test_invalid_listen_address_is_rejected(addr: str) -> None:
    decision = decide_join(2, addr, 1, None, view())
    assert isinstance(decision, Reject)
    assert decision.text.startswith("invalid listen address")


def test_wire_version_outside_the_range_names_both() -> None:
    decision = decide_join(2, "127.0.0.2:9400", 7, None, view(wire_version_max=2))
    assert isinstance(decision, Reject)
    assert "7" in decision.text
    assert "1..2" in decision.text


def test_known_id_with_another_address_is_refused() -> None:
    decision = decide_join(1, "127.0.0.9:9400", 1, None, view())
    assert isinstance(decision, Reject)
    assert "already in use by 127.0.0.1:9400" in decision.text


def test_known_id_with_the_same_address_is_idempotent() -> None:
    assert decide_join(1, "127.0.0.1:9400", 1, None, view()) == AlreadyMember()


def test_another_node_address_is_refused() -> None:
    decision = decide_join(5, "127.0.0.1:9400", 1, None, view())
    assert isinstance(decision, Reject)
    assert "belongs to node 1" in decision.text


def test_bad_pin_is_refused() -> None:
    decision = decide_join(2, "127.0.0.2:9400", 1, b"short", view())
    assert isinstance(decision, Reject)
    assert "spki_pin" in decision.text


def test_new_node_is_admitted_as_learner_of_every_under_replicated_group() -> None:
    decision = decide_join(2, "127.0.0.2:9400", 1, b"p" * 32, view())
    assert isinstance(decision, Admit)
    add, *changes = decision.entry.commands
    assert add == AddNode(decision.node)
    assert decision.node.state is NodeState.ACTIVE
    assert decision.node.spki_pin == b"p" * 32
    assert changes == [AddGroupLearner(0, 2, 0), AddGroupLearner(1, 2, 3), AddGroupLearner(2, 2, 3)]


def test_swim_address_travels_into_the_topology_and_a_bad_one_is_refused() -> None:
    decision = decide_join(2, "127.0.0.2:9400", 1, None, view(), "127.0.0.2:9500")
    assert isinstance(decision, Admit)
    assert str(decision.node.swim_addr) == "127.0.0.2:9500"
    bad = decide_join(2, "127.0.0.2:9400", 1, None, view(), "nowhere")
    assert isinstance(bad, Reject)
    assert "SWIM" in bad.text
