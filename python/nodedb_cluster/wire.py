"""Wire message kinds and control-message payloads, as Python sees them.

The kind table and the frame codec live in Rust (`rust/wire`); `MessageKind` mirrors the table
(a test checks they agree) and rejects unknown numbers at the boundary. Control payloads are
MessagePack maps with named fields, exactly the schemas documented in `rust/wire/src/control.rs`,
so both sides read each other's bytes and a field can be added without a format break.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Final, Self

import msgpack
import nodedb_cluster_core as _core

from nodedb_cluster.errors import FrameError, InvalidRequest

FORMAT_VERSION: Final = _core.FORMAT_VERSION
HEADER_BYTES: Final = _core.HEADER_BYTES
PAYLOAD_BYTES_MAX: Final = _core.PAYLOAD_BYTES_MAX
WIRE_VERSION: Final = _core.WIRE_VERSION
"""This build's node wire version (travels in JoinRequest)."""
WIRE_VERSION_MIN: Final = _core.WIRE_VERSION_MIN

encode_frame = _core.encode_frame
decode_frame = _core.decode_frame


class MessageKind(enum.IntEnum):
    """Stable message-kind numbers (1-15 control, 16-31 Raft, 32-63 KV). Never reused."""

    PING = 1
    PONG = 2
    JOIN_REQUEST = 3
    JOIN_RESPONSE = 4
    ERROR = 5
    STATUS_REQUEST = 6
    STATUS_RESPONSE = 7
    METADATA_PROPOSE = 8
    METADATA_PROPOSE_RESPONSE = 9
    JOIN_TOKEN_REQUEST = 10
    JOIN_TOKEN_RESPONSE = 11
    AUDIT_REQUEST = 12
    AUDIT_RESPONSE = 13
    PLACEMENT_REQUEST = 14
    PLACEMENT_RESPONSE = 15
    RAFT_BATCH = 16
    SNAPSHOT_CHUNK = 17
    SNAPSHOT_ACK = 18
    KV_REQUEST = 32
    KV_RESPONSE = 33
    BENCH_LOAD = 34
    BENCH_LOAD_RESPONSE = 35
    HOST_PROPOSE = 36
    HOST_PROPOSE_RESPONSE = 37
    VSHARD_STEP = 38
    VSHARD_STEP_RESPONSE = 39
    PEER_ADDRESS = 40

    @classmethod
    def _missing_(cls, value: object) -> MessageKind:
        raise FrameError("unknown_kind", f"unknown message kind {value!r}")


