"""Placement scripts (metadata/placement.py): where a joining node becomes a learner, when a
learner is promoted, what a decommission removes.

    routing groups=2 node=1
    set group=1 voters=(1,2) learners=(3)
    plan-join node=4 rf=3
    plan-promotion group=1 learner=3 rf=3
    plan-removal node=2
"""

from __future__ import annotations

from nodedb_cluster.metadata.placement import plan_join, plan_promotion, plan_removal
from scenario.datadriven import ScriptError, Stanza
from scenario.render import RoutingScript, record


class PlacementScript:
    def __init__(self) -> None:
        self.routing = RoutingScript()

    def handle(self, st: Stanza) -> str:
        table = self.routing.table if st.cmd.startswith("plan") else None
        match st.cmd:
            case "routing":
                return self.routing.routing(st)
            case "set":
                return self.routing.set(st)
            case "plan-join":
                assert table is not None
                planned = plan_join(table, st.get_int("node"), st.get_int("rf"))
                return "\n".join(record(c) for c in planned) or "nothing"
            case "plan-promotion":
                assert table is not None
                change = plan_promotion(
                    table, st.get_int("group"), st.get_int("learner"), st.get_int("rf")
                )
                return "none" if change is None else record(change)
            case "plan-removal":
                assert table is not None
                return "\n".join(record(c) for c in plan_removal(table, st.get_int("node"))) or (
                    "nothing"
                )
        raise ScriptError(f"{st.pos}: unknown command {st.cmd!r}")
