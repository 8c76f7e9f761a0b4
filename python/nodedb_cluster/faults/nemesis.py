"""The nemesis's plan: a seeded, printable schedule of faults (pure; `faults.run` executes it).

Faults start one at a time, each held for `hold_s` and then healed, so the cluster always gets
a majority back before the next one: the runs test recovery, not unavailability. Membership
faults outlive their hold on purpose: an added node keeps taking replicas and a decommissioned
one keeps draining while the next kills, pauses and partitions fire. Placement faults too: a
`move_vshard` fault begins moves of the workload's vShards and may hit the mover (the source
group's leader) at once with a kill, pause or partition; `add_groups` adds data groups, after
which the rebalancer moves vShards into them while the next faults fire. `readdress` kills a
node and restarts it at another address (its certificate issued again for it), which it
records through the metadata group while the next faults fire.
The same seed, duration, node ids, spares, groups and vShards always give the same schedule.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

FaultKind = Literal[
    "kill",
    "kill_leader",
    "pause",
    "restart_all",
    "partition",
    "add_node",
    "decommission",
    "move_vshard",
    "add_groups",
    "readdress",
]
FAULT_KINDS: Final[tuple[FaultKind, ...]] = get_args(FaultKind)
MoverFault = Literal["", "kill", "pause", "partition"]
MOVER_FAULTS: Final[tuple[MoverFault, ...]] = ("", "kill", "pause", "partition")
"""What hits a move's mover (the first vShard's source leader) right after the moves begin:
nothing, SIGKILL (restart after the hold), SIGSTOP or isolation (both for the hold)."""
MOVE_VSHARDS_MAX: Final = 4
"""vShards one `move_vshard` fault moves at once (the default concurrent-move limit)."""
ADD_GROUPS_PER_SCHEDULE_MAX: Final = 2
"""`add_groups` faults in one schedule."""
DATA_GROUPS_MAX: Final = 8
"""`add_groups` never takes the data groups past this (each fault adds 1 or 2)."""
NODE_KINDS: Final[frozenset[FaultKind]] = frozenset(
    ("kill", "pause", "partition", "decommission", "readdress")
)
"""Kinds aimed at one existing node (`Fault.node_id`)."""
LIMITED_KINDS: Final[frozenset[FaultKind]] = frozenset(
    ("add_node", "decommission", "move_vshard", "add_groups")
)
"""Kinds that can run out (no spare, RF reached, no vShard, the group bound)."""
WARMUP_S: Final = 1.5
"""Load runs this long before the first fault (a baseline in the history)."""
HOLD_S_RANGE: Final = (1.0, 3.0)
"""How long a fault is held before it is healed."""
GAP_S_RANGE: Final = (0.5, 2.0)
"""Quiet time between a heal and the next fault."""
FAULTS_MAX: Final = 64
"""Bound on the faults in one schedule, whatever the duration."""
KILL_DRAINING_P: Final = 0.5
"""Share of decommissions whose node is SIGKILLed as it starts draining (`Fault.kill_draining`)."""
DRAINING_TARGETABLE_S: Final = 6.0
"""A decommissioned node stays a target of kill / pause / partition this long after the
decommission starts (it is DRAINING meanwhile, the case to exercise); never afterwards (it is
retired and stopped once drained)."""


@dataclass(frozen=True, slots=True)
class Fault:
    at_s: float
    """Offset from the start of the load."""
    kind: FaultKind
    hold_s: float
    node_id: int = 0
    """kill / pause / partition (the node cut off from every other node) / decommission /
    add_node (the spare slot started)."""
    group_id: int = 0
    """kill_leader: the group whose leader (found when the fault fires) is killed."""
    kill_draining: bool = False
    """decommission: SIGKILL the node right after it starts draining (restart after the hold):
    a drain takes about a second on loopback, too short for the next fault to land in it."""
    vshards: tuple[int, ...] = ()
    """move_vshard: the vShards moved (each one some workload key hashes to)."""
    target_pick: float = 0.0
    """move_vshard: picks the target among the data groups other than the first vShard's
    source when the fault fires (the groups then depend on earlier `add_groups`)."""
    mover_fault: MoverFault = ""
    """move_vshard: what hits the first vShard's source leader (its mover) right after."""
    count: int = 0
    """add_groups: how many data groups are added."""

    def describe(self) -> str:
        what = {
            "kill": f"SIGKILL node {self.node_id}, restart after {self.hold_s:.2f} s",
            "kill_leader": f"SIGKILL leader of group {self.group_id}, restart after "
            f"{self.hold_s:.2f} s",
            "pause": f"SIGSTOP node {self.node_id} for {self.hold_s:.2f} s",
            "restart_all": f"SIGKILL every node, restart all after {self.hold_s:.2f} s",
            "partition": f"isolate node {self.node_id} from its peers for {self.hold_s:.2f} s",
            "add_node": f"start spare node {self.node_id}, then {self.hold_s:.2f} s",
            "decommission": f"decommission node {self.node_id}"
            + (", SIGKILL it while it drains, restart" if self.kill_draining else ", wait")
            + f" {self.hold_s:.2f} s",
            "move_vshard": f"move vShards {list(self.vshards)} to another group "
            f"(pick {self.target_pick:.2f})"
            + (f", {self.mover_fault} the mover" if self.mover_fault else "")
            + f", {self.hold_s:.2f} s",
            "add_groups": f"add {self.count} data group{'s' if self.count > 1 else ''}, then "
            f"{self.hold_s:.2f} s",
            "readdress": f"SIGKILL node {self.node_id}, restart it at another address after "
            f"{self.hold_s:.2f} s",
        }[self.kind]
        return f"t+{self.at_s:6.2f}s  {what}"


