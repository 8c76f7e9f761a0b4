"""RoutingTable: bootstrap layout, epoch per mutator, fused leader array, queries, encode/decode.

Goal: every invariant of the table (group 0 owns nothing, a known leader is a voter, the fused
`vshard_to_leader` always equals group -> leader composed with `vshard_to_group`) holds after any
sequence of mutators; encoded bytes round-trip exactly; malformed bytes give a typed error.
"""

from __future__ import annotations

from collections.abc import Callable

import msgpack
import numpy as np
import pytest
import xxhash
from hypothesis import event, given, settings
from hypothesis import strategies as st

from nodedb_cluster.errors import ClusterError, UnknownGroup, UnknownVShard
from nodedb_cluster.routing import (
    NUM_VSHARDS,
    GroupRoute,
    InvalidRoute,
    MalformedRoutingTable,
    RoutingTable,
)


def _assert_consistent(table: RoutingTable) -> None:
    """The invariants every table must satisfy, recomputed the slow way."""
    v2g = table.vshard_to_group
    assert v2g.dtype == np.uint32
    assert v2g.shape == (NUM_VSHARDS,)
    assert 0 not in v2g
    assert table.vshards_of_group(0).size == 0
    expected = [table.leader_for_group(int(g)) for g in v2g]
    assert table.vshard_to_leader.dtype == np.uint64
    assert table.vshard_to_leader.tolist() == expected
    assert not v2g.flags.writeable
    assert not table.vshard_to_leader.flags.writeable
    owned = np.concatenate([table.vshards_of_group(g) for g in table.group_ids])
    assert sorted(owned.tolist()) == list(range(NUM_VSHARDS))


# --- bootstrap ------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_groups", [1, 3, 64, 1024])
def test_bootstrap_layout(num_groups: int) -> None:
    table = RoutingTable.bootstrap(num_groups, node_id=9)
    assert table.epoch == 1
    assert table.group_ids == tuple(range(num_groups + 1))
    for vshard in (0, 1, 511, 1023):
        assert table.group_for_vshard(vshard) == 1 + vshard % num_groups
    for group in table.group_ids:
        assert table.route(group) == GroupRoute(group, 9, (9,), ())
    assert table.groups_of_node(9) == table.group_ids
    assert table.groups_of_node(8) == ()
    assert table.vshards_of_group(1).tolist() == list(range(0, NUM_VSHARDS, num_groups))
    assert table.vshards_of_group(1).dtype == np.uint16
    assert set(table.vshard_to_leader.tolist()) == {9}
    _assert_consistent(table)


@pytest.mark.parametrize(("num_groups", "node_id"), [(0, 1), (1025, 1), (4, 0), (4, -1), (True, 1)])
def test_bootstrap_rejects_bad_arguments(num_groups: int, node_id: int) -> None:
    with pytest.raises(InvalidRoute):
        RoutingTable.bootstrap(num_groups, node_id)


# --- mutators -------------------------------------------------------------------------------------


def test_every_mutator_bumps_the_epoch_and_keeps_the_fused_array_current() -> None:
    table = RoutingTable.bootstrap(4, node_id=1)
    steps: list[Callable[[], None]] = [
        lambda: table.set_members(2, [1, 2, 3], [4]),
        lambda: table.set_leader(2, 3),
        lambda: table.set_leader(2, 3),  # restating the value is still an applied command
        lambda: table.set_leader(2, 0),
        lambda: table.add_group(5, [2, 3]),
        lambda: table.assign_vshard(7, 5),
        lambda: table.set_leader(5, 2),
        lambda: table.set_members(5, [3], [2]),  # drops leader 2 -> unknown
        lambda: table.set_leader(0, 1),
    ]
    for number, step in enumerate(steps, start=2):
        before = table.vshard_to_leader
        step()
        assert table.epoch == number
        _assert_consistent(table)
        assert table.vshard_to_leader is not before  # replaced, never written in place
    assert table.route(5) == GroupRoute(5, 0, (3,), (2,))
    assert table.group_for_vshard(7) == 5
    assert table.vshard_to_leader[7] == 0
    assert table.groups_of_node(2) == (2, 5)
    assert table.groups_of_node(4) == (2,)


def test_old_arrays_stay_a_consistent_snapshot() -> None:
    table = RoutingTable.bootstrap(2, node_id=1)
    table.set_members(1, [1, 2])
    leaders_before = table.vshard_to_leader
    groups_before = table.vshard_to_group
    table.set_leader(1, 2)
    table.add_group(3, [2])
    table.assign_vshard(0, 3)
    assert leaders_before.tolist() == [1] * NUM_VSHARDS
    assert groups_before[0] == 1
    assert table.vshard_to_leader[0] == 0
    assert table.vshard_to_leader[2] == 2
    with pytest.raises(ValueError, match="read-only"):
        table.vshard_to_leader[0] = 5


