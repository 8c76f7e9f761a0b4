"""SWIM datagrams: MessagePack with named fields behind an HMAC-SHA256 tag.

Layout: `tag (32 bytes) || body`, where body is a MessagePack map and
`tag = HMAC-SHA256(secret, body)`. A node without a secret (an insecure cluster, asked for by name)
writes a zero tag and checks none. Decoding trusts nothing: the size is checked before anything
else, the tag before parsing, and every field is type- and range-checked; each defect is a
`SwimDatagramError` whose `reason` is one of `REASONS` (the machine counts drops per reason).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

import msgpack

from nodedb_cluster.addr import SocketAddr, parse_socket_addr
from nodedb_cluster.errors import ClusterError, ConfigError, InvalidAddress

TAG_BYTES: Final = 32
SWIM_FORMAT: Final = 1
U64_MAX: Final = 2**64 - 1
UPDATES_PER_DATAGRAM_MAX: Final = 64
"""A decoder bound: SwimConfig.piggyback_updates_max can never ask for more."""
REASONS: Final = ("oversize", "bad_mac", "malformed")
_ZERO_TAG: Final = bytes(TAG_BYTES)


class SwimDatagramError(ClusterError, ValueError):
    """A datagram that must be dropped: the peer (or an attacker) is at fault; no retry helps."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS
        super().__init__(f"swim datagram dropped ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


class MessageKind(IntEnum):
    """Stable wire codes of the three SWIM messages."""

    PING = 1
    ACK = 2
    PING_REQ = 3


class MemberState(IntEnum):
    """A member's SWIM state; the numbers are stable wire codes."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass(frozen=True, slots=True)
class Update:
    """One piggybacked membership claim: `node_id` at `addr` is `state` at `incarnation`."""

    node_id: int
    addr: SocketAddr
    state: MemberState
    incarnation: int


@dataclass(frozen=True, slots=True)
class Message:
    """One SWIM message. `target`/`target_addr` are set for PING_REQ only."""

    kind: MessageKind
    seq: int
    """Probe sequence number chosen by the prober; an ACK echoes it."""
    sender: int
    """Node id of the sender (for an ACK: the node whose liveness it proves)."""
    updates: tuple[Update, ...] = ()
    target: int = 0
    target_addr: SocketAddr | None = None


class Codec:
    """Encodes and authenticates datagrams for one cluster secret (None: unauthenticated)."""

    def __init__(self, secret: bytes | None, datagram_bytes_max: int) -> None:
        if secret is not None and (not isinstance(secret, bytes) or len(secret) < 16):
            raise ConfigError("cluster_secret_path", "a SWIM cluster secret is at least 16 bytes")
        self._secret = secret
        self.datagram_bytes_max = datagram_bytes_max

    @property
    def authenticated(self) -> bool:
        return self._secret is not None

    def encode(self, msg: Message) -> bytes:
        doc: dict[str, object] = {
            "format": SWIM_FORMAT,
            "kind": int(msg.kind),
            "seq": msg.seq,
            "from": msg.sender,
            "updates": [
                {
                    "node": u.node_id,
                    "addr": str(u.addr),
                    "state": int(u.state),
                    "inc": u.incarnation,
                }
                for u in msg.updates
            ],
        }
        if msg.kind is MessageKind.PING_REQ:
            doc["target"] = msg.target
            doc["target_addr"] = str(msg.target_addr)
        body = bytes(msgpack.packb(doc, use_bin_type=True))
        return self._tag(body) + body

    def decode(self, data: bytes) -> Message:
        if len(data) > self.datagram_bytes_max:
            raise SwimDatagramError(
                "oversize", f"{len(data)} bytes exceeds {self.datagram_bytes_max}"
            )
        if len(data) <= TAG_BYTES:
            raise SwimDatagramError("malformed", f"{len(data)} bytes is shorter than a tag")
        tag, body = bytes(data[:TAG_BYTES]), bytes(data[TAG_BYTES:])
        if self._secret is not None and not hmac.compare_digest(tag, self._tag(body)):
            raise SwimDatagramError("bad_mac", "HMAC tag does not match the cluster secret")
        try:
            doc = msgpack.unpackb(
                body, raw=False, strict_map_key=True, max_array_len=UPDATES_PER_DATAGRAM_MAX
            )
        except (ValueError, msgpack.UnpackException) as e:
            raise SwimDatagramError("malformed", f"not valid MessagePack: {e}") from e
        return _message_from_doc(doc)

    def _tag(self, body: bytes) -> bytes:
        if self._secret is None:
            return _ZERO_TAG
        return hmac.new(self._secret, body, hashlib.sha256).digest()


def _message_from_doc(doc: object) -> Message:
    m = _map(doc, "datagram")
    if _int(m, "format", 0, 2**32 - 1) != SWIM_FORMAT:
        raise SwimDatagramError("malformed", "unsupported format")
    code = _int(m, "kind", 0, 255)
    try:
        kind = MessageKind(code)
    except ValueError:
        raise SwimDatagramError("malformed", f"unknown kind {code}") from None
    raw_updates = m.get("updates")
    if not isinstance(raw_updates, list):
        raise SwimDatagramError("malformed", "updates: expected a list")
    updates = tuple(_update_from_doc(u) for u in raw_updates)
    target, target_addr = 0, None
    if kind is MessageKind.PING_REQ:
        target = _int(m, "target", 1, U64_MAX)
        target_addr = _addr(m, "target_addr")
    return Message(
        kind, _int(m, "seq", 0, U64_MAX), _int(m, "from", 1, U64_MAX), updates, target, target_addr
    )


def _update_from_doc(raw: object) -> Update:
    m = _map(raw, "update")
    code = _int(m, "state", 0, 255)
    try:
        state = MemberState(code)
    except ValueError:
        raise SwimDatagramError("malformed", f"unknown member state {code}") from None
    return Update(_int(m, "node", 1, U64_MAX), _addr(m, "addr"), state, _int(m, "inc", 0, U64_MAX))


def _map(raw: object, where: str) -> Mapping[str, object]:
    if not isinstance(raw, Mapping):
        raise SwimDatagramError("malformed", f"{where}: expected a map")
    return raw


def _int(m: Mapping[str, object], key: str, lo: int, hi: int) -> int:
    value = m.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SwimDatagramError("malformed", f"{key}: expected an integer in {lo}..{hi}")
    return value


def _addr(m: Mapping[str, object], key: str) -> SocketAddr:
    value = m.get(key)
    if not isinstance(value, str):
        raise SwimDatagramError("malformed", f"{key}: expected an address string")
    try:
        return parse_socket_addr(value)
    except InvalidAddress as e:
        raise SwimDatagramError("malformed", f"{key}: {e}") from e
