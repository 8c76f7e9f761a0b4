"""What `status` shows about SWIM's verdicts: the state and last contact per node, and the groups
that list a DEAD member (the topology keeps it ACTIVE and voting until an operator removes it, so
without this flag a dead replica looks healthy: issue 15)."""

from __future__ import annotations

import dataclasses

from nodedb_cluster.cli_support import format_status
from nodedb_cluster.raft import GroupStatus
from nodedb_cluster.status import NodeStatus


def group(group_id: int, voters: tuple[int, ...], learners: tuple[int, ...] = ()) -> GroupStatus:
    return GroupStatus(group_id, "leader", 3, 1, 10, 10, 10, 0, voters, learners)


def status(members: tuple[tuple[int, str, int, int | None], ...]) -> NodeStatus:
    return NodeStatus(
        node_id=1,
        lifecycle="ready",
        cluster_id="c",
        topology_version=4,
        routing_epoch=2,
        metadata_applied_index=9,
        nodes=(
            (1, "127.0.0.1:9400", "ACTIVE"),
            (2, "127.0.0.2:9400", "ACTIVE"),
            (3, "127.0.0.3:9400", "ACTIVE"),
            (4, "127.0.0.4:9400", "ACTIVE"),
        ),
        groups=(group(0, (1, 2, 3)), group(1, (1, 2), (3,)), group(2, (1, 2, 4))),
        vshards_per_group={1: 512, 2: 512},
        settings={},
        members=members,
    )


def test_groups_with_a_dead_member_are_flagged_in_the_doc_and_the_table() -> None:
    st = status(((2, "ALIVE", 5, 120), (3, "DEAD", 7, 9_400), (4, "SUSPECT", 1, None)))
    doc = st.to_doc()
    assert [g["dead"] for g in doc["groups"]] == [[3], [3], []]  # type: ignore[index]
    assert doc["members"] == [[2, "ALIVE", 5, 120], [3, "DEAD", 7, 9_400], [4, "SUSPECT", 1, None]]
    lines = format_status(doc).splitlines()
    node_rows = [line for line in lines if "127.0.0." in line]
    # NODE ADDRESS MEMBER REPLICAS LEADS SWIM LAST-CONTACT (no placement in this status: "-")
    assert node_rows[0].split()[5:] == ["self", "-"]
    assert node_rows[1].split()[2:] == ["ACTIVE", "-", "-", "ALIVE", "0.1", "s", "ago"]
    assert node_rows[2].split()[2:] == ["ACTIVE", "-", "-", "DEAD", "9.4", "s", "ago"]
    assert node_rows[3].split()[2:] == ["ACTIVE", "-", "-", "SUSPECT", "never"]
    group_rows = [line for line in lines if " / " in line and not line.startswith("GROUP")]
    assert group_rows[0].endswith("1,2,3 / -  DEAD: 3")
    assert group_rows[1].endswith("1,2 / 3  DEAD: 3")  # a dead learner counts too
    assert "DEAD" not in group_rows[2]


def test_without_swim_nothing_is_flagged_and_the_column_says_so() -> None:
    doc = status(()).to_doc()
    assert all(g["dead"] == [] for g in doc["groups"])  # type: ignore[attr-defined]
    text = format_status(doc)
    assert "DEAD" not in text
    row = next(line for line in text.splitlines() if "127.0.0.2:9400" in line)
    assert row.split()[2:] == ["ACTIVE", "-", "-", "-", "-"]


def test_placement_columns_and_moves_in_flight() -> None:
    """Issue 16: per node its data replicas and leaderships (from routing), and every group
    filling a learner (a replica move or a join) on a line of its own."""
    st = dataclasses.replace(
        status(()), placement=((1, 3, 2), (2, 3, 1), (3, 2, 0)), moving=((2, (4,)),)
    )
    doc = st.to_doc()
    assert doc["placement"] == [[1, 3, 2], [2, 3, 1], [3, 2, 0]]
    assert doc["moving"] == [[2, [4]]]
    text = format_status(doc)
    row = next(line for line in text.splitlines() if "127.0.0.2:9400" in line)
    assert row.split()[2:5] == ["ACTIVE", "3", "1"]
    assert "moving: group 2 is filling learner(s) 4" in text


def test_groups_without_a_replica_here_are_listed_from_group_0s_record() -> None:
    """A node shows every group, not just its own replicas: the others as group 0 records them
    (members, vShards, the leader they last reported), flagged when a member is DEAD. Before,
    a group whose replicas were all on other nodes was missing from that node's status."""
    st = dataclasses.replace(
        status(((2, "ALIVE", 5, 120), (3, "DEAD", 7, 9_400), (4, "ALIVE", 1, 30))),
        vshards_per_group={1: 512, 2: 256, 3: 256},
        elsewhere=((3, 4, (2, 3, 4), ()), (4, 0, (2, 4), (3,))),
    )
    doc = st.to_doc()
    assert doc["elsewhere"] == [
        {
            "group_id": 3,
            "leader": 4,
            "voters": [2, 3, 4],
            "learners": [],
            "vshards": 256,
            "dead": [3],
        },
        {"group_id": 4, "leader": 0, "voters": [2, 4], "learners": [3], "vshards": 0, "dead": [3]},
    ]
    rows = [line.split() for line in format_status(doc).splitlines() if "elsewhere" in line]
    assert rows[0][:8] == ["3", "elsewhere", "4", "-", "-", "-", "256", "-"]
    assert rows[0][8:] == ["2,3,4", "/", "-", "DEAD:", "3"]
    assert rows[1][:3] == ["4", "elsewhere", "-"], "no leader recorded"


def test_a_leaderless_group_is_not_said_to_fill_its_learner_and_remote_moves_say_where() -> None:
    """Found by an operator probe: a group with no leader was "filling" its learner, and a
    vShard move run by another node showed its phase as the bare word "elsewhere"."""
    leaderless = dataclasses.replace(group(1, (1, 2), (3,)), role="follower", leader_id=None)
    st = dataclasses.replace(
        status(()),
        groups=(group(0, (1, 2, 3)), leaderless, group(2, (1, 2, 4), (3,))),
        moving=((1, (3,)), (2, (3,))),
        vshard_moves=((179, 2, 1, 5, "elsewhere", 0, 0), (180, 1, 2, 6, "bulk", 3, 8)),
    )
    text = format_status(st.to_doc())
    assert "moving: group 1 has learner(s) 3 to fill, no leader" in text
    assert "moving: group 2 is filling learner(s) 3" in text
    assert "(move 5, in flight: group 2's leader runs it and its status shows the phase)" in text
    assert "(move 6, bulk, 3/8 chunks)" in text