def test_a_copy_is_equal_and_changes_apart() -> None:
    table = RoutingTable.bootstrap(2, node_id=1)
    table.set_members(1, [1, 2])
    copy = table.copy()
    assert copy == table
    assert copy.encode() == table.encode()
    copy.set_leader(1, 2)
    copy.add_group(3, [2])
    copy.assign_vshard(0, 3)
    assert table == RoutingTable.decode(table.encode())
    assert table.group_ids == (0, 1, 2)
    assert table.group_for_vshard(0) == 1
    assert table.vshard_to_leader[2] == 1
    assert copy.vshard_to_leader[2] == 2
    assert copy.epoch == table.epoch + 3
    assert RoutingTable.decode(copy.encode()) == copy


def test_failed_mutators_change_nothing() -> None:
    table = RoutingTable.bootstrap(3, node_id=1)
    table.set_members(1, [1, 2])
    encoded = table.encode()
    bad_calls: list[tuple[Callable[[], None], type[Exception]]] = [
        (lambda: table.set_leader(1, 3), InvalidRoute),  # not a voter
        (lambda: table.set_leader(99, 1), UnknownGroup),
        (lambda: table.set_members(1, [], [1]), InvalidRoute),
        (lambda: table.set_members(1, [1, 1]), InvalidRoute),
        (lambda: table.set_members(1, [1, 2], [2]), InvalidRoute),
        (lambda: table.set_members(1, [0]), InvalidRoute),
        (lambda: table.set_members(1, [2**64]), InvalidRoute),
        (lambda: table.set_members(1, list(range(1, 66))), InvalidRoute),
        (lambda: table.set_members(42, [1]), UnknownGroup),
        (lambda: table.add_group(1, [1]), InvalidRoute),
        (lambda: table.add_group(2**32, [1]), InvalidRoute),
        (lambda: table.assign_vshard(5, 0), InvalidRoute),  # the metadata group owns nothing
        (lambda: table.assign_vshard(5, 77), UnknownGroup),
        (lambda: table.assign_vshard(1024, 1), UnknownVShard),
        (lambda: table.assign_vshard(-1, 1), UnknownVShard),
    ]
    for call, error in bad_calls:
        with pytest.raises(error):
            call()
        assert table.encode() == encoded
    _assert_consistent(table)


def test_queries_raise_typed_errors() -> None:
    table = RoutingTable.bootstrap(2, node_id=1)
    for vshard in (-1, 1024, 70000):
        with pytest.raises(UnknownVShard):
            table.group_for_vshard(vshard)
    for group in (3, -1, 2**40):
        with pytest.raises(UnknownGroup):
            table.route(group)
        with pytest.raises(UnknownGroup):
            table.leader_for_group(group)
        with pytest.raises(UnknownGroup):
            table.vshards_of_group(group)
    assert issubclass(InvalidRoute, ClusterError)
    assert issubclass(MalformedRoutingTable, ClusterError)


def test_constructor_checks_invariants() -> None:
    routes = [GroupRoute(0, 1, (1,), ()), GroupRoute(1, 1, (1,), ())]
    ones = np.ones(NUM_VSHARDS, dtype=np.uint32)
    assert RoutingTable(ones, routes, epoch=4).epoch == 4
    with pytest.raises(InvalidRoute, match="metadata group 0 is missing"):
        RoutingTable(ones, routes[1:], epoch=1)
    with pytest.raises(InvalidRoute, match="appears twice"):
        RoutingTable(ones, [*routes, routes[1]], epoch=1)
    zeros = ones.copy()
    zeros[9] = 0
    with pytest.raises(InvalidRoute, match="vShard 9 is assigned to the metadata group"):
        RoutingTable(zeros, routes, epoch=1)
    twos = ones.copy()
    twos[3] = 2
    with pytest.raises(InvalidRoute, match="unknown group 2"):
        RoutingTable(twos, routes, epoch=1)
    with pytest.raises(InvalidRoute, match="1024 integers"):
        RoutingTable(ones[:10], routes, epoch=1)


# --- batch wrappers -------------------------------------------------------------------------------


