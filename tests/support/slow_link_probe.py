"""Run inside `unshare --net` by test_slow_link.py: large values over a slow link.

Starts 3 nodes, then limits the namespace's loopback (which every node and the client share) to
`RATE` with a token bucket (`tc qdisc … tbf`), writes one value of `VALUE_MIB` through a Client,
reads it back from a fresh Client, and prints one JSON line: how long each took, how many
requests each needed, the log entries the put's group gained, and each group's (leader, term)
before and after. Prints
`{"skip": reason}` when the kernel has no token bucket qdisc.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nodedb_cluster.client import Client
from nodedb_cluster.faults.netfault import prepare_private_netns
from nodedb_cluster.localcluster import LocalCluster, groups_formed

RATE = "200mbit"
"""The whole namespace's rate: three nodes and the client share it, so each replica's link is
slower still (a 32 MiB entry crosses it in ≥ 1.3 s, past the 0.8 s election timeout)."""
VALUE_MIB = 32
CALL_TIMEOUT_S = 40.0


def leaders_and_terms(status: dict[str, object]) -> dict[int, tuple[int, int]]:
    groups = status["groups"]
    assert isinstance(groups, list)
    return {g["group_id"]: (g["leader"], g["term"]) for g in groups}


def commit_of(status: dict[str, object], group: int) -> int:
    groups = status["groups"]
    assert isinstance(groups, list)
    return int(next(g["commit"] for g in groups if g["group_id"] == group))


async def main(base: Path) -> dict[str, object]:
    prepare_private_netns()
    cluster = LocalCluster(base, 3)
    try:
        await cluster.start()
        await cluster.wait_for(lambda s: groups_formed(s, 3), cluster.nodes, 60.0, "formed")
        before = leaders_and_terms(await cluster.status(1))
        limit = ["tc", "qdisc", "replace", "dev", "lo", "root", "tbf", "rate", RATE]
        limit += ["burst", "256kb", "latency", "100ms"]
        tc = await asyncio.create_subprocess_exec(
            *limit, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        _, stderr = await asyncio.wait_for(tc.communicate(), 10.0)
        if tc.returncode != 0:
            return {"skip": f"no token bucket qdisc here: {stderr.decode().strip()}"}
        addrs = [n.addr for n in cluster.nodes.values()]
        value = bytes(range(256)) * (VALUE_MIB << 12)
        out: dict[str, object] = {}
        async with Client(addrs, cluster.client_credentials, timeout_s=CALL_TIMEOUT_S) as writer:
            group = writer.group_of(b"big")
            commit = commit_of(await cluster.status(1), group)
            start = time.perf_counter()
            await writer.put(b"big", value)
            out["put_s"] = time.perf_counter() - start
            out["put_requests"] = writer.requests_sent
            out["put_entries"] = commit_of(await cluster.status(1), group) - commit
        async with Client(addrs, cluster.client_credentials, timeout_s=CALL_TIMEOUT_S) as reader:
            gets: list[tuple[float, int, bool]] = []
            for _ in range(2):
                sent = reader.requests_sent
                start = time.perf_counter()
                got = await reader.get(b"big")
                took_s = time.perf_counter() - start
                gets.append((took_s, reader.requests_sent - sent, got == value))
            out["gets"] = gets
        out["before"] = sorted(before.items())
        out["after"] = sorted(leaders_and_terms(await cluster.status(1)).items())
        return out
    finally:
        await cluster.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="nodedb-slowlink-") as tmp:
        print(json.dumps(asyncio.run(main(Path(tmp)))))
    sys.exit(0)
