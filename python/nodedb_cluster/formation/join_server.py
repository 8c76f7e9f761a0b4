"""The join server's decision (docs/JOIN.md "Join (server side)"), as a pure function.

`decide_join` looks at one JoinRequest, who sent it (the certificate identity the transport
verified) and this node's view of the cluster, and says what to do: reject (with the exact
redirect text when another node leads the metadata group), answer with the current state (an
idempotent re-join), or propose one metadata entry that admits the node and makes it a learner
where placement wants it. The shell (`formation/admission.py`) carries the proposal through
group 0, waits until it is applied (bounded), and replies with the state that results.

Admission under mTLS (issue 12): the caller's certificate must be a node certificate for the
node id the request names; a node whose listen address is one of this node's seeds, or a member
restarting at its address, needs nothing more (so the simultaneous start of every seed still
forms one cluster); any other new node needs a join token for its id (`join_token.py`). On an
insecure transport nothing is authenticated, so nothing is checked: that mode is asked for by
name (`insecure_transport`) and logged.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from nodedb_cluster.addr import SocketAddr, names_ip, parse_socket_addr
from nodedb_cluster.errors import InvalidAddress
from nodedb_cluster.formation.join_token import verify_token
from nodedb_cluster.formation.leader_hint import format_not_leader
from nodedb_cluster.metadata.commands import AddNode, MetadataEntry
from nodedb_cluster.metadata.placement import plan_join
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.topology import SPKI_PIN_BYTES, NodeInfo, NodeState, Topology

NOT_LEADER_UNKNOWN = "not leader; leader unknown"
NODE_ROLE = "node"


class JoinRefusal(enum.StrEnum):
    """Why a join was refused (the metric label). Redirects are not refusals and have none."""

    NO_IDENTITY = "no_identity"
    NOT_A_NODE = "not_a_node"
    IDENTITY_MISMATCH = "identity_mismatch"
    TOKEN_MISSING = "token_missing"
    TOKEN_MALFORMED = "token_malformed"
    TOKEN_FORGED = "token_forged"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_WRONG_NODE = "token_wrong_node"
    NO_SECRET = "no_secret"
    INVALID_REQUEST = "invalid_request"
    ID_IN_USE = "id_in_use"
    ADDR_IN_USE = "addr_in_use"
    KEY_MISMATCH = "key_mismatch"
    RETIRED = "retired"
    ADDRESS_NOT_NAMED = "address_not_named"

    @property
    def permanent(self) -> bool:
        """True when no retry of the same request can succeed: the joiner stops at once.
        Identity and token refusals are; the older refusals keep docs/JOIN.md's retry behaviour."""
        return self not in _RETRIED


_RETRIED = frozenset({JoinRefusal.INVALID_REQUEST, JoinRefusal.ID_IN_USE, JoinRefusal.ADDR_IN_USE})


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent the JoinRequest, as the transport verified it from the TLS certificate (never
    from payload fields). All None on an insecure transport."""

    identity: str | None
    """The certificate's SPIFFE URI, `spiffe://<cluster>/<role>/<name>`."""
    role: str | None
    """"node", "admin" or "client"."""
    node_id: int | None
    """The node id a node certificate carries."""
    addresses: tuple[str, ...] | None = None
    """The IP addresses and DNS names the certificate names: where the CA says it may listen."""


INSECURE_CALLER = Caller(None, None, None)


