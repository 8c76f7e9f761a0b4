"""What a data group's leader does about vShard states its KV state machine holds, given what
group 0 decided (pure: states and tables in, steps out).

A move leaves marks in the two groups' state machines: the target holds the vShard `incoming`
(refusing it with Paused), the source `tracking` or `frozen` (Paused) while the move runs, and
`moved` (answering Moved to the new group) after it. The mover clears them as it goes; when it
died, or lost its leadership, between group 0's decision and its last step, the marks stay. This
function is the rest of the protocol: for each mark whose move is no longer in flight, the step
that matches group 0's outcome (finished: activate the target, release the source; aborted:
unfreeze the source, drop the target's copy). A mark of a move still in flight is the mover's.

Every step names the move it ends (`move_id`), and the state machine ignores a step for another
move, so a step decided on an old view can never end a newer move of the same vShard.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from nodedb_cluster.metadata.vshard_moves import VShardMoves
from nodedb_cluster.routing.table import RoutingTable

INCOMING: Final = "incoming"
TRACKING: Final = "tracking"
FROZEN: Final = "frozen"
MOVED: Final = "moved"

StepOp = Literal["activate", "drop", "unfreeze", "release"]


@dataclass(frozen=True, slots=True)
class VShardMark:
    """A vShard's mark in one group's state machine."""

    state: str
    """INCOMING, TRACKING, FROZEN or MOVED."""
    group: int
    """INCOMING: the source; FROZEN and MOVED: the target; TRACKING: the target."""
    move_id: int


@dataclass(frozen=True, slots=True)
class Step:
    """Propose `op` for `vshard` (move `move_id`) to the group whose marks were given."""

    op: StepOp
    vshard: int
    move_id: int
    to_group: int = 0
    """`release`: the group the source now sends the vShard's requests to."""


def converge(
    group: int,
    marks: Mapping[int, VShardMark],
    routing: RoutingTable,
    moves: VShardMoves,
) -> list[Step]:
    """The steps that end the marks of moves no longer in flight, in vShard order. `routing`
    and `moves` must be at least as new as the marks (read group 0 with a ReadIndex first): a
    move begins in group 0 before its first mark is written."""
    steps: list[Step] = []
    for vshard in sorted(marks):
        mark = marks[vshard]
        move = moves.get(vshard)
        if move is not None and move.move_id == mark.move_id:
            continue  # the mover's
        owner = routing.group_for_vshard(vshard)
        if mark.state == INCOMING:
            op: StepOp = "activate" if owner == group else "drop"
            steps.append(Step(op, vshard, mark.move_id))
        elif mark.state in (TRACKING, FROZEN):
            if owner == group:
                steps.append(Step("unfreeze", vshard, mark.move_id))
            else:
                steps.append(Step("release", vshard, mark.move_id, owner))
        elif mark.state == MOVED and owner not in (group, mark.group):
            steps.append(Step("release", vshard, mark.move_id, owner))  # moved on since
    return steps
