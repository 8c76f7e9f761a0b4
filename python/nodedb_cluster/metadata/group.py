"""Group 0 as the Raft engine sees it: the `StateMachine` the engine calls on its driver thread.

Adapts `MetadataStateMachine` to the engine's protocol (one result per entry, snapshot, restore)
and tells the event loop, thread-safely, each time the state moved, so the node can register new
peers, reconcile its Raft groups and wake join handlers waiting for their entry to apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Final, TypeVar

import msgpack

from nodedb_cluster.errors import CatalogError, CatalogNoSpace
from nodedb_cluster.metadata.applier import (
    Applied,
    Audit,
    MetadataState,
    MetadataStateMachine,
    Persist,
)
from nodedb_cluster.metadata.vshard_moves import VShardMoves
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.topology import Topology

T = TypeVar("T")
log = logging.getLogger(__name__)

SNAPSHOT_FORMAT: Final = 1
RESULT_APPLIED: Final = b""
"""An applied entry's result; a refused one is b"\\x01" + the reason (UTF-8)."""
RESULT_REFUSED_TAG: Final = b"\x01"


def encode_state(state: MetadataState) -> bytes:
    """The snapshot form of the metadata state (also what a JoinResponse embeds)."""
    doc = {
        "format": SNAPSHOT_FORMAT,
        "topology": state.topology.encode(),
        "routing": state.routing.encode(),
        "settings": dict(state.settings),
        "applied_index": state.applied_index,
        "vshard_moves": state.vshard_moves.encode(),
    }
    packed = msgpack.packb(doc, use_bin_type=True)
    assert isinstance(packed, bytes)
    return packed


def decode_state(data: bytes) -> MetadataState:
    """Parse `encode_state` output; every defect is a `CatalogError` naming what is wrong."""
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as e:
        raise CatalogError(f"metadata snapshot is not valid MessagePack: {e}") from e
    if not isinstance(doc, Mapping) or doc.get("format") != SNAPSHOT_FORMAT:
        raise CatalogError(f"metadata snapshot is not of format {SNAPSHOT_FORMAT}")
    topology, routing = doc.get("topology"), doc.get("routing")
    settings, applied = doc.get("settings"), doc.get("applied_index")
    if not isinstance(topology, bytes) or not isinstance(routing, bytes):
        raise CatalogError("metadata snapshot lacks topology or routing bytes")
    if not isinstance(settings, dict) or not isinstance(applied, int) or applied < 0:
        raise CatalogError("metadata snapshot has malformed settings or applied_index")
    raw_moves = doc.get("vshard_moves")  # absent in snapshots from before vShard moves
    if raw_moves is not None and not isinstance(raw_moves, bytes):
        raise CatalogError("metadata snapshot has malformed vshard_moves")
    moves = VShardMoves() if raw_moves is None else VShardMoves.decode(raw_moves)
    return MetadataState(
        Topology.decode(topology), RoutingTable.decode(routing), settings, applied, moves
    )


def decode_result(result: bytes) -> str | None:
    """None for an applied entry; the refusal reason otherwise."""
    if result == RESULT_APPLIED:
        return None
    return result[len(RESULT_REFUSED_TAG) :].decode("utf-8", errors="replace")


class MetadataGroup:
    """The engine-facing state machine of group 0."""

    def __init__(
        self,
        initial: MetadataState,
        persist: Persist,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[MetadataState], None],
        audit: Audit | None = None,
        on_no_space: Callable[[CatalogNoSpace | None], None] | None = None,
    ) -> None:
        """`on_no_space` runs on the event loop each time the catalog runs out of space for the
        applied state (the error) or has it again (None); see `MetadataStateMachine.no_space`."""
        observer = None if on_no_space is None else self._on_loop(loop, on_no_space)
        self.machine = MetadataStateMachine(initial, persist, audit, on_no_space=observer)
        self._loop = loop
        self._on_change = on_change

    @staticmethod
    def _on_loop(
        loop: asyncio.AbstractEventLoop, callback: Callable[[CatalogNoSpace | None], None]
    ) -> Callable[[CatalogNoSpace | None], None]:
        def hand_over(error: CatalogNoSpace | None) -> None:
            _tell_loop(loop, callback, error)

        return hand_over

    def apply_batch(self, entries: list[tuple[int, bytes]]) -> list[bytes]:
        results = self.machine.apply_batch(entries)
        self._announce()
        return [
            RESULT_APPLIED
            if isinstance(r, Applied)
            else RESULT_REFUSED_TAG + r.reason.encode("utf-8")
            for r in results
        ]

    def snapshot(self) -> bytes:
        return encode_state(self.machine.state)

    def restore(self, data: bytes) -> None:
        """Install a snapshot, unless this node's catalog already holds a later state.

        On restart the engine restores the latest Raft snapshot, which may be older than what
        the catalog holds; the catalog's state is the deterministic result of the same committed
        prefix, so keeping it (and skipping the entries it covers) is exact, and the node shows
        its real state at once instead of regressing until the log is replayed.
        """
        state = decode_state(data)
        if state.applied_index < self.machine.state.applied_index:
            log.info(
                "metadata snapshot at %d is older than the catalog's %d: keeping the catalog",
                state.applied_index,
                self.machine.state.applied_index,
            )
            return
        self.machine.replace_state(state)
        self._announce()

    def _announce(self) -> None:
        _tell_loop(self._loop, self._on_change, self.machine.state)


def _tell_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[T], None], arg: T) -> None:
    """Hand `arg` to `callback` on the loop, from the driver thread. A loop that has closed
    (the node is shutting down, maybe between the check and the call) has nobody left to tell:
    raising here would stop the engine as if the state machine had failed."""
    with contextlib.suppress(RuntimeError):
        if not loop.is_closed():
            loop.call_soon_threadsafe(callback, arg)
