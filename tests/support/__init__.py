"""Helpers shared by every test layer: cluster harnesses, child-process scripts, fixtures.

Scripts here (raft_node.py, swim_node.py, ...) are started by path, so they import only the
installed package, never each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from nodedb_cluster.faults.netfault import NETNS_ENV

DIR = Path(__file__).resolve().parent
"""This directory: where child-process scripts and `fixtures/` live."""


def run_in_private_netns(script: str, timeout_s: float) -> dict[str, Any]:
    """Run the probe `script` of this directory under `unshare --net` (marked as a namespace
    of ours, so it may change routing there) and return the JSON object its last line prints."""
    env = dict(os.environ, **{NETNS_ENV: os.readlink("/proc/self/ns/net")})
    cmd = ["unshare", "--net", "--", sys.executable, str(DIR / script)]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
