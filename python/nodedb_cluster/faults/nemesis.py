"""The nemesis's plan: a seeded, printable schedule of faults (pure; `faults.run` executes it).

Faults run one at a time, each held for `hold_s` and then healed, so a 3-node cluster always
gets a majority back before the next one: the runs test recovery, not unavailability.
The same seed, duration, node ids and groups always give the same schedule.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

FaultKind = Literal["kill", "kill_leader", "pause", "restart_all", "partition"]
FAULT_KINDS: Final[tuple[FaultKind, ...]] = (
    "kill",
    "kill_leader",
    "pause",
    "restart_all",
    "partition",
)
WARMUP_S: Final = 1.5
"""Load runs this long before the first fault (a baseline in the history)."""
HOLD_S_RANGE: Final = (1.0, 3.0)
"""How long a fault is held before it is healed."""
GAP_S_RANGE: Final = (0.5, 2.0)
"""Quiet time between a heal and the next fault."""
FAULTS_MAX: Final = 64
"""Bound on the faults in one schedule, whatever the duration."""


@dataclass(frozen=True, slots=True)
class Fault:
    at_s: float
    """Offset from the start of the load."""
    kind: FaultKind
    hold_s: float
    node_id: int = 0
    """kill / pause / partition (the node cut off from every other node)."""
    group_id: int = 0
    """kill_leader: the group whose leader (found when the fault fires) is killed."""

    def describe(self) -> str:
        what = {
            "kill": f"SIGKILL node {self.node_id}, restart after {self.hold_s:.2f} s",
            "kill_leader": f"SIGKILL leader of group {self.group_id}, restart after "
            f"{self.hold_s:.2f} s",
            "pause": f"SIGSTOP node {self.node_id} for {self.hold_s:.2f} s",
            "restart_all": f"SIGKILL every node, restart all after {self.hold_s:.2f} s",
            "partition": f"isolate node {self.node_id} from its peers for {self.hold_s:.2f} s",
        }[self.kind]
        return f"t+{self.at_s:6.2f}s  {what}"


def plan_schedule(
    seed: int,
    duration_s: float,
    node_ids: Sequence[int],
    group_ids: Sequence[int],
    kinds: Sequence[FaultKind] = FAULT_KINDS,
) -> tuple[Fault, ...]:
    """Faults starting after `WARMUP_S`, each (with its hold) ending before `duration_s`."""
    if not node_ids or not kinds:
        return ()
    rng = random.Random(seed)
    nodes = sorted(node_ids)
    groups = sorted(group_ids)
    usable = [k for k in kinds if k != "kill_leader" or groups]
    faults: list[Fault] = []
    t = WARMUP_S
    while len(faults) < FAULTS_MAX:
        hold = round(rng.uniform(*HOLD_S_RANGE), 2)
        # One random() per choice: the kinds and times do not depend on how many groups exist.
        kind = usable[int(rng.random() * len(usable))]
        node = nodes[int(rng.random() * len(nodes))]
        g = rng.random()
        group = groups[int(g * len(groups))] if groups else 0
        if t + hold > duration_s:
            break
        faults.append(
            Fault(
                at_s=round(t, 2),
                kind=kind,
                hold_s=hold,
                node_id=node if kind in ("kill", "pause", "partition") else 0,
                group_id=group if kind == "kill_leader" else 0,
            )
        )
        t += hold + rng.uniform(*GAP_S_RANGE)
    return tuple(faults)


def format_schedule(seed: int, faults: Sequence[Fault]) -> str:
    lines = [f"schedule seed={seed} ({len(faults)} faults)"]
    lines += ["  " + f.describe() for f in faults]
    return "\n".join(lines)
