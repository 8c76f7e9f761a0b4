"""The embedding API's pure parts: HOST_PROPOSE payloads of both versions agree with the Rust
schema (rust/wire/src/host.rs), malformed ones are refused naming the field, outcomes map to
results or errors, and `locate` answers from the routing table."""

from __future__ import annotations

import msgpack
import nodedb_cluster_core as core
import pytest

from nodedb_cluster import wire
from nodedb_cluster.embedding import locate
from nodedb_cluster.errors import (
    FrameError,
    InvalidRequest,
    OutcomeUnknown,
    RaftNotLeader,
    RemoteError,
    UnknownGroup,
)
from nodedb_cluster.host_proposals import (
    HOST_VERSION,
    decode_outcomes,
    encode_batch,
    encode_propose,
    outcome_result,
)
from nodedb_cluster.routing import vshard_for_key
from nodedb_cluster.routing.table import RoutingTable


def _schema_read(payload: bytes) -> object:
    """`payload` as the Rust schema reads it (what the leader's server decodes), re-encoded."""
    return msgpack.unpackb(core.check_control_payload(wire.MessageKind.HOST_PROPOSE, payload))


def test_a_request_is_what_the_rust_schema_reads_and_round_trips() -> None:
    payload = encode_propose(3, b"\x00cmd", 2500)
    expected = {"group": 3, "command": b"\x00cmd", "timeout_ms": 2500}
    assert _schema_read(payload) == expected
    assert msgpack.unpackb(payload) == expected


def test_a_batch_keeps_its_order_and_groups_and_round_trips() -> None:
    items = [(2, b"a"), (1, b""), (2, b"\xffb")]
    payload = encode_batch(items, 900)
    expected = {
        "v": HOST_VERSION,
        "timeout_ms": 900,
        "items": [{"group": g, "command": c} for g, c in items],
    }
    assert _schema_read(payload) == expected
    assert msgpack.unpackb(payload) == expected


@pytest.mark.parametrize(
    "doc",
    [
        {"outcome": "applied", "index": 7, "result": b"42"},
        {"outcome": "not_leader", "leader": 2},
        {"outcome": "not_leader", "leader": None},
        {"outcome": "unknown", "reason": "leadership lost"},
        {"outcome": "failed", "code": "NoSpace", "message": "/data"},
    ],
)
def test_every_outcome_is_what_the_rust_schema_reads(doc: dict[str, object]) -> None:
    for answer in (doc, {"outcomes": [doc, doc]}):
        payload = msgpack.packb(answer, use_bin_type=True)
        again = core.check_control_payload(wire.MessageKind.HOST_PROPOSE_RESPONSE, payload)
        assert msgpack.unpackb(again) == answer


def test_each_outcome_is_the_result_or_the_error_it_stands_for() -> None:
    assert outcome_result({"outcome": "applied", "index": 1, "result": b"r"}, 2, 3) == b"r"
    with pytest.raises(RaftNotLeader) as not_leader:
        outcome_result({"outcome": "not_leader", "leader": 1}, 2, 3)
    assert not_leader.value.leader_id == 1
    with pytest.raises(OutcomeUnknown, match="node 3: lost"):
        outcome_result({"outcome": "unknown", "reason": "lost"}, 2, 3)
    with pytest.raises(RemoteError) as failed:
        outcome_result({"outcome": "failed", "code": "NoSpace", "message": "/d"}, 2, 3)
    assert (failed.value.code, failed.value.message) == ("NoSpace", "/d")
    # A leader whose engine stopped before it took the command: nothing is in any log (one it
    # had taken is "unknown"), so the proposer tries the next voter instead of failing.
    with pytest.raises(RaftNotLeader) as stopped:
        outcome_result({"outcome": "failed", "code": "EngineStopped", "message": "x"}, 2, 3)
    assert stopped.value.leader_id is None
    for bad in ({"outcome": "applied"}, {"outcome": "failed", "code": 1}, [], None):
        with pytest.raises(InvalidRequest, match="node 3 answered"):
            outcome_result(bad, 2, 3)


