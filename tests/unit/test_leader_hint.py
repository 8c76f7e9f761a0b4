"""The leader redirect text: the producer's output parses back, and every no-hint case of
docs/JOIN.md gives None rather than an error or a wrong address."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.errors import NotLeader
from nodedb_cluster.formation.leader_hint import (
    NOT_LEADER_PREFIX,
    format_not_leader,
    not_leader_error,
    parse_leader_hint,
)


def test_contract_text() -> None:
    assert NOT_LEADER_PREFIX == "not leader; retry at "
    assert parse_leader_hint("not leader; retry at 10.0.0.1:9400") == parse_socket_addr(
        "10.0.0.1:9400"
    )


@pytest.mark.parametrize("text", ["10.0.0.1:9400", "[::1]:9400", "[2001:db8::5]:1"])
def test_producer_and_parser_agree(text: str) -> None:
    addr = parse_socket_addr(text)
    message = format_not_leader(addr)
    assert message == f"not leader; retry at {text}"
    assert parse_leader_hint(message) == addr


@pytest.mark.parametrize(
    "text",
    [
        "",
        "connection refused",
        "not leader",
        "not leader; leader unknown",
        "not leader; retry at notanaddress",
        "not leader; retry at ",
        "not leader; retry at 10.0.0.1",
        "not leader; retry at 10.0.0.1:",
        "not leader; retry at localhost:9400",
        "not leader; retry at 10.0.0.1:9400 ",
        "not leader; retry at 10.0.0.1:9400; extra",
        " not leader; retry at 10.0.0.1:9400",
        "NOT LEADER; RETRY AT 10.0.0.1:9400",
        "error: not leader; retry at 10.0.0.1:9400",
    ],
)
def test_no_hint(text: str) -> None:
    assert parse_leader_hint(text) is None
    assert not_leader_error(text) is None


def test_typed_error_for_a_hint() -> None:
    err = not_leader_error("not leader; retry at 10.0.0.1:9400")
    assert isinstance(err, NotLeader)
    assert err.leader_addr == "10.0.0.1:9400"
    assert err.retryable


@given(st.text(max_size=80))
def test_any_suffix_gives_an_address_or_none(suffix: str) -> None:
    hint = parse_leader_hint(NOT_LEADER_PREFIX + suffix)
    assert hint is None or format_not_leader(hint) == NOT_LEADER_PREFIX + str(hint)
