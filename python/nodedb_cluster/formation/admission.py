"""The join server's shell and the join-token service: who may join, and who says so.

`JoinAdmission` runs `decide_join` (pure, `join_server.py`) with the caller's verified certificate
identity and what this node knows, carries an admission through group 0, and answers. Identity
and token refusals go through the transport's one refusal path (`Transport.record_refusal`):
counted by kind and reason (`nodedb_requests_refused{kind="JoinRequest",reason="join_token_..."}`)
and logged at WARN naming the caller's identity, at most one line per peer, kind and reason per
10 s with the count of the ones left out, so a misconfigured joiner retrying cannot flood the
log. The older refusals (address, version, id reuse) are logged at INFO as before.

It also answers JOIN_TOKEN_REQUEST (admin certificates only: the transport refuses every other
role before this runs): `{"node_id": u64, "ttl_secs": int}` -> JOIN_TOKEN_RESPONSE
`{"token": str, "node_id": u64, "expires_at": unix seconds}`. The cluster secret comes from the
catalog and is never logged, exported or put in a reply other than an admitted node's
JoinResponse (over mTLS).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

import msgpack

from nodedb_cluster import wire
from nodedb_cluster.catalog import Catalog
from nodedb_cluster.clock import Clock, SystemClock
from nodedb_cluster.config import ClusterConfig
from nodedb_cluster.errors import ClusterError, InvalidRequest, RaftNotLeader, Timeout
from nodedb_cluster.formation.join_server import (
    Admit,
    AlreadyMember,
    Caller,
    JoinRefusal,
    JoinView,
    Reject,
    decide_join,
)
from nodedb_cluster.formation.join_token import TTL_SECS_DEFAULT, check_ttl, issue_token
from nodedb_cluster.formation.leader_hint import format_not_leader
from nodedb_cluster.metadata.applier import MetadataState
from nodedb_cluster.metadata.group import decode_result, encode_state
from nodedb_cluster.raft import RaftEngine
from nodedb_cluster.routing.table import METADATA_GROUP_ID
from nodedb_cluster.topology import NodeState, Topology
from nodedb_cluster.transport import Peer, Reply, Transport

log = logging.getLogger(__name__)

REFUSAL_LABELS: Final[dict[JoinRefusal, str]] = {
    JoinRefusal.NO_IDENTITY: "no_identity",
    JoinRefusal.NOT_A_NODE: "role",
    JoinRefusal.IDENTITY_MISMATCH: "join_identity_mismatch",
    JoinRefusal.TOKEN_MISSING: "join_token_missing",
    JoinRefusal.TOKEN_MALFORMED: "join_token_malformed",
    JoinRefusal.TOKEN_FORGED: "join_token_forged",
    JoinRefusal.TOKEN_EXPIRED: "join_token_expired",
    JoinRefusal.TOKEN_WRONG_NODE: "join_token_wrong_node",
    JoinRefusal.NO_SECRET: "join_no_secret",
    JoinRefusal.KEY_MISMATCH: "join_key_mismatch",
    JoinRefusal.RETIRED: "join_retired",
    JoinRefusal.ADDRESS_NOT_NAMED: "join_address_not_named",
}
"""The transport's refusal label (rust/transport/src/refusals.rs `REASONS`) of each security
refusal; the others are not trust decisions and are not counted there."""
NO_SECRET_FOR_TOKENS: Final = (
    "this node's catalog holds no cluster secret (the cluster was formed before join tokens "
    "existed), so it cannot issue join tokens"
)


def caller_of(peer: Peer) -> Caller:
    """The identity the transport verified from the peer's certificate (None when insecure)."""
    addresses = peer.cert_addresses
    return Caller(
        peer.identity, peer.role, peer.node_id, None if addresses is None else tuple(addresses)
    )


