"""`Client`: the replicated KV from a separate process, over the cluster transport.

It asks any node for the routing table and the members' addresses, then sends each request
straight to the leader of the key's group (the same `KvRouter` a node uses, without an engine):
a NotLeader answer names the new leader and the request is retried there within its deadline.
Call `connect()` again to refresh routing after members moved.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from nodedb_cluster import wire
from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.errors import ClusterError, RemoteError, Unreachable
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
            self._routing = RoutingTable.decode(routing)
            return
        raise Unavailable(0, "no node answered: " + "; ".join(errors))

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def router(self) -> KvRouter:
        return self._router

    async def put(self, key: bytes, value: bytes, *, timeout_s: float | None = None) -> None:
        await self._router.put(key, value, timeout_s=timeout_s)

    async def delete(self, key: bytes, *, timeout_s: float | None = None) -> bool:
        return await self._router.delete(key, timeout_s=timeout_s)

    async def cas(
        self, key: bytes, expected: bytes | None, new: bytes, *, timeout_s: float | None = None
    ) -> bool:
        return await self._router.cas(key, expected, new, timeout_s=timeout_s)

    async def get(
        self,
        key: bytes,
        *,
        read: ReadLevel = "linearizable",
        max_staleness_s: float = MAX_STALENESS_S_DEFAULT,
        timeout_s: float | None = None,
    ) -> bytes | None:
        return await self._router.get(
            key, read=read, max_staleness_s=max_staleness_s, timeout_s=timeout_s
        )

    async def put_many(
        self, items: Sequence[tuple[bytes, bytes]], *, timeout_s: float | None = None
    ) -> None:
        await self._router.put_many(items, timeout_s=timeout_s)

    async def get_many(
        self,
        keys: Sequence[bytes],
        *,
        read: ReadLevel = "linearizable",
        max_staleness_s: float = MAX_STALENESS_S_DEFAULT,
        timeout_s: float | None = None,
    ) -> list[bytes | None]:
        return await self._router.get_many(
            keys, read=read, max_staleness_s=max_staleness_s, timeout_s=timeout_s
        )

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
        await self._router.close()
        await self._transport.close()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
