"""Commands carried by the metadata group's log (group 0), and their MessagePack form.

One log entry is one `MetadataEntry`: a tuple of commands applied atomically (all or none), so a
join's "add the node, make it a learner of these groups" lands as one step on every node. The codec
is one table, `_CODECS`, keyed by the stable op name written into each command's map.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from nodedb_cluster.errors import ClusterError, MalformedTopology, UnknownNodeState
from nodedb_cluster.topology import NodeInfo, NodeState, node_from_doc, node_to_doc

ENTRY_FORMAT: Final = 1
ENTRY_BYTES_MAX: Final = 4 * 1024 * 1024
"""A metadata entry is a topology-sized change at most; 4 MiB bounds what decode accepts."""
COMMANDS_PER_ENTRY_MAX: Final = 4096
"""A join touches at most every group once (1025 groups) plus the node itself."""

SettingValue = str | int | float | bool


class MalformedCommand(ClusterError, ValueError):
    """A metadata entry that cannot be decoded: written by a newer build or corrupted."""


@dataclass(frozen=True, slots=True)
class AddNode:
    """Admit `node` to the topology."""

    node: NodeInfo


@dataclass(frozen=True, slots=True)
class SetNodeState:
    node_id: int
    state: NodeState


@dataclass(frozen=True, slots=True)
class RemoveNode:
    node_id: int


@dataclass(frozen=True, slots=True)
class SetGroupMembers:
    """Replace a group's voters and learners (creating the group when it does not exist)."""

    group_id: int
    voters: tuple[int, ...]
    learners: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AddGroupLearner:
    """Make `node_id` a learner of `group_id`, judged against the state at apply time: no-op when
    it is already a member, or when `rf_cap` > 0 and the group already has `rf_cap` members.

    Relative, not absolute like `SetGroupMembers`: two joins decided on the same state both land
    (an absolute member list computed from a stale view would drop the other's change).
    """

    group_id: int
    node_id: int
    rf_cap: int = 0


@dataclass(frozen=True, slots=True)
class PromoteGroupLearner:
    """Learner -> voter, at apply time only while the group has fewer than `rf_cap` voters."""

    group_id: int
    node_id: int
    rf_cap: int


@dataclass(frozen=True, slots=True)
class RemoveGroupMember:
    """Take `node_id` out of `group_id`; no-op when absent or when it is the last voter."""

    group_id: int
    node_id: int


@dataclass(frozen=True, slots=True)
class DemoteGroupVoter:
    """Voter -> learner, at apply time only while another voter remains: a node that lost its
    replica (or the acknowledged tail of its log) asks for this before it takes part again, so
    it catches up from the leader without counting towards any quorum (see `reconcile`)."""

    group_id: int
    node_id: int


@dataclass(frozen=True, slots=True)
class ReplaceGroupVoter:
    """A replica move's last step: the caught-up learner `new` takes the place of `old`, which
    leaves the group. At apply time only while `new` is a learner and `old` a member (a voter's
    place goes to `new`; a learner `old` just leaves). Raft follows with the promotion first and
    the removal after (`reconcile`), so the group never has fewer voters than before."""

    group_id: int
    old: int
    new: int


@dataclass(frozen=True, slots=True)
class AssignVShard:
    vshard: int
    group_id: int


@dataclass(frozen=True, slots=True)
class BeginVShardMove:
    """Record a move of `vshard` from `source` to `target` (`metadata/vshard_moves.py`); refused
    unless the vShard is in `source`, not moving, and fewer than `in_flight_max` moves run (the
    proposer's cap, carried so every node judges with the same number)."""

    vshard: int
    source: int
    target: int
    in_flight_max: int


@dataclass(frozen=True, slots=True)
class FinishVShardMove:
    """A move's commit point: the vShard's route flips to the move's target."""

    vshard: int
    move_id: int


@dataclass(frozen=True, slots=True)
class AbortVShardMove:
    """The move ends with the vShard where it was; `reason` is for the audit log."""

    vshard: int
    move_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class PutSetting:
    key: str
    value: SettingValue


@dataclass(frozen=True, slots=True)
class SetGroupLeader:
    """`node_id` leads `group_id`: proposed by that leader when the routing table names another
    (`reconcile.ProposeLeaderHints`). A hint for `status`, `locate` and a client's first request,
    never a rule: Raft alone decides who leads. Not audited (no membership or setting changes).
    Applied only while `node_id` is a voter of the group; otherwise it changes nothing."""

    group_id: int
    node_id: int


MetadataCommand = (
    AddNode
    | SetNodeState
    | RemoveNode
    | SetGroupMembers
    | AddGroupLearner
    | PromoteGroupLearner
    | RemoveGroupMember
    | DemoteGroupVoter
    | ReplaceGroupVoter
    | AssignVShard
    | BeginVShardMove
    | FinishVShardMove
    | AbortVShardMove
    | PutSetting
    | SetGroupLeader
)


