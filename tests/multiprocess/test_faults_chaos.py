"""The fault harness end to end on real processes: `nodedb-cluster chaos` (three fixed seeds,
15 s each, every fault kind including partitions in a private network namespace), and a probe
that a partition really stops packets (the isolated leader is replaced, the majority commits)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import support
from nodedb_cluster.faults.netfault import NETNS_ENV, can_make_private_netns

pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.skipif(
        not can_make_private_netns(),
        reason="partitions need root, unshare and ip (util-linux, iproute2)",
    ),
]

CHAOS_SEED = 10
"""Seeds 10..12: every fault kind (pause, restart_all, partition, kill_leader, kill)."""
CHAOS_RUNS = 3
CHAOS_TIMEOUT_S = 280


@pytest.mark.timeout(CHAOS_TIMEOUT_S + 20)
def test_chaos_three_fixed_schedules_pass_every_check(tmp_path: Path) -> None:
    summary_path = tmp_path / "chaos.json"
    cmd = [
        sys.executable, "-m", "nodedb_cluster.cli", "chaos",
        f"--schedules={CHAOS_RUNS}", f"--seed={CHAOS_SEED}", "--duration-s=15",
        f"--out={tmp_path / 'runs'}", f"--json={summary_path}",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=CHAOS_TIMEOUT_S, check=False)
    print(done.stdout)  # the schedules and per-run lines, shown on failure
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    doc = json.loads(summary_path.read_text())
    runs = doc["runs"]
    assert [r["seed"] for r in runs] == [CHAOS_SEED + i for i in range(CHAOS_RUNS)]
    for run in runs:
        assert run["passed"], run
        assert run["anomalies"] == []
        assert run["linearizable"] is True, run["linearizable_note"]
        assert run["ops"].get("put:ok", 0) > 100  # the load really ran
        assert run["ops"].get("get:ok", 0) > 100
    log = "\n".join(line for r in runs for line in r["fault_log"])
    assert "isolated node" in log  # partitions fired, inside the namespace
    assert "healed partition" in log
    assert "SIGKILL node" in log
    assert "SIGSTOP node" in log
    assert "restarted" in log
    assert "SIGKILL every node" in log
    assert ", leader of group" in log


@pytest.mark.timeout(150)
def test_a_partition_drops_real_packets_and_the_majority_moves_on() -> None:
    probe = support.DIR / "faults_partition_probe.py"
    env = dict(os.environ, **{NETNS_ENV: os.readlink("/proc/self/ns/net")})
    cmd = ["unshare", "--net", "--", sys.executable, str(probe)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=140, env=env, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["new_leader"] != result["old_leader"]
    assert result["new_term"] > result["old_term"]
    assert result["elected_s"] < 10.0
    assert result["value_after_heal"] == "during-partition"
    assert result["rules_left"] == 0
