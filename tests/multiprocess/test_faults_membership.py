"""The fault harness with membership changes on real processes: `nodedb-cluster chaos --nodes 5`
with add_node, decommission and kill faults (two fixed seeds, 12 s each). Seed 9 decommissions
node 1 (the first seed, the clients' first address) and SIGKILLs it while it drains, then starts
spare 6; seed 10 decommissions node 3, starts spare 6, then kills node 1. Both must pass every
check: linearizable, every acknowledged write present, the replicas of each group's
configuration identical, no learner left."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.multiprocess

SEED = 9
RUNS = 2
TIMEOUT_S = 150


@pytest.mark.timeout(TIMEOUT_S + 20)
def test_chaos_on_five_nodes_with_joins_and_decommissions(tmp_path: Path) -> None:
    summary_path = tmp_path / "chaos.json"
    cmd = [
        sys.executable, "-m", "nodedb_cluster.cli", "chaos", "--no-netns",
        "--nodes=5", "--kinds=add_node,decommission,kill",
        f"--schedules={RUNS}", f"--seed={SEED}", "--duration-s=12",
        f"--out={tmp_path / 'runs'}", f"--json={summary_path}",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    print(done.stdout)  # the schedules and per-run lines, shown on failure
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    doc = json.loads(summary_path.read_text())
    runs = doc["runs"]
    assert [r["seed"] for r in runs] == [SEED + i for i in range(RUNS)]
    for run in runs:
        assert run["passed"], run
        assert run["anomalies"] == []
        assert run["linearizable"] is True, run["linearizable_note"]
        assert run["ops"].get("put:ok", 0) > 100  # the load really ran
        assert run["ops"].get("get:ok", 0) > 100
        log = "\n".join(run["fault_log"])
        assert "spare node 6 joined" in log
    first, second = ("\n".join(r["fault_log"]) for r in runs)
    # Seed 9: node 1 killed as it drains; its replicas move all the same and it is retired.
    assert first.index("decommission of node 1: DRAINING") < first.index(
        "SIGKILL node 1 (draining)"
    )
    assert "node 1 DECOMMISSIONED: stopped for good" in first
    assert "decommission of node 3: DRAINING" in second
    assert "node 3 DECOMMISSIONED: stopped for good" in second
