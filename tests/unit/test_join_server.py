"""The join server's decision (docs/JOIN.md "Join (server side)"), checked case by case; its
cases on an insecure view (nothing authenticated), then admission under mTLS (issue 12): the
caller's certificate, seeds, restarting members and join tokens."""

from __future__ import annotations

import functools

import pytest

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.formation.join_server import (
    INSECURE_CALLER,
    NOT_LEADER_UNKNOWN,
    Admit,
    AlreadyMember,
    Caller,
    JoinRefusal,
    JoinView,
    Reject,
    decide_join,
)
from nodedb_cluster.formation.join_token import issue_token
from nodedb_cluster.formation.leader_hint import parse_leader_hint
from nodedb_cluster.metadata.commands import AddGroupLearner, AddNode
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.topology import NodeInfo, NodeState, Topology

ADDR1 = parse_socket_addr("127.0.0.1:9400")
ADDR2 = parse_socket_addr("127.0.0.2:9400")
SECRET = bytes(range(32))
NOW_S = 1_700_000_000


def view(**overrides: object) -> JoinView:
    fields: dict[str, object] = {
        "is_metadata_leader": True,
        "metadata_leader_addr": ADDR1,
        "topology": Topology([NodeInfo(1, ADDR1, NodeState.ACTIVE, 1)]),
        "routing": RoutingTable.bootstrap(2, 1),
        "replication_factor": 3,
        "wire_version_min": 1,
        "wire_version_max": 1,
        "authenticated": False,
        "seed_addrs": frozenset({ADDR1}),
        "cluster_secret": SECRET,
        "now_s": NOW_S,
    }
    fields.update(overrides)
    return JoinView(**fields)  # type: ignore[arg-type]


insecure_join = functools.partial(decide_join, caller=INSECURE_CALLER)


def test_follower_redirects_to_the_leader_with_the_contract_text() -> None:
    decision = insecure_join(2, "127.0.0.2:9400", 1, None, view(is_metadata_leader=False))
    assert isinstance(decision, Reject)
    assert parse_leader_hint(decision.text) == ADDR1


def test_follower_without_a_known_leader_says_so() -> None:
    v = view(is_metadata_leader=False, metadata_leader_addr=None)
    assert insecure_join(2, "127.0.0.2:9400", 1, None, v) == Reject(NOT_LEADER_UNKNOWN)
    assert parse_leader_hint(NOT_LEADER_UNKNOWN) is None


@pytest.mark.parametrize("addr", ["nonsense", "127.0.0.2", "127.0.0.2:0", "example.com:9400"])
def test_invalid_listen_address_is_rejected(addr: str) -> None:
    decision = insecure_join(2, addr, 1, None, view())
    assert isinstance(decision, Reject)
    assert decision.text.startswith("invalid listen address")


def test_wire_version_outside_the_range_names_both() -> None:
    decision = insecure_join(2, "127.0.0.2:9400", 7, None, view(wire_version_max=2))
    assert isinstance(decision, Reject)
    assert "7" in decision.text
    assert "1..2" in decision.text


def test_known_id_with_another_address_is_refused() -> None:
    decision = insecure_join(1, "127.0.0.9:9400", 1, None, view())
    assert isinstance(decision, Reject)
    assert "already in use by 127.0.0.1:9400" in decision.text


def test_known_id_with_the_same_address_is_idempotent() -> None:
    assert insecure_join(1, "127.0.0.1:9400", 1, None, view()) == AlreadyMember()


def test_another_node_address_is_refused() -> None:
    decision = insecure_join(5, "127.0.0.1:9400", 1, None, view())
    assert isinstance(decision, Reject)
    assert "belongs to node 1" in decision.text


def test_bad_pin_is_refused() -> None:
    decision = insecure_join(2, "127.0.0.2:9400", 1, b"short", view())
    assert isinstance(decision, Reject)
    assert "spki_pin" in decision.text


def test_new_node_is_admitted_as_learner_of_every_under_replicated_group() -> None:
    decision = insecure_join(2, "127.0.0.2:9400", 1, b"p" * 32, view())
    assert isinstance(decision, Admit)
    add, *changes = decision.entry.commands
    assert add == AddNode(decision.node)
    assert decision.node.state is NodeState.ACTIVE
    assert decision.node.spki_pin == b"p" * 32
    assert changes == [AddGroupLearner(0, 2, 0), AddGroupLearner(1, 2, 3), AddGroupLearner(2, 2, 3)]


def test_swim_address_travels_into_the_topology_and_a_bad_one_is_refused() -> None:
    decision = insecure_join(2, "127.0.0.2:9400", 1, None, view(), "127.0.0.2:9500")
    assert isinstance(decision, Admit)
    assert str(decision.node.swim_addr) == "127.0.0.2:9500"
    bad = insecure_join(2, "127.0.0.2:9400", 1, None, view(), "nowhere")
    assert isinstance(bad, Reject)
    assert "SWIM" in bad.text


# --- admission under mTLS (issue 12) -------------------------------------------------------------


def node_caller(node_id: int) -> Caller:
    return Caller(f"spiffe://c/node/{node_id}", "node", node_id)


def secure(**overrides: object) -> JoinView:
    return view(authenticated=True, **overrides)


