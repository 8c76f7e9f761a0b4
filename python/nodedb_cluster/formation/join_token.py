"""Join tokens: an operator's permission for one new node id to join, for a limited time.

A token is 48 raw bytes, written as 96 lowercase hex characters:

    node_id     u64 big-endian   the node id the token admits (must equal its certificate's)
    expires_at  u64 big-endian   Unix seconds after which it is refused
    mac         32 bytes         HMAC-SHA256 under the cluster secret of
                                 DOMAIN_LABEL + node_id + expires_at

The label keeps a token's MAC from ever equalling a MAC the same secret makes elsewhere (SWIM
keys its datagram HMAC with it too). Why HMAC and not a signature: every node holds the cluster
secret, so any node can issue and any node can check, with nothing new to distribute.

Pure: `issue_token` and `verify_token` take the secret and the time; no clock, no I/O. The MAC is
checked before the expiry or the node id (and compared in constant time), so a forger learns
nothing from which refusal comes back.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass
from typing import Final

TOKEN_BYTES: Final = 48
TOKEN_HEX_CHARS: Final = 2 * TOKEN_BYTES
MAC_BYTES: Final = 32
DOMAIN_LABEL: Final = b"nodedb-cluster join token v1\x00"
TTL_SECS_MIN: Final = 60
"""Below a minute a token can expire between `join-token` and the joiner's first attempt."""
TTL_SECS_MAX: Final = 30 * 24 * 3600
"""A month: a token is a bearer credential; one that lives longer is a standing hole."""
TTL_SECS_DEFAULT: Final = 3600
U64_MAX: Final = 2**64 - 1

_HEADER: Final = struct.Struct(">QQ")
_HEX_RE: Final = re.compile(r"[0-9a-fA-F]{96}")


class TokenRefusal(enum.StrEnum):
    """Why a token was refused; the value is the metric label and part of the rejection text."""

    MALFORMED = "token_malformed"
    FORGED = "token_forged"
    EXPIRED = "token_expired"
    WRONG_NODE = "token_wrong_node"


@dataclass(frozen=True, slots=True)
class JoinToken:
    """A parsed (not yet verified) token."""

    node_id: int
    expires_at_s: int
    mac: bytes = b""

    def __repr__(self) -> str:  # the MAC is the credential: keep it out of logs
        return f"JoinToken(node_id={self.node_id}, expires_at_s={self.expires_at_s})"


@dataclass(frozen=True, slots=True)
class TokenRejected:
    """`verify_token`'s refusal: the reason (a metric label) and a sentence for the joiner."""

    reason: TokenRefusal
    text: str


def issue_token(secret: bytes, node_id: int, expires_at_s: int) -> str:
    """The token (96 hex characters) admitting `node_id` until `expires_at_s` (Unix seconds)."""
    if not secret:
        raise ValueError("a join token needs a non-empty cluster secret")
    if isinstance(node_id, bool) or not 1 <= node_id <= U64_MAX:
        raise ValueError(f"node id {node_id!r} is not a non-zero u64")
    if isinstance(expires_at_s, bool) or not 0 <= expires_at_s <= U64_MAX:
        raise ValueError(f"expiry {expires_at_s!r} is not a u64")
    body = _HEADER.pack(node_id, expires_at_s)
    token = body + _mac(secret, body)
    assert len(token) == TOKEN_BYTES
    return token.hex()


def parse_token(text: str) -> JoinToken | None:
    """The token's fields, or None when `text` is not 96 hex characters of a token."""
    if not isinstance(text, str) or _HEX_RE.fullmatch(text) is None:
        return None
    raw = bytes.fromhex(text)
    node_id, expires_at_s = _HEADER.unpack_from(raw)
    if node_id == 0:
        return None
    return JoinToken(node_id, expires_at_s, raw[_HEADER.size :])


def verify_token(secret: bytes, text: str, node_id: int, now_s: int) -> TokenRejected | None:
    """None when `text` is a genuine, unexpired token for `node_id`; else why not.

    Checks in this order: shape, MAC (constant-time), expiry, node id.
    """
    token = parse_token(text)
    if token is None:
        return TokenRejected(
            TokenRefusal.MALFORMED,
            f"join token is malformed: expected {TOKEN_HEX_CHARS} hex characters "
            "as printed by `nodedb-cluster join-token`",
        )
    body = _HEADER.pack(token.node_id, token.expires_at_s)
    if not hmac.compare_digest(_mac(secret, body), token.mac):
        return TokenRejected(
            TokenRefusal.FORGED,
            "join token is not valid for this cluster (forged, altered, or issued by another "
            "cluster)",
        )
    if now_s >= token.expires_at_s:
        return TokenRejected(
            TokenRefusal.EXPIRED,
            f"join token expired {now_s - token.expires_at_s} s ago; issue a new one with "
            "`nodedb-cluster join-token`",
        )
    if token.node_id != node_id:
        return TokenRejected(
            TokenRefusal.WRONG_NODE,
            f"join token was issued for node {token.node_id}, not node {node_id}",
        )
    return None


def check_ttl(ttl_s: int) -> None:
    """Refuse a lifetime outside TTL_SECS_MIN..TTL_SECS_MAX with a sentence naming the bounds."""
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int):
        raise ValueError(f"ttl must be an integer number of seconds, got {ttl_s!r}")
    if not TTL_SECS_MIN <= ttl_s <= TTL_SECS_MAX:
        raise ValueError(
            f"ttl {ttl_s} s is outside {TTL_SECS_MIN}..{TTL_SECS_MAX} s (1 minute .. 30 days)"
        )


def _mac(secret: bytes, body: bytes) -> bytes:
    return hmac.new(secret, DOMAIN_LABEL + body, hashlib.sha256).digest()
