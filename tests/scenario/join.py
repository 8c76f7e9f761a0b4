"""Join-decision scripts (formation/join_server.py `decide_join`): what the node leading the
metadata group answers one JoinRequest, given who sent it and what it knows.

    cluster nodes=(1,2,3) groups=2 rf=3 [authenticated] [seeds=(1,2,3)] [no-secret] [now=1000]
    leader is=false [at=2]         # this node follows; the leader is node 2 (or unknown)
    join id=4 [addr=127.0.0.4:9400] [wire=1] [pin=32|member] [swim=127.0.0.4:9500]
         [caller=node:4|admin:ops|client:app|none] [token=valid|expired|forged|malformed|for:5]
         [names=127.0.0.9,host]   # what the caller's certificate names (default: its own IP)
    member id=4 [addr=...]         # the admission applied: node 4 is in the topology
    retire id=3                    # node 3 is DECOMMISSIONED

Node n listens on 127.0.0.n:9400; tokens are issued with the script's cluster secret.
"""

from __future__ import annotations

import dataclasses

from nodedb_cluster.addr import SocketAddr, parse_socket_addr
from nodedb_cluster.formation.join_server import (
    INSECURE_CALLER,
    Admit,
    AlreadyMember,
    Caller,
    JoinView,
    Reject,
    decide_join,
)
from nodedb_cluster.formation.join_token import issue_token
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.topology import NodeInfo, NodeState, Topology
from scenario.datadriven import ScriptError, Stanza
from scenario.render import addr_of, record

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
PIN = b"\x01" * 32
TOKEN_LIFETIME_S = 600
CLUSTER = "spiffe://scenario"


def caller_of(spec: str, names: str | None = None) -> Caller:
    """A caller whose certificate names `names` (comma-separated), or, for node n, n's own
    address (127.0.0.n)."""
    if spec == "none":
        return INSECURE_CALLER
    role, _, name = spec.partition(":")
    node_id = int(name) if role == "node" else None
    if names is not None:
        addresses: tuple[str, ...] = tuple(n for n in names.split(",") if n)
    else:
        addresses = () if node_id is None else (str(addr_of(node_id).ip),)
    return Caller(f"{CLUSTER}/{role}/{name}", role, node_id, addresses)


class JoinScript:
    def __init__(self) -> None:
        self.view: JoinView | None = None

    def handle(self, st: Stanza) -> str:
        match st.cmd:
            case "cluster":
                return self.cluster(st)
            case "leader":
                return self.leader(st)
            case "join":
                return self.join(st)
            case "member":
                return self.member(st)
            case "retire":
                return self.retire(st)
        raise ScriptError(f"{st.pos}: unknown command {st.cmd!r}")

    def _view(self, st: Stanza) -> JoinView:
        if self.view is None:
            raise ScriptError(f"{st.pos}: start with `cluster`")
        return self.view

    def cluster(self, st: Stanza) -> str:
        nodes = st.get_ints("nodes")
        authenticated = st.flag("authenticated")
        pin = PIN if authenticated else None
        topology = Topology([NodeInfo(n, addr_of(n), NodeState.ACTIVE, 1, pin) for n in nodes])
        rf = st.get_int("rf", 3)
        routing = RoutingTable.bootstrap(st.get_int("groups", 1), nodes[0])
        for g in routing.group_ids:
            routing.set_members(g, nodes[:rf], nodes[rf:] if g == 0 else ())
        seeds = st.get_ints("seeds", tuple(str(n) for n in nodes))
        self.view = JoinView(
            is_metadata_leader=True,
            metadata_leader_addr=addr_of(nodes[0]),
            topology=topology,
            routing=routing,
            replication_factor=rf,
            wire_version_min=1,
            wire_version_max=st.get_int("wire-max", 1),
            authenticated=authenticated,
            seed_addrs=frozenset(addr_of(n) for n in seeds),
            cluster_secret=None if st.flag("no-secret") else SECRET,
            now_s=st.get_int("now", 1_700_000_000),
        )
        return f"{len(nodes)} nodes, {len(routing.group_ids)} groups, rf {rf}"

    def leader(self, st: Stanza) -> str:
        view = self._view(st)
        is_leader = st.get("is", "true") == "true"
        at: SocketAddr | None = addr_of(st.get_int("at")) if st.has("at") else None
        self.view = dataclasses.replace(view, is_metadata_leader=is_leader, metadata_leader_addr=at)
        return "leader" if is_leader else f"follower, leader {at or 'unknown'}"

    def member(self, st: Stanza) -> str:
        view = self._view(st)
        node_id = st.get_int("id")
        addr = parse_socket_addr(st.get("addr", str(addr_of(node_id))))
        topology = view.topology.copy()
        topology.add(NodeInfo(node_id, addr, NodeState.LEARNER, 1))
        self.view = dataclasses.replace(view, topology=topology)
        return f"topology: {' '.join(str(n) for n in topology.node_ids())}"

    def join(self, st: Stanza) -> str:
        view = self._view(st)
        node_id = st.get_int("id")
        token = self._token(st, node_id, view.now_s)
        decision = decide_join(
            node_id,
            st.get("addr", str(addr_of(node_id))),
            st.get_int("wire", 1),
            self._pin(st),
            view,
            st.get("swim") if st.has("swim") else None,
            caller=caller_of(
                st.get("caller", "none"), st.get("names") if st.has("names") else None
            ),
            join_token=token,
        )
        match decision:
            case Reject(text=text, reason=reason):
                why = "redirect" if reason is None else reason.value
                kind = "permanent" if decision.permanent else "retry"
                return f"reject ({why}, {kind}): {text}"
            case AlreadyMember():
                return "already a member: answer with the current state"
            case Admit(entry=entry):
                return "\n".join(["admit, proposing:", *(record(c) for c in entry.commands)])
        raise AssertionError(decision)

    @staticmethod
    def _pin(st: Stanza) -> bytes | None:
        """`pin=member`: the key the topology pinned for every member; `pin=N`: N other bytes."""
        if not st.has("pin"):
            return None
        return PIN if st.get("pin") == "member" else b"\x02" * st.get_int("pin")

    def retire(self, st: Stanza) -> str:
        view = self._view(st)
        topology = view.topology.copy()
        topology.set_state(st.get_int("id"), NodeState.DECOMMISSIONED)
        self.view = dataclasses.replace(view, topology=topology)
        return f"node {st.get_int('id')} DECOMMISSIONED"

    @staticmethod
    def _token(st: Stanza, node_id: int, now_s: int) -> str | None:
        if not st.has("token"):
            return None
        spec = st.get("token")
        match spec.partition(":"):
            case ("valid", _, _):
                return issue_token(SECRET, node_id, now_s + TOKEN_LIFETIME_S)
            case ("expired", _, _):
                return issue_token(SECRET, node_id, now_s - 1)
            case ("forged", _, _):
                return issue_token(OTHER_SECRET, node_id, now_s + TOKEN_LIFETIME_S)
            case ("malformed", _, _):
                return "not-a-token"
            case ("for", _, other):
                return issue_token(SECRET, int(other), now_s + TOKEN_LIFETIME_S)
        raise ScriptError(f"{st.pos}: unknown token kind {spec!r}")
