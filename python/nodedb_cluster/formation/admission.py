"""The join server's shell and the join-token service: who may join, and who says so.

`JoinAdmission` runs `decide_join` (pure, `join_server.py`) with the caller's verified certificate
identity and what this node knows, carries an admission through group 0, and answers. Refusals
are counted by reason (`join_refused_total.<reason>` in the node's metrics) and logged at WARN,
rate-limited to one line per reason per `REFUSAL_LOG_INTERVAL_MS` with the count of the ones
left out, naming the caller's identity: a misconfigured joiner retrying cannot flood the log.

It also answers JOIN_TOKEN_REQUEST (admin certificates only: the transport refuses every other
role before this runs): `{"node_id": u64, "ttl_secs": int}` -> JOIN_TOKEN_RESPONSE
`{"token": str, "node_id": u64, "expires_at": unix seconds}`. The cluster secret comes from the
catalog and is never logged, exported or put in a reply other than an admitted node's
JoinResponse (over mTLS).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

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
from nodedb_cluster.metadata.group import decode_result, encode_state
from nodedb_cluster.routing.table import METADATA_GROUP_ID

if TYPE_CHECKING:
    from nodedb_cluster.node import Node
    from nodedb_cluster.transport import Peer, Reply

log = logging.getLogger(__name__)

REFUSAL_LOG_INTERVAL_MS: Final = 10_000
"""At most one WARN line per refusal reason per 10 s; the next line says how many were left out."""
NO_SECRET_FOR_TOKENS: Final = (
    "this node's catalog holds no cluster secret (the cluster was formed before join tokens "
    "existed), so it cannot issue join tokens"
)


def caller_of(peer: Peer) -> Caller:
    """The identity the transport verified from the peer's certificate (None when insecure)."""
    return Caller(peer.identity, peer.role, peer.node_id)


@dataclass(slots=True)
class RateLimitedLog:
    """One log line per key per interval; the lines in between are counted, not written."""

    interval_ms: int
    _last_ms: dict[str, int] = field(default_factory=dict)
    _suppressed: dict[str, int] = field(default_factory=dict)

    def admit(self, key: str, now_ms: int) -> int | None:
        """None: stay quiet; else log now, mentioning the returned count of suppressed lines."""
        last = self._last_ms.get(key)
        if last is not None and now_ms - last < self.interval_ms:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last_ms[key] = now_ms
        return self._suppressed.pop(key, 0)


class JoinAdmission:
    """Admission decisions, token issuance and their counters for one node."""

    def __init__(self, config: ClusterConfig, catalog: Catalog, clock: Clock | None = None) -> None:
        self._config = config
        self._catalog = catalog
        self._clock = clock or SystemClock()
        self._secret: bytes | None = None
        self._secret_loaded = False
        self._refused: dict[str, int] = {}
        self._log = RateLimitedLog(REFUSAL_LOG_INTERVAL_MS)
        self.tokens_issued = 0

    # --- counters ---------------------------------------------------------------------------------

    def metrics(self) -> dict[str, int]:
        """`join_refused_total` and `join_refused_total.<reason>`, `join_tokens_issued_total`."""
        out = {f"join_refused_total.{reason}": n for reason, n in sorted(self._refused.items())}
        out["join_refused_total"] = sum(self._refused.values())
        out["join_tokens_issued_total"] = self.tokens_issued
        return out

    def refused(self, reason: JoinRefusal, caller: Caller, node_id: int, text: str) -> None:
        """Count a refusal and log it, rate-limited per reason."""
        self._refused[reason.value] = self._refused.get(reason.value, 0) + 1
        suppressed = self._log.admit(reason.value, self._clock.monotonic_ms())
        if suppressed is None:
            return
        more = (
            f" ({suppressed} more refused for this reason since the last line)"
            if suppressed
            else ""
        )
        log.warning(
            "join of node %d from %s refused [%s]: %s%s",
            node_id,
            caller.identity or "an unauthenticated peer",
            reason.value,
            text,
            more,
        )

    # --- the cluster secret -----------------------------------------------------------------------

    async def secret(self) -> bytes | None:
        """The catalog's cluster secret (read once: it never changes after formation)."""
        if not self._secret_loaded:
            self._secret = await asyncio.to_thread(self._catalog.load_cluster_secret)
            self._secret_loaded = True
        return self._secret

    # --- JOIN_REQUEST -----------------------------------------------------------------------------

    async def admit(self, node: Node, request: wire.JoinRequest, peer: Peer) -> wire.JoinResponse:
        """Decide, propose the admission through group 0 (bounded by the RPC timeout), answer."""
        engine = node.engine
        if engine is None:
            raise ClusterError("the node is not running")
        caller = caller_of(peer)
        status = await engine.status(METADATA_GROUP_ID)
        state = node.metadata
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
        decision = decide_join(
            request.node_id,
            request.listen_addr,
            request.wire_version,
            request.spki_pin,
            view,
            request.swim_addr,
            caller=caller,
            join_token=request.join_token,
        )
        match decision:
            case Reject(text=text, reason=reason):
                if reason is None:  # a redirect to the leader
                    log.info("join of node %d redirected: %s", request.node_id, text)
                else:
                    self.refused(reason, caller, request.node_id, text)
                return wire.JoinResponse(success=False, error=text, permanent=decision.permanent)
            case AlreadyMember():
                log.info("node %d re-joined (idempotent)", request.node_id)
            case Admit(entry=entry):
                if not view.authenticated:
                    log.warning(
                        "admitting node %d without authentication (insecure_transport)",
                        request.node_id,
                    )
                try:
                    proposed = await engine.propose(
                        METADATA_GROUP_ID, entry.encode(), self._config.rpc_timeout_ms
                    )
                except RaftNotLeader as e:
                    hint = state.topology.get(e.leader_id) if e.leader_id else None
                    text = format_not_leader(hint.addr) if hint else "not leader; leader unknown"
                    return wire.JoinResponse(success=False, error=text)
                except Timeout as e:
                    return wire.JoinResponse(success=False, error=f"join not applied in time: {e}")
                refused = decode_result(proposed.result)
                if refused is not None:
                    return wire.JoinResponse(success=False, error=refused)
                log.info(
                    "node %d (%s) admitted at metadata index %d",
                    request.node_id,
                    caller.identity or "insecure",
                    proposed.index,
                )
        return wire.JoinResponse(
            success=True,
            cluster_id=node.cluster_id,
            state=encode_state(node.metadata),
            cluster_secret=view.cluster_secret,
        )

    # --- JOIN_TOKEN_REQUEST -----------------------------------------------------------------------

    async def on_join_token_request(self, peer: Peer, payload: bytes) -> Reply:
        """Issue a token for the requested node id (the transport admitted only admins)."""
        node_id, ttl_s = decode_join_token_request(payload)
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
