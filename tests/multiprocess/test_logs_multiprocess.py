"""What a node process logs, read from its log file: real `nodedb-cluster start` processes, real
mTLS handshakes, SIGKILL.

Goal (issue 15 part 2): the Rust core's records reach the node's log; a peer with a foreign CA is
named in a WARN within a few seconds, and a joiner whose certificate every seed refuses stops at
once, not at the end of its retry schedule (the rate limit of repeated WARNs is
`test_core_logs`'s); a killed node
yields SWIM SUSPECT and DEAD lines and a leader-change line on the survivors; raft-rs's own
election records arrive at INFO; `--log-format json` lines parse, each with time, level, logger,
message and the record's fields. A log file has no push channel: waits poll it, bounded.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from nodedb_cluster.formation.retry import JoinRetryPolicy
from nodedb_cluster.localcluster import LocalCluster, NodeProcess, leader_of
from nodedb_cluster.transport import generate_cluster_credentials

pytestmark = pytest.mark.multiprocess

LOG_WAIT_S = 20.0
WARN_WITHIN_S = 5.0
"""The foreign-CA WARN: the handshake fails in milliseconds, the log drain runs every 0.2 s."""

Line = dict[str, Any]


def json_lines(node: NodeProcess) -> list[Line]:
    """Every line of the node's log, each parsed (a line that is not JSON fails the test)."""
    lines = node.log_path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


async def wait_lines(
    read: Callable[[], list[Any]], found: Callable[[list[Any]], bool], what: str
) -> list[Any]:
    """Poll a log until `found(lines)`, bounded by LOG_WAIT_S."""
    lines: list[Any] = []
    try:
        async with asyncio.timeout(LOG_WAIT_S):
            while True:
                lines = read()
                if found(lines):
                    return lines
                await asyncio.sleep(0.1)  # a log file has no push channel: poll, bounded
    except TimeoutError:
        raise AssertionError(f"{what} not logged:\n" + "\n".join(map(str, lines[-40:]))) from None


async def test_a_foreign_ca_is_named_once_per_interval_and_the_failure_printed_once(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster(tmp_path, 2, overrides={"num_groups": 1})
    joiner = cluster.nodes[2]
    foreign = generate_cluster_credentials(tmp_path / "foreign", "other", [("n2", ["127.0.0.2"])])
    joiner.config = replace(
        joiner.config,
        tls_ca_path=foreign[0].ca,
        tls_cert_path=foreign[0].cert,
        tls_key_path=foreign[0].key,
        join_retry=JoinRetryPolicy(),  # the default schedule: ~2 min before its last attempt
    )
    try:
        await cluster.start([1])
        loop = asyncio.get_running_loop()
        began = loop.time()
        await joiner.start()

        def seed_warnings() -> list[str]:
            text = cluster.nodes[1].log_path.read_text()
            return [
                line
                for line in text.splitlines()
                if "WARNING nodedb_cluster_core.transport: inbound handshake failed" in line
                and f"peer={joiner.config.listen_addr.host}:" in line
            ]

        first = await wait_lines(seed_warnings, bool, "the seed's WARN naming the joiner")
        assert loop.time() - began < WARN_WITHIN_S + 3.0, "the WARN came late"
        assert "not issued by the CA" in first[0] or "refused" in first[0], first
        assert await joiner.wait_exit(LOG_WAIT_S) != 0, "the joiner gives up at once"
        assert len(seed_warnings()) == 1, seed_warnings()
        tail = joiner.log_path.read_text()
        assert "nodedb_cluster_core.transport: outbound handshake failed" in tail
        assert "every seed refused the TLS handshake" in tail, tail
        assert "Joining(attempt=1)" not in tail, "no second attempt"
        assert tail.count("nodedb-cluster: node 2 failed") == 1, tail
    finally:
        await cluster.close()


async def test_json_log_of_elections_and_a_killed_leader(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, 3, overrides={"num_groups": 2, "log_format": "json"})
    try:
        await cluster.start()
        statuses = await cluster.wait_formed()
        victim = leader_of(statuses, 0)
        survivors = [i for i in cluster.nodes if i != victim]
        for i, node in cluster.nodes.items():
            lines = json_lines(node)
            assert lines, f"node {i} logged nothing"
            for line in lines:
                assert {"time", "level", "logger", "message"} <= line.keys(), line
                assert line["node_id"] == i, line
        leader_lines = await wait_lines(
            lambda: json_lines(cluster.nodes[victim]),
            lambda lines: any(
                ln["logger"] == "nodedb_cluster.leaders" and ln.get("group") == 0 for ln in lines
            ),
            "the leader of group 0",
        )
        raft = [ln for ln in leader_lines if ln["logger"] == "nodedb_cluster_core.raft"]
        assert any("became leader" in ln["message"] and ln["level"] == "INFO" for ln in raft), raft

        before = {i: len(json_lines(cluster.nodes[i])) for i in survivors}
        cluster.nodes[victim].kill()

        def swim_line(lines: list[Line], state: str) -> bool:
            return any(
                ln["logger"] == "nodedb_cluster.swim_wiring"
                and ln.get("peer") == victim
                and ln.get("swim_state") == state
                for ln in lines
            )

        for i in survivors:
            node, since = cluster.nodes[i], before[i]

            def after_kill(node: NodeProcess = node, since: int = since) -> list[Line]:
                return json_lines(node)[since:]

            await wait_lines(after_kill, lambda ls: swim_line(ls, "SUSPECT"), f"{i}: SUSPECT")
            await wait_lines(after_kill, lambda ls: swim_line(ls, "DEAD"), f"{i}: DEAD")
            await wait_lines(
                after_kill,
                lambda ls: any(
                    ln["logger"] == "nodedb_cluster.leaders"
                    and ln.get("group") == 0
                    and ln.get("leader") not in (None, victim)
                    for ln in ls
                ),
                f"node {i}: group 0's new leader",
            )
    finally:
        await cluster.close()
