"""`Client`: the replicated KV from a separate process, over the cluster transport.

It asks any node for the routing table and the members' addresses, then sends each request
straight to the leader of the key's group: a NotLeader answer names the new leader and the
request is retried there within its deadline. Call `connect()` again to refresh routing after
members moved.

The request path is the Rust client core (`nodedb_cluster_core.KvClient`, rust/py/src/
kv_client.rs): routing, the write session, per-target coalescing (everything submitted in one
loop iteration shares one KV_REQUEST per target), msgpack, retries and deadlines run there, and
the calls one reply finishes are resolved in one loop wake-up. A call costs one boundary crossing
and one future; the retry rules and errors are `KvRouter`'s (`Timeout`, `kv.Unavailable`,
`kv.StaleRead`, `kv.OutcomeUnknown`, `InvalidRequest`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final

import nodedb_cluster_core as _core

from nodedb_cluster import wire
from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.errors import (
    ClusterError,
    PermissionDenied,
    RemoteError,
    TransportClosed,
    Unreachable,
)
from nodedb_cluster.kv import (
    MAX_STALENESS_S_DEFAULT,
    KvRouter,
    ReadLevel,
    Unavailable,
    decode_doc,
    encode_request,
)
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.transport import Credentials, Transport

CLIENT_NODE_ID: Final = (1 << 63) + 1
"""The id a client presents to the nodes it asks; outside any real node's range."""


