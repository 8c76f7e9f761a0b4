"""The audit log (metadata/audit.py) and its feed from group 0's applier: one line per applied
command with index and proposer, nothing twice after a replayed apply, torn tails repaired,
bounded by rotation; the proposer survives the entry codec (old entries decode without it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.admin_cli import format_audit
from nodedb_cluster.clock import ManualClock
from nodedb_cluster.errors import InvalidRequest
from nodedb_cluster.metadata.applier import MetadataState, MetadataStateMachine
from nodedb_cluster.metadata.audit import (
    INSECURE_PROPOSER,
    AuditLog,
    decode_audit_request,
    decode_audit_response,
    encode_audit_request,
)
from nodedb_cluster.metadata.commands import (
    AddGroupLearner,
    AddNode,
    MetadataEntry,
    PutSetting,
    RemoveNode,
    SetGroupLeader,
)
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.topology import NodeInfo, NodeState, Topology

JOINER = "spiffe://c/node/2"


def node(node_id: int) -> NodeInfo:
    return NodeInfo(
        node_id, parse_socket_addr(f"127.0.0.{node_id}:9400"), NodeState.ACTIVE, 1, b"p" * 32
    )


def join_entry(node_id: int = 2) -> MetadataEntry:
    return MetadataEntry(
        (AddNode(node(node_id)), AddGroupLearner(0, node_id, 0)),
        proposer=f"spiffe://c/node/{node_id}",
    )


def records(log: AuditLog, limit: int = 100) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.tail(limit)]


def test_entry_codec_carries_the_proposer_and_old_entries_decode_without_it() -> None:
    entry = join_entry()
    assert MetadataEntry.decode(entry.encode()) == entry
    old = msgpack.packb({"format": 1, "commands": [{"op": "remove_node", "node_id": 3}]})
    assert MetadataEntry.decode(old) == MetadataEntry((RemoveNode(3),))
    assert b"proposer" not in MetadataEntry((RemoveNode(3),)).encode()


def test_one_line_per_command_with_index_time_and_proposer(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", ManualClock(wall_start_ms=1_700_000_000_123))
    log.append([(7, join_entry()), (8, MetadataEntry((PutSetting("k", 1),)))])
    got = records(log)
    assert [(r["index"], r["part"], r["parts"], r["command"]) for r in got] == [
        (7, 0, 2, "add_node"),
        (7, 1, 2, "add_group_learner"),
        (8, 0, 1, "put_setting"),
    ]
    assert got[0]["proposer"] == JOINER
    assert got[2]["proposer"] == INSECURE_PROPOSER
    assert got[0]["time"] == "2023-11-14T22:13:20.123Z"
    args = got[0]["args"]
    assert isinstance(args, dict)
    assert args["node"]["node_id"] == 2
    assert args["node"]["spki_pin"] == (b"p" * 32).hex()
    assert got[2]["args"] == {"key": "k", "value": 1}


def test_a_replayed_apply_writes_nothing_twice_even_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    AuditLog(path).append([(7, join_entry())])
    again = AuditLog(path)  # a new process: it learns the last index from the file
    again.append([(6, join_entry(3)), (7, join_entry()), (9, join_entry(4))])
    assert [(r["index"], r["part"]) for r in records(again)] == [(7, 0), (7, 1), (9, 0), (9, 1)]


def test_a_torn_tail_is_cut_and_the_replay_writes_it_again(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    AuditLog(path).append([(7, join_entry()), (8, join_entry(3))])
    lines = path.read_bytes().splitlines(keepends=True)
    # A crash inside the write of index 8: its first line complete, the second torn.
    path.write_bytes(b"".join(lines[:3]) + lines[3][:20])
    log = AuditLog(path)
    log.append([(8, join_entry(3))])  # the catalog never committed 8: the applier replays it
    assert [(r["index"], r["part"]) for r in records(log)] == [(7, 0), (7, 1), (8, 0), (8, 1)]


@pytest.mark.parametrize("line", [3, 2], ids=["the last line", "inside the last entry"])
def test_a_complete_line_changed_on_disk_is_kept_never_cut_as_a_torn_tail(
    tmp_path: Path, line: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A torn write leaves a prefix, never a complete line that is not a record: such a line
    was edited, and the record it was stays visible as damaged at the next start (it used to
    be cut off as a torn tail, and with it the rest of its entry)."""
    path = tmp_path / "audit.jsonl"
    AuditLog(path).append([(7, join_entry()), (8, join_entry(3))])
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line] = b"#" + lines[line][1:]
    path.write_bytes(b"".join(lines))
    log = AuditLog(path)
    log.append([(8, join_entry(3)), (9, join_entry(4))])  # a replay of 8: not written again
    assert path.read_bytes().startswith(b"".join(lines)), "nothing cut"
    shown = [json.loads(text) if text[0] == "{" else None for text in log.tail(100)]
    assert [(r["index"], r["part"]) if r else None for r in shown] == [
        (7, 0),
        (7, 1),
        *([(8, 0), None] if line == 3 else [None, (8, 1)]),
        (9, 0),
        (9, 1),
    ]
    assert f"not records (changed on disk?), the last at offset {len(b''.join(lines[:line]))}" in (
        caplog.text
    )


