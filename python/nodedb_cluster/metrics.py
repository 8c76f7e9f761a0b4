"""Prometheus text for one node (`start --metrics-addr`): the HTTP shell around
`metrics_families`, which says what the families are.

Scrapes run on prometheus_client's HTTP thread, which must not touch the engine (it belongs to the
event loop), so a task on the loop refreshes a snapshot every `REFRESH_INTERVAL_S` and the
collector only renders that snapshot. The Rust core's counters and histograms are plain atomics:
reading them costs the hot path nothing.

The CLI binds the endpoint before the node forms: a port in use fails the start before anything
is written or any cluster learns of the node, and while the node restarts or joins (minutes, when
its seeds are down) `nodedb_lifecycle_state` already says so. The rest follows once the node is
attached.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from nodedb_cluster.addr import SocketAddr
from nodedb_cluster.errors import ClusterError
from nodedb_cluster.formation.credentials import node_cert_not_after
from nodedb_cluster.lifecycle import STATE_LABELS, LifecycleTracker
from nodedb_cluster.metrics_families import Scrape, families
from nodedb_cluster.metrics_http import serve_registry
from nodedb_cluster.topology import NodeState

if TYPE_CHECKING:
    from nodedb_cluster.node import Node

REFRESH_INTERVAL_S: Final = 1.0
"""Prometheus scrapes every 10-60 s; a second-old snapshot is fresh enough and costs nothing."""


class NodeCollector(Collector):
    """Turns the latest snapshot of a node into metric families."""

    def __init__(self, lifecycle: LifecycleTracker, scrape: Scrape) -> None:
        self._lifecycle = lifecycle
        self._scrape = scrape

    def collect(self) -> Iterator[Metric]:
        self._scrape.lifecycle = self._lifecycle.state.label  # a plain read: always current
        yield from families(self._scrape)


def take_scrape(node: Node, scrape: Scrape) -> None:
    """Everything but the status (which is awaited) into `scrape`; on the event loop."""
    counters = node.metrics()
    scrape.engine_counters = _strip(counters, "raft_")
    scrape.transport_counters = _strip(counters, "transport_")
    scrape.node_counters = {
        k: v for k, v in counters.items() if not k.startswith(("raft_", "transport_"))
    }
    scrape.refusals = node.transport.refusal_counts()
    scrape.served_histograms = node.transport.served_histograms()
    engine = node.engine
    if engine is not None:
        scrape.engine_histograms = engine.histograms()
        scrape.leader_changes = engine.leader_changes()
        scrape.kv_requests = engine.kv_requests()
    swim = node.membership
    if swim is not None:
        scrape.swim_counters = swim.metrics()
        members = members_of(node)
        scrape.swim_members = Counter(
            m.state.name.lower() for m in swim.members() if m.node_id in members
        )
    scrape.join_durations_s = tuple(node.join_durations_s)


def members_of(node: Node) -> frozenset[int]:
    """The nodes still members of the cluster as group 0 records it: a node decommissioned (or
    removed) is no member SWIM's gauges count, or `NodeDBNodeDead` would fire for good once it
    is stopped, as the decommission tells the operator to do."""
    return frozenset(
        n.node_id for n in node.metadata.topology.nodes() if n.state is not NodeState.DECOMMISSIONED
    )


def _strip(counters: dict[str, int], prefix: str) -> dict[str, int]:
    return {k.removeprefix(prefix): v for k, v in counters.items() if k.startswith(prefix)}


class MetricsServer:
    """The HTTP endpoint and, once a node is attached, its refresh task; `close()` stops both.
    Bound when made (an `OSError` if it cannot be); serves the lifecycle state alone until
    `attach`."""

    def __init__(self, addr: SocketAddr, lifecycle: LifecycleTracker) -> None:
        self._scrape = Scrape(lifecycle=lifecycle.state.label, lifecycle_states=STATE_LABELS)
        self.registry = CollectorRegistry()
        self.registry.register(NodeCollector(lifecycle, self._scrape))
        self._server, self._thread = serve_registry(addr, self.registry)
        self._node: Node | None = None
        self._task: asyncio.Future[None] | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    async def attach(self, node: Node) -> None:
        """Serve everything of `node` from now on (its first snapshot taken before this returns)."""
        self._node = node
        self._scrape.cert_not_after_s = node_cert_not_after(node.config)
        with contextlib.suppress(ClusterError):
            await self.refresh()
        self._task = asyncio.ensure_future(self._refresh_loop())

    async def refresh(self) -> None:
        if self._node is None:
            return
        take_scrape(self._node, self._scrape)
        self._scrape.status = await self._node.status()

    async def _refresh_loop(self) -> None:
        while True:
            with contextlib.suppress(ClusterError):
                await self.refresh()
            await asyncio.sleep(REFRESH_INTERVAL_S)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._server.shutdown()
        self._server.server_close()


async def serve_metrics(node: Node, addr: SocketAddr) -> MetricsServer:
    """The endpoint for a node already started (an embedding host's way)."""
    server = MetricsServer(addr, node.lifecycle)
    await server.attach(node)
    return server
