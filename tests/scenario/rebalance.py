"""Rebalance-planner scripts (metadata/rebalance.py): the moves one plan makes from the routing
table and the cluster's load.

    routing groups=4 node=1
    set group=1 voters=(1,2,3)
    leader group=1 node=2
    load eligible=(1,2,3,4) leaving=(3) cpu=(1:0.5) group-bytes=(1:100) vshard-bytes=(0:10)
         moving=(2)
    plan rf=3 [threshold=0.2 moves=10 concurrent=4 cpu-limit=0.8]
    apply                      # the last plan's replica moves and transfers, into routing
    add-group group=5 voters=(1,2,3)   # a group added to a live cluster (no vShards)
    vshards                    # vShards per data group
"""

from __future__ import annotations

from nodedb_cluster.metadata.rebalance import (
    ClusterLoad,
    Limits,
    MoveReplica,
    MoveVShard,
    Plan,
    plan,
)
from scenario.datadriven import ScriptError, Stanza
from scenario.render import RoutingScript, record, routing_lines


def pairs(st: Stanza, key: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for pair in st.args.get(key, ()):
        k, _, v = pair.partition(":")
        out[int(k)] = v
    return out


class RebalanceScript:
    def __init__(self) -> None:
        self.routing = RoutingScript()
        self.load = ClusterLoad(eligible=frozenset())
        self.last: Plan | None = None

    def handle(self, st: Stanza) -> str:
        match st.cmd:
            case "routing":
                return self.routing.routing(st)
            case "set":
                return self.routing.set(st)
            case "leader":
                self.routing.table.set_leader(st.get_int("group"), st.get_int("node"))
                return routing_lines(self.routing.table)
            case "load":
                self.load = ClusterLoad(
                    eligible=frozenset(st.get_ints("eligible")),
                    leaving=frozenset(st.get_ints("leaving")),
                    cpu={n: float(v) for n, v in pairs(st, "cpu").items()},
                    group_bytes={g: int(v) for g, v in pairs(st, "group-bytes").items()},
                    vshard_bytes={v: int(b) for v, b in pairs(st, "vshard-bytes").items()},
                    moving_groups=frozenset(st.get_ints("moving")),
                    vshard_moves=st.get_int("vshard-moves", 0),
                )
                return "ok"
            case "plan":
                limits = Limits(
                    imbalance_threshold=float(st.get("threshold", "0.2")),
                    moves_per_plan_max=st.get_int("moves", 10),
                    concurrent_moves_max=st.get_int("concurrent", 4),
                    cpu_backpressure=float(st.get("cpu-limit", "0.8")),
                    vshards_movable=st.get("vshards-movable", "true") == "true",
                )
                self.last = plan(self.routing.table, self.load, st.get_int("rf"), limits)
                lines = [record(m) for m in self.last.moves] or ["nothing"]
                lines += [f"held: {h}" for h in self.last.held]
                return "\n".join(lines)
            case "apply":
                return self.apply()
            case "add-group":
                self.routing.table.add_group(st.get_int("group"), st.get_ints("voters"))
                return routing_lines(self.routing.table)
            case "vshards":
                return self.vshards()
        raise ScriptError(f"{st.pos}: unknown command {st.cmd!r}")

    def vshards(self) -> str:
        table = self.routing.table
        counts = {g: 0 for g in table.group_ids if g != 0}
        for g in table.vshard_to_group.tolist():
            counts[g] += 1
        return " ".join(f"{g}:{n}" for g, n in sorted(counts.items()))

    def apply(self) -> str:
        """What running the last plan would leave in routing (moves done, nothing in flight; a
        moved leader's leadership goes to the lowest remaining voter)."""
        if self.last is None:
            raise ScriptError("apply before any plan")
        table = self.routing.table
        for move in self.last.moves:
            match move:
                case MoveReplica(group_id=g, from_node=src, to_node=dst):
                    route = table.route(g)
                    voters = tuple(dst if n == src else n for n in route.voters)
                    if src not in route.voters:
                        voters = (*voters, dst)
                    learners = tuple(n for n in route.learners if n != src)
                    table.set_members(g, sorted(voters), learners)
                    if route.leader == src:
                        table.set_leader(g, min(voters))
                case MoveVShard(vshard=v, to_group=g):
                    table.assign_vshard(v, g)
        return routing_lines(table)