PROPOSER_BYTES_MAX: Final = 2048
"""A certificate URI (`spiffe://<cluster>/<role>/<name>`) is well under this."""


@dataclass(frozen=True, slots=True)
class MetadataEntry:
    """The unit of the metadata log: commands applied together or not at all."""

    commands: tuple[MetadataCommand, ...]
    proposer: str | None = None
    """The certificate identity on whose behalf the entry was proposed (a joiner's for its
    admission, the proposing node's own otherwise), for the audit log; None on an insecure
    transport. Optional field: entries written before it decode with None, and older builds
    ignore it. Carried in the entry so every node writes the same audit record when applying."""

    def encode(self) -> bytes:
        doc: dict[str, object] = {
            "format": ENTRY_FORMAT,
            "commands": [_encode_command(c) for c in self.commands],
        }
        if self.proposer is not None:
            doc["proposer"] = self.proposer
        packed = msgpack.packb(doc, use_bin_type=True)
        assert isinstance(packed, bytes)
        return packed

    @classmethod
    def decode(cls, data: bytes) -> MetadataEntry:
        if len(data) > ENTRY_BYTES_MAX:
            raise MalformedCommand(f"{len(data)} bytes exceeds the {ENTRY_BYTES_MAX} byte bound")
        try:
            doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except (ValueError, msgpack.UnpackException) as e:
            raise MalformedCommand(f"not valid MessagePack: {e}") from e
        if not isinstance(doc, Mapping) or doc.get("format") != ENTRY_FORMAT:
            raise MalformedCommand(f"not a metadata entry of format {ENTRY_FORMAT}")
        raw_commands = doc.get("commands")
        if not isinstance(raw_commands, list) or len(raw_commands) > COMMANDS_PER_ENTRY_MAX:
            raise MalformedCommand("commands must be a list of at most 4096 maps")
        proposer = doc.get("proposer")
        if proposer is not None and (
            not isinstance(proposer, str) or len(proposer) > PROPOSER_BYTES_MAX
        ):
            raise MalformedCommand(f"proposer must be text of at most {PROPOSER_BYTES_MAX} chars")
        commands = tuple(_decode_command(raw, i) for i, raw in enumerate(raw_commands))
        return cls(commands, proposer)


def command_name(command: MetadataCommand) -> str:
    """The command's stable op name (`add_node`, `put_setting`, ...), as the log writes it."""
    return _OP_OF[type(command)]


def command_to_doc(command: MetadataCommand) -> dict[str, Any]:
    """The command's fields as the log encodes them (without the op name)."""
    doc = _encode_command(command)
    doc.pop("op")
    return doc


# --- the codec table ------------------------------------------------------------------------------


def _node_from_doc(raw: Any) -> NodeInfo:
    try:
        return node_from_doc(raw, "add_node.node")
    except MalformedTopology as e:
        raise MalformedCommand(str(e)) from e


def _ids(raw: Any, what: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in raw
    ):
        raise MalformedCommand(f"{what} must be a list of non-negative integers")
    return tuple(raw)


def _int(raw: Any, what: str) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
        raise MalformedCommand(f"{what} must be a non-negative integer")
    return raw


REASON_CHARS_MAX: Final = 512


def _text(raw: Any, what: str) -> str:
    if not isinstance(raw, str) or len(raw) > REASON_CHARS_MAX:
        raise MalformedCommand(f"{what} must be text of at most {REASON_CHARS_MAX} chars")
    return raw


def _state(raw: Any) -> NodeState:
    try:
        return NodeState.from_code(_int(raw, "state"))
    except UnknownNodeState as e:
        raise MalformedCommand(str(e)) from e


def _setting(raw: Any) -> SettingValue:
    if not isinstance(raw, str | int | float | bool):
        raise MalformedCommand("a setting value must be a string, integer, float or boolean")
    return raw


Encoder = Callable[[Any], dict[str, Any]]
Decoder = Callable[[Mapping[str, Any]], MetadataCommand]

