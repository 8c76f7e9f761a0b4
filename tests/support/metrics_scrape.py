"""`/metrics` on every node of a `LocalCluster`: one port on each node's own IP, and a scrape."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from nodedb_cluster.localcluster import LocalCluster, free_port

SCRAPE_TIMEOUT_S = 5.0
FORM_TIMEOUT_S = 60.0


@asynccontextmanager
async def formed_with_metrics(tmp_path: Path, size: int = 3) -> AsyncIterator[LocalCluster]:
    """A formed `LocalCluster` whose every node serves `/metrics`; closed on exit."""
    c = LocalCluster(tmp_path, size)
    serve_metrics_on_every_node(c)
    try:
        await c.start()
        await c.wait_formed(FORM_TIMEOUT_S)
        yield c
    finally:
        await c.close()


def serve_metrics_on_every_node(cluster: LocalCluster) -> None:
    """Before `start`: each node serves `/metrics` on its listen IP, at a port free on all."""
    port = free_port([n.config.listen_addr.host for n in cluster.nodes.values()])
    for node in cluster.nodes.values():
        addr = node.config.listen_addr
        node.config = replace(node.config, metrics_addr=replace(addr, port=port))


def scrape(cluster: LocalCluster, node_id: int) -> str:
    """Node `node_id`'s Prometheus text (blocking: call through `asyncio.to_thread`)."""
    addr = cluster.nodes[node_id].config.metrics_addr
    assert addr is not None
    url = f"http://{addr.host}:{addr.port}/metrics"
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as r:
        body: bytes = r.read()
    return body.decode()