def test_batch_wrappers_read_the_current_arrays() -> None:
    table = RoutingTable.bootstrap(3, node_id=1)
    table.add_group(4, [5, 6])
    table.set_leader(4, 6)
    keys = [b"user:%d" % i for i in range(2000)]
    vshards = [xxhash.xxh3_64_intdigest(k) % NUM_VSHARDS for k in keys]
    for v in vshards[:50]:
        table.assign_vshard(v, 4)
    expected = [int(table.vshard_to_leader[v]) for v in vshards]
    assert table.leaders_for_keys(keys).tolist() == expected
    assert [table.leader_for_key(k) for k in keys[:100]] == expected[:100]
    assert table.leaders_for_vshards(np.array(vshards, dtype=np.uint16)).tolist() == expected
    groups = table.groups_for_vshards(vshards)
    assert groups.tolist() == [table.group_for_vshard(v) for v in vshards]
    assert 6 in expected
    assert 1 in expected


# --- encode / decode ------------------------------------------------------------------------------


def test_encode_is_named_and_stable() -> None:
    table = RoutingTable.bootstrap(2, node_id=3)
    document = msgpack.unpackb(table.encode())
    assert list(document) == ["format", "epoch", "vshard_to_group", "groups"]
    assert document["format"] == 1
    assert document["epoch"] == 1
    assert document["vshard_to_group"][:4] == [1, 2, 1, 2]
    assert document["groups"][0] == {"group_id": 0, "leader": 3, "voters": [3], "learners": []}
    assert table.encode() == RoutingTable.bootstrap(2, node_id=3).encode()


node_ids = st.integers(1, 2**64 - 1)


@st.composite
def routing_tables(draw: st.DrawFn) -> RoutingTable:
    """Arbitrary valid tables: random groups and members, every vShard on some data group."""
    data_groups = draw(st.lists(st.integers(1, 2**32 - 1), min_size=1, max_size=12, unique=True))
    routes = []
    for group in [0, *data_groups]:
        members = draw(st.lists(node_ids, min_size=1, max_size=8, unique=True))
        cut = draw(st.integers(1, len(members)))
        voters, learners = tuple(members[:cut]), tuple(members[cut:])
        leader = draw(st.sampled_from((0, *voters)))
        routes.append(GroupRoute(group, leader, voters, learners))
    picks = draw(st.lists(st.sampled_from(data_groups), min_size=1, max_size=16))
    assignment = np.array([picks[v % len(picks)] for v in range(NUM_VSHARDS)], dtype=np.uint32)
    return RoutingTable(assignment, routes, epoch=draw(st.integers(0, 2**64 - 1)))


@settings(max_examples=150, deadline=None)
@given(routing_tables())
def test_encode_decode_is_lossless(table: RoutingTable) -> None:
    encoded = table.encode()
    decoded = RoutingTable.decode(encoded)
    assert decoded == table
    assert decoded.encode() == encoded
    assert decoded.vshard_to_leader.tolist() == table.vshard_to_leader.tolist()
    assert RoutingTable.decode(bytearray(encoded)) == table
    assert RoutingTable.decode(memoryview(encoded)) == table


def test_equality() -> None:
    a = RoutingTable.bootstrap(2, node_id=1)
    b = RoutingTable.bootstrap(2, node_id=1)
    assert a == b
    b.set_leader(1, 1)
    assert a != b  # same routes, different epoch
    a.set_leader(1, 1)
    assert a == b
    a.assign_vshard(0, 2)
    b.assign_vshard(1, 1)
    assert a != b
    assert a != "not a table"


def _valid_document() -> dict[str, object]:
    document: dict[str, object] = msgpack.unpackb(RoutingTable.bootstrap(2, node_id=1).encode())
    return document


def _with(**fields: object) -> bytes:
    document = _valid_document()
    document.update(fields)
    packed: bytes = msgpack.packb(document)
    return packed


