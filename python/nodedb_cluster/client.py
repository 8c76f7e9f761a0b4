"""`Client`: the replicated KV from a separate process, over the cluster transport.

It asks any node for the routing table and the members' addresses, then sends each request
straight to the leader of the key's group: a NotLeader answer names the new leader and the
request is retried there within its deadline. A group that answers Moved (a vShard moved to
another group) re-routes that vShard in the core at once, and the client fetches a fresh table
in the background; so it does when every member the table names for a group found no leader
(the group's replicas moved to other nodes: the core's `LeaderSearch`, paced). A refresh asks
the node that answered last first, then the given addresses, then the members it learned; the
next source is asked as soon as one fails or `ROUTING_HEDGE_S` passes without an answer, so a
source that died (its RPC times out only after the client's timeout) costs a refresh 0.1 s, not
the timeout, while a live first source still answers alone.

The calls are `nodedb_cluster.kv.Kv`'s (the Rust client core: routing, the write session,
per-target coalescing, retries and deadlines; one boundary crossing and one future per call),
and so are the errors (`Timeout`, `Unavailable`, `StaleRead`, `OutcomeUnknown`,
`InvalidRequest`, `NoSpace`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Final, TypeAlias

import nodedb_cluster_core as _core

from nodedb_cluster import wire
from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.errors import (
    ClusterError,
    HandshakeError,
    InvalidRequest,
    PermissionDenied,
    RemoteError,
    Unavailable,
    Unreachable,
)
from nodedb_cluster.kv import MAX_STALENESS_S_DEFAULT, Kv, ReadLevel
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.transport import Credentials, Transport

Members: TypeAlias = list[tuple[int, str, bytes | None]]
"""(node id, address, key pin) of each member, as a routing answer names them."""
RoutingAnswer: TypeAlias = tuple[bytes, Members]
"""A routing answer: the encoded table and the members."""

CLIENT_NODE_ID: Final = (1 << 63) + 1
"""The id a client presents to the nodes it asks; outside any real node's range."""
REFRESH_RETRY_S: Final = 0.1
"""Pause before fetching routing again after a failed background refresh."""
ROUTING_HEDGE_S: Final = 0.1
"""A routing fetch asks its next source after this long without an answer (module docs): well
above a loopback or LAN round trip, far below the RPC timeout a dead source costs."""

log = logging.getLogger(__name__)


