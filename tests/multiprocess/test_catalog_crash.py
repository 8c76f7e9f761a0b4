"""Crash safety of the catalog: a child process streams saves (topology, routing, settings at
increasing versions, one write transaction each) and is SIGKILLed at random moments, several rounds
on the same data_dir. After every kill the catalog must reopen, every key must decode to a complete
value, the three keys must be at most one save apart in the child's save order, and nothing
committed before the kill may be lost (versions never go backwards between rounds)."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import support
from nodedb_cluster.catalog import Catalog

WRITER = support.DIR / "catalog_crash_writer.py"
ROUNDS = 8
STARTUP_TIMEOUT_S = 20.0
KILL_DELAY_S_MAX = 0.12


def wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout_s: float) -> str:
    """The child's first stdout line, which must start with `prefix`, within `timeout_s`."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    if not ready:
        proc.kill()
        pytest.fail(f"writer printed nothing within {timeout_s} s")
    line = proc.stdout.readline()
    if not line.startswith(prefix):
        proc.kill()
        _, err = proc.communicate(timeout=5)
        pytest.fail(f"writer said {line!r}, stderr: {err}")
    return line


def check_catalog(data_dir: Path) -> tuple[int, int, int]:
    """Reopen and validate; returns (topology version, routing epoch, settings i)."""
    with Catalog.open(data_dir) as catalog:
        formation = catalog.load_formation()
        assert formation is not None
        assert formation.cluster_id == "crash-test"
        topo_v = formation.topology.version
        routing_v = formation.routing.epoch
        settings = catalog.load_settings()
    settings_v = settings["i"]
    assert isinstance(settings_v, int)
    # complete values: each one's content matches its own version
    assert len(formation.topology) == 1 + topo_v % 40
    assert settings["pad"] == "x" * (settings_v * 37 % 5000)
    # saves run topology(i), routing(i), settings(i): a kill leaves them at most one step apart
    assert topo_v >= routing_v >= settings_v >= topo_v - 1, (topo_v, routing_v, settings_v)
    return topo_v, routing_v, settings_v


@pytest.mark.multiprocess
def test_sigkill_mid_save_loses_nothing_committed(tmp_path: Path) -> None:
    rng = random.Random(20261126)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    previous = (0, 0, 0)
    progressed = 0
    for round_no in range(ROUNDS):
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            line = wait_for_line(proc, "started saving", STARTUP_TIMEOUT_S)
            first = int(line.split()[-1])
            assert first == previous[0] + 1  # the child resumes after the last durable save
            # The random delay is the crash moment, not synchronisation; round 0 kills at once.
            time.sleep(0 if round_no == 0 else rng.uniform(0, KILL_DELAY_S_MAX))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
            if proc.stderr is not None:
                proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL, "the writer ended before it was killed"
        current = check_catalog(tmp_path)
        assert current >= previous  # tuple order: topology version first
        assert all(c >= p for c, p in zip(current, previous, strict=True))
        progressed += current[0] > previous[0]
        previous = current
    assert progressed >= ROUNDS // 2, "the writer barely saved anything: the test proved little"
