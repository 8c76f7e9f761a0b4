"""vShard moves in flight, as group 0 records them: the one place that decides a move's fate.

A move of vShard `v` from group S to group T is begun, then either finished (the route flips to T
in the same step) or aborted (the route stays at S): group 0 applies exactly one of the two, so
every node agrees whether the move happened, whatever the mover was doing when it died. The data
groups' own vShard states (incoming, frozen, moved) follow this record (`vshard_mover.converge`).

Immutable like the rest of `MetadataState`: appliers build a new value per change.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from nodedb_cluster.errors import CatalogError, ClusterError
from nodedb_cluster.routing.table import METADATA_GROUP_ID, RoutingTable
from nodedb_cluster.routing.vshard import NUM_VSHARDS

MOVES_IN_FLIGHT_MAX: Final = 64
"""An upper bound on what a begin command may ask for as its own concurrency cap."""
ENCODED_BYTES_MAX: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class VShardMove:
    vshard: int
    source: int
    target: int
    move_id: int
    """Unique per cluster (group 0 counts begun moves): a mover names the move it runs, so a
    stale mover's finish or abort of an older move of the same vShard is refused."""


class VShardMoves:
    """vShard -> its move in flight; at most one move per vShard."""

    __slots__ = ("_moves", "_next_id")

    def __init__(self, moves: Mapping[int, VShardMove] | None = None, next_id: int = 1) -> None:
        self._moves: dict[int, VShardMove] = dict(moves or {})
        self._next_id = next_id

    @property
    def next_id(self) -> int:
        """The id the next begun move gets."""
        return self._next_id

    def __len__(self) -> int:
        return len(self._moves)

    def __iter__(self) -> Iterator[VShardMove]:
        return iter(sorted(self._moves.values(), key=lambda m: m.vshard))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, VShardMoves)
            and self._moves == other._moves
            and self._next_id == other._next_id
        )

    def __repr__(self) -> str:
        return f"VShardMoves({sorted(self._moves.values(), key=lambda m: m.vshard)!r})"

    def get(self, vshard: int) -> VShardMove | None:
        return self._moves.get(vshard)

    def of_group(self, group: int) -> list[VShardMove]:
        """Moves with `group` as source or target."""
        return [m for m in self if group in (m.source, m.target)]

    # --- the applier's transitions (each returns a new value or raises ClusterError) ----------

    def begin(
        self, vshard: int, source: int, target: int, routing: RoutingTable, in_flight_max: int
    ) -> VShardMoves:
        v = vshard
        if not 0 <= v < NUM_VSHARDS:
            raise ClusterError(f"vshard {v} is not in 0..{NUM_VSHARDS - 1}")
        if v in self._moves:
            raise ClusterError(f"vshard {v} is already moving to group {self._moves[v].target}")
        if target == METADATA_GROUP_ID or target not in routing.group_ids:
            raise ClusterError(f"group {target} is not a data group of this cluster")
        current = routing.group_for_vshard(v)
        if current != source:
            raise ClusterError(f"vshard {v} is in group {current}, not {source}")
        if source == target:
            raise ClusterError(f"vshard {v} is already in group {target}")
        if not 1 <= in_flight_max <= MOVES_IN_FLIGHT_MAX:
            raise ClusterError(f"in_flight_max {in_flight_max} is not in 1..{MOVES_IN_FLIGHT_MAX}")
        if len(self._moves) >= in_flight_max:
            raise ClusterError(
                f"{len(self._moves)} vshard moves in flight already (cap {in_flight_max})"
            )
        added = VShardMove(v, source, target, self._next_id)
        return VShardMoves({**self._moves, v: added}, self._next_id + 1)

    def finish(self, vshard: int, move_id: int, routing: RoutingTable) -> VShardMoves:
        """The commit point of a move: the route flips to the target (routing epoch bumps)."""
        move = self._require(vshard, move_id)
        routing.assign_vshard(vshard, move.target)
        return self._without(vshard)

    def abort(self, vshard: int, move_id: int) -> VShardMoves:
        self._require(vshard, move_id)
        return self._without(vshard)

    def _require(self, vshard: int, move_id: int) -> VShardMove:
        move = self._moves.get(vshard)
        if move is None or move.move_id != move_id:
            raise ClusterError(f"move {move_id} of vshard {vshard} is not in flight")
        return move

    def _without(self, vshard: int) -> VShardMoves:
        kept = {v: m for v, m in self._moves.items() if v != vshard}
        return VShardMoves(kept, self._next_id)

    # --- codec (catalog and metadata snapshot) --------------------------------------------------

    def encode(self) -> bytes:
        rows = [[m.vshard, m.source, m.target, m.move_id] for m in self]
        doc = {"format": 1, "moves": rows, "next_id": self._next_id}
        return bytes(msgpack.packb(doc, use_bin_type=True))

    @classmethod
    def decode(cls, data: bytes) -> VShardMoves:
        if len(data) > ENCODED_BYTES_MAX:
            raise CatalogError(f"vshard moves: {len(data)} bytes exceeds {ENCODED_BYTES_MAX}")
        try:
            doc: Any = msgpack.unpackb(data, raw=False)
        except (ValueError, msgpack.UnpackException) as e:
            raise CatalogError(f"vshard moves are not valid MessagePack: {e}") from e
        rows = doc.get("moves") if isinstance(doc, dict) and doc.get("format") == 1 else None
        next_id = doc.get("next_id") if isinstance(doc, dict) else None
        if not isinstance(rows, list) or type(next_id) is not int or next_id < 1:
            raise CatalogError("vshard moves are not a format 1 document")
        moves: dict[int, VShardMove] = {}
        for row in rows:
            if not (
                isinstance(row, list)
                and len(row) == 4
                and all(type(x) is int and x >= 0 for x in row)
                and row[0] < NUM_VSHARDS
                and row[0] not in moves
            ):
                raise CatalogError(f"vshard moves: malformed row {row!r}")
            moves[row[0]] = VShardMove(*row)
        return cls(moves, next_id)