def decode_map(payload: bytes, what: str) -> dict[str, object]:
    """A MessagePack map from a peer (a request of a kind without a Rust schema: HOST_PROPOSE's
    answers, the bench tool's BENCH_LOAD); `InvalidRequest` naming `what` otherwise."""
    try:
        doc = msgpack.unpackb(payload, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise InvalidRequest(f"malformed {what}: {e}") from e
    if not isinstance(doc, dict):
        raise InvalidRequest(f"malformed {what}: not a map")
    return doc


def _unpack(payload: bytes, name: str) -> dict[str, Any]:
    try:
        value = msgpack.unpackb(payload, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise FrameError("bad_payload", f"cannot decode {name} payload: {exc}") from exc
    if not isinstance(value, dict):
        raise FrameError("bad_payload", f"{name} payload is not a map")
    return value


def _field(data: dict[str, Any], name: str, kind: type, message: str) -> Any:
    if name not in data:
        raise FrameError("bad_payload", f"{message} payload lacks field {name!r}")
    value = data[name]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise FrameError("bad_payload", f"{message}.{name} must be an int")
    if not isinstance(value, kind):
        raise FrameError("bad_payload", f"{message}.{name} must be {kind.__name__}")
    return value


def _optional(data: dict[str, Any], name: str, kind: type, default: Any, message: str) -> Any:
    if data.get(name) is None:
        return default
    return _field(data, name, kind, message)


def _pin(data: dict[str, Any], message: str) -> bytes | None:
    value = data.get("spki_pin")
    if value is not None and not isinstance(value, bytes):
        raise FrameError("bad_payload", f"{message}.spki_pin must be bytes or nil")
    return value


@dataclass(frozen=True, slots=True)
class Ping:
    node_id: int
    nonce: int

    def encode(self) -> bytes:
        return bytes(msgpack.packb({"node_id": self.node_id, "nonce": self.nonce}))

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        data = _unpack(payload, "Ping")
        return cls(_field(data, "node_id", int, "Ping"), _field(data, "nonce", int, "Ping"))


@dataclass(frozen=True, slots=True)
class Pong:
    node_id: int
    nonce: int

    def encode(self) -> bytes:
        return bytes(msgpack.packb({"node_id": self.node_id, "nonce": self.nonce}))

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        data = _unpack(payload, "Pong")
        return cls(_field(data, "node_id", int, "Pong"), _field(data, "nonce", int, "Pong"))


@dataclass(frozen=True, slots=True)
class JoinRequest:
    node_id: int
    listen_addr: str
    wire_version: int
    spki_pin: bytes | None = None
    """SHA-256 of the joiner's SubjectPublicKeyInfo when it runs mTLS."""
    swim_addr: str | None = None
    """The joiner's SWIM UDP address, when it runs SWIM (added field: absent = None)."""
    join_token: str | None = field(default=None, repr=False)
    """The operator's join token (formation/join_token.py), when the joiner was given one (added
    field: absent = None). A bearer credential: kept out of repr and logs."""

    def encode(self) -> bytes:
        return bytes(
            msgpack.packb(
                {
                    "node_id": self.node_id,
                    "listen_addr": self.listen_addr,
                    "wire_version": self.wire_version,
                    "spki_pin": self.spki_pin,
                    "swim_addr": self.swim_addr,
                    "join_token": self.join_token,
                },
                use_bin_type=True,
            )
        )

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        data = _unpack(payload, "JoinRequest")
        return cls(
            node_id=_field(data, "node_id", int, "JoinRequest"),
            listen_addr=_field(data, "listen_addr", str, "JoinRequest"),
            wire_version=_field(data, "wire_version", int, "JoinRequest"),
            spki_pin=_pin(data, "JoinRequest"),
            swim_addr=_optional(data, "swim_addr", str, None, "JoinRequest"),
            join_token=_optional(data, "join_token", str, None, "JoinRequest"),
        )


@dataclass(frozen=True, slots=True)
class JoinNode:
    node_id: int
    addr: str
    state: int
    """docs/WIRE.md NodeState code."""
    wire_version: int
    spki_pin: bytes | None = None

    def to_map(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "addr": self.addr,
            "state": self.state,
            "wire_version": self.wire_version,
            "spki_pin": self.spki_pin,
        }

    @classmethod
    def from_map(cls, data: Any) -> Self:
        if not isinstance(data, dict):
            raise FrameError("bad_payload", "JoinNode is not a map")
        return cls(
            node_id=_field(data, "node_id", int, "JoinNode"),
            addr=_field(data, "addr", str, "JoinNode"),
            state=_field(data, "state", int, "JoinNode"),
            wire_version=_field(data, "wire_version", int, "JoinNode"),
            spki_pin=_pin(data, "JoinNode"),
        )


def _ints(data: dict[str, Any], name: str, message: str) -> tuple[int, ...]:
    values = data.get(name, [])
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise FrameError("bad_payload", f"{message}.{name} must be a list of ints")
    return tuple(values)


@dataclass(frozen=True, slots=True)
class GroupMembers:
    group_id: int
    leader: int
    """0 when no leader is known."""
    members: tuple[int, ...]
    learners: tuple[int, ...] = ()

    def to_map(self) -> dict[str, Any]:
        return {
            "group_id": self.group_id,
            "leader": self.leader,
            "members": list(self.members),
            "learners": list(self.learners),
        }

    @classmethod
    def from_map(cls, data: Any) -> Self:
        if not isinstance(data, dict):
            raise FrameError("bad_payload", "GroupMembers is not a map")
        return cls(
            group_id=_field(data, "group_id", int, "GroupMembers"),
            leader=_optional(data, "leader", int, 0, "GroupMembers"),
            members=_ints(data, "members", "GroupMembers"),
            learners=_ints(data, "learners", "GroupMembers"),
        )


@dataclass(frozen=True, slots=True)
class RoutingSnapshot:
    epoch: int
    vshard_to_group: tuple[int, ...]
    groups: tuple[GroupMembers, ...]

    def to_map(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "vshard_to_group": list(self.vshard_to_group),
            "groups": [g.to_map() for g in self.groups],
        }

    @classmethod
    def from_map(cls, data: Any) -> Self:
        if not isinstance(data, dict):
            raise FrameError("bad_payload", "RoutingSnapshot is not a map")
        groups = data.get("groups", [])
        if not isinstance(groups, list):
            raise FrameError("bad_payload", "RoutingSnapshot.groups must be a list")
        return cls(
            epoch=_field(data, "epoch", int, "RoutingSnapshot"),
            vshard_to_group=_ints(data, "vshard_to_group", "RoutingSnapshot"),
            groups=tuple(GroupMembers.from_map(g) for g in groups),
        )


@dataclass(frozen=True, slots=True)
class JoinResponse:
    success: bool
    error: str = ""
    """Empty on success; on rejection the reason (e.g. `not leader; retry at <host:port>`)."""
    cluster_id: str = ""
    state: bytes = b""
    """The metadata group's full state as the formation layer encodes it (opaque here)."""
    nodes: tuple[JoinNode, ...] = field(default=())
    routing: RoutingSnapshot | None = None
    cluster_secret: bytes | None = field(default=None, repr=False)
    """The cluster secret, to an admitted node only (it keys join tokens and SWIM); sent over
    mTLS only. Added field: a response from an older node lacks it (None). Never logged."""
    permanent: bool = False
    """A rejection that no retry can cure (e.g. a refused join token): the joiner stops at once
    instead of walking its retry schedule. Added field: absent = False (retry, as before)."""

    def encode(self) -> bytes:
        return bytes(
            msgpack.packb(
                {
                    "success": self.success,
                    "error": self.error,
                    "cluster_id": self.cluster_id,
                    "state": self.state,
                    "nodes": [n.to_map() for n in self.nodes],
                    "routing": None if self.routing is None else self.routing.to_map(),
                    "cluster_secret": self.cluster_secret,
                    "permanent": self.permanent,
                },
                use_bin_type=True,
            )
        )

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        data = _unpack(payload, "JoinResponse")
        nodes = data.get("nodes", [])
        if not isinstance(nodes, list):
            raise FrameError("bad_payload", "JoinResponse.nodes must be a list")
        routing = data.get("routing")
        return cls(
            success=_field(data, "success", bool, "JoinResponse"),
            error=_optional(data, "error", str, "", "JoinResponse"),
            cluster_id=_optional(data, "cluster_id", str, "", "JoinResponse"),
            state=_optional(data, "state", bytes, b"", "JoinResponse"),
            nodes=tuple(JoinNode.from_map(n) for n in nodes),
            routing=None if routing is None else RoutingSnapshot.from_map(routing),
            cluster_secret=_optional(data, "cluster_secret", bytes, None, "JoinResponse"),
            permanent=_optional(data, "permanent", bool, False, "JoinResponse"),
        )


@dataclass(frozen=True, slots=True)
class ErrorMsg:
    code: str
    message: str

    def encode(self) -> bytes:
        return bytes(msgpack.packb({"code": self.code, "message": self.message}))

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        data = _unpack(payload, "Error")
        return cls(_field(data, "code", str, "Error"), _field(data, "message", str, "Error"))