@dataclass(slots=True)
class _Membership:
    """The plan's model of who runs: what each membership fault may pick from."""

    active: list[int]
    spares: list[int]
    replication_factor: int
    draining: dict[int, float] = field(default_factory=dict)
    """Decommissioned node -> when its decommission was planned."""
    vshards: tuple[int, ...] = ()
    data_groups: int = 0
    groups_added: int = 0
    """`add_groups` faults planned so far."""

    def targets(self, t: float) -> list[int]:
        """Nodes a kill / pause / partition may hit at `t`: active, or draining recently."""
        recent = [n for n, at in self.draining.items() if t - at < DRAINING_TARGETABLE_S]
        return sorted({*self.active, *recent})

    def usable(self, kind: FaultKind) -> bool:
        if kind == "add_node":
            return bool(self.spares)
        if kind == "decommission":  # the others must still hold RF (the server refuses too)
            return len(self.active) - 1 >= self.replication_factor
        if kind == "move_vshard":
            return bool(self.vshards)
        if kind == "add_groups":
            return (
                self.groups_added < ADD_GROUPS_PER_SCHEDULE_MAX
                and self.data_groups < DATA_GROUPS_MAX
            )
        return True


def plan_schedule(
    seed: int,
    duration_s: float,
    node_ids: Sequence[int],
    group_ids: Sequence[int],
    kinds: Sequence[FaultKind] = FAULT_KINDS,
    spare_ids: Sequence[int] = (),
    replication_factor: int = 3,
    vshards: Sequence[int] = (),
    data_groups: int = 0,
) -> tuple[Fault, ...]:
    """Faults starting after `WARMUP_S`, each (with its hold) ending before `duration_s`.
    `add_node` starts the lowest unused spare; `decommission` picks an active node while the
    other active nodes can hold `replication_factor` replicas; `move_vshard` moves 1 to
    `MOVE_VSHARDS_MAX` of `vshards`; `add_groups` adds 1 or 2 to the `data_groups` there are,
    at most `ADD_GROUPS_PER_SCHEDULE_MAX` times and up to `DATA_GROUPS_MAX`."""
    if not node_ids or not kinds:
        return ()
    rng = random.Random(seed)
    members = _Membership(
        sorted(node_ids),
        sorted(spare_ids),
        replication_factor,
        vshards=tuple(sorted(set(vshards))),
        data_groups=data_groups,
    )
    groups = sorted(group_ids)
    wanted = [k for k in kinds if k != "kill_leader" or groups]
    faults: list[Fault] = []
    t = WARMUP_S
    while len(faults) < FAULTS_MAX and wanted:
        hold = round(rng.uniform(*HOLD_S_RANGE), 2)
        # One random() per choice: the kinds and times do not depend on how many groups
        # exist, and a schedule without membership kinds is what it was before they existed.
        usable = [k for k in wanted if members.usable(k)] or [
            k for k in wanted if k not in LIMITED_KINDS
        ]
        if not usable:
            break
        kind = usable[int(rng.random() * len(usable))]
        pool = members.active if kind == "decommission" else members.targets(t)
        node = pool[int(rng.random() * len(pool))]
        g = rng.random()
        group = groups[int(g * len(groups))] if groups else 0
        # Drawn only for a decommission: schedules without one keep their old draws.
        kill_draining = kind == "decommission" and rng.random() < KILL_DRAINING_P
        moved: tuple[int, ...] = ()
        target_pick = 0.0
        mover_fault: MoverFault = ""
        count = 0
        if kind == "move_vshard":  # drawn only for a move, as above
            n = min(len(members.vshards), 1 + int(rng.random() * MOVE_VSHARDS_MAX))
            moved = tuple(rng.sample(members.vshards, n))
            target_pick = rng.random()  # unrounded: stays below 1
            mover_fault = MOVER_FAULTS[int(rng.random() * len(MOVER_FAULTS))]
        elif kind == "add_groups":
            count = min(DATA_GROUPS_MAX - members.data_groups, 1 + int(rng.random() * 2))
        if t + hold > duration_s:
            break
        if kind == "add_node":
            node = members.spares.pop(0)
            members.active.append(node)
        elif kind == "decommission":
            members.active.remove(node)
            members.draining[node] = t
        elif kind == "add_groups":
            members.groups_added += 1
            members.data_groups += count
        faults.append(
            Fault(
                at_s=round(t, 2),
                kind=kind,
                hold_s=hold,
                node_id=node if kind in NODE_KINDS or kind == "add_node" else 0,
                group_id=group if kind == "kill_leader" else 0,
                kill_draining=kill_draining,
                vshards=moved,
                target_pick=target_pick,
                mover_fault=mover_fault,
                count=count,
            )
        )
        t += hold + rng.uniform(*GAP_S_RANGE)
    return tuple(faults)


def format_schedule(seed: int, faults: Sequence[Fault]) -> str:
    lines = [f"schedule seed={seed} ({len(faults)} faults)"]
    lines += ["  " + f.describe() for f in faults]
    return "\n".join(lines)