def test_rotation_bounds_the_files_and_reads_span_both(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, file_bytes_max=2000)
    for index in range(1, 21):
        log.append([(index, join_entry())])
    assert path.stat().st_size <= 2000
    rotated = path.with_name("audit.jsonl.1")
    assert rotated.stat().st_size <= 2000
    got = records(log, 1000)
    indexes = [r["index"] for r in got]
    assert indexes == sorted(indexes)
    assert indexes[-1] == 20
    assert len(got) < 40  # the oldest were dropped with the previous rotated file
    assert [r["index"] for r in records(log, 3)] == [19, 20, 20]
    # A restart after rotation still knows the last index.
    AuditLog(path, file_bytes_max=2000).append([(20, join_entry())])
    assert [r["index"] for r in records(log, 2)] == [20, 20]


def test_the_applier_feeds_applied_entries_only_before_persisting(tmp_path: Path) -> None:
    order: list[str] = []
    log = AuditLog(tmp_path / "audit.jsonl")

    def audit(batch: object) -> None:
        order.append("audit")
        log.append(batch)  # type: ignore[arg-type]

    state = MetadataState(Topology([node(1)]), RoutingTable.bootstrap(2, 1), {}, 0)
    machine = MetadataStateMachine(state, lambda s: order.append("persist"), audit)
    reused = MetadataEntry(
        (AddNode(NodeInfo(1, parse_socket_addr("127.0.0.9:1"), NodeState.ACTIVE, 1)),)
    )
    machine.apply_batch([(1, b""), (2, join_entry().encode()), (3, reused.encode())])
    assert machine.flush(5.0)
    assert order == ["audit", "persist"]
    assert [(r["index"], r["command"]) for r in records(log)] == [
        (2, "add_node"),
        (2, "add_group_learner"),
    ]  # the no-op and the refused entry (id reuse) are not audited
    order.clear()
    machine.apply_batch([(4, b"")])
    assert machine.flush(5.0)
    assert order == ["persist"]
    order.clear()
    hint = MetadataEntry((SetGroupLeader(1, 1),), proposer=JOINER)
    machine.apply_batch([(5, hint.encode())])
    assert machine.flush(5.0)
    assert order == ["persist"], "a leader hint is neither membership nor a setting"
    assert [r["index"] for r in records(log)] == [2, 2]
    machine.close()


def test_requests_and_replies_are_bounded_and_typed(tmp_path: Path) -> None:
    assert decode_audit_request(encode_audit_request(5)) == 5
    for bad in (b"\xc1", msgpack.packb({"limit": 0}), msgpack.packb({"limit": "x"})):
        with pytest.raises(InvalidRequest):
            decode_audit_request(bad)
    log = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(InvalidRequest):
        log.tail(0)
    assert log.tail(10) == []  # no file yet
    payload = msgpack.packb({"records": ['{"index": 1}'], "truncated": False})
    assert decode_audit_response(payload) == ([{"index": 1}], False)


def test_a_line_changed_on_disk_is_shown_in_place_and_hides_no_other(tmp_path: Path) -> None:
    """An operator's byte editor broke one line in the middle of the file: the reader gets the
    records around it and the damaged line in place (it used to fail the whole `audit`)."""
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append([(2, join_entry()), (3, join_entry(3))])
    raw = log.path.read_bytes()
    log.path.write_bytes(b"[" + raw[1:])  # the first line's opening brace
    lines = log.tail(10)
    records, _ = decode_audit_response(msgpack.packb({"records": lines, "truncated": False}))
    assert len(records) == len(lines) == 4
    assert set(records[0]) == {"damaged"}
    assert [r.get("index") for r in records[1:]] == [2, 3, 3]
    table = format_audit(records)
    assert "DAMAGED LINE" in table.splitlines()[1]
