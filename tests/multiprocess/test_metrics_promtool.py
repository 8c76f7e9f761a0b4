"""`/metrics` of real node processes passes Prometheus' own checks (issue 15 part 3): a 3-node
mTLS cluster takes writes from a client in another process, then each node's scrape goes
through `promtool check metrics` (names, kinds, units, `_total` on counters), the shipped
alerts through `promtool check rules` and their unit tests (`promtool test rules`), and the
families the alerts and the dashboard use are there with the kinds they expect; the latency
histograms have counted the writes.

promtool comes with Debian's `prometheus` package, which scripts/install-system-deps.sh installs:
without it this test fails rather than skips.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nodedb_cluster.client import Client
from nodedb_cluster.localcluster import LocalCluster
from support.metrics_scrape import formed_with_metrics, scrape

pytestmark = pytest.mark.multiprocess

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "nodedb-cluster.json"
WRITES = 300
SCRAPE_WAIT_S = 15.0
PROMTOOL_TIMEOUT_S = 60.0

EXPECTED: dict[str, str] = {
    "nodedb_raft_has_leader": "gauge",
    "nodedb_raft_is_leader": "gauge",
    "nodedb_raft_term": "gauge",
    "nodedb_raft_commit_index": "gauge",
    "nodedb_raft_applied_index": "gauge",
    "nodedb_raft_leader_changes": "counter",
    "nodedb_raft_proposals": "counter",
    "nodedb_raft_wal_fsync_duration_seconds": "histogram",
    "nodedb_raft_proposal_commit_duration_seconds": "histogram",
    "nodedb_raft_apply_batch_duration_seconds": "histogram",
    "nodedb_raft_snapshot_send_duration_seconds": "histogram",
    "nodedb_raft_snapshot_apply_duration_seconds": "histogram",
    "nodedb_transport_request_duration_seconds": "histogram",
    "nodedb_transport_connections_pooled": "gauge",
    "nodedb_kv_requests": "counter",
    "nodedb_kv_group_bytes": "gauge",
    "nodedb_kv_quota_bytes": "gauge",
    "nodedb_kv_group_sessions": "gauge",
    "nodedb_kv_sessions_evicted": "counter",
    "nodedb_swim_members": "gauge",
    "nodedb_swim_drops": "counter",
    "nodedb_requests_refused": "counter",
    "nodedb_tls_cert_expiry_seconds": "gauge",
    "nodedb_join_duration_seconds": "histogram",
}
"""Family (as prometheus_client's parser names it: counters without `_total`) → kind."""


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool missing: run ./scripts/install-system-deps.sh (Debian `prometheus`)"
    return path


def run_promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
        check=False,
    )


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    async with formed_with_metrics(tmp_path) as c:
        yield c


def kv_requests(text: str) -> float:
    """Proposal requests this node served (`nodedb_kv_requests_total{op="propose*"}`)."""
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith('nodedb_kv_requests_total{op="propose')
    )


def kinds_and_counts(text: str) -> tuple[dict[str, str], dict[str, float]]:
    """Family → kind, and histogram family → its observations summed over labels."""
    kinds: dict[str, str] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        kinds[family.name] = family.type
        if family.type == "histogram":
            counts[family.name] = sum(
                s.value for s in family.samples if s.name == f"{family.name}_count"
            )
    return kinds, counts


def _refreshed_since_formation(text: str) -> bool:
    """A node's scrape taken after it fsynced and served a Raft frame (every member has)."""
    _, counts = kinds_and_counts(text)
    return (
        counts.get("nodedb_raft_wal_fsync_duration_seconds", 0.0) > 0
        and counts.get("nodedb_transport_request_duration_seconds", 0.0) > 0
    )


async def test_every_nodes_scrape_passes_promtool_and_counts_the_writes(
    cluster: LocalCluster,
) -> None:
    addrs = [n.addr for n in cluster.nodes.values()]
    async with Client(addrs, cluster.client_credentials) as client:
        await client.put_many([(b"k%d" % i, b"v%d" % i) for i in range(WRITES)])
        for i in range(20):
            await client.put(b"single%d" % i, b"x")
    # The snapshot behind a scrape is refreshed once a second, on each node on its own clock:
    # poll (bounded) until every node's shows its fsyncs and served frames and the writes show
    # somewhere (the KV requests were served by the groups' leaders, wherever they are).
    async with asyncio.timeout(SCRAPE_WAIT_S):
        while True:
            texts = {i: await asyncio.to_thread(scrape, cluster, i) for i in cluster.nodes}
            if sum(kv_requests(t) for t in texts.values()) >= 1 and all(
                map(_refreshed_since_formation, texts.values())
            ):
                break
            await asyncio.sleep(0.2)
    proposals_committed = 0.0
    served_kv = 0.0
    joined = 0.0
    for node_id, text in texts.items():
        checked = run_promtool("check", "metrics", stdin=text)
        assert checked.returncode == 0, f"node {node_id}: {checked.stdout}{checked.stderr}"
        kinds, counts = kinds_and_counts(text)
        for name, kind in EXPECTED.items():
            assert kinds.get(name) == kind, f"node {node_id}: {name} is {kinds.get(name)}"
        assert counts["nodedb_raft_wal_fsync_duration_seconds"] > 0
        assert counts["nodedb_transport_request_duration_seconds"] > 0, "RaftBatch frames served"
        proposals_committed += counts["nodedb_raft_proposal_commit_duration_seconds"]
        served_kv += kv_requests(text)
        joined += counts["nodedb_join_duration_seconds"]
        assert 'nodedb_raft_has_leader{group="0"} 1.0' in text
        assert "_total" not in "".join(n for n, k in kinds.items() if k == "gauge")
    assert proposals_committed >= 1, "the leaders timed the writes' proposals"
    assert served_kv >= 1, "the KV requests were counted where they were served"
    assert joined == 2, "nodes 2 and 3 joined node 1's cluster, each timed once"


def test_the_shipped_alerts_pass_promtool_and_their_unit_tests() -> None:
    checked = run_promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "9 rules found" in checked.stdout
    tested = run_promtool("test", "rules", str(ALERTS_TEST))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_dashboard_queries_only_exported_families() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 8
    exported = set(EXPECTED) | {f"{n}_total" for n, k in EXPECTED.items() if k == "counter"}
    for suffix in ("_bucket", "_sum", "_count"):
        exported |= {f"{n}{suffix}" for n, k in EXPECTED.items() if k == "histogram"}
    for expr in exprs:
        names = {w for w in _words(expr) if w.startswith("nodedb_")}
        assert names, expr
        assert names <= exported, f"{expr}: {names - exported} not exported"


def _words(expr: str) -> list[str]:
    out, word = [], []
    for ch in expr + " ":
        if ch.isalnum() or ch == "_":
            word.append(ch)
        elif word:
            out.append("".join(word))
            word = []
    return out