class Client(Kv):
    """`async with Client(["127.0.0.1:9400"], credentials) as c: await c.put(b"k", b"v")`."""

    def __init__(
        self,
        addrs: Sequence[str],
        credentials: Credentials,
        timeout_s: float = 5.0,
        bind: str = "127.0.0.1:0",
        retry_unknown_writes: bool = True,
    ) -> None:
        """`retry_unknown_writes`: see `Kv.retry_unknown_writes` (writes are exactly-once
        through this client's session either way; False surfaces unknown outcomes at once)."""
        if not addrs:
            raise ClusterError("a Client needs at least one node address")
        self._addrs = [str(parse_socket_addr(a)) for a in addrs]
        self._timeout_s = timeout_s
        self._transport = Transport(CLIENT_NODE_ID, bind, credentials, rpc_timeout=timeout_s)
        self._routing: RoutingTable | None = None
        self._answered: list[str] = []  # the address whose answer is the current table
        self._members: list[str] = []  # the nodes' addresses as that answer named them
        self._refresher: asyncio.Task[None] | None = None
        # The core shares the transport's endpoint and runtime (the wrapper's Rust object).
        super().__init__(_core.KvClient(self._transport._core, CLIENT_NODE_ID, timeout_s=timeout_s))
        self.retry_unknown_writes = retry_unknown_writes

    @property
    def routing(self) -> RoutingTable:
        """The routing table of the last `connect`."""
        if self._routing is None:
            raise ClusterError("Client not connected: call `await connect()` first")
        return self._routing

    def _sources(self) -> list[str]:
        """Whom to ask for routing, in order: the node that answered last, the given
        addresses, then the members the last answer named (the given nodes may have left)."""
        order = [*self._answered[-1:], *self._addrs, *self._members]
        return list(dict.fromkeys(order))

    async def connect(self) -> None:
        """Fetch routing and members from the first node that answers (the sources in order,
        hedged: module docs). Raises `HandshakeError` when every source refused the TLS
        handshake (this client's credentials are not the cluster's), `Unavailable` otherwise."""
        sources = self._sources()
        errors: list[str] = []
        refused: list[HandshakeError] = []
        asks: dict[asyncio.Task[RoutingAnswer], str] = {}
        try:
            asked = 0
            while asked < len(sources) or asks:
                if asked < len(sources):
                    addr = sources[asked]
                    asks[asyncio.ensure_future(self._ask_routing(addr))] = addr
                    asked += 1
                hedge = ROUTING_HEDGE_S if asked < len(sources) else None
                done, _ = await asyncio.wait(
                    asks, timeout=hedge, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    addr = asks.pop(task)
                    try:
                        routing, nodes = task.result()
                    except PermissionDenied:
                        raise  # every node answers the same: this certificate may not use it
                    except HandshakeError as e:
                        refused.append(e)
                        errors.append(f"{addr}: {e}")
                        continue
                    except (Unreachable, RemoteError, ClusterError) as e:
                        errors.append(f"{addr}: {e}")
                        continue
                    self._adopt(addr, routing, nodes)
                    return
        finally:
            for task in asks:
                task.cancel()
            await asyncio.gather(*asks, return_exceptions=True)
        if refused and len(refused) == len(errors):
            raise refused[-1]
        raise Unavailable(0, "no node answered: " + "; ".join(errors))

    async def _ask_routing(self, addr: str) -> RoutingAnswer:
        kind, payload = await self._transport.send_rpc_to_addr(
            addr, wire.MessageKind.KV_REQUEST, _core.kv_routing_request()
        )
        if kind != wire.MessageKind.KV_RESPONSE:
            raise InvalidRequest(f"answered with kind {kind}")
        return _core.kv_routing_answer(payload)

    def _adopt(self, addr: str, routing: bytes, nodes: Members) -> None:
        """The answer of `addr`: its members become peers and its table the client's."""
        for node_id, node_addr, pin in nodes:
            self._transport.register_peer(node_id, node_addr, pin)
        self._answered = [addr]
        self._members = [node_addr for _, node_addr, _ in nodes]
        table = RoutingTable.decode(routing)
        self.set_routing(table)
        self._routing = table
        self._attach()
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_on_moves())

    @property
    def transport(self) -> Transport:
        return self._transport

    def start_native_load(
        self,
        *,
        clients: int,
        duration_s: float,
        value_bytes: int,
        keyspace: int,
        read_fraction: float = 0.0,
        seed: int = 1,
        timeout_s: float | None = None,
    ) -> tuple[_core.NativeLoad, asyncio.Future[dict[str, object]]]:
        """`clients` closed-loop callers that live in Rust on this client's core (single puts
        of `bench:%010d` keys, or linearizable gets for `read_fraction` of the calls) for
        `duration_s`: a load generator as efficient as etcd's Go one, for benchmarks
        (nodedb-kv's load module). Returns the live counts and a future of the result doc
        (`nodedb_cluster.bench` reads it)."""
        loop = self._attach()
        future: asyncio.Future[dict[str, object]] = loop.create_future()
        load = _core.run_native_load(
            self._core,
            clients,
            duration_s,
            value_bytes,
            keyspace,
            read_fraction,
            seed,
            self._timeout_s if timeout_s is None else timeout_s,
            future,
        )
        return load, future

    async def get_many_at(
        self,
        node_id: int,
        keys: Sequence[bytes],
        *,
        read: ReadLevel = "follower",
        max_staleness_s: float = MAX_STALENESS_S_DEFAULT,
    ) -> list[bytes | None]:
        """Values as the replicas on node `node_id` hold them (for checks after a failover):
        each key's group is read on that node only, never forwarded."""
        out: list[bytes | None] = []
        for key in keys:
            request = _core.kv_read_here_request(
                self.group_of(key), [key], read, max_staleness_s, int(self._timeout_s * 1000)
            )
            kind, payload = await self._transport.send_rpc(
                node_id, wire.MessageKind.KV_REQUEST, request
            )
            if kind != wire.MessageKind.KV_RESPONSE:
                raise ClusterError(f"node {node_id} answered a read with kind {kind}")
            try:
                (value,) = _core.kv_results_answer(payload)
            except InvalidRequest as e:
                raise ClusterError(f"node {node_id} did not serve {key!r} locally: {e}") from e
            out.append(value)
        return out

    async def _refresh_on_moves(self) -> None:
        """Fetch a fresh routing table each time the core finds its table stale: a group
        answered Moved (the core re-routes the moved vShard meanwhile; a fresh table also names
        groups added since), or none of a group's members found a leader (its replicas moved
        to nodes the table does not name). One fetch at a time; the core paces the asking."""
        loop = asyncio.get_running_loop()
        while True:
            stale: asyncio.Future[None] = loop.create_future()
            self._core.watch_routing(stale)
            await stale
            try:
                await self.connect()
            except ClusterError as e:
                log.warning("routing refresh of a stale table failed: %s", e)
                await asyncio.sleep(REFRESH_RETRY_S)  # a pause before asking again

    async def close(self) -> None:
        """Queued calls fail with `TransportClosed`, and so do calls in flight as the transport
        closes: the bridge stays watched until the last of them is resolved."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        await super().close()
        await self._transport.close()
        self._bridge.close()  # drains what the transport's closing failed

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
