"""SWIM settings from ClusterConfig reach the running failure detector: real `nodedb-cluster start`
processes, real UDP, a SIGKILL.

Goal: prove a non-default `[swim]` table takes effect (issue 7: "all configurable"). Method: a
3-node cluster whose config files carry probe_interval_ms=200, probe_timeout_ms=100,
suspicion_mult=1, suspicion_min_ms=400 (expected detection ~1 s); one node is SIGKILLed and both
survivors must report it DEAD in `status` before the default settings could: at defaults a suspect
of a 3-node cluster waits `SwimConfig().suspicion_timeout_ms(3)` = 4 s before anyone may declare it
dead, so a DEAD within that window is only possible if the configured timings are the ones in use.
The same status documents show membership changes reaching `status` (issue 7's other half)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import pytest

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.localcluster import LocalCluster, Status, free_port
from nodedb_cluster.membership import SwimConfig

pytestmark = pytest.mark.multiprocess

FAST = SwimConfig(
    probe_interval_ms=200, probe_timeout_ms=100, suspicion_mult=1, suspicion_min_ms=400
)
MEMBERS_ALIVE_TIMEOUT_S = 30.0
VICTIM = 3
SURVIVORS = (1, 2)


def members(status: Status) -> dict[int, str]:
    return {int(m[0]): str(m[1]) for m in status["members"]}


def swim_cluster(tmp_path: Path, swim: SwimConfig) -> LocalCluster:
    """A LocalCluster whose nodes run SWIM (shared secret, one UDP port per 127.0.0.N)."""
    secret = tmp_path / "cluster.secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)  # a node refuses a secret others can read
    cluster = LocalCluster(
        tmp_path,
        3,
        secure=False,
        overrides={"swim": swim, "cluster_secret_path": secret, "num_groups": 1},
    )
    hosts = [f"127.0.0.{i}" for i in cluster.nodes]
    quic_port = cluster.nodes[1].config.listen_addr.port
    swim_port = next(p for p in (free_port(hosts) for _ in range(8)) if p != quic_port)
    for i, node in cluster.nodes.items():
        addr = parse_socket_addr(f"127.0.0.{i}:{swim_port}")
        node.config = dataclasses.replace(node.config, swim_udp_addr=addr)
    return cluster


async def test_configured_swim_timings_declare_a_killed_node_dead_before_defaults_could(
    tmp_path: Path,
) -> None:
    default_floor_ms = SwimConfig().suspicion_timeout_ms(3)
    assert FAST.suspicion_timeout_ms(3) == 400
    cluster = swim_cluster(tmp_path, FAST)
    try:
        await cluster.start()
        assert "[swim]" in cluster.nodes[1].config_path.read_text()  # what the process read
        await cluster.wait_for(
            lambda s: all(
                members(s[i]) == {j: "ALIVE" for j in cluster.nodes if j != i} for i in s
            ),
            cluster.nodes,
            MEMBERS_ALIVE_TIMEOUT_S,
            "every node to see the others ALIVE",
        )
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        cluster.nodes[VICTIM].kill()
        statuses = await cluster.wait_for(
            lambda s: all(members(s[i]).get(VICTIM) == "DEAD" for i in SURVIVORS),
            SURVIVORS,
            default_floor_ms / 1000,  # the bound is the claim: later would fit the defaults
            f"node {VICTIM} DEAD on both survivors",
        )
        detected_ms = (loop.time() - killed_at) * 1000
        print(f"SIGKILLed node declared DEAD on both survivors after {detected_ms:.0f} ms")
        assert detected_ms < default_floor_ms
        for i in SURVIVORS:
            other = SURVIVORS[1] if i == SURVIVORS[0] else SURVIVORS[0]
            assert members(statuses[i])[other] != "DEAD"  # a live node is never declared dead
    finally:
        await cluster.close()