MALFORMED = {
    "empty": b"",
    "not msgpack": b"\xc1",
    "trailing bytes": RoutingTable.bootstrap(2, node_id=1).encode() + b"\x00",
    "a list": msgpack.packb([1, 2, 3]),
    "wrong format": _with(format=2),
    "bool format": _with(format=True),
    "missing field": msgpack.packb({"format": 1, "epoch": 1, "groups": []}),
    "extra field": _with(extra=1),
    "short assignment": _with(vshard_to_group=[1] * 1023),
    "negative group id": _with(vshard_to_group=[-1] * 1024),
    "vshard on group 0": _with(vshard_to_group=[0] * 1024),
    "vshard on unknown group": _with(vshard_to_group=[9] * 1024),
    "string group id": _with(vshard_to_group=["1"] * 1024),
    "groups not a list": _with(groups={"0": 1}),
    "group not a map": _with(groups=[1, 2]),
    "group without voters": _with(
        groups=[
            {"group_id": 0, "leader": 0, "voters": [], "learners": []},
            {"group_id": 1, "leader": 0, "voters": [1], "learners": []},
            {"group_id": 2, "leader": 0, "voters": [1], "learners": []},
        ]
    ),
    "leader not a voter": _with(
        groups=[
            {"group_id": 0, "leader": 2, "voters": [1], "learners": []},
            {"group_id": 1, "leader": 0, "voters": [1], "learners": []},
            {"group_id": 2, "leader": 0, "voters": [1], "learners": []},
        ]
    ),
    "float epoch": _with(epoch=1.5),
    "negative epoch": _with(epoch=-1),
    "bool voter": _with(
        groups=[
            {"group_id": 0, "leader": 0, "voters": [True], "learners": []},
            {"group_id": 1, "leader": 0, "voters": [1], "learners": []},
            {"group_id": 2, "leader": 0, "voters": [1], "learners": []},
        ]
    ),
    "binary field": msgpack.packb({b"format": 1}, use_bin_type=True),
    "huge": b"\x00" * (9 * 1024 * 1024),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_input_raises_a_typed_error(name: str) -> None:
    with pytest.raises(MalformedRoutingTable):
        RoutingTable.decode(MALFORMED[name])


def test_decode_rejects_non_bytes() -> None:
    with pytest.raises(MalformedRoutingTable, match="expected bytes"):
        RoutingTable.decode("text")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_corrupted_encodings_never_escape_the_typed_error(data: st.DataObject) -> None:
    """Truncations and byte flips of a valid encoding decode or raise MalformedRoutingTable."""
    encoded = bytearray(RoutingTable.bootstrap(3, node_id=2).encode())
    if data.draw(st.booleans()):
        del encoded[data.draw(st.integers(0, len(encoded) - 1)) :]
    else:
        index = data.draw(st.integers(0, len(encoded) - 1))
        encoded[index] = data.draw(st.integers(0, 255))
    try:
        table = RoutingTable.decode(bytes(encoded))
    except MalformedRoutingTable:
        return
    _assert_consistent(table)


# --- random mutator sequences against a plain-dict model ---------------------------------------

Step = tuple[str, int, int, list[int], list[int]]
"""(mutator, a, b, voters, learners): a is the vShard for assign_vshard, else a % 8 - 1 is the
group (-1..6, so unknown groups occur); b picks the node (set_leader) or is the group
(assign_vshard)."""

steps_strategy = st.lists(
    st.tuples(
        st.sampled_from(["set_leader", "set_members", "add_group", "assign_vshard"]),
        st.integers(-2, 1026),
        st.integers(0, 6),
        st.lists(st.integers(0, 6), max_size=4, unique=True),
        st.lists(st.integers(1, 6), max_size=2, unique=True),
    ),
    min_size=5,
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(steps_strategy)
def test_random_mutations_match_a_model(steps: list[Step]) -> None:
    """Each call either applies exactly (epoch +1, model updated) or raises and changes nothing."""
    table = RoutingTable.bootstrap(2, node_id=1)
    model_groups = {g: table.route(g) for g in table.group_ids}
    model_assignment = table.vshard_to_group.tolist()
    applied = 0
    for kind, a, b, voters, learners in steps:
        before_epoch, before_bytes = table.epoch, table.encode()
        group = a % 8 - 1
        try:
            if kind == "set_leader":
                # b < 5 names one of the group's voters (valid); 5 and 6 are taken literally.
                known = model_groups.get(group)
                node = known.voters[b % len(known.voters)] if known and b < 5 else b
                table.set_leader(group, node)
                r = model_groups[group]
                model_groups[group] = GroupRoute(group, node, r.voters, r.learners)
            elif kind == "set_members":
                table.set_members(group, voters, learners)
                leader = model_groups[group].leader
                leader = leader if leader in voters else 0
                model_groups[group] = GroupRoute(group, leader, tuple(voters), tuple(learners))
            elif kind == "add_group":
                table.add_group(group, voters)
                model_groups[group] = GroupRoute(group, 0, tuple(voters), ())
            else:
                table.assign_vshard(a, b)
                model_assignment[a] = b
        except (InvalidRoute, UnknownGroup, UnknownVShard):
            assert table.epoch == before_epoch
            assert table.encode() == before_bytes
            continue
        applied += 1
        event(f"applied {kind}")
        assert table.epoch == before_epoch + 1
        assert {g: table.route(g) for g in table.group_ids} == model_groups
        assert table.vshard_to_group.tolist() == model_assignment
        _assert_consistent(table)
    assert table.epoch == 1 + applied
    assert RoutingTable.decode(table.encode()) == table