def test_a_batch_answer_of_another_length_is_refused() -> None:
    doc = {"outcome": "not_leader", "leader": None}
    assert decode_outcomes(msgpack.packb({"outcomes": [doc]}), 1, 3) == [doc]
    for answer in ({"outcomes": [doc]}, {"outcomes": "x"}, doc):
        with pytest.raises(InvalidRequest, match="a batch of 2"):
            decode_outcomes(msgpack.packb(answer), 2, 3)


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({"v": HOST_VERSION + 1, "group": 1, "command": b"", "timeout_ms": 5}, "newer"),
        ({"v": 0, "group": 1, "command": b"", "timeout_ms": 5}, "version 0"),
        ({"command": b"x", "timeout_ms": 5}, "group"),
        ({"group": -1, "command": b"x", "timeout_ms": 5}, "group"),
        ({"group": True, "command": b"x", "timeout_ms": 5}, "group"),
        ({"group": 1, "command": "text", "timeout_ms": 5}, "command"),
        ({"group": 1, "command": b"x", "timeout_ms": 0}, "timeout_ms"),
        ({"group": 1, "command": b"x"}, "timeout_ms"),
        ({"v": 2, "timeout_ms": 5, "items": []}, "no items"),
        ({"v": 2, "timeout_ms": 5, "items": [{"group": 1}]}, "items.*command"),
        ({"v": 2, "timeout_ms": 5, "items": [{"group": 1, "command": "a"}]}, "items.*command"),
        ({"v": 2, "items": [{"group": 1, "command": b"a"}]}, "timeout_ms"),
    ],
)
def test_a_malformed_request_is_refused_naming_the_field(doc: dict[str, object], says: str) -> None:
    with pytest.raises(FrameError, match=says):
        _schema_read(msgpack.packb(doc, use_bin_type=True))


@pytest.mark.parametrize("payload", [b"", b"\xc1", msgpack.packb([1, 2]), b"\x81\xa1"])
def test_garbage_is_refused_not_raised_as_something_else(payload: bytes) -> None:
    with pytest.raises(FrameError, match="cannot decode HostPropose"):
        _schema_read(payload)


def _table() -> RoutingTable:
    table = RoutingTable.bootstrap(4, 1)
    for g in table.group_ids:
        table.set_members(g, voters=[1, 2, 3], learners=[4] if g == 2 else [])
    return table


def test_locate_by_key_follows_the_vshard_and_by_group_has_no_vshard() -> None:
    table = _table()
    where = locate(table, b"user:7", None, None)
    assert where.vshard == vshard_for_key(b"user:7")
    assert where.group == table.group_for_vshard(where.vshard)
    assert where.voters == (1, 2, 3)
    by_group = locate(table, None, 2, 3)
    assert (by_group.vshard, by_group.group, by_group.leader, by_group.learners) == (
        None,
        2,
        3,
        (4,),
    )
    assert by_group.to_doc()["learners"] == [4]


def test_locate_refuses_both_neither_group_0_and_unknown_groups() -> None:
    table = _table()
    with pytest.raises(InvalidRequest, match="exactly one"):
        locate(table, b"k", 1, None)
    with pytest.raises(InvalidRequest, match="exactly one"):
        locate(table, None, None, None)
    with pytest.raises(InvalidRequest, match="metadata group"):
        locate(table, None, 0, None)
    with pytest.raises(UnknownGroup):
        locate(table, None, 99, None)


def test_locate_refuses_arguments_of_the_wrong_type_naming_them() -> None:
    table = _table()
    with pytest.raises(InvalidRequest, match="key must be bytes, got str"):
        locate(table, "k", None, None)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="group must be an int, got bool"):
        locate(table, None, True, None)  # group 1 by equality: refused, not taken as 1
    with pytest.raises(InvalidRequest, match="group must be an int, got float"):
        locate(table, None, 1.0, None)  # type: ignore[arg-type]
    with pytest.raises(UnknownGroup):
        locate(table, None, -1, None)
    assert locate(table, bytearray(b"k"), None, None) == locate(table, b"k", None, None)
