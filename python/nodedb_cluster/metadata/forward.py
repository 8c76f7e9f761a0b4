"""Metadata proposals from any member: replicate an entry through group 0 wherever its leader is.

A member that leads group 0 proposes the entry itself; one that does not forwards it in a
METADATA_PROPOSE to the leader it knows, or, knowing none (no replica of group 0 while it
rejoins, or no leader heard), to another voter of the group, which forwards it once more. A
forwarded proposal is never forwarded again: the receiver either leads (and answers the outcome)
or says `not_leader`, and the sender follows at most `METADATA_FORWARD_ATTEMPTS_MAX` leader
changes.

Which voter is asked goes round across proposals, past each one that did not answer: a voter
this node cannot reach (one that moved to an address this node has not applied yet, while
this node moved too and is not heard from by it) must not be the first asked by every retry,
or neither of the two ever learns where the other is (chaos seed 73003).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Final

import msgpack

from nodedb_cluster import wire
from nodedb_cluster.errors import (
    ClusterError,
    NotLeader,
    RaftNotLeader,
    Timeout,
    UnknownGroup,
)
from nodedb_cluster.metadata.commands import MetadataEntry
from nodedb_cluster.metadata.group import decode_result
from nodedb_cluster.raft import GroupStatus, RaftEngine
from nodedb_cluster.routing.table import METADATA_GROUP_ID, RoutingTable
from nodedb_cluster.transport import Peer, Reply, Transport

METADATA_FORWARD_ATTEMPTS_MAX: Final = 3
"""A metadata proposal follows at most this many leader changes before giving up."""


def encode_metadata_propose(entry: bytes, forwarded: bool) -> bytes:
    """The METADATA_PROPOSE payload: the entry, and whether a member already forwarded it."""
    return bytes(msgpack.packb({"entry": entry, "forwarded": forwarded}, use_bin_type=True))


class MetadataProposer:
    """Proposes metadata entries for one node, and answers the ones other members forward."""

    def __init__(
        self,
        node_id: int,
        engine: Callable[[], RaftEngine],
        transport: Transport,
        routing: Callable[[], RoutingTable],
        timeout_ms: int,
    ) -> None:
        self._node_id = node_id
        self._engine = engine
        """The running engine (raises EngineStopped once the node stops)."""
        self._transport = transport
        self._routing = routing
        """The applied routing table: who the voters of group 0 are."""
        self._timeout_ms = timeout_ms
        self._ask_next = 0
        """Which of the other voters a proposal with no leader known asks next."""

    async def propose(self, entry: MetadataEntry, *, ask_voters: bool = True) -> str | None:
        """Replicate `entry` through group 0 (forwarded to its leader); None once applied, or
        the reason the state machine refused it. With no leader known here, another voter
        is asked to forward it (`ask_voters`; never by a member asked that way itself): this
        node holds no replica of group 0 (rejoining), or hears no leader (restarted at another
        address, which the leader learns from this very proposal)."""
        engine = self._engine()
        if entry.proposer is None:  # the audit log names who proposed: this node, by default
            entry = dataclasses.replace(entry, proposer=self._transport.identity)
        data = entry.encode()
        last: ClusterError = Timeout("metadata proposal", self._timeout_ms)
        for _ in range(METADATA_FORWARD_ATTEMPTS_MAX):
            try:
                status: GroupStatus | None = await engine.status(METADATA_GROUP_ID)
            except UnknownGroup:
                status = None  # no replica of group 0 here (rejoining): ask a member of it
            if status is not None and status.role == "leader":
                proposed = await engine.propose(METADATA_GROUP_ID, data, self._timeout_ms)
                return decode_result(proposed.result)
            if status is not None and status.leader_id:
                target, forwarded = status.leader_id, True
            elif not ask_voters:
                raise NotLeader(None, "metadata group has no leader here")
            else:
                voters = self._routing().route(METADATA_GROUP_ID).voters
                others = [v for v in voters if v != self._node_id]
                if not others:
                    raise NotLeader(None, "no other member of the metadata group to ask")
                target, forwarded = others[self._ask_next % len(others)], False  # it forwards once
            try:
                _kind, payload = await self._transport.send_rpc(
                    target,
                    wire.MessageKind.METADATA_PROPOSE,
                    encode_metadata_propose(data, forwarded=forwarded),
                )
            except NotLeader as e:
                last = e
                self._asked_in_vain(forwarded)
                continue
            except ClusterError:
                self._asked_in_vain(forwarded)  # the caller's retry asks another voter
                raise
            result = msgpack.unpackb(payload, raw=False)
            if not isinstance(result, dict):
                raise ClusterError("malformed metadata-propose reply")
            if result.get("not_leader"):
                last = NotLeader(None, "forwarded proposal reached a former leader")
                self._asked_in_vain(forwarded)
                continue
            reason = result.get("refused")
            return reason if isinstance(reason, str) else None
        raise last

    def _asked_in_vain(self, forwarded: bool) -> None:
        """A voter asked to forward (not a leader sent to) gave no outcome: ask the next one."""
        if not forwarded:
            self._ask_next += 1

    async def on_propose(self, peer: Peer, payload: bytes) -> Reply:
        """METADATA_PROPOSE: a client's proposal is forwarded to the leader once; a forwarded
        one is not again."""
        # The transport admitted only members holding their pinned keys (METADATA_PROPOSE is
        # member-only; a decommissioned node is no longer registered: `Node.register_peers`).
        request = msgpack.unpackb(payload, raw=False)
        entry = request.get("entry") if isinstance(request, dict) else None
        if not isinstance(entry, bytes):
            raise ClusterError("metadata-propose payload must be a map with bytes 'entry'")
        doc: dict[str, object]
        if request.get("forwarded"):
            try:
                proposed = await self._engine().propose(METADATA_GROUP_ID, entry, self._timeout_ms)
            except RaftNotLeader:
                doc = {"not_leader": True}
            else:
                doc = {"refused": decode_result(proposed.result)}
        else:
            decoded = MetadataEntry.decode(entry)
            doc = {"refused": await self.propose(decoded, ask_voters=False)}
        return wire.MessageKind.METADATA_PROPOSE_RESPONSE, bytes(msgpack.packb(doc))
