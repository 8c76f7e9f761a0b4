"""Build tests/support/fixtures/catalog_v0/: a catalog in the pre-release format 0 layout.

Format 0 kept the topology under the key `topo` and the settings as a JSON object (see
nodedb_cluster/catalog/layout.py); test_catalog.py opens a copy of this fixture and checks that
migration 0 -> 1 keeps every value. Written with raw py-lmdb, not `Catalog`, because `Catalog` only
writes the current format.

    python tests/support/catalog_make_v0_fixture.py [OUT_DIR]

(OUT_DIR defaults to tests/support/fixtures/catalog_v0.)
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import lmdb

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.topology import NodeInfo, NodeState, Topology

CLUSTER_ID = "fixture-v0"
SETTINGS = {"max_nodes": 7, "note": "written in format 0"}
NUM_GROUPS = 2


def expected_topology() -> Topology:
    return Topology(
        [
            NodeInfo(
                i, parse_socket_addr(f"10.0.0.{i}:9400"), NodeState.ACTIVE, 1, None, None, (0, 1, 2)
            )
            for i in (1, 2, 3)
        ],
        version=3,
    )


def expected_routing() -> RoutingTable:
    return RoutingTable.bootstrap(NUM_GROUPS, 1)


def write_v0(out_dir: Path) -> Path:
    """Write the format-0 catalog into `out_dir/catalog` (which must not exist yet)."""
    path = out_dir / "catalog"
    path.mkdir(parents=True)
    env = lmdb.open(str(path), subdir=True, map_size=1 << 20, max_dbs=2)
    try:
        db = env.open_db(b"meta")
        with env.begin(db=db, write=True) as txn:
            txn.put(b"format_version", struct.pack("<I", 0))
            txn.put(b"cluster_id", CLUSTER_ID.encode("ascii"))
            txn.put(b"topo", expected_topology().encode())
            txn.put(b"routing", expected_routing().encode())
            txn.put(b"settings", json.dumps(SETTINGS, sort_keys=True).encode("utf-8"))
    finally:
        env.close()
    (path / "lock.mdb").unlink()  # runtime state, recreated on open; not part of the fixture
    return path


if __name__ == "__main__":
    default = Path(__file__).resolve().parent / "fixtures" / "catalog_v0"
    print(write_v0(Path(sys.argv[1]) if len(sys.argv) > 1 else default))