class JoinAdmission:
    """Admission decisions, token issuance and their counters for one node."""

    def __init__(
        self,
        config: ClusterConfig,
        catalog: Catalog,
        transport: Transport,
        cluster_id: str,
        engine: Callable[[], RaftEngine],
        metadata: Callable[[], MetadataState],
        clock: Clock | None = None,
    ) -> None:
        self._config = config
        self._catalog = catalog
        self._transport = transport
        self._cluster_id = cluster_id
        self._engine = engine
        """The running engine (raises EngineStopped once the node stops)."""
        self._metadata = metadata
        """The applied metadata state (read again after an admission applied)."""
        self._clock = clock or SystemClock()
        self._secret: bytes | None = None
        self._secret_loaded = False
        self.tokens_issued = 0

    # --- counters ---------------------------------------------------------------------------------

    def metrics(self) -> dict[str, int]:
        """`join_tokens_issued` (refusals are in the transport's `requests_refused`)."""
        return {"join_tokens_issued": self.tokens_issued}

    # --- the cluster secret -----------------------------------------------------------------------

    async def secret(self) -> bytes | None:
        """The catalog's cluster secret (read once: it never changes after formation)."""
        if not self._secret_loaded:
            self._secret = await asyncio.to_thread(self._catalog.load_cluster_secret)
            self._secret_loaded = True
        return self._secret

    # --- JOIN_REQUEST -----------------------------------------------------------------------------

    async def on_join_request(self, peer: Peer, payload: bytes) -> Reply:
        """JOIN_REQUEST -> JOIN_RESPONSE."""
        response = await self.admit(wire.JoinRequest.decode(payload), peer)
        return wire.MessageKind.JOIN_RESPONSE, response.encode()

    async def admit(self, request: wire.JoinRequest, peer: Peer) -> wire.JoinResponse:
        """Decide, propose the admission through group 0 (bounded by the RPC timeout), answer."""
        engine = self._engine()
        caller = caller_of(peer)
        status = await engine.status(METADATA_GROUP_ID)
        state = self._metadata()
        leader = state.topology.get(status.leader_id) if status.leader_id else None
        view = JoinView(
            is_metadata_leader=status.role == "leader",
            metadata_leader_addr=None if leader is None else leader.addr,
            topology=state.topology,
            routing=state.routing,
            replication_factor=self._config.replication_factor,
            wire_version_min=wire.WIRE_VERSION_MIN,
            wire_version_max=wire.WIRE_VERSION,
            authenticated=not self._config.insecure_transport,
            seed_addrs=frozenset(self._config.seed_nodes),
            cluster_secret=await self.secret(),
            now_s=self._clock.now_ms() // 1000,
        )
        # The key the topology will pin for this node: the one its handshake proved, not the
        # one its payload names (they are equal for an honest joiner).
        spki_pin = peer.spki_pin if view.authenticated and peer.spki_pin else request.spki_pin
        decision = decide_join(
            request.node_id,
            request.listen_addr,
            request.wire_version,
            spki_pin,
            view,
            request.swim_addr,
            caller=caller,
            join_token=request.join_token,
        )
        fields = {"joiner": request.node_id, "peer": peer.addr, "identity": caller.identity}
        match decision:
            case Reject(text=text, reason=reason):
                label = None if reason is None else REFUSAL_LABELS.get(reason)
                if label is not None:  # counted, and logged at WARN rate-limited
                    self._transport.record_refusal(peer, wire.MessageKind.JOIN_REQUEST, label, text)
                else:  # a redirect, or docs/JOIN.md's retryable refusals
                    log.info(
                        "join of node %d not admitted: %s", request.node_id, text, extra=fields
                    )
                return wire.JoinResponse(success=False, error=text, permanent=decision.permanent)
            case AlreadyMember():
                log.info("node %d re-joined (idempotent)", request.node_id, extra=fields)
            case Admit(entry=entry):
                if not view.authenticated:
                    log.warning(
                        "admitting node %d without authentication (insecure_transport)",
                        request.node_id,
                        extra=fields,
                    )
                try:
                    proposed = await engine.propose(
                        METADATA_GROUP_ID, entry.encode(), self._config.rpc_timeout_ms
                    )
                except RaftNotLeader as e:
                    hint = state.topology.get(e.leader_id) if e.leader_id else None
                    text = format_not_leader(hint.addr) if hint else "not leader; leader unknown"
                    return self._not_admitted(request, text, fields)
                except Timeout as e:
                    return self._not_admitted(request, f"join not applied in time: {e}", fields)
                refused = decode_result(proposed.result)
                if refused is not None:
                    return self._not_admitted(request, refused, fields)
                log.info(
                    "node %d (%s) admitted at metadata index %d",
                    request.node_id,
                    caller.identity or "insecure",
                    proposed.index,
                    extra=fields,
                )
        return wire.JoinResponse(
            success=True,
            cluster_id=self._cluster_id,
            state=encode_state(self._metadata()),
            cluster_secret=view.cluster_secret,
        )

    @staticmethod
    def _not_admitted(
        request: wire.JoinRequest, text: str, fields: dict[str, object]
    ) -> wire.JoinResponse:
        """An admission that did not go through group 0 (the joiner retries): logged, answered."""
        log.info("join of node %d not admitted: %s", request.node_id, text, extra=fields)
        return wire.JoinResponse(success=False, error=text)

    # --- JOIN_TOKEN_REQUEST -----------------------------------------------------------------------

    async def on_join_token_request(self, peer: Peer, payload: bytes) -> Reply:
        """Issue a token for the requested node id (the transport admitted only admins)."""
        node_id, ttl_s = decode_join_token_request(payload)
        taken = id_taken(self._metadata().topology, node_id)
        if taken is not None:
            raise InvalidRequest(taken)
        secret = await self.secret()
        if secret is None:
            raise InvalidRequest(NO_SECRET_FOR_TOKENS)
        expires_at_s = self._clock.now_ms() // 1000 + ttl_s
        token = issue_token(secret, node_id, expires_at_s)
        self.tokens_issued += 1
        log.info(
            "issued a join token for node %d to %s, valid %d s",
            node_id,
            peer.identity or "an unauthenticated peer",
            ttl_s,
        )
        doc = {"token": token, "node_id": node_id, "expires_at": expires_at_s}
        return wire.MessageKind.JOIN_TOKEN_RESPONSE, bytes(msgpack.packb(doc))


