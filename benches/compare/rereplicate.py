"""Re-replication speed (issue 16: >= 100 MB/s of KV data, snapshot streaming), in ONE invocation:

    python benches/compare/rereplicate.py [--mib 256] [--value-bytes 1024] [--clients 0]

1. A 3-node mTLS cluster with ONE data group (RF 3) is loaded with `--mib` of KV data
   (`put_many` batches), so that group holds all of it.
2. Node 4 starts and node 3 is decommissioned: the group's replica moves from node 3 to node 4
   (learner on node 4, snapshot built by the leader and streamed, restored, caught up, promoted,
   node 3 removed).
3. Times from the decommission request: the learner created on node 4, the learner's applied
   index reaching the leader's at the request (caught up: every loaded byte is on node 4), and
   node 3 DECOMMISSIONED. MB/s = the KV data (`--mib` MiB, keys and values) / the time to catch
   up, 10^6 bytes per MB; also from the learner's creation (the snapshot's build, transfer and
   restore, without the control plane's decision).
4. Peak RSS (VmHWM) of every node process, and every loaded key read back (a sample).
`--clients N` runs N asyncio writers during the move and counts their errors.
Refuses a debug build of the Rust core; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from elastic import Writers, decommission, load, load_arguments, read_back_ok, run_release

from nodedb_cluster.client import Client
from nodedb_cluster.localcluster import LocalCluster, Status

GROUP = 1
SETTLE_TIMEOUT_S = 600.0
POLL_S = 0.05


def group_view(status: Status) -> dict[str, Any] | None:
    for g in status["groups"]:
        if int(g["group_id"]) == GROUP:
            return dict(g)
    return None


def leader_applied(statuses: dict[int, Status]) -> int | None:
    for s in statuses.values():
        g = group_view(s)
        if g is not None and g["role"] == "leader":
            return int(g["applied"])
    return None


def peak_rss_mib(cluster: LocalCluster) -> dict[int, int]:
    out: dict[int, int] = {}
    for n, node in cluster.nodes.items():
        if node.proc is None or node.proc.returncode is not None:
            continue
        try:
            text = Path(f"/proc/{node.proc.pid}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                out[n] = int(line.split()[1]) // 1024
    return out


async def main(args: argparse.Namespace) -> dict[str, object]:
    base = Path(tempfile.mkdtemp(prefix="nodedb-rereplicate-"))
    overrides: dict[str, object] = {"num_groups": 1, "rebalance_interval_ms": 200}
    cluster = LocalCluster(base, 4, overrides=overrides)
    result: dict[str, object] = {"mib": args.mib, "value_bytes": args.value_bytes}
    try:
        await cluster.start([1, 2, 3])

        def formed(statuses: dict[int, Status]) -> bool:
            return leader_applied(statuses) is not None and all(
                (g := group_view(s)) is not None and len(g["voters"]) == 3
                for s in statuses.values()
            )

        await cluster.wait_for(formed, [1, 2, 3], 60, "group 1 on three nodes")
        addrs = [cluster.nodes[n].addr for n in (1, 2)]
        async with Client(addrs, cluster.client_credentials) as client:
            t = time.monotonic()
            keys = await load(client, args.mib, args.value_bytes)
            result["load_s"] = round(time.monotonic() - t, 1)
            print(f"loaded {keys} keys ({args.mib} MiB) in {result['load_s']} s", file=sys.stderr)
            writers = Writers(client, args.clients)
            await cluster.start([4])
            target = leader_applied(await cluster.wait_for(formed, [1, 2, 3], 60, "a leader"))
            assert target is not None
            t0 = time.monotonic()
            await decommission(cluster, 3)
            created: float | None = None
            caught: float | None = None
            deadline = t0 + SETTLE_TIMEOUT_S
            while caught is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("node 4 did not catch up")
                g = group_view(await cluster.status(4))
                now = time.monotonic()
                if g is not None and created is None:
                    created = now
                if g is not None and int(g["applied"]) >= target:
                    caught = now
                await asyncio.sleep(POLL_S)  # no push channel for a remote apply: poll, bounded
            assert created is not None
            data_mb = args.mib * (1 << 20) / 1e6
            result["data_mb"] = round(data_mb, 1)
            result["learner_created_s"] = round(created - t0, 2)
            result["caught_up_s"] = round(caught - t0, 2)
            result["mb_per_s"] = round(data_mb / (caught - t0), 1)
            result["mb_per_s_from_learner"] = round(data_mb / max(caught - created, POLL_S), 1)
            print(
                f"node 4 caught up in {caught - t0:.2f} s ({result['mb_per_s']} MB/s; "
                f"{result['mb_per_s_from_learner']} MB/s from its creation)",
                file=sys.stderr,
            )

            def retired(statuses: dict[int, Status]) -> bool:
                states = {int(n[0]): n[2] for n in statuses[1]["nodes"]}
                g = group_view(statuses[1])
                return (
                    states.get(3) == "DECOMMISSIONED"
                    and g is not None
                    and sorted(g["voters"]) == [1, 2, 4]
                    and not g["learners"]
                )

            await cluster.wait_for(retired, [1, 2, 4], SETTLE_TIMEOUT_S, "decommissioned")
            result["decommission_s"] = round(time.monotonic() - t0, 2)
            result["peak_rss_mib"] = peak_rss_mib(cluster)
            result.update(await writers.stop())
            result["read_back_ok"] = await read_back_ok(client, keys, args.value_bytes)
    finally:
        await cluster.close()
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    return result


if __name__ == "__main__":
    parser = load_arguments(__doc__, 0, "writers during the move")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' directories and logs")
    run_release(main, parser.parse_args())
