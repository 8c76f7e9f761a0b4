"""Reconcile-planner scripts (reconcile.py): what one node does next for each group, from the
routing table and its engine's view of its local replicas.

    routing groups=1 node=1
    set group=1 voters=(1,2,3) learners=()
    local group=1 leader voters=(1,2) learners=(3) commit=100 matched=(2:100,3:40) leader-id=1
    forget group=1                # the engine no longer has this replica
    hint group=1 node=2           # group 0 applies node 2's SetGroupLeader (`note_leader`)
    plan self=1 rf=3 [balance] [leaving=(4)] [orphaned=(2)]
"""

from __future__ import annotations

from nodedb_cluster.reconcile import LocalGroup, plan_reconcile
from scenario.datadriven import ScriptError, Stanza
from scenario.render import RoutingScript, record, routing_lines


def local_group(st: Stanza) -> LocalGroup:
    matched: dict[int, int] = {}
    for pair in st.args.get("matched", ()):
        node, _, index = pair.partition(":")
        matched[int(node)] = int(index)
    leader = st.flag("leader")
    return LocalGroup(
        st.get_int("group"),
        leader,
        st.get_ints("voters"),
        st.get_ints("learners"),
        st.get_int("commit", 0),
        matched,
        st.get_int("leader-id", 0),
    )


class ReconcileScript:
    def __init__(self) -> None:
        self.routing = RoutingScript()
        self.local: dict[int, LocalGroup] = {}

    def handle(self, st: Stanza) -> str:
        match st.cmd:
            case "routing":
                return self.routing.routing(st)
            case "set":
                return self.routing.set(st)
            case "local":
                group = local_group(st)
                self.local[group.group_id] = group
                return "ok"
            case "hint":
                self.routing.table.note_leader(st.get_int("group"), st.get_int("node"))
                return routing_lines(self.routing.table)
            case "forget":
                del self.local[st.get_int("group")]
                return "ok"
            case "plan":
                actions = plan_reconcile(
                    st.get_int("self"),
                    self.routing.table,
                    self.local,
                    st.get_int("rf"),
                    st.flag("balance"),
                    frozenset(st.get_ints("leaving")),
                    frozenset(st.get_ints("orphaned")),
                )
                return "\n".join(record(a) for a in actions) or "nothing to do"
        raise ScriptError(f"{st.pos}: unknown command {st.cmd!r}")
