"""The leader redirect text: one constant, one producer, one parser (docs/JOIN.md, docs/WIRE.md).

A node that is not the metadata-group leader rejects a join with exactly
`not leader; retry at <addr>`. The join client follows the redirect only when the whole text is that
prefix followed by a parseable socket address; anything else is an ordinary rejection.
"""

from __future__ import annotations

from typing import Final

from nodedb_cluster.addr import SocketAddr, parse_socket_addr
from nodedb_cluster.errors import InvalidAddress, NotLeader

NOT_LEADER_PREFIX: Final = "not leader; retry at "


def format_not_leader(addr: SocketAddr) -> str:
    """The rejection text a non-leader sends when it knows the leader's address."""
    return f"{NOT_LEADER_PREFIX}{addr}"


def parse_leader_hint(text: str) -> SocketAddr | None:
    """The leader address in a `not leader; retry at <addr>` text, or None when there is no hint.

    Strict: the text must start with the prefix and the rest must be exactly one address with port.
    """
    if not text.startswith(NOT_LEADER_PREFIX):
        return None
    try:
        return parse_socket_addr(text[len(NOT_LEADER_PREFIX) :])
    except InvalidAddress:
        return None  # not a hint: the caller treats the text as an ordinary rejection


def not_leader_error(text: str) -> NotLeader | None:
    """The typed `NotLeader` for a redirect text, or None when `text` carries no leader hint."""
    addr = parse_leader_hint(text)
    return None if addr is None else NotLeader(str(addr))
