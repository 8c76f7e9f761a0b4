"""How scenario scripts print and build the values the machines take and return."""

from __future__ import annotations

import dataclasses
import enum

from nodedb_cluster.addr import SocketAddr, parse_socket_addr
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.topology import NodeInfo
from scenario.datadriven import ScriptError, Stanza


def addr_of(node_id: int, port: int = 9400) -> SocketAddr:
    """Node n listens on 127.0.0.n in every script."""
    return parse_socket_addr(f"127.0.0.{node_id}:{port}")


def value(v: object) -> str:
    if isinstance(v, enum.Enum):
        return v.name
    if isinstance(v, tuple):
        return "(" + ",".join(value(x) for x in v) + ")"
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    if isinstance(v, NodeInfo):
        return f"{v.node_id}@{v.addr}/{v.state.name}"
    return str(v)


def record(obj: object) -> str:
    """`TypeName field=value ...` for a dataclass (fields at their default left out)."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return value(obj)
    parts = [type(obj).__name__]
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if f.default is not dataclasses.MISSING and v == f.default:
            continue
        parts.append(f"{f.name}={value(v)}")
    return " ".join(parts)


def routing_lines(table: RoutingTable) -> str:
    lines = [f"epoch {table.epoch}"]
    for g in table.group_ids:
        r = table.route(g)
        lines.append(
            f"group {g}: voters={value(r.voters)} learners={value(r.learners)} leader={r.leader}"
        )
    return "\n".join(lines)


class RoutingScript:
    """`routing groups=N node=ID` (a bootstrap table) and `set group=G voters=(..) learners=(..)`
    (a membership change), shared by the placement and reconcile scripts."""

    def __init__(self) -> None:
        self._table: RoutingTable | None = None

    @property
    def table(self) -> RoutingTable:
        if self._table is None:
            raise ScriptError("no routing table yet: start the script with `routing`")
        return self._table

    def routing(self, st: Stanza) -> str:
        self._table = RoutingTable.bootstrap(st.get_int("groups"), st.get_int("node"))
        return routing_lines(self._table)

    def set(self, st: Stanza) -> str:
        voters = st.get_ints("voters")
        learners = st.get_ints("learners")
        self.table.set_members(st.get_int("group"), voters, learners)
        return routing_lines(self.table)
