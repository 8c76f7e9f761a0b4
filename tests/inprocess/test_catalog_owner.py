"""One process per catalog (`catalog/owner.py`): a second process is refused naming the holder's
pid (unless it only reads, `beside_owner`), and a holder killed with SIGKILL leaves no stale
lock behind."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nodedb_cluster.catalog import Catalog
from nodedb_cluster.errors import CatalogInUse

HOLDER = """
import sys, time
from nodedb_cluster.catalog import Catalog
catalog = Catalog.open(sys.argv[1])
print("open", flush=True)
time.sleep(60)
"""


def test_a_second_process_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path: Path) -> None:
    with Catalog.open(tmp_path) as catalog:
        catalog.save_cluster_id("c-1")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(CatalogInUse, match=rf"in use by another process \(pid {holder.pid}\)"):
            Catalog.open(tmp_path)
        with Catalog.open(tmp_path, beside_owner=True) as beside:  # to read, beside the node
            assert beside.cluster_id() == "c-1"
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    with Catalog.open(tmp_path) as catalog:  # the kernel dropped the lock with the process
        assert catalog.cluster_id() == "c-1"


def test_a_closed_catalog_can_be_opened_again_in_the_same_process(tmp_path: Path) -> None:
    for _ in range(3):
        with Catalog.open(tmp_path) as catalog:
            assert catalog.cluster_id() is None