def test_a_seed_forms_the_cluster_without_a_token() -> None:
    v = secure(seed_addrs=frozenset({ADDR1, ADDR2}))
    decision = decide_join(2, str(ADDR2), 1, None, v, caller=node_caller(2))
    assert isinstance(decision, Admit)
    assert decision.entry.proposer == "spiffe://c/node/2"  # the audit log names the joiner


def test_a_new_node_that_is_no_seed_needs_a_token() -> None:
    decision = decide_join(4, "127.0.0.4:9400", 1, None, secure(), caller=node_caller(4))
    assert isinstance(decision, Reject)
    assert decision.reason is JoinRefusal.TOKEN_MISSING
    assert decision.permanent
    assert "join-token --node-id 4" in decision.text


def test_a_valid_token_for_the_certificate_node_admits() -> None:
    token = issue_token(SECRET, 4, NOW_S + 60)
    decision = decide_join(
        4, "127.0.0.4:9400", 1, None, secure(), caller=node_caller(4), join_token=token
    )
    assert isinstance(decision, Admit)
    assert decision.entry.proposer == "spiffe://c/node/4"


@pytest.mark.parametrize(
    ("token", "reason", "text"),
    [
        (issue_token(SECRET, 4, NOW_S), JoinRefusal.TOKEN_EXPIRED, "expired"),
        (issue_token(SECRET, 5, NOW_S + 60), JoinRefusal.TOKEN_WRONG_NODE, "node 5, not node 4"),
        (issue_token(bytes(32), 4, NOW_S + 60), JoinRefusal.TOKEN_FORGED, "not valid"),
        ("not a token", JoinRefusal.TOKEN_MALFORMED, "malformed"),
    ],
)
def test_bad_tokens_are_refused_permanently_with_their_reason(
    token: str, reason: JoinRefusal, text: str
) -> None:
    decision = decide_join(
        4, "127.0.0.4:9400", 1, None, secure(), caller=node_caller(4), join_token=token
    )
    assert isinstance(decision, Reject)
    assert decision.reason is reason
    assert decision.permanent
    assert text in decision.text


def test_a_cluster_without_a_secret_says_so() -> None:
    token = issue_token(SECRET, 4, NOW_S + 60)
    v = secure(cluster_secret=None)
    decision = decide_join(4, "127.0.0.4:9400", 1, None, v, caller=node_caller(4), join_token=token)
    assert isinstance(decision, Reject)
    assert decision.reason is JoinRefusal.NO_SECRET


def test_a_restarting_member_needs_no_token() -> None:
    decision = decide_join(
        1, str(ADDR1), 1, None, secure(seed_addrs=frozenset()), caller=node_caller(1)
    )
    assert decision == AlreadyMember()


def test_the_certificate_must_name_the_node_the_request_names() -> None:
    token = issue_token(SECRET, 4, NOW_S + 60)
    decision = decide_join(
        4, "127.0.0.4:9400", 1, None, secure(), caller=node_caller(5), join_token=token
    )
    assert isinstance(decision, Reject)
    assert decision.reason is JoinRefusal.IDENTITY_MISMATCH
    assert "names node 4" in decision.text
    assert "spiffe://c/node/5" in decision.text
    # ... even for a seed, a member's id, and before any redirect.
    for node_id, addr, v in (
        (2, str(ADDR2), secure(seed_addrs=frozenset({ADDR1, ADDR2}))),
        (1, str(ADDR1), secure()),
        (2, str(ADDR2), secure(is_metadata_leader=False)),
    ):
        refused = decide_join(node_id, addr, 1, None, v, caller=node_caller(9))
        assert isinstance(refused, Reject)
        assert refused.reason is JoinRefusal.IDENTITY_MISMATCH


@pytest.mark.parametrize(
    ("caller", "reason"),
    [
        (Caller("spiffe://c/admin/ops", "admin", None), JoinRefusal.NOT_A_NODE),
        (Caller("spiffe://c/client/app", "client", None), JoinRefusal.NOT_A_NODE),
        (INSECURE_CALLER, JoinRefusal.NO_IDENTITY),
    ],
)
def test_only_a_node_certificate_may_join(caller: Caller, reason: JoinRefusal) -> None:
    decision = decide_join(
        2, str(ADDR2), 1, None, secure(seed_addrs=frozenset({ADDR2})), caller=caller
    )
    assert isinstance(decision, Reject)
    assert decision.reason is reason
    assert decision.permanent


def test_redirects_and_id_reuse_stay_retryable() -> None:
    redirect = decide_join(
        2, str(ADDR2), 1, None, secure(is_metadata_leader=False), caller=node_caller(2)
    )
    assert isinstance(redirect, Reject)
    assert redirect.reason is None
    assert not redirect.permanent
    reuse = decide_join(1, "127.0.0.9:9400", 1, None, secure(), caller=node_caller(1))
    assert isinstance(reuse, Reject)
    assert reuse.reason is JoinRefusal.ID_IN_USE
    assert not reuse.permanent


def test_insecure_transport_checks_no_identity_and_no_token() -> None:
    decision = insecure_join(4, "127.0.0.4:9400", 1, None, view(seed_addrs=frozenset()))
    assert isinstance(decision, Admit)
    assert decision.entry.proposer is None  # recorded as "insecure" in the audit log
