"""Catalog persistence: what one write transaction per logical save buys, in one run.

Run:  pytest benches/bench_catalog.py --benchmark-enable

(c) persist a formation (cluster id + 16-node topology + 16-group routing table), as bootstrap and
    join do before creating any Raft state:
    case     `save_formation(...)`: one LMDB write transaction, one fsync;
    baseline `save_cluster_id`, `save_topology`, `save_routing`: three transactions, three fsyncs
             (and a crash window between them).
(d) read it back on restart:
    case     `load_formation()`: one read transaction, decode all three;
    baseline `cluster_id()`, `load_topology()`, `load_routing()`: three read transactions.

The catalog lives under pytest's tmp_path (same filesystem as the node's data_dir would be here);
fsync cost dominates (c) and depends on the disk. Fixed rounds (`pedantic`) bound the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.catalog import Catalog
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.topology import NodeInfo, NodeState, Topology

NODES = 16
GROUPS = 16
ROUNDS_WRITE = 60
"""A commit is an fsync (~1-10 ms here): 60 rounds keep each case near a second."""
ROUNDS_READ = 300

RecordSummary = Callable[[str, str, object, int, bool], None]

GROUP_WRITE = "(c) persist formation, 16 nodes"
GROUP_READ = "(d) load formation, 16 nodes"


def _topology() -> Topology:
    return Topology(
        [
            NodeInfo(
                i,
                parse_socket_addr(f"10.0.0.{i}:9400"),
                NodeState.ACTIVE,
                1,
                bytes(32),
                None,
                tuple(range(GROUPS + 1)),
            )
            for i in range(1, NODES + 1)
        ],
        version=NODES,
    )


def _routing() -> RoutingTable:
    table = RoutingTable.bootstrap(GROUPS, node_id=1)
    for group in table.group_ids:
        table.set_members(
            group, [1 + group % NODES, 1 + (group + 1) % NODES, 1 + (group + 2) % NODES]
        )
    return table


TOPOLOGY = _topology()
ROUTING = _routing()


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    with Catalog.open(tmp_path) as c:
        c.save_formation("bench", TOPOLOGY, ROUTING)
        yield c


def _run(benchmark: object, fn: Callable[[], object], rounds: int) -> None:
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=2)  # type: ignore[attr-defined]


def test_save_formation_one_txn(
    benchmark: object, catalog: Catalog, record_summary: RecordSummary
) -> None:
    _run(benchmark, lambda: catalog.save_formation("bench", TOPOLOGY, ROUTING), ROUNDS_WRITE)
    record_summary(GROUP_WRITE, "save_formation (1 txn)", benchmark, 1, False)


def test_save_three_txns(
    benchmark: object, catalog: Catalog, record_summary: RecordSummary
) -> None:
    def three() -> None:
        catalog.save_cluster_id("bench")
        catalog.save_topology(TOPOLOGY)
        catalog.save_routing(ROUTING)

    _run(benchmark, three, ROUNDS_WRITE)
    record_summary(GROUP_WRITE, "3 separate saves (3 txns)", benchmark, 1, True)


def test_load_formation_one_txn(
    benchmark: object, catalog: Catalog, record_summary: RecordSummary
) -> None:
    _run(benchmark, catalog.load_formation, ROUNDS_READ)
    record_summary(GROUP_READ, "load_formation (1 txn)", benchmark, 1, False)


def test_load_three_txns(
    benchmark: object, catalog: Catalog, record_summary: RecordSummary
) -> None:
    def three() -> None:
        catalog.cluster_id()
        catalog.load_topology()
        catalog.load_routing()

    _run(benchmark, three, ROUNDS_READ)
    record_summary(GROUP_READ, "3 separate loads (3 txns)", benchmark, 1, True)
