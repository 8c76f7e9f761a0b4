"""Prometheus text for one node: lifecycle, per-group Raft state, transport and engine counters.

Scrapes run on prometheus_client's HTTP thread, which must not touch the engine (it belongs to the
event loop), so a task on the loop refreshes a snapshot every `REFRESH_INTERVAL_S` and the
collector only reads that snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from nodedb_cluster.addr import SocketAddr
from nodedb_cluster.errors import ClusterError
from nodedb_cluster.formation.credentials import node_cert_not_after
from nodedb_cluster.lifecycle import STATE_LABELS

if TYPE_CHECKING:
    from nodedb_cluster.node import Node
    from nodedb_cluster.status import NodeStatus

REFRESH_INTERVAL_S: Final = 1.0
"""Prometheus scrapes every 10-60 s; a second-old snapshot is fresh enough and costs nothing."""
ROLES: Final = ("follower", "pre_candidate", "candidate", "leader")
GAUGES: Final = frozenset({"raft_no_space", "no_space"})
"""Entries of `Node.metrics()` that are states, not counts: exported as gauges
(`raft_no_space`: 1 while the engine refuses writes for lack of disk space; `no_space`: 1 while
the node is NO_SPACE for its log's or its catalog's disk, as `status` shows)."""


@dataclass(slots=True)
class _Snapshot:
    status: NodeStatus | None = None
    counters: dict[str, int] | None = None
    refusals: dict[tuple[str, str], int] | None = None
    cert_not_after_s: int | None = None
    """When this node's TLS certificate expires (Unix seconds); None when insecure."""


class NodeCollector(Collector):
    """Turns the latest snapshot of a node into metric families."""

    def __init__(self, node: Node, snapshot: _Snapshot) -> None:
        self._node = node
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        lifecycle = GaugeMetricFamily(
            "nodedb_lifecycle_state", "1 for the node's current lifecycle state", labels=["state"]
        )
        current = self._node.lifecycle.state.label
        for label in STATE_LABELS:
            lifecycle.add_metric([label], 1.0 if label == current else 0.0)
        yield lifecycle
        status = self._snapshot.status
        if status is not None:
            yield from _group_families(status)
        not_after = self._snapshot.cert_not_after_s
        if not_after is not None:
            expiry = GaugeMetricFamily(
                "nodedb_tls_cert_expiry_seconds",
                "seconds until this node's TLS certificate expires (negative: expired)",
            )
            expiry.add_metric([], float(not_after - time.time()))
            yield expiry
        refused = CounterMetricFamily(
            "nodedb_requests_refused",
            "requests refused by the authorization table or a handler's identity rule",
            labels=["kind", "reason"],
        )
        for (kind, reason), value in sorted((self._snapshot.refusals or {}).items()):
            refused.add_metric([kind, reason], float(value))
        yield refused
        for name, value in sorted((self._snapshot.counters or {}).items()):
            family: CounterMetricFamily | GaugeMetricFamily
            if name in GAUGES:
                family = GaugeMetricFamily(f"nodedb_{name}", f"state {name} of the node")
            else:
                family = CounterMetricFamily(f"nodedb_{name}", f"counter {name} of the node")
            family.add_metric([], float(value))
            yield family


def _group_families(status: NodeStatus) -> Iterator[Metric]:
    role = GaugeMetricFamily(
        "nodedb_raft_role", "1 for the group's role here", labels=["group", "role"]
    )
    term = GaugeMetricFamily("nodedb_raft_term", "current term", labels=["group"])
    commit = GaugeMetricFamily("nodedb_raft_commit_index", "commit index", labels=["group"])
    applied = GaugeMetricFamily("nodedb_raft_applied_index", "applied index", labels=["group"])
    for g in status.groups:
        group = str(g.group_id)
        for r in ROLES:
            role.add_metric([group, r], 1.0 if g.role == r else 0.0)
        term.add_metric([group], float(g.term))
        commit.add_metric([group], float(g.commit_index))
        applied.add_metric([group], float(g.applied_index))
    nodes = GaugeMetricFamily("nodedb_topology_nodes", "nodes in the topology")
    nodes.add_metric([], float(len(status.nodes)))
    yield from (role, term, commit, applied, nodes)


class MetricsServer:
    """The HTTP endpoint and its refresh task; `close()` stops both."""

    def __init__(self, node: Node, addr: SocketAddr) -> None:
        self._snapshot = _Snapshot(cert_not_after_s=node_cert_not_after(node.config))
        self.registry = CollectorRegistry()
        self.registry.register(NodeCollector(node, self._snapshot))
        self._server, self._thread = start_http_server(addr.port, addr.host, self.registry)
        self._node = node
        self._task = asyncio.ensure_future(self._refresh_loop())

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    async def refresh(self) -> None:
        self._snapshot.status = await self._node.status()
        self._snapshot.counters = self._node.metrics()
        self._snapshot.refusals = self._node.transport.refusal_counts()

    async def _refresh_loop(self) -> None:
        while True:
            with contextlib.suppress(ClusterError):
                await self.refresh()
            await asyncio.sleep(REFRESH_INTERVAL_S)

    def close(self) -> None:
        self._task.cancel()
        self._server.shutdown()
        self._server.server_close()


async def serve_metrics(node: Node, addr: SocketAddr) -> MetricsServer:
    server = MetricsServer(node, addr)
    with contextlib.suppress(ClusterError):
        await server.refresh()
    return server
