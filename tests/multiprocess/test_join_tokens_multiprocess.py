"""Join admission with tokens and the audit log on real node processes (issue 12, parts 3 and 5).

Three seeds form an mTLS cluster; a fourth node, whose address is in no seed list, tries to join:
without a token, with another node's token and with an expired one it is refused with the reason,
exits non-zero at once (no retry schedule), the membership stays as it was and the refusal
counters move. With a token the operator issued for it (`nodedb-cluster join-token`, admin
certificate) it is admitted and Ready. Then `nodedb-cluster audit --json` on another node shows
the admission with the joiner's certificate identity as its proposer.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from nodedb_cluster.catalog import Catalog
from nodedb_cluster.formation.join_token import issue_token
from nodedb_cluster.localcluster import LocalCluster, Status, free_port
from support.cli_run import cred_flags, run_cli

pytestmark = pytest.mark.multiprocess

SEEDS = (1, 2, 3)
JOINER = 4
JOINER_IDENTITY = "spiffe://localcluster/node/4"
REFUSED_EXIT_TIMEOUT_S = 30.0
"""A refused joiner must exit well inside this: the refusal is permanent, no backoff schedule."""


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    c = LocalCluster(tmp_path, 4, overrides={"rpc_timeout_ms": 2000})
    seeds = tuple(c.nodes[i].config.listen_addr for i in SEEDS)
    port = free_port([f"127.0.0.{i}" for i in SEEDS])
    for i, node in c.nodes.items():
        node.config = replace(node.config, seed_nodes=seeds)  # node 4 is nobody's seed
        if i in SEEDS:
            addr = node.config.listen_addr
            node.config = replace(node.config, metrics_addr=replace(addr, port=port))
    try:
        await c.start(SEEDS)
        await c.wait_for(_members(3), SEEDS, 30.0, "three members and a group-0 leader")
        yield c
    finally:
        await c.close()


def _members(n: int) -> Callable[[dict[int, Status]], bool]:
    def check(statuses: dict[int, Status]) -> bool:
        return all(
            len(s["nodes"]) == n and any(g["group_id"] == 0 and g["leader"] for g in s["groups"])
            for s in statuses.values()
        )

    return check


async def _join_token(cluster: LocalCluster, node_id: int, creds: object) -> tuple[int, str, str]:
    addr = cluster.nodes[2].addr  # any member issues: every node holds the cluster secret
    return await run_cli(
        "join-token", "--addr", addr, "--node-id", str(node_id), *cred_flags(creds)
    )


def _refused_joins(cluster: LocalCluster, reason: str) -> float:
    """`nodedb_requests_refused{kind="JoinRequest",reason=...}` summed over the seeds."""
    total = 0.0
    want = f'nodedb_requests_refused_total{{kind="JoinRequest",reason="{reason}"}}'
    for i in SEEDS:
        addr = cluster.nodes[i].config.metrics_addr
        assert addr is not None
        with urllib.request.urlopen(f"http://{addr.host}:{addr.port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                key, _, value = line.rpartition(" ")
                if key == want:
                    total += float(value)
    return total


async def _wait_refused(cluster: LocalCluster, reason: str, at_least: float) -> None:
    """Metrics refresh once a second: poll (bounded) until the counter reaches `at_least`."""
    async with asyncio.timeout(10):
        while True:
            if await asyncio.to_thread(_refused_joins, cluster, reason) >= at_least:
                return
            await asyncio.sleep(0.2)  # the scrape endpoint has no push channel: poll, bounded


async def _refused_start(cluster: LocalCluster, token: str | None, expect: str) -> None:
    """Node 4 started with `token` exits non-zero, at once, naming the reason."""
    joiner = cluster.nodes[JOINER]
    joiner.config = replace(joiner.config, join_token=token)
    started = time.monotonic()
    await joiner.start()
    code = await joiner.wait_exit(REFUSED_EXIT_TIMEOUT_S)
    assert code != 0
    assert time.monotonic() - started < REFUSED_EXIT_TIMEOUT_S
    tail = joiner.log_tail()
    assert expect in tail, tail
    assert "refused us for good" in tail
    statuses = {i: await cluster.status(i) for i in SEEDS}
    assert all(len(s["nodes"]) == 3 for s in statuses.values()), "membership unchanged"


async def test_a_new_node_joins_only_with_a_valid_token_of_its_own(cluster: LocalCluster) -> None:
    # Without a token.
    await _refused_start(cluster, None, "needs a join token")
    await _wait_refused(cluster, "join_token_missing", 1)

    # A client certificate may not ask for a token; an admin's may.
    code, _, err = await _join_token(cluster, JOINER, cluster.client_credentials)
    assert code == 1
    assert "permission denied" in err
    code, out, err = await _join_token(cluster, 5, cluster.admin_credentials)
    assert code == 0, err
    other_nodes_token = out.strip()
    assert len(other_nodes_token) == 96
    assert "valid until" in err

    # None for a member's id: it restarts without one, and a joiner under its id is refused.
    code, out, err = await _join_token(cluster, 3, cluster.admin_credentials)
    assert code == 1
    assert out == ""
    assert "node 3 is already a member (ACTIVE at 127.0.0.3:" in err, err

    # Another node's token.
    await _refused_start(cluster, other_nodes_token, "issued for node 5, not node 4")
    await _wait_refused(cluster, "join_token_wrong_node", 1)

    # An expired token (made with the cluster secret, as an issuing node would have).
    data_dir = cluster.nodes[1].config.data_dir  # node 1 runs: read its catalog beside it
    catalog = await asyncio.to_thread(functools.partial(Catalog.open, data_dir, beside_owner=True))
    try:
        secret = await asyncio.to_thread(catalog.load_cluster_secret)
    finally:
        await asyncio.to_thread(catalog.close)
    assert secret is not None
    expired = issue_token(secret, JOINER, int(time.time()) - 10)
    await _refused_start(cluster, expired, "expired")
    await _wait_refused(cluster, "join_token_expired", 1)

    # Its own token: admitted, Ready, seen by every member.
    code, out, err = await _join_token(cluster, JOINER, cluster.admin_credentials)
    assert code == 0, err
    joiner = cluster.nodes[JOINER]
    joiner.config = replace(joiner.config, join_token=out.strip())
    await cluster.start([JOINER])
    await cluster.wait_for(_members(4), [*SEEDS, JOINER], 30.0, "node 4 admitted")

    # The audit log of another member names the joiner as the admission's proposer.
    flags = cred_flags(cluster.admin_credentials)
    code, out, err = await run_cli("audit", "--addr", cluster.nodes[2].addr, "--json", *flags)
    assert code == 0, err
    doc = json.loads(out)  # one object: {"records": [...], "truncated": bool}
    assert doc["truncated"] is False
    records = doc["records"]
    admission = [
        r for r in records if r["command"] == "add_node" and r["args"]["node"]["node_id"] == JOINER
    ]
    assert len(admission) == 1, records
    assert admission[0]["proposer"] == JOINER_IDENTITY
    learners = [
        r
        for r in records
        if r["index"] == admission[0]["index"] and r["command"] == "add_group_learner"
    ]
    assert learners, records
    assert all(r["args"]["node_id"] == JOINER for r in learners)
    assert all(r["proposer"] == JOINER_IDENTITY for r in learners)
    # The bootstrapper applied every admission: the seeds joined without tokens, each under its
    # own certificate (node 2 above got the state before its own admission in its JoinResponse).
    code, out, err = await run_cli("audit", "--addr", cluster.nodes[1].addr, "--json", *flags)
    assert code == 0, err
    added = {
        r["args"]["node"]["node_id"]: r["proposer"]
        for r in json.loads(out)["records"]
        if r["command"] == "add_node"
    }
    assert added == {i: f"spiffe://localcluster/node/{i}" for i in (2, 3, JOINER)}
    code, out, _ = await run_cli("audit", "--addr", cluster.nodes[3].addr, *flags)
    assert code == 0
    assert "add_node" in out
    assert JOINER_IDENTITY in out  # the table names the proposer too
    code, _, err = await run_cli(
        "audit", "--addr", cluster.nodes[3].addr, *cred_flags(cluster.client_credentials)
    )
    assert code == 1
    assert "permission denied" in err
