"""Control-message dispatch: one table from wire kind to handler for the RPCs Python answers.

Raft frames and the KV hot path are answered inside the Rust engine and never reach this table;
the transport already refused every kind the caller's role may not send (docs/WIRE.md). A part
that answers a kind registers its handler here, so the node's shell knows no handler by name.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from nodedb_cluster import wire
from nodedb_cluster.errors import ClusterError, PermissionDenied
from nodedb_cluster.transport import Peer, Reply, Transport

log = logging.getLogger(__name__)

ControlHandler = Callable[[Peer, bytes], Awaitable[Reply]]
"""Answers one request: (the verified caller, its payload) -> (reply kind, reply payload)."""

REFUSAL_LOG_INTERVAL_S: Final = 1.0
"""How often refused-request lines queued by the transport are written to the log."""
BENCH_LOAD_DISABLED: Final = (
    "bench load is disabled on this node (start it with --allow-bench-load)"
)


class ControlDispatch:
    """The handler table the transport calls (`Transport.serve(dispatch)`)."""

    def __init__(self) -> None:
        self._handlers: dict[int, ControlHandler] = {}

    def register(self, kind: int, handler: ControlHandler) -> None:
        """Answer `kind` with `handler` from now on (replacing the one before, if any)."""
        self._handlers[kind] = handler

    def handler(self, kind: int) -> ControlHandler:
        """The handler answering `kind` (KeyError when none does)."""
        return self._handlers[kind]

    async def __call__(self, peer: Peer, kind: int, payload: bytes) -> Reply | None:
        handler = self._handlers.get(kind)
        if handler is None:
            raise ClusterError(f"no handler for message kind {kind}")
        return await handler(peer, payload)


def ping_handler(node_id: int) -> ControlHandler:
    """PING -> PONG with this node's id and the caller's nonce."""

    async def on_ping(peer: Peer, payload: bytes) -> Reply:
        ping = wire.Ping.decode(payload)
        return wire.MessageKind.PONG, wire.Pong(node_id, ping.nonce).encode()

    return on_ping


def bench_load_refusal(record_refusal: Callable[[Peer, int, str, str], None]) -> ControlHandler:
    """BENCH_LOAD on a node that serves no load (the bench tool installs the real handler on
    nodes started with `--allow-bench-load`): refused, counted and logged like every refusal."""

    async def refuse(peer: Peer, payload: bytes) -> Reply:
        kind = wire.MessageKind.BENCH_LOAD
        record_refusal(peer, kind, "bench_load_disabled", BENCH_LOAD_DISABLED)
        raise PermissionDenied(BENCH_LOAD_DISABLED)

    return refuse


async def log_refusals(transport: Transport) -> None:
    """Log the transport's refused requests at WARN until cancelled (already rate-limited there:
    one line per peer, kind and reason per 10 s, with the number suppressed)."""
    while True:
        for line in transport.take_refusal_lines():
            more = f" (+{line.suppressed} more since the last line)" if line.suppressed else ""
            log.warning(
                "refused %s from %s at %s [%s]: %s%s",
                line.kind,
                line.peer,
                line.addr,
                line.reason,
                line.message,
                more,
            )
        await asyncio.sleep(REFUSAL_LOG_INTERVAL_S)