_CODECS: Final[dict[str, tuple[type, Encoder, Decoder]]] = {
    "add_node": (
        AddNode,
        lambda c: {"node": node_to_doc(c.node)},
        lambda d: AddNode(_node_from_doc(d.get("node"))),
    ),
    "set_node_state": (
        SetNodeState,
        lambda c: {"node_id": c.node_id, "state": int(c.state)},
        lambda d: SetNodeState(_int(d.get("node_id"), "node_id"), _state(d.get("state"))),
    ),
    "remove_node": (
        RemoveNode,
        lambda c: {"node_id": c.node_id},
        lambda d: RemoveNode(_int(d.get("node_id"), "node_id")),
    ),
    "set_group_members": (
        SetGroupMembers,
        lambda c: {"group_id": c.group_id, "voters": list(c.voters), "learners": list(c.learners)},
        lambda d: SetGroupMembers(
            _int(d.get("group_id"), "group_id"),
            _ids(d.get("voters"), "voters"),
            _ids(d.get("learners"), "learners"),
        ),
    ),
    "add_group_learner": (
        AddGroupLearner,
        lambda c: {"group_id": c.group_id, "node_id": c.node_id, "rf_cap": c.rf_cap},
        lambda d: AddGroupLearner(
            _int(d.get("group_id"), "group_id"),
            _int(d.get("node_id"), "node_id"),
            _int(d.get("rf_cap"), "rf_cap"),
        ),
    ),
    "promote_group_learner": (
        PromoteGroupLearner,
        lambda c: {"group_id": c.group_id, "node_id": c.node_id, "rf_cap": c.rf_cap},
        lambda d: PromoteGroupLearner(
            _int(d.get("group_id"), "group_id"),
            _int(d.get("node_id"), "node_id"),
            _int(d.get("rf_cap"), "rf_cap"),
        ),
    ),
    "remove_group_member": (
        RemoveGroupMember,
        lambda c: {"group_id": c.group_id, "node_id": c.node_id},
        lambda d: RemoveGroupMember(
            _int(d.get("group_id"), "group_id"), _int(d.get("node_id"), "node_id")
        ),
    ),
    "demote_group_voter": (
        DemoteGroupVoter,
        lambda c: {"group_id": c.group_id, "node_id": c.node_id},
        lambda d: DemoteGroupVoter(
            _int(d.get("group_id"), "group_id"), _int(d.get("node_id"), "node_id")
        ),
    ),
    "replace_group_voter": (
        ReplaceGroupVoter,
        lambda c: {"group_id": c.group_id, "old": c.old, "new": c.new},
        lambda d: ReplaceGroupVoter(
            _int(d.get("group_id"), "group_id"),
            _int(d.get("old"), "old"),
            _int(d.get("new"), "new"),
        ),
    ),
    "assign_vshard": (
        AssignVShard,
        lambda c: {"vshard": c.vshard, "group_id": c.group_id},
        lambda d: AssignVShard(
            _int(d.get("vshard"), "vshard"), _int(d.get("group_id"), "group_id")
        ),
    ),
    "begin_vshard_move": (
        BeginVShardMove,
        lambda c: {
            "vshard": c.vshard,
            "source": c.source,
            "target": c.target,
            "in_flight_max": c.in_flight_max,
        },
        lambda d: BeginVShardMove(
            _int(d.get("vshard"), "vshard"),
            _int(d.get("source"), "source"),
            _int(d.get("target"), "target"),
            _int(d.get("in_flight_max"), "in_flight_max"),
        ),
    ),
    "finish_vshard_move": (
        FinishVShardMove,
        lambda c: {"vshard": c.vshard, "move_id": c.move_id},
        lambda d: FinishVShardMove(
            _int(d.get("vshard"), "vshard"), _int(d.get("move_id"), "move_id")
        ),
    ),
    "abort_vshard_move": (
        AbortVShardMove,
        lambda c: {"vshard": c.vshard, "move_id": c.move_id, "reason": c.reason},
        lambda d: AbortVShardMove(
            _int(d.get("vshard"), "vshard"),
            _int(d.get("move_id"), "move_id"),
            _text(d.get("reason"), "reason"),
        ),
    ),
    "put_setting": (
        PutSetting,
        lambda c: {"key": c.key, "value": c.value},
        lambda d: PutSetting(str(d.get("key")), _setting(d.get("value"))),
    ),
    "set_group_leader": (
        SetGroupLeader,
        lambda c: {"group_id": c.group_id, "node_id": c.node_id},
        lambda d: SetGroupLeader(
            _int(d.get("group_id"), "group_id"), _int(d.get("node_id"), "node_id")
        ),
    ),
}
_OP_OF: Final = {cls: op for op, (cls, _, _) in _CODECS.items()}


def _encode_command(command: MetadataCommand) -> dict[str, Any]:
    op = _OP_OF[type(command)]
    return {"op": op, **_CODECS[op][1](command)}


def _decode_command(raw: Any, index: int) -> MetadataCommand:
    if not isinstance(raw, Mapping):
        raise MalformedCommand(f"commands[{index}] is not a map")
    op = raw.get("op")
    codec = _CODECS.get(op) if isinstance(op, str) else None
    if codec is None:
        raise MalformedCommand(f"commands[{index}]: unknown op {op!r} (written by a newer build?)")
    return codec[2](raw)
