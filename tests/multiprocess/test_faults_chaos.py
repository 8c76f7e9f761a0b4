"""The fault harness end to end on real processes: `nodedb-cluster chaos` (three fixed seeds,
15 s each, every fault kind including partitions in a private network namespace), the same on
5 nodes with membership changes, and a probe that a partition really stops packets (the isolated
leader is replaced, the majority commits)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import support
from nodedb_cluster.faults.netfault import can_make_private_netns

pytestmark = pytest.mark.multiprocess
needs_netns = pytest.mark.skipif(
    not can_make_private_netns(),
    reason="partitions need root, unshare and ip (util-linux, iproute2)",
)

CHAOS_SEED = 10
"""Seeds 10..12: every fault kind (pause, restart_all, partition, kill_leader, kill)."""
CHAOS_KINDS = ("kill", "kill_leader", "pause", "restart_all", "partition")
"""The kinds these seeds were chosen with (the membership kinds: the 5-node test below)."""
CHAOS_RUNS = 3
CHAOS_TIMEOUT_S = 280


def run_chaos(tmp_path: Path, seed: int, runs: int, *flags: str) -> dict[str, Any]:
    """`nodedb-cluster chaos` as a user runs it; asserts what every run must show (passed, no
    anomaly, linearizable, the load ran) and returns the JSON summary."""
    summary_path = tmp_path / "chaos.json"
    cmd = [
        sys.executable, "-m", "nodedb_cluster.cli", "chaos", *flags,
        f"--schedules={runs}", f"--seed={seed}",
        f"--out={tmp_path / 'runs'}", f"--json={summary_path}",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=CHAOS_TIMEOUT_S, check=False)
    print(done.stdout)  # the schedules and per-run lines, shown on failure
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    doc: dict[str, Any] = json.loads(summary_path.read_text())
    assert [r["seed"] for r in doc["runs"]] == [seed + i for i in range(runs)]
    for run in doc["runs"]:
        assert run["passed"], run
        assert run["anomalies"] == []
        assert run["linearizable"] is True, run["linearizable_note"]
        assert run["ops"].get("put:ok", 0) > 100  # the load really ran
        assert run["ops"].get("get:ok", 0) > 100
    return doc


@needs_netns
@pytest.mark.timeout(CHAOS_TIMEOUT_S + 20)
def test_chaos_three_fixed_schedules_pass_every_check(tmp_path: Path) -> None:
    doc = run_chaos(
        tmp_path, CHAOS_SEED, CHAOS_RUNS, "--duration-s=15", f"--kinds={','.join(CHAOS_KINDS)}"
    )
    log = "\n".join(line for r in doc["runs"] for line in r["fault_log"])
    assert "isolated node" in log  # partitions fired, inside the namespace
    assert "healed partition" in log
    assert "SIGKILL node" in log
    assert "SIGSTOP node" in log
    assert "restarted" in log
    assert "SIGKILL every node" in log
    assert ", leader of group" in log


@pytest.mark.timeout(CHAOS_TIMEOUT_S + 20)
def test_chaos_on_five_nodes_with_joins_and_decommissions(tmp_path: Path) -> None:
    """Seeds 9-10, 12 s, add_node / decommission / kill on 5 nodes. Seed 9 decommissions node 1
    (the first seed, the clients' first address) and SIGKILLs it while it drains, then starts
    spare 6; seed 10 decommissions node 3, starts spare 6, then kills node 1. Passing = every
    check (above) after nodes joined and left: the replicas of each group's configuration
    identical, no learner left, routing agreeing with Raft."""
    doc = run_chaos(
        tmp_path, 9, 2, "--no-netns", "--nodes=5", "--kinds=add_node,decommission,kill",
        "--duration-s=12",
    )  # fmt: skip
    assert doc["summary"]["faults"] == {"add_node": 2, "decommission": 2, "kill": 2}
    first, second = ("\n".join(r["fault_log"]) for r in doc["runs"])
    assert "spare node 6 joined" in first
    assert "spare node 6 joined" in second
    # Seed 9: node 1 killed as it drains; its replicas move all the same and it is retired.
    drains = first.index("decommission of node 1: DRAINING")
    assert drains < first.index("SIGKILL node 1 (draining)")
    assert "node 1 DECOMMISSIONED: stopped for good" in first
    assert "decommission of node 3: DRAINING" in second
    assert "node 3 DECOMMISSIONED: stopped for good" in second


@pytest.mark.timeout(CHAOS_TIMEOUT_S + 20)
def test_chaos_moves_vshards_while_their_mover_is_killed(tmp_path: Path) -> None:
    """Seed 4, 12 s, move_vshard / kill / pause on 5 nodes: vShard 385 moves while its mover
    (the source group's leader) is SIGKILLed at once, then four vShards move together. Passing =
    every check (above) plus the placement settle: no move left in flight, every node serving
    the same routing. A move may abort (that is allowed); each one begun is accounted for."""
    doc = run_chaos(
        tmp_path, 4, 1, "--no-netns", "--nodes=5", "--kinds=move_vshard,kill,pause",
        "--duration-s=12",
    )  # fmt: skip
    assert doc["summary"]["faults"] == {"kill": 1, "move_vshard": 2, "pause": 1}
    log = "\n".join(doc["runs"][0]["fault_log"])
    assert "kill the mover, node" in log
    moves = doc["summary"]["moves"]
    assert moves["begun"] >= 1  # the first move; of the next four, some may be refused
    assert moves["begun"] == moves["finished"] + moves["aborted"] + moves["elsewhere"]


@pytest.mark.timeout(CHAOS_TIMEOUT_S + 20)
def test_chaos_moves_nodes_to_other_addresses_under_load(tmp_path: Path) -> None:
    """Seed 22, 15 s, readdress / kill_leader / kill on 3 nodes: node 1 (the clients' first
    address) restarts at another address, a leader is killed, node 2 moves, then node 1 is
    killed again at its new address. Each move is a SIGKILL, a certificate issued again for the
    new address, and a restart there. Passing = every check (above): the moved nodes recorded
    their addresses, served their groups and converged, the clients following them."""
    doc = run_chaos(
        tmp_path, 22, 1, "--no-netns", "--nodes=3", "--kinds=readdress,kill_leader,kill",
        "--duration-s=15",
    )  # fmt: skip
    assert doc["summary"]["faults"] == {"kill": 1, "kill_leader": 1, "readdress": 2}
    log = "\n".join(doc["runs"][0]["fault_log"])
    assert "node 1 moves to 127.0.1.1" in log
    assert "node 2 moves to 127.0.1.2" in log


@needs_netns
@pytest.mark.timeout(150)
def test_a_partition_drops_real_packets_and_the_majority_moves_on() -> None:
    result = support.run_in_private_netns("faults_partition_probe.py", 140)
    assert result["new_leader"] != result["old_leader"]
    assert result["new_term"] > result["old_term"]
    assert result["elected_s"] < 10.0
    assert result["value_after_heal"] == "during-partition"
    assert result["rules_left"] == 0
