"""Child process for test_catalog_integrity.py: open damaged catalogs where a crash cannot hurt.

For each DATA_DIR it opens the catalog, loads every value, and prints one JSON line:
{"dir": ..., "outcome": "ok", "bootstrapped": bool} or {"dir": ..., "outcome": "refused",
"type": <CatalogError subclass>, "message": ...}. Any other exception is a traceback and exit
status 1; a SIGBUS or an abort inside liblmdb kills the process with that signal. The parent
asserts a clean exit, so each of those is a test failure, not a pass.

    python tests/support/catalog_open_child.py DATA_DIR...
"""

from __future__ import annotations

import json
import sys

from nodedb_cluster.catalog import Catalog
from nodedb_cluster.errors import CatalogError


def load_everything(data_dir: str) -> dict[str, object]:
    with Catalog.open(data_dir) as catalog:
        catalog.load_formation()
        catalog.load_topology()
        catalog.load_routing()
        catalog.load_settings()
        catalog.load_cluster_secret()
        catalog.load_metadata_applied_index()
        return {"outcome": "ok", "bootstrapped": catalog.is_bootstrapped()}


def main(data_dirs: list[str]) -> None:
    for data_dir in data_dirs:
        try:
            result = load_everything(data_dir)
        except CatalogError as e:
            result = {"outcome": "refused", "type": type(e).__name__, "message": str(e)}
        print(json.dumps({"dir": data_dir, **result}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
