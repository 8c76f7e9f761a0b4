"""Group 0's record of vShard moves: begin, then exactly one of finish or abort."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodedb_cluster.catalog import Catalog
from nodedb_cluster.errors import CatalogError
from nodedb_cluster.metadata.applier import Applied, MetadataState, MetadataStateMachine, Refused
from nodedb_cluster.metadata.commands import (
    AbortVShardMove,
    AssignVShard,
    BeginVShardMove,
    FinishVShardMove,
    MetadataCommand,
    MetadataEntry,
)
from nodedb_cluster.metadata.group import decode_state, encode_state
from nodedb_cluster.metadata.vshard_moves import VShardMove, VShardMoves
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.topology import Topology
from nodedb_cluster.vshard_mover import MOVE_REST_MAX_S, MovePacer
from support.nodes import node


class Machine:
    """The state machine over an in-memory state, one entry per `apply`."""

    def __init__(self) -> None:
        routing = RoutingTable.bootstrap(4, 1)  # groups 1-4 own the vShards round robin
        self.saved: list[MetadataState] = []
        self.sm = MetadataStateMachine(
            MetadataState(Topology([node(1)]), routing, {}, 0), self.saved.append
        )
        self.index = 0

    def apply(self, *commands: MetadataCommand) -> Applied | Refused:
        self.index += 1
        [result] = self.sm.apply_batch([(self.index, MetadataEntry(commands).encode())])
        return result

    @property
    def state(self) -> MetadataState:
        return self.sm.state


def source_of(m: Machine, vshard: int) -> int:
    return m.state.routing.group_for_vshard(vshard)


def other_group(m: Machine, vshard: int) -> int:
    return next(g for g in m.state.routing.group_ids if g not in (0, source_of(m, vshard)))


def test_finish_flips_the_route_and_bumps_the_epoch() -> None:
    m = Machine()
    s, t = source_of(m, 7), other_group(m, 7)
    assert isinstance(m.apply(BeginVShardMove(7, s, t, 4)), Applied)
    move = m.state.vshard_moves.get(7)
    assert move == VShardMove(7, s, t, 1)
    epoch = m.state.routing.epoch
    assert source_of(m, 7) == s  # begun, not moved
    assert isinstance(m.apply(FinishVShardMove(7, move.move_id)), Applied)
    assert source_of(m, 7) == t
    assert m.state.routing.epoch > epoch
    assert m.state.vshard_moves.get(7) is None
    # the same move cannot end twice, nor be aborted after it finished
    assert isinstance(m.apply(FinishVShardMove(7, move.move_id)), Refused)
    assert isinstance(m.apply(AbortVShardMove(7, move.move_id, "late")), Refused)
    assert source_of(m, 7) == t


def test_abort_leaves_the_route_and_refuses_a_later_finish() -> None:
    m = Machine()
    s, t = source_of(m, 9), other_group(m, 9)
    m.apply(BeginVShardMove(9, s, t, 4))
    move_id = m.state.vshard_moves.get(9).move_id  # type: ignore[union-attr]
    assert isinstance(m.apply(AbortVShardMove(9, move_id, "pause budget")), Applied)
    assert isinstance(m.apply(FinishVShardMove(9, move_id)), Refused)
    assert source_of(m, 9) == s


def test_a_stale_move_id_is_refused() -> None:
    """A mover of an aborted move cannot finish the next move of the same vShard."""
    m = Machine()
    s, t = source_of(m, 3), other_group(m, 3)
    m.apply(BeginVShardMove(3, s, t, 4))
    first = m.state.vshard_moves.get(3).move_id  # type: ignore[union-attr]
    m.apply(AbortVShardMove(3, first, "test"))
    m.apply(BeginVShardMove(3, s, t, 4))
    second = m.state.vshard_moves.get(3).move_id  # type: ignore[union-attr]
    assert second != first
    assert isinstance(m.apply(FinishVShardMove(3, first)), Refused)
    assert source_of(m, 3) == s
    assert isinstance(m.apply(FinishVShardMove(3, second)), Applied)
    assert source_of(m, 3) == t


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda s, t: BeginVShardMove(5, t, s, 4), "is in group"),  # wrong source
        (lambda s, t: BeginVShardMove(5, s, s, 4), "already in group"),
        (lambda s, t: BeginVShardMove(5, s, 0, 4), "not a data group"),
        (lambda s, t: BeginVShardMove(5, s, 99, 4), "not a data group"),
        (lambda s, t: BeginVShardMove(5000, s, t, 4), "not in 0..1023"),
        (lambda s, t: BeginVShardMove(5, s, t, 0), "in_flight_max"),
    ],
)
def test_begin_refusals(make: object, why: str) -> None:
    m = Machine()
    s, t = source_of(m, 5), other_group(m, 5)
    result = m.apply(make(s, t))  # type: ignore[operator]
    assert isinstance(result, Refused)
    assert why in result.reason
    assert len(m.state.vshard_moves) == 0


def test_one_move_per_vshard_and_the_proposers_cap() -> None:
    m = Machine()
    s, t = source_of(m, 1), other_group(m, 1)
    assert isinstance(m.apply(BeginVShardMove(1, s, t, 2)), Applied)
    again = m.apply(BeginVShardMove(1, s, t, 2))
    assert isinstance(again, Refused)
    assert "already moving" in again.reason
    assert isinstance(m.apply(BeginVShardMove(2, source_of(m, 2), other_group(m, 2), 2)), Applied)
    third = m.apply(BeginVShardMove(6, source_of(m, 6), other_group(m, 6), 2))
    assert isinstance(third, Refused)
    assert "in flight already" in third.reason
    # a plain assignment of a moving vShard would race the move: refused
    pinned = m.apply(AssignVShard(1, t))
    assert isinstance(pinned, Refused)
    assert "is moving" in pinned.reason


def test_an_entry_is_all_or_nothing_with_moves() -> None:
    m = Machine()
    s, t = source_of(m, 4), other_group(m, 4)
    result = m.apply(BeginVShardMove(4, s, t, 4), BeginVShardMove(4, s, t, 4))
    assert isinstance(result, Refused)
    assert len(m.state.vshard_moves) == 0
    assert m.state.vshard_moves.next_id == 1


def test_moves_survive_the_snapshot_and_the_catalog(tmp_path: Path) -> None:
    m = Machine()
    s, t = source_of(m, 11), other_group(m, 11)
    m.apply(BeginVShardMove(11, s, t, 4))
    state = m.state
    again = decode_state(encode_state(state))
    assert again.vshard_moves == state.vshard_moves
    with Catalog.open(tmp_path) as catalog:
        catalog.save_metadata_state(
            state.topology,
            state.routing,
            state.settings,
            state.applied_index,
            state.vshard_moves.encode(),
        )
        raw = catalog.load_vshard_moves()
    assert raw is not None
    assert VShardMoves.decode(raw) == state.vshard_moves


def test_a_snapshot_from_before_moves_decodes_with_none() -> None:
    import msgpack

    m = Machine()
    doc = msgpack.unpackb(encode_state(m.state), raw=False)
    del doc["vshard_moves"]
    assert len(decode_state(msgpack.packb(doc, use_bin_type=True)).vshard_moves) == 0


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",
        b"\x80",
        VShardMoves({1: VShardMove(1, 1, 2, 1)}).encode().replace(b"\x01\x01\x02\x01", b"\x01"),
    ],
)
def test_damaged_moves_are_refused(data: bytes) -> None:
    with pytest.raises(CatalogError):
        VShardMoves.decode(data)


def test_the_pacer_keeps_moves_to_their_duty() -> None:
    pacer = MovePacer(25)
    assert pacer.wait_s(10.0) == 0.0, "the first move starts at once"
    pacer.ended(started=10.0, now=10.02)  # a 20 ms move, then 3 x 20 ms of rest
    assert abs(pacer.wait_s(10.02) - 0.06) < 1e-9
    assert pacer.wait_s(10.08) == 0.0
    pacer.ended(started=10.08, now=10.09)  # a shorter move rests less, never from the past
    assert abs(pacer.wait_s(10.09) - 0.03) < 1e-9
    slow = MovePacer(1)
    slow.ended(started=0.0, now=30.0)  # a move that waited out a partition
    assert slow.wait_s(30.0) == MOVE_REST_MAX_S
    back_to_back = MovePacer(100)
    back_to_back.ended(started=1.0, now=2.0)
    assert back_to_back.wait_s(2.0) == 0.0
