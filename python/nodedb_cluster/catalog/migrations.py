"""Explicit, registered steps from each old catalog format to the next.

`MIGRATIONS[v]` turns format v into format v + 1 inside the caller's write transaction (whose
default database is `meta`); `Catalog.open` runs every step needed, then stamps the new version, all
in ONE transaction, so a crash mid-migration leaves the old format intact. A step must not lose
data: a value it cannot convert raises `CatalogCorrupt` and the transaction is aborted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Final

import lmdb
import msgpack

from nodedb_cluster.catalog import layout
from nodedb_cluster.catalog.checksum import RESTORE_HINT, is_sealed, seal
from nodedb_cluster.errors import CatalogCorrupt


def _v0_to_v1(txn: lmdb.Transaction[bytes]) -> None:
    """Rename `topo` to `topology`; re-encode settings from a JSON object to a MessagePack map."""
    topology = txn.get(layout.KEY_TOPOLOGY_V0)
    if topology is not None:
        txn.put(layout.KEY_TOPOLOGY, topology)
        txn.delete(layout.KEY_TOPOLOGY_V0)
    settings = txn.get(layout.KEY_SETTINGS)
    if settings is not None:
        try:
            value = json.loads(bytes(settings).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CatalogCorrupt("settings", f"format 0 settings are not JSON: {e}") from e
        if not isinstance(value, dict):
            raise CatalogCorrupt("settings", "format 0 settings are not a JSON object")
        txn.put(layout.KEY_SETTINGS, msgpack.packb(value, use_bin_type=True))


def _v1_to_v2(txn: lmdb.Transaction[bytes]) -> None:
    """Seal every value (all but `format_version`) with its key-bound checksum.

    A value that already carries a valid format-2 checksum means the stored version was damaged
    (a format-1 value passes by chance once in 2**32): sealing again would bury the damage, so
    the catalog is refused instead.
    """
    items = [
        (bytes(key), bytes(value))
        for key, value in txn.cursor()
        if bytes(key) != layout.KEY_FORMAT_VERSION
    ]
    for key, value in items:
        if is_sealed(key, value):
            raise CatalogCorrupt(
                layout.KEY_FORMAT_VERSION.decode(),
                f"says format 1, but key {key.decode(errors='backslashreplace')!r} already "
                f"carries a format-2 checksum: {RESTORE_HINT}",
            )
    for key, value in items:
        txn.put(key, seal(key, value))


MIGRATIONS: Final[dict[int, Callable[[lmdb.Transaction[bytes]], None]]] = {
    0: _v0_to_v1,
    1: _v1_to_v2,
}
"""from-version -> step producing from-version + 1."""
