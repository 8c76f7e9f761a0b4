"""Three embedding hosts in this process: a real cluster of `start_cluster(config,
state_machine=factory)` nodes on 127.0.0.1, insecure transport, shut down on exit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.config import ClusterConfig
from nodedb_cluster.formation.start import start_cluster
from nodedb_cluster.localcluster import free_port
from nodedb_cluster.node import Node
from nodedb_cluster.raft import StateMachineFactory


@contextlib.asynccontextmanager
async def host_cluster(
    tmp_path: Path, factory: StateMachineFactory, **overrides: object
) -> AsyncIterator[dict[int, Node]]:
    """Node id -> node, every one started with `factory` and the config fields `overrides`."""
    ports = [free_port(["127.0.0.1"]) for _ in range(3)]
    addrs = tuple(parse_socket_addr(f"127.0.0.1:{port}") for port in ports)
    configs = [
        ClusterConfig(
            node_id=i + 1,
            listen_addr=addrs[i],
            seed_nodes=addrs,
            data_dir=tmp_path / f"node{i + 1}",
            insecure_transport=True,
            **overrides,  # type: ignore[arg-type]
        )
        for i in range(3)
    ]
    started = await asyncio.gather(
        *(start_cluster(c, state_machine=factory) for c in configs), return_exceptions=True
    )
    running = [n for n in started if isinstance(n, Node)]
    try:
        assert len(running) == 3, started
        yield {c.node_id: n for c, n in zip(configs, running, strict=True)}
    finally:
        await asyncio.gather(*(n.shutdown() for n in running))