class Client:
    """`async with Client(["127.0.0.1:9400"], credentials) as c: await c.put(b"k", b"v")`."""

    def __init__(
        self,
        addrs: Sequence[str],
        credentials: Credentials,
        timeout_s: float = 5.0,
        bind: str = "127.0.0.1:0",
        retry_unknown_writes: bool = True,
    ) -> None:
        """`retry_unknown_writes`: see `KvRouter.retry_unknown_writes` (writes are exactly-once
        through this client's session either way; False surfaces unknown outcomes at once)."""
        if not addrs:
            raise ClusterError("a Client needs at least one node address")
        self._addrs = [str(parse_socket_addr(a)) for a in addrs]
        self._timeout_s = timeout_s
        self._transport = Transport(CLIENT_NODE_ID, bind, credentials, rpc_timeout=timeout_s)
        self._routing: RoutingTable | None = None
        self._router = KvRouter(CLIENT_NODE_ID, self._transport, self._current_routing)
        self._router.retry_unknown_writes = retry_unknown_writes
        # The core shares the transport's endpoint and runtime (the wrapper's Rust object).
        self._core = _core.KvClient(self._transport._core, CLIENT_NODE_ID, timeout_s=timeout_s)
        self._core.retry_unknown_writes = retry_unknown_writes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def _current_routing(self) -> RoutingTable:
        if self._routing is None:
            raise ClusterError("Client not connected: call `await connect()` first")
        return self._routing

    async def connect(self) -> None:
        """Fetch routing and members from the first node that answers."""
        errors: list[str] = []
        for addr in self._addrs:
            try:
                kind, payload = await self._transport.send_rpc_to_addr(
                    addr, wire.MessageKind.KV_REQUEST, encode_request({"op": "routing"})
                )
            except PermissionDenied:
                raise  # every node answers the same: this certificate may not use the cluster
            except (Unreachable, RemoteError, ClusterError) as e:
                errors.append(f"{addr}: {e}")
                continue
            doc = decode_doc(payload, "routing response")
            routing = doc.get("routing")
            nodes = doc.get("nodes")
            if kind != wire.MessageKind.KV_RESPONSE or not isinstance(routing, bytes):
                errors.append(f"{addr}: answered without routing")
                continue
            if not isinstance(nodes, list):
                errors.append(f"{addr}: answered without members")
                continue
            for entry in nodes:
                node_id, node_addr, pin = entry
                self._transport.register_peer(int(node_id), str(node_addr), pin)
            table = RoutingTable.decode(routing)
            self._core.set_routing(
                table.vshard_to_group.tolist(),
                [(g, table.route(g).leader, list(table.route(g).voters)) for g in table.group_ids],
            )
            self._routing = table
            self._attach()
            return
        raise Unavailable(0, "no node answered: " + "; ".join(errors))

    def _attach(self) -> asyncio.AbstractEventLoop:
        """The running loop, watching the core's bridge (the first loop that uses it)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._closed:
                raise TransportClosed()
            if self._loop is not None:
                raise RuntimeError("this Client is bound to another event loop")
            loop.add_reader(self._core.bridge_fd(), self._drain)
            self._loop = loop
        return loop

    def _drain(self) -> None:
        """Resolve finished calls; once closed, stop watching when none is left."""
        self._core.drain()
        if self._closed and self._core.calls_unresolved == 0 and self._loop is not None:
            if not self._loop.is_closed():
                self._loop.remove_reader(self._core.bridge_fd())
            self._loop = None

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def router(self) -> KvRouter:
        """Routing helpers (`group_of`, ...); requests go through the client core."""
        return self._router

    @property
    def client_id(self) -> int:
        """This client's write-session id (exactly-once writes)."""
        return self._core.client_id

    @property
    def requests_sent(self) -> int:
        """KV_REQUESTs sent (each carries every call queued for its target meanwhile)."""
        return self._core.requests_sent

    async def put(self, key: bytes, value: bytes, *, timeout_s: float | None = None) -> None:
        loop = self._attach()
        future: asyncio.Future[None] = loop.create_future()
        if self._core.put(key, value, timeout_s, future):
            loop.call_soon(self._core.flush)
        await future

    async def delete(self, key: bytes, *, timeout_s: float | None = None) -> bool:
        """True when the key existed."""
        loop = self._attach()
        future: asyncio.Future[bool] = loop.create_future()
        if self._core.delete(key, timeout_s, future):
            loop.call_soon(self._core.flush)
        return await future

    async def cas(
        self, key: bytes, expected: bytes | None, new: bytes, *, timeout_s: float | None = None
    ) -> bool:
        """Set `key` to `new` iff it holds `expected` (None = absent); False when it did not."""
        loop = self._attach()
        future: asyncio.Future[bool] = loop.create_future()
        if self._core.cas(key, expected, new, timeout_s, future):
            loop.call_soon(self._core.flush)
        return await future

    async def get(
        self,
        key: bytes,
        *,
        read: ReadLevel = "linearizable",
        max_staleness_s: float = MAX_STALENESS_S_DEFAULT,
        timeout_s: float | None = None,
    ) -> bytes | None:
        loop = self._attach()
        future: asyncio.Future[bytes | None] = loop.create_future()
        if self._core.get_many([key], read, max_staleness_s, timeout_s, future, True):
            loop.call_soon(self._core.flush)
        return await future

    async def put_many(
        self, items: Sequence[tuple[bytes, bytes]], *, timeout_s: float | None = None
    ) -> None:
        """Every pair; one session seq each, every group's share in the same requests."""
        if not items:
            return
        loop = self._attach()
        future: asyncio.Future[None] = loop.create_future()
        if self._core.put_many(list(items), timeout_s, future):
            loop.call_soon(self._core.flush)
        await future

    async def get_many(
        self,
        keys: Sequence[bytes],
        *,
        read: ReadLevel = "linearizable",
        max_staleness_s: float = MAX_STALENESS_S_DEFAULT,
        timeout_s: float | None = None,
    ) -> list[bytes | None]:
        """One value (or None) per key, in order."""
        if not keys:
            return []
        loop = self._attach()
        future: asyncio.Future[list[bytes | None]] = loop.create_future()
        if self._core.get_many(list(keys), read, max_staleness_s, timeout_s, future, False):
            loop.call_soon(self._core.flush)
        return await future

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
        (rust/py/src/kv_load.rs). Returns the live counts and a future of the result doc
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
        groups = [self._router.group_of(k) for k in keys]
        out: list[bytes | None] = []
        for key, group in zip(keys, groups, strict=True):
            request = {
                "op": "read",
                "g": group,
                "keys": [key],
                "level": read,
                "stale_s": max_staleness_s,
                "fwd": True,
                "t": int(self._timeout_s * 1000),
            }
            kind, payload = await self._transport.send_rpc(
                node_id, wire.MessageKind.KV_REQUEST, encode_request(request)
            )
            doc = decode_doc(payload, "kv response")
            values = doc.get("r")
            if kind != wire.MessageKind.KV_RESPONSE or not isinstance(values, list):
                raise ClusterError(f"node {node_id} did not serve {key!r} locally: {doc}")
            out.append(values[0])
        return out

    async def close(self) -> None:
        """Queued calls fail with `TransportClosed`, and so do calls in flight as the transport
        closes: the bridge stays watched until the last of them is resolved."""
        self._core.close()
        await self._router.close()
        await self._transport.close()
        self._closed = True
        self._drain()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
