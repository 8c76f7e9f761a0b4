"""The metadata group's commands, placement rules and state machine (group 0)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.catalog import Catalog
from nodedb_cluster.metadata.applier import (
    SAVE_INTERVAL_S,
    Applied,
    MetadataState,
    MetadataStateMachine,
    Refused,
)
from nodedb_cluster.metadata.commands import (
    AddGroupLearner,
    AddNode,
    AssignVShard,
    MalformedCommand,
    MetadataEntry,
    PromoteGroupLearner,
    PutSetting,
    RemoveGroupMember,
    RemoveNode,
    ReplaceGroupVoter,
    SetGroupLeader,
    SetGroupMembers,
    SetNodeState,
)
from nodedb_cluster.metadata.group import RESULT_APPLIED, MetadataGroup
from nodedb_cluster.metadata.placement import plan_join, plan_promotion, plan_removal
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.topology import NodeInfo, NodeState, Topology

RF = 3
NUM_GROUPS = 4


def node(node_id: int, port: int | None = None) -> NodeInfo:
    addr = parse_socket_addr(f"127.0.0.{node_id}:{port or 9400}")
    return NodeInfo(node_id, addr, NodeState.ACTIVE, 1)


def bootstrap_state() -> MetadataState:
    topology = Topology([node(1)])
    routing = RoutingTable.bootstrap(NUM_GROUPS, 1)
    return MetadataState(topology, routing, {}, applied_index=0)


def join_entry(state: MetadataState, new: NodeInfo) -> bytes:
    return MetadataEntry((AddNode(new), *plan_join(state.routing, new.node_id, RF))).encode()


class Recorder:
    def __init__(self) -> None:
        self.saved: list[int] = []

    def __call__(self, state: MetadataState) -> None:
        self.saved.append(state.applied_index)


# --- codec ----------------------------------------------------------------------------------------


def test_every_command_round_trips() -> None:
    entry = MetadataEntry(
        (
            AddNode(NodeInfo(9, parse_socket_addr("[::1]:1"), NodeState.LEARNER, 3, b"p" * 32)),
            SetNodeState(9, NodeState.DRAINING),
            RemoveNode(9),
            SetGroupMembers(2, (1, 2), (3,)),
            AddGroupLearner(2, 4, 3),
            PromoteGroupLearner(2, 4, 3),
            RemoveGroupMember(2, 3),
            ReplaceGroupVoter(2, 3, 4),
            AssignVShard(1023, 2),
            PutSetting("rf", 3),
            PutSetting("name", "x"),
            SetGroupLeader(2, 4),
        )
    )
    assert MetadataEntry.decode(entry.encode()) == entry


@pytest.mark.parametrize(
    "doc",
    [
        {"format": 2, "commands": []},
        {"format": 1, "commands": [{"op": "launch_rockets"}]},
        {"format": 1, "commands": [{"op": "set_node_state", "node_id": 1, "state": 99}]},
        {"format": 1, "commands": [{"op": "set_group_members", "group_id": 1, "voters": ["a"]}]},
        {"format": 1, "commands": [{"op": "add_node", "node": {"node_id": 0}}]},
        {"format": 1, "commands": "nope"},
    ],
)
def test_malformed_entries_are_typed_errors(doc: object) -> None:
    with pytest.raises(MalformedCommand):
        MetadataEntry.decode(msgpack.packb(doc))


@given(st.binary(max_size=256))
def test_arbitrary_bytes_decode_or_raise_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedCommand):
        MetadataEntry.decode(data)


# --- placement ------------------------------------------------------------------------------------


def test_joins_fill_groups_to_rf_and_no_further() -> None:
    state = bootstrap_state()
    machine = MetadataStateMachine(state, Recorder())
    index = 0
    for new in (2, 3, 4):
        index += 1
        assert machine.apply_batch([(index, join_entry(machine.state, node(new)))]) == [
            Applied(index)
        ]
        # Promote every learner that placement allows (the control plane does this once caught up).
        for group_id in machine.state.routing.group_ids:
            change = plan_promotion(machine.state.routing, group_id, new, RF)
            if change is not None:
                index += 1
                entry = MetadataEntry((change,)).encode()
                assert machine.apply_batch([(index, entry)]) == [Applied(index)]
    routing = machine.state.routing
    for group_id in range(1, NUM_GROUPS + 1):
        route = routing.route(group_id)
        assert len(route.voters) == RF, route
        assert 4 not in route.voters
        assert 4 not in route.learners
    # Group 0 takes every node: RF voters, the rest as permanent learners.
    assert len(routing.route(0).voters) == RF
    assert routing.route(0).learners == (4,)
    # raft_groups in the topology follows the routing table.
    assert machine.state.topology.get(4).raft_groups == (0,)  # type: ignore[union-attr]
    assert machine.state.topology.get(2).raft_groups == (0, 1, 2, 3, 4)  # type: ignore[union-attr]


def test_promotion_is_refused_past_rf_and_for_non_learners() -> None:
    routing = RoutingTable.bootstrap(1, 1)
    routing.set_members(1, (1, 2, 3), (4,))
    assert plan_promotion(routing, 1, 4, RF) is None
    assert plan_promotion(routing, 1, 5, RF) is None


def test_removal_never_empties_a_group() -> None:
    machine = MetadataStateMachine(bootstrap_state(), Recorder())
    machine.apply_batch([(1, join_entry(machine.state, node(2)))])
    promote = plan_promotion(machine.state.routing, 1, 2, RF)
    assert promote is not None
    machine.apply_batch([(2, MetadataEntry((promote,)).encode())])
    removal = plan_removal(machine.state.routing, 1)
    assert {c.group_id for c in removal} == {0, 1, 2, 3, 4}
    assert machine.apply_batch([(3, MetadataEntry(removal).encode())]) == [Applied(3)]
    routing = machine.state.routing
    assert routing.route(1).voters == (2,)  # node 2 had been promoted in group 1
    assert routing.route(2).voters == (1,)  # the last voter stays until replaced


def test_a_replica_move_puts_the_learner_in_the_old_voters_place_only_when_it_can() -> None:
    """ReplaceGroupVoter (a replica move's last step) is judged at apply time: the learner takes
    a voter's place; a learner `old` just leaves; anything else (not a learner, not a member,
    the same node) changes nothing, identically on every node."""
    state = bootstrap_state()
    for n in (2, 3, 4):
        state.topology.add(node(n))
    state.routing.set_members(1, (1, 2, 3), (4,))
    state.routing.set_members(2, (1, 2, 3), (4,))
    machine = MetadataStateMachine(state, Recorder())
    entries = [
        ReplaceGroupVoter(1, 2, 4),  # 4 takes 2's place
        ReplaceGroupVoter(1, 3, 4),  # 4 is no longer a learner: no effect
        ReplaceGroupVoter(2, 4, 4),  # the same node: no effect
        ReplaceGroupVoter(2, 9, 4),  # 9 is not a member: no effect
        ReplaceGroupVoter(3, 1, 4),  # 4 is not a learner of group 3: no effect
    ]
    results = machine.apply_batch(
        [(i + 1, MetadataEntry((c,)).encode()) for i, c in enumerate(entries)]
    )
    assert results == [Applied(i + 1) for i in range(len(entries))]
    routing = machine.state.routing
    assert (routing.route(1).voters, routing.route(1).learners) == ((1, 4, 3), ())
    assert (routing.route(2).voters, routing.route(2).learners) == ((1, 2, 3), (4,))
    assert routing.route(3).voters == (1,)
    # A learner `old` leaves; `new` stays a learner (promoted later if the group is short).
    machine.apply_batch(
        [
            (6, MetadataEntry((SetGroupMembers(2, (1, 2), (3, 4)),)).encode()),
            (7, MetadataEntry((ReplaceGroupVoter(2, 3, 4),)).encode()),
        ]
    )
    assert (machine.state.routing.route(2).voters, machine.state.routing.route(2).learners) == (
        (1, 2),
        (4,),
    )


def test_joins_decided_on_the_same_state_both_land_and_respect_rf() -> None:
    machine = MetadataStateMachine(bootstrap_state(), Recorder())
    stale = machine.state  # every decision below is taken on this one view
    entries = [join_entry(stale, node(n)) for n in (2, 3, 4)]
    # A promotion of node 2 decided before node 3 and 4 joined, applied after them.
    machine.apply_batch([(i, e) for i, e in enumerate(entries, start=1)])
    promote = PromoteGroupLearner(0, 2, RF)
    machine.apply_batch([(4, MetadataEntry((promote,)).encode())])
    routing = machine.state.routing
    assert routing.route(0).voters == (1, 2)
    assert set(routing.route(0).learners) == {3, 4}  # nobody dropped by a stale member list
    for g in range(1, NUM_GROUPS + 1):
        route = routing.route(g)
        assert len(route.voters) + len(route.learners) == RF  # the cap held at apply time
        assert 4 not in route.learners


# --- the state machine ----------------------------------------------------------------------------


def test_refused_entry_changes_nothing_and_is_refused_everywhere() -> None:
    elsewhere = dataclasses.replace(node(1, port=9999), spki_pin=b"k" * 32)  # another key
    bad = MetadataEntry((SetNodeState(1, NodeState.DRAINING), AddNode(elsewhere))).encode()
    results = []
    for _ in range(2):
        machine = MetadataStateMachine(bootstrap_state(), Recorder())
        before = machine.state.topology.encode(), machine.state.routing.encode()
        [result] = machine.apply_batch([(1, bad)])
        assert isinstance(result, Refused)
        assert "already belongs to" in result.reason
        assert (machine.state.topology.encode(), machine.state.routing.encode()) == before
        assert machine.state.applied_index == 1  # refused entries are still consumed
        results.append(result)
    assert results[0] == results[1]


def test_a_member_moves_to_another_address_with_its_pinned_key_and_to_no_one_elses() -> None:
    pin = b"p" * 32
    machine = MetadataStateMachine(bootstrap_state(), Recorder())
    two = dataclasses.replace(node(2), spki_pin=pin)
    assert machine.apply_batch([(1, join_entry(machine.state, two))]) == [Applied(1)]
    version = machine.state.topology.version
    moved = dataclasses.replace(two, addr=parse_socket_addr("127.0.0.9:9400"))
    moved = dataclasses.replace(moved, swim_addr=parse_socket_addr("127.0.0.9:9401"))
    assert machine.apply_batch([(2, MetadataEntry((AddNode(moved),)).encode())]) == [Applied(2)]
    recorded = machine.state.topology[2]
    assert (recorded.addr, recorded.swim_addr) == (moved.addr, moved.swim_addr)
    assert machine.state.topology.version == version + 1
    # Another member's address, or another key: refused, nothing changed.
    taken = dataclasses.replace(two, addr=node(1).addr)
    rekeyed = dataclasses.replace(two, spki_pin=b"q" * 32, addr=parse_socket_addr("127.0.0.8:1"))
    for index, bad in ((3, taken), (4, rekeyed)):
        [result] = machine.apply_batch([(index, MetadataEntry((AddNode(bad),)).encode())])
        assert isinstance(result, Refused)
        assert "already belongs to" in result.reason
        assert machine.state.topology[2] == recorded


def test_members_must_be_in_the_topology() -> None:
    machine = MetadataStateMachine(bootstrap_state(), Recorder())
    [result] = machine.apply_batch([(1, MetadataEntry((SetGroupMembers(1, (1, 7), ()),)).encode())])
    assert isinstance(result, Refused)
    assert "node 7" in result.reason


def test_replayed_and_empty_entries_have_no_effect_and_the_newest_state_is_saved() -> None:
    recorder = Recorder()
    machine = MetadataStateMachine(bootstrap_state(), recorder)
    entry = join_entry(machine.state, node(2))
    assert machine.apply_batch([(1, b""), (2, entry)]) == [Applied(1), Applied(2)]
    version = machine.state.topology.version
    assert machine.apply_batch([(2, entry)]) == [Applied(2)]  # at or below applied: skipped
    assert machine.state.topology.version == version
    assert machine.flush(5.0)
    # Saved behind the apply: once per batch or once for both (the newest covers the older).
    assert recorder.saved in ([2], [2, 2])
    machine.close()


def test_the_apply_never_waits_for_the_save(tmp_path: Path) -> None:
    """The driver thread applies; a slow disk only delays the catalog checkpoint."""
    release = threading.Event()
    saved: list[int] = []

    def slow_persist(state: MetadataState) -> None:
        assert release.wait(10.0)
        saved.append(state.applied_index)

    machine = MetadataStateMachine(bootstrap_state(), slow_persist)
    for i in range(1, 51):
        machine.apply_batch([(i, b"")])  # returns although the save is blocked
    assert machine.state.applied_index == 50
    assert not machine.flush(0.05)
    release.set()
    assert machine.flush(5.0)
    assert saved[-1] == 50
    assert len(saved) <= 2  # the first, then the newest: not 50 saves
    machine.close()


def test_a_burst_of_batches_is_saved_once_per_interval_and_flush_does_not_wait() -> None:
    """Tens of changes a second (a plan of vShard moves) cost a save per SAVE_INTERVAL_S, not
    one each; `flush` cuts the interval short."""
    saved: list[tuple[int, float]] = []
    machine = MetadataStateMachine(
        bootstrap_state(), lambda state: saved.append((state.applied_index, time.monotonic()))
    )
    assert machine.flush(5.0)  # nothing pending
    start = time.monotonic()
    index = 0
    while time.monotonic() - start < 3 * SAVE_INTERVAL_S:
        index += 1
        machine.apply_batch([(index, b"")])
        time.sleep(0.002)  # the pace of the burst, not a synchronisation
    assert index > 30
    flushed = time.monotonic()
    assert machine.flush(5.0)
    assert time.monotonic() - flushed < SAVE_INTERVAL_S / 2, "flush skipped the interval"
    assert saved[-1][0] == index, "the newest state is saved"
    assert len(saved) <= 6, f"{len(saved)} saves for {index} batches"
    gaps = [b - a for (_, a), (_, b) in list(itertools.pairwise(saved))[:-1]]
    assert all(gap >= SAVE_INTERVAL_S * 0.9 for gap in gaps), gaps
    machine.close()


def test_identical_logs_give_identical_state() -> None:
    machines = [MetadataStateMachine(bootstrap_state(), Recorder()) for _ in range(3)]
    log: list[tuple[int, bytes]] = []
    reference = MetadataStateMachine(bootstrap_state(), Recorder())
    for i, new in enumerate((2, 3, 5), start=1):
        data = join_entry(reference.state, node(new))
        reference.apply_batch([(i, data)])
        log.append((i, data))
    log.append((4, MetadataEntry((PutSetting("k", "v"), AssignVShard(7, 2))).encode()))
    for m, split in zip(machines, (1, 2, 4), strict=True):  # different batch boundaries
        m.apply_batch(log[:split])
        m.apply_batch(log[split:])
    encoded = {(m.state.topology.encode(), m.state.routing.encode()) for m in machines}
    assert len(encoded) == 1
    assert machines[0].state.settings == {"k": "v"}


def test_state_persists_to_the_catalog_and_restart_resumes_after_it(tmp_path: Path) -> None:
    with Catalog.open(tmp_path) as catalog:
        state = bootstrap_state()
        catalog.save_formation("c1", state.topology, state.routing)

        def persist(s: MetadataState) -> None:
            catalog.save_metadata_state(s.topology, s.routing, s.settings, s.applied_index)

        machine = MetadataStateMachine(state, persist)
        machine.apply_batch([(1, join_entry(state, node(2))), (2, MetadataEntry(()).encode())])
        machine.close()  # writes what is pending
    with Catalog.open(tmp_path) as catalog:
        formation = catalog.load_formation()
        assert formation is not None
        assert catalog.load_metadata_applied_index() == 2
        assert formation.topology == machine.state.topology
        assert formation.routing == machine.state.routing


class LoopClosingOnCall(asyncio.SelectorEventLoop):
    """A real loop that closes at the worst moment: between the caller's `is_closed()` check
    and its `call_soon_threadsafe` (as when the node shuts down meanwhile)."""

    def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> asyncio.Handle:
        self.close()
        return super().call_soon_threadsafe(*args, **kwargs)


@pytest.mark.parametrize("closed_before", [True, False])
def test_a_closed_loop_does_not_fail_the_apply(closed_before: bool) -> None:
    """The metadata group tells the node's loop of each change from the driver thread. Once
    the loop has closed (the node shuts down) nobody is left to tell; raising there would stop
    the engine as if the state machine had failed (a raising apply stops it)."""
    recorder = Recorder()
    loop = LoopClosingOnCall()
    if closed_before:
        loop.close()
    group = MetadataGroup(bootstrap_state(), recorder, loop, lambda _state: None)
    entry = join_entry(group.machine.state, node(2))
    assert group.apply_batch([(1, entry)]) == [RESULT_APPLIED]
    assert loop.is_closed()
    group.machine.close()


def test_a_leader_hint_is_recorded_only_for_a_voter_and_never_refuses_its_entry() -> None:
    """`SetGroupLeader` is a leader's report of itself: recorded when the node is a voter of the
    group; a stale or impossible one changes nothing (epoch included) and is not refused, so an
    entry of hints for several groups lands even when one of them was removed meanwhile."""
    machine = MetadataStateMachine(bootstrap_state(), Recorder())
    machine.apply_batch(
        [(1, join_entry(machine.state, node(2))), (2, join_entry(machine.state, node(3)))]
    )
    machine.apply_batch([(3, MetadataEntry((SetGroupMembers(1, (1, 2, 3), ()),)).encode())])
    epoch = machine.state.routing.epoch
    hints = MetadataEntry((SetGroupLeader(1, 2), SetGroupLeader(2, 3), SetGroupLeader(99, 2)))
    assert machine.apply_batch([(4, hints.encode())]) == [Applied(4)]
    routing = machine.state.routing
    assert routing.route(1).leader == 2
    assert routing.route(2).leader == 1, "node 3 is a learner of group 2, not a voter"
    assert routing.epoch == epoch + 1
    assert machine.apply_batch([(5, MetadataEntry((SetGroupLeader(1, 2),)).encode())])
    assert machine.state.routing.epoch == epoch + 1, "restating the leader changes nothing"
    machine.close()