@dataclass(frozen=True, slots=True)
class JoinView:
    """What this node knows when a join request arrives."""

    is_metadata_leader: bool
    metadata_leader_addr: SocketAddr | None
    topology: Topology
    routing: RoutingTable
    replication_factor: int
    wire_version_min: int
    wire_version_max: int
    authenticated: bool
    """This node runs mTLS, so callers carry verified identities and admission is enforced."""
    seed_addrs: frozenset[SocketAddr]
    """This node's configured seeds: a node listening at one forms the cluster without a token."""
    cluster_secret: bytes | None = field(repr=False)
    """Keys join tokens; None in a cluster formed before the secret existed."""
    now_s: int
    """Wall-clock Unix seconds, for token expiry."""


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer `success=False` with exactly this text."""

    text: str
    reason: JoinRefusal | None = None
    """None for a redirect (not a refusal: not counted, never permanent)."""

    @property
    def permanent(self) -> bool:
        return self.reason is not None and self.reason.permanent


@dataclass(frozen=True, slots=True)
class AlreadyMember:
    """The node id is known with the same address: reply with the current state, propose nothing."""


@dataclass(frozen=True, slots=True)
class Admit:
    """Propose `entry` through the metadata group, wait until applied, then reply."""

    entry: MetadataEntry
    node: NodeInfo


JoinDecision = Reject | AlreadyMember | Admit


def decide_join(
    node_id: int,
    listen_addr: str,
    wire_version: int,
    spki_pin: bytes | None,
    view: JoinView,
    swim_addr: str | None = None,
    *,
    caller: Caller,
    join_token: str | None = None,
) -> JoinDecision:
    """The decision for one join request: the caller's identity first (a request that names
    another node is refused before anything else), then docs/JOIN.md's checks in its order, then
    the token a new non-seed node needs."""
    if view.authenticated:
        refused = _check_caller(node_id, caller)
        if refused is not None:
            return refused
    if not view.is_metadata_leader:
        if view.metadata_leader_addr is None:
            return Reject(NOT_LEADER_UNKNOWN)
        return Reject(format_not_leader(view.metadata_leader_addr))
    try:
        addr = parse_socket_addr(listen_addr)
    except InvalidAddress as e:
        return Reject(f"invalid listen address: {e}", JoinRefusal.INVALID_REQUEST)
    named = caller.addresses
    if view.authenticated and named is not None and not names_ip(named, addr.ip):
        # The address is the payload's; only the CA's word for it counts. A node certificate
        # claiming a seed's address (a seed joins without a token) joined with none, and any
        # address it claimed could be taken from the node it belongs to (attack probe, s31).
        return Reject(
            f"join refused: the request claims listen address {addr}, but the certificate "
            f"{caller.identity} names {', '.join(named) or 'no address'}; a node listens at an "
            f"address its certificate names (issue it again for {addr.ip}: `nodedb-cluster "
            f"gen-certs --out <its gen-certs folder> --renew n{node_id}={addr.ip}`)",
            JoinRefusal.ADDRESS_NOT_NAMED,
        )
    if not view.wire_version_min <= wire_version <= view.wire_version_max:
        return Reject(
            f"wire version {wire_version} is not supported: this node speaks "
            f"{view.wire_version_min}..{view.wire_version_max}",
            JoinRefusal.INVALID_REQUEST,
        )
    if not 1 <= node_id < 2**64:
        return Reject(f"invalid node id {node_id}", JoinRefusal.INVALID_REQUEST)
    swim: SocketAddr | None = None
    if swim_addr is not None:
        try:
            swim = parse_socket_addr(swim_addr)
        except InvalidAddress as e:
            return Reject(f"invalid SWIM address: {e}", JoinRefusal.INVALID_REQUEST)
    if spki_pin is not None and len(spki_pin) != SPKI_PIN_BYTES:
        return Reject(
            f"spki_pin must be {SPKI_PIN_BYTES} bytes, got {len(spki_pin)}",
            JoinRefusal.INVALID_REQUEST,
        )
    known = view.topology.get(node_id)
    if known is not None:
        if known.state is NodeState.DECOMMISSIONED:
            return Reject(
                f"join refused: node {node_id} was decommissioned and its id is not reused; "
                "join this machine as a new node (another node id and a join token)",
                JoinRefusal.RETIRED,
            )
        if known.addr != addr:
            return Reject(
                f"node id {node_id} is already in use by {known.addr}", JoinRefusal.ID_IN_USE
            )
        if view.authenticated and known.spki_pin is not None and spki_pin != known.spki_pin:
            # The answer carries the cluster secret: a certificate for the id is not enough,
            # the member must hold the key the cluster pinned for it.
            return Reject(
                f"join refused: node {node_id} is a member whose pinned key is not the one this "
                "certificate holds; renew the certificate of the key it had (`nodedb-cluster "
                f"gen-certs --renew n{node_id}`), or, to change the key, decommission node "
                f"{node_id} and add a new node in its place",
                JoinRefusal.KEY_MISMATCH,
            )
        return AlreadyMember()  # a member restarting: its certificate and key proved its id
    holder = view.topology.by_addr(addr)
    if holder is not None:
        return Reject(
            f"address {addr} already belongs to node {holder.node_id}", JoinRefusal.ADDR_IN_USE
        )
    if view.authenticated and addr not in view.seed_addrs:
        refused = _check_token(node_id, join_token, view)
        if refused is not None:
            return refused
    node = NodeInfo(node_id, addr, NodeState.ACTIVE, wire_version, spki_pin, swim)
    changes = plan_join(view.routing, node_id, view.replication_factor)
    return Admit(MetadataEntry((AddNode(node), *changes), proposer=caller.identity), node)


def _check_caller(node_id: int, caller: Caller) -> Reject | None:
    """Under mTLS: the certificate must be a node's, for the node id the request names."""
    if caller.identity is None:
        return Reject(
            "join refused: the connection carries no certificate identity "
            "(issue node certificates with `nodedb-cluster gen-certs`)",
            JoinRefusal.NO_IDENTITY,
        )
    if caller.role != NODE_ROLE:
        return Reject(
            f"join refused: {caller.identity} is not a node certificate "
            f"(role {caller.role!r}); a joining node presents its own node certificate",
            JoinRefusal.NOT_A_NODE,
        )
    if caller.node_id != node_id:
        return Reject(
            f"join refused: the request names node {node_id} but the certificate "
            f"{caller.identity} is node {caller.node_id}'s",
            JoinRefusal.IDENTITY_MISMATCH,
        )
    return None


def _check_token(node_id: int, join_token: str | None, view: JoinView) -> Reject | None:
    """A new node that is not one of our seeds must present a valid token for its id."""
    if join_token is None:
        return Reject(
            f"join refused: node {node_id} is new and not a seed of this cluster, so it needs a "
            f"join token: run `nodedb-cluster join-token --node-id {node_id}` with admin "
            "credentials and start the node with --join-token",
            JoinRefusal.TOKEN_MISSING,
        )
    if view.cluster_secret is None:
        return Reject(
            "join refused: this cluster has no cluster secret (its catalog predates join "
            "tokens), so it cannot check a join token",
            JoinRefusal.NO_SECRET,
        )
    rejected = verify_token(view.cluster_secret, join_token, node_id, view.now_s)
    if rejected is None:
        return None
    return Reject(f"join refused: {rejected.text}", JoinRefusal(rejected.reason.value))
