"""Join tokens (formation/join_token.py): issue, parse, verify; every refusal and its reason."""

from __future__ import annotations

import pytest

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.formation.admission import id_taken
from nodedb_cluster.formation.join_token import (
    TOKEN_BYTES,
    TOKEN_HEX_CHARS,
    TTL_SECS_MAX,
    TTL_SECS_MIN,
    TokenRefusal,
    check_ttl,
    issue_token,
    parse_token,
    verify_token,
)
from nodedb_cluster.topology import NodeInfo, NodeState, Topology

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
NOW_S = 1_700_000_000


def test_token_is_48_bytes_as_96_hex_characters_and_round_trips() -> None:
    token = issue_token(SECRET, 4, NOW_S + 3600)
    assert len(token) == TOKEN_HEX_CHARS == 2 * TOKEN_BYTES == 96
    parsed = parse_token(token)
    assert parsed is not None
    assert (parsed.node_id, parsed.expires_at_s) == (4, NOW_S + 3600)
    assert verify_token(SECRET, token, 4, NOW_S) is None
    assert verify_token(SECRET, token.upper(), 4, NOW_S) is None  # hex case does not matter
    assert "mac" not in repr(parsed)  # the credential stays out of logs


@pytest.mark.parametrize(
    "text", ["", "zz" * 48, "ab" * 47, "ab" * 49, " " + "ab" * 48, "00" * 8 + "ab" * 40]
)
def test_malformed_tokens_are_refused_as_malformed(text: str) -> None:
    # The last one has node id 0, which no token can admit.
    rejected = verify_token(SECRET, text, 4, NOW_S)
    assert rejected is not None
    assert rejected.reason is TokenRefusal.MALFORMED
    assert "96 hex characters" in rejected.text


def test_a_token_of_another_cluster_or_altered_is_forged() -> None:
    other = issue_token(OTHER_SECRET, 4, NOW_S + 3600)
    rejected = verify_token(SECRET, other, 4, NOW_S)
    assert rejected is not None
    assert rejected.reason is TokenRefusal.FORGED
    # Raising the expiry (or changing the node id) without the secret breaks the MAC.
    genuine = issue_token(SECRET, 4, NOW_S + 3600)
    stretched = genuine[:16] + issue_token(SECRET, 4, NOW_S + 10**6)[16:32] + genuine[32:]
    renamed = issue_token(SECRET, 5, NOW_S + 3600)[:16] + genuine[16:]
    for text in (stretched, renamed):
        rejected = verify_token(SECRET, text, 5, NOW_S)
        assert rejected is not None
        assert rejected.reason is TokenRefusal.FORGED


def test_expired_token_is_refused_at_its_expiry_second() -> None:
    token = issue_token(SECRET, 4, NOW_S + 60)
    assert verify_token(SECRET, token, 4, NOW_S + 59) is None
    rejected = verify_token(SECRET, token, 4, NOW_S + 60)
    assert rejected is not None
    assert rejected.reason is TokenRefusal.EXPIRED
    assert "expired 0 s ago" in rejected.text


def test_a_token_for_another_node_is_refused_naming_both() -> None:
    token = issue_token(SECRET, 5, NOW_S + 3600)
    rejected = verify_token(SECRET, token, 4, NOW_S)
    assert rejected is not None
    assert rejected.reason is TokenRefusal.WRONG_NODE
    assert "node 5, not node 4" in rejected.text


def test_forgery_is_judged_before_expiry_and_node() -> None:
    """A forger learns nothing from the reason: a bad MAC is 'forged' whatever else is wrong."""
    token = issue_token(OTHER_SECRET, 5, NOW_S - 10)
    rejected = verify_token(SECRET, token, 4, NOW_S)
    assert rejected is not None
    assert rejected.reason is TokenRefusal.FORGED


def test_issue_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="secret"):
        issue_token(b"", 4, NOW_S)
    with pytest.raises(ValueError, match="node id"):
        issue_token(SECRET, 0, NOW_S)
    with pytest.raises(ValueError, match="node id"):
        issue_token(SECRET, 2**64, NOW_S)
    with pytest.raises(ValueError, match="expiry"):
        issue_token(SECRET, 4, -1)


def test_ttl_bounds() -> None:
    check_ttl(TTL_SECS_MIN)
    check_ttl(TTL_SECS_MAX)
    for bad in (TTL_SECS_MIN - 1, TTL_SECS_MAX + 1, 0, -5):
        with pytest.raises(ValueError, match=r"outside 60\.\.2592000"):
            check_ttl(bad)
    with pytest.raises(ValueError, match="integer"):
        check_ttl(True)


def test_no_token_is_issued_for_a_members_or_a_retired_id() -> None:
    def at(node_id: int, state: NodeState) -> NodeInfo:
        return NodeInfo(node_id, parse_socket_addr(f"127.0.0.{node_id}:9400"), state, 1)

    topology = Topology([at(1, NodeState.ACTIVE), at(4, NodeState.DECOMMISSIONED)])
    assert id_taken(topology, 2) is None
    assert "node 1 is already a member (ACTIVE at 127.0.0.1:9400)" in str(id_taken(topology, 1))
    assert "node 4 was decommissioned and its id is not reused" in str(id_taken(topology, 4))
