"""Child process for test_catalog_crash.py: a stream of catalog saves until killed.

Each iteration i saves, as three separate write transactions and in this order: a topology of
version i, a routing table of epoch i, settings {"i": i, ...}. Value sizes vary with i so pages are
allocated and freed. On start it first brings routing and settings up to the stored topology
version (a kill may have left them one save behind). It prints "started saving <i>" once the
catalog is open and formed, then saves until SIGKILL arrives or its own bounds (count, time) end it.

    python tests/support/catalog_crash_writer.py DATA_DIR
"""

from __future__ import annotations

import sys
import time

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.catalog import Catalog
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.topology import NodeInfo, NodeState, Topology

CLUSTER_ID = "crash-test"
ITERATIONS_MAX = 100_000
RUN_SECS_MAX = 30.0


def topology_at(i: int) -> Topology:
    """Version i, with 1 + i % 40 nodes: the node count tells a reader which save it sees."""
    nodes = [
        NodeInfo(n, parse_socket_addr(f"10.0.{n // 250}.{n % 250 + 1}:9400"), NodeState.ACTIVE, 1)
        for n in range(1, 2 + i % 40)
    ]
    return Topology(nodes, version=i)


def routing_at(i: int) -> RoutingTable:
    base = RoutingTable.bootstrap(4, 1)
    return RoutingTable(base.vshard_to_group, [base.route(g) for g in base.group_ids], epoch=i)


def settings_at(i: int) -> dict[str, object]:
    return {"i": i, "pad": "x" * (i * 37 % 5000)}


def main(data_dir: str) -> None:
    deadline = time.monotonic() + RUN_SECS_MAX
    with Catalog.open(data_dir) as catalog:
        topology = catalog.load_topology()
        start = 0 if topology is None else topology.version
        if not catalog.is_bootstrapped():
            catalog.save_formation(CLUSTER_ID, topology_at(0), routing_at(0))
        # A kill may have left routing and settings one save behind the topology: catch them up,
        # so the reader's "at most one save apart" check holds across rounds too.
        catalog.save_routing(routing_at(start))
        catalog.save_settings(settings_at(start))
        print(f"started saving {start + 1}", flush=True)
        for i in range(start + 1, start + 1 + ITERATIONS_MAX):
            catalog.save_topology(topology_at(i))
            catalog.save_routing(routing_at(i))
            catalog.save_settings(settings_at(i))
            if time.monotonic() > deadline:
                break


if __name__ == "__main__":
    main(sys.argv[1])
