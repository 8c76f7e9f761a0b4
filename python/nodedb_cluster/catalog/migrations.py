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


MIGRATIONS: Final[dict[int, Callable[[lmdb.Transaction[bytes]], None]]] = {
    0: _v0_to_v1,
}
"""from-version -> step producing from-version + 1."""
