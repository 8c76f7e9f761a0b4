"""The asyncio side of a Rust core's loop bridge (`rust/py/src/bridge.rs`).

Each core (transport, Raft engine, KV client) settles its calls' futures through a socketpair its
owning loop watches. A completion pushed after the loop stopped watching would never settle its
future, and the coroutine awaiting it would hang for good: a node whose engine stopped while its
restart still awaited an engine call lingered so instead of exiting. So a closed core stays
watched until the last call it owes has settled, then is let go.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class BridgedCore(Protocol):
    """What a binding class exposes of its bridge."""

    def bridge_fd(self) -> int: ...

    def drain(self) -> int: ...

    @property
    def calls_unresolved(self) -> int: ...


class BridgeWatch:
    """Binds a core's bridge to the first loop that uses it and watches it from then on; after
    `close`, until no call is unresolved (a call made meanwhile is still answered)."""

    __slots__ = ("_closing", "_core", "_loop", "_owner")

    def __init__(self, core: BridgedCore, owner: str) -> None:
        self._core = core
        self._owner = owner
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    @property
    def watching(self) -> bool:
        return self._loop is not None

    def attach(self) -> asyncio.AbstractEventLoop:
        """The running loop, which must be the core's: the first loop that uses it is bound;
        any other is refused before any work starts."""
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return loop
        if self._loop is not None:
            raise RuntimeError(f"this {self._owner} is bound to another event loop")
        # The core's own drain while open: no Python frame per wake-up on the hot path.
        loop.add_reader(
            self._core.bridge_fd(), self._drain_closing if self._closing else self._core.drain
        )
        self._loop = loop
        return loop

    def close(self) -> None:
        """Call once the core is closed: stop watching as soon as no call is unresolved (now,
        when none is)."""
        self._closing = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.add_reader(self._core.bridge_fd(), self._drain_closing)
        self._drain_closing()

    def _drain_closing(self) -> None:
        self._core.drain()
        if self._core.calls_unresolved == 0 and self._loop is not None:
            if not self._loop.is_closed():
                self._loop.remove_reader(self._core.bridge_fd())
            self._loop = None