def id_taken(topology: Topology, node_id: int) -> str | None:
    """Why no token is issued for `node_id` (None: it is free). A member restarts without one,
    and a joiner under a member's id at another address is refused (`id_in_use`), so such a
    token could only mislead; a decommissioned id is never reused."""
    node = topology.get(node_id)
    if node is None:
        return None
    if node.state is NodeState.DECOMMISSIONED:
        return (
            f"node {node_id} was decommissioned and its id is not reused; issue the token for "
            "another --node-id"
        )
    return (
        f"node {node_id} is already a member ({node.state.name} at {node.addr}): it restarts "
        "without a token; a new node needs another --node-id"
    )


def encode_join_token_request(node_id: int, ttl_s: int = TTL_SECS_DEFAULT) -> bytes:
    return bytes(msgpack.packb({"node_id": node_id, "ttl_secs": ttl_s}))


def decode_join_token_request(payload: bytes) -> tuple[int, int]:
    """(node id, ttl seconds); `InvalidRequest` with a sentence for anything else."""
    try:
        doc = msgpack.unpackb(payload, raw=False)
    except (ValueError, msgpack.UnpackException) as e:
        raise InvalidRequest(f"join-token request is not MessagePack: {e}") from e
    if not isinstance(doc, dict):
        raise InvalidRequest("join-token request must be a map")
    node_id, ttl_s = doc.get("node_id"), doc.get("ttl_secs", TTL_SECS_DEFAULT)
    if isinstance(node_id, bool) or not isinstance(node_id, int) or not 1 <= node_id < 2**64:
        raise InvalidRequest(f"join-token node_id {node_id!r} is not a non-zero u64")
    try:
        check_ttl(ttl_s)
    except ValueError as e:
        raise InvalidRequest(str(e)) from e
    return node_id, ttl_s


def decode_join_token_response(payload: bytes) -> tuple[str, int, int]:
    """(token, node id, expires_at unix seconds) from a JOIN_TOKEN_RESPONSE."""
    try:
        doc = msgpack.unpackb(payload, raw=False)
    except (ValueError, msgpack.UnpackException) as e:
        raise ClusterError(f"malformed join-token reply: {e}") from e
    if not isinstance(doc, dict):
        raise ClusterError("malformed join-token reply: not a map")
    token, node_id, expires = doc.get("token"), doc.get("node_id"), doc.get("expires_at")
    if not isinstance(token, str) or not isinstance(node_id, int) or not isinstance(expires, int):
        raise ClusterError("malformed join-token reply: token, node_id, expires_at expected")
    return token, node_id, expires
