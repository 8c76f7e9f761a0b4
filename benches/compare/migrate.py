"""Issue 16's vShard-migration figures on real processes, in ONE invocation:

    python benches/compare/migrate.py [--mib 64] [--clients 64] [--duration 10] [--moves 100]
                                      [--gap-s 0.5]

1. A 3-node mTLS cluster (RF 3, four data groups, the rebalancer off) is loaded with `--mib` of
   KV data (`put_many` batches, 1 KiB values).
2. Steady state, `--duration` s: `--clients` asyncio callers of one `Client` put random keys
   outside the vShard that will move (W64); `PROBES` more callers put keys of that vShard,
   each write timed.
3. The same load for `--duration` s while the vShard moves between two groups, back and
   forth, one at a time with `--gap-s` between moves (0: always one in flight), up to `--moves`
   (PLACEMENT_REQUEST `move_vshard` with `wait_ms`: the node answers when the move is over).
4. Reported: W64 ops/s in both phases and their ratio, and the W64 ops/s inside the moves'
   windows (request to outcome) against the steady state (`ratio_in_moves`, target >= 0.80);
   each move's pause as the
   probes saw it (the longest probe write that overlapped the move) with p50 / p99 / max across
   moves (target p99 <= 50 ms); probe write latency p50 / p99 in both phases; every error; the
   moved vShard's keys read back.
Refuses a debug build of the Rust core; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from checks import is_debug_build

from nodedb_cluster import wire
from nodedb_cluster.client import CLIENT_NODE_ID, Client
from nodedb_cluster.localcluster import LocalCluster
from nodedb_cluster.placement_control import encode_placement_request
from nodedb_cluster.routing import vshard_for_key
from nodedb_cluster.transport import Transport

DATA_GROUPS = 4
BATCH = 500
LOADERS = 8
PROBES = 4
VALUE = b"v" * 1024
MOVE_TIMEOUT_S = 60.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def load(client: Client, mib: int) -> int:
    keys = mib * (1 << 20) // len(VALUE)
    next_batch = iter(range(0, keys, BATCH))

    async def loader() -> None:
        for start in next_batch:
            items = [(f"k{i}".encode(), VALUE) for i in range(start, min(start + BATCH, keys))]
            await client.put_many(items, timeout_s=30)

    await asyncio.gather(*(loader() for _ in range(LOADERS)))
    return keys


class Load:
    """W64 on keys outside the moving vShard, probes on keys inside it; bounded by `stop`."""

    def __init__(self, client: Client, vshard: int, clients: int) -> None:
        self.client = client
        self.vshard = vshard
        self.clients = clients
        self.ops: Counter[str] = Counter()
        self.done_at: list[float] = []
        """When each W64 write was acknowledged, monotonic seconds."""
        self.probe_writes: list[tuple[float, float]] = []
        """(start, end) of each probe write, monotonic seconds."""
        rng = random.Random(7)
        self.outside = [
            k
            for k in (f"w{rng.randrange(1 << 30)}".encode() for _ in range(20_000))
            if vshard_for_key(k) != vshard
        ]
        self.inside = [
            k for k in (f"p{i}".encode() for i in range(200_000)) if vshard_for_key(k) == vshard
        ][:64]

    async def run(self, stop: asyncio.Event) -> None:
        async def writer(n: int) -> None:
            rng = random.Random(n)
            while not stop.is_set():
                try:
                    await self.client.put(rng.choice(self.outside), b"x" * 100)
                    self.ops["ok"] += 1
                    self.done_at.append(time.monotonic())
                except Exception as e:  # every failure counts; the kind is kept
                    self.ops[f"error:{type(e).__name__}"] += 1

        async def probe(n: int) -> None:
            i = 0
            while not stop.is_set():
                key = self.inside[(n + i * PROBES) % len(self.inside)]
                t = time.monotonic()
                try:
                    await self.client.put(key, str(i).encode())
                    self.probe_writes.append((t, time.monotonic()))
                except Exception as e:
                    self.ops[f"probe_error:{type(e).__name__}"] += 1
                i += 1

        await asyncio.gather(
            *(writer(n) for n in range(self.clients)), *(probe(n) for n in range(PROBES))
        )


async def move_once(
    admin: Transport, cluster: LocalCluster, vshard: int, to: int
) -> tuple[float, float, str]:
    """One move, answered when it is over (`wait_ms`: the node watches its own metadata, so
    nothing is polled from this process, which also runs the load): (start, end, outcome)."""
    start = time.monotonic()
    _, payload = await admin.send_rpc_to_addr(
        cluster.nodes[1].addr,
        wire.MessageKind.PLACEMENT_REQUEST,
        encode_placement_request(
            "move_vshard", vshard=vshard, to_group=to, wait_ms=int(MOVE_TIMEOUT_S * 1000)
        ),
    )
    outcome = wire.decode_map(payload, "placement response").get("outcome")
    return start, time.monotonic(), str(outcome)


async def main(args: argparse.Namespace) -> dict[str, object]:
    base = Path(tempfile.mkdtemp(prefix="nodedb-migrate-"))
    overrides: dict[str, object] = {
        "rebalance_interval_ms": 0,
        "num_groups": DATA_GROUPS,
        "vshard_move_duty_percent": args.duty,
    }
    cluster = LocalCluster(base, 3, overrides=overrides)
    result: dict[str, object] = {"mib": args.mib, "clients": args.clients, "duty": args.duty}
    try:
        await cluster.start()
        await cluster.wait_formed(60)
        addrs = [n.addr for n in cluster.nodes.values()]
        async with Client(addrs, cluster.client_credentials) as client:
            keys = await load(client, args.mib)
            vshard = vshard_for_key(b"k0")
            groups = [client.routing.group_for_vshard(vshard)]
            groups.append(1 + groups[0] % DATA_GROUPS)
            result["vshard"] = vshard
            result["vshard_keys_loaded"] = sum(
                1 for i in range(keys) if vshard_for_key(f"k{i}".encode()) == vshard
            )
            print(f"loaded {keys} keys; moving vShard {vshard} {groups}", file=sys.stderr)

            steady = Load(client, vshard, args.clients)
            stop = asyncio.Event()
            running = asyncio.ensure_future(steady.run(stop))
            await asyncio.sleep(args.duration)  # a measurement window, not a synchronisation
            stop.set()
            await running
            steady_ops_s = steady.ops["ok"] / args.duration
            result["steady_ops_s"] = round(steady_ops_s)

            moving = Load(client, vshard, args.clients)
            stop = asyncio.Event()
            running = asyncio.ensure_future(moving.run(stop))
            admin = Transport(
                CLIENT_NODE_ID,
                "127.0.0.1:0",
                cluster.admin_credentials,
                rpc_timeout=MOVE_TIMEOUT_S + 5,
            )
            moves: list[tuple[float, float, str]] = []
            started = time.monotonic()
            try:
                while len(moves) < args.moves and time.monotonic() - started < args.duration:
                    to = groups[(len(moves) + 1) % 2]
                    moves.append(await move_once(admin, cluster, vshard, to))
                    if args.gap_s:
                        await asyncio.sleep(args.gap_s)  # spacing between moves, by design
            finally:
                await admin.close()
            elapsed = time.monotonic() - started
            stop.set()
            await running
            moving_ops_s = moving.ops["ok"] / elapsed
            result["moving_ops_s"] = round(moving_ops_s)
            result["ratio"] = round(moving_ops_s / max(1.0, steady_ops_s), 3)
            # Inside the moves only (from each request to its outcome): the issue's "during a
            # migration"; with --gap-s 0 it is the whole phase.
            in_moves = sum(
                sum(1 for t in moving.done_at if begin <= t <= end) for begin, end, _ in moves
            )
            window_s = sum(end - begin for begin, end, _ in moves)
            result["in_moves_ops_s"] = round(in_moves / max(window_s, 1e-9))
            result["ratio_in_moves"] = round(in_moves / max(window_s, 1e-9) / steady_ops_s, 3)
            pauses = [
                1000.0
                * max([e - s for s, e in moving.probe_writes if s < end and e > begin] or [0.0])
                for begin, end, _ in moves
            ]
            result["moves"] = len(moves)
            result["outcomes"] = dict(Counter(o for _, _, o in moves))
            result["move_s_median"] = round(statistics.median(e - s for s, e, _ in moves), 3)
            result["pause_ms"] = {
                "p50": round(percentile(pauses, 0.5), 1),
                "p99": round(percentile(pauses, 0.99), 1),
                "max": round(max(pauses, default=0.0), 1),
            }
            for name, phase in (("steady", steady), ("moving", moving)):
                lat = [(e - s) * 1000 for s, e in phase.probe_writes]
                result[f"probe_{name}_ms"] = {
                    "p50": round(percentile(lat, 0.5), 2),
                    "p99": round(percentile(lat, 0.99), 2),
                    "n": len(lat),
                }
            result["errors"] = {k: v for k, v in (steady.ops + moving.ops).items() if k != "ok"}
            paused = []  # the movers' own figure: freeze to release, from the node logs
            steps: dict[str, list[float]] = {}
            per_move: list[tuple[float, dict[str, float]]] = []
            for node in cluster.nodes.values():
                for line in node.log_path.read_text(errors="replace").splitlines():
                    if "moved from group" in line and "paused" in line:
                        paused.append(float(line.rsplit("paused ", 1)[1].split(" ms")[0]))
                        move_steps: dict[str, float] = {}
                        for part in line.rsplit("ms: ", 1)[1].rstrip(")").split(", "):
                            name, ms = part.split(" ")
                            steps.setdefault(name, []).append(float(ms))
                            move_steps[name] = float(ms)
                        per_move.append((paused[-1], move_steps))
            result["mover_pause_ms"] = {
                "p50": round(percentile(paused, 0.5), 1),
                "p99": round(percentile(paused, 0.99), 1),
                "max": round(max(paused, default=0.0), 1),
                "n": len(paused),
                **{f"{name}_p50": round(percentile(ms, 0.5), 1) for name, ms in steps.items()},
            }
            # The slowest moves step by step: where a tail comes from.
            result["mover_slowest"] = [
                {"paused": ms, **parts}
                for ms, parts in sorted(per_move, key=lambda m: m[0], reverse=True)[:3]
            ]
            result["pauses_ms_slowest"] = [round(p, 1) for p in sorted(pauses, reverse=True)[:5]]
            sample = [
                f"k{i}".encode() for i in range(keys) if vshard_for_key(f"k{i}".encode()) == vshard
            ]
            values = await client.get_many(sample)
            result["read_back_ok"] = all(v == VALUE for v in values)
    finally:
        await cluster.close()
        shutil.rmtree(base, ignore_errors=True)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=64, help="KV data loaded first (MiB)")
    parser.add_argument("--clients", type=int, default=64, help="W64 writers")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--moves", type=int, default=100, help="moves at most in the second phase")
    parser.add_argument(
        "--duty",
        type=int,
        default=15,
        help="the nodes' vshard_move_duty_percent (the default's; 100: moves back to back)",
    )
    parser.add_argument(
        "--gap-s", type=float, default=0.5, help="pause between moves (0: back to back)"
    )
    ns = parser.parse_args()
    if is_debug_build():
        sys.exit(2)
    print(json.dumps(asyncio.run(main(ns)), sort_keys=True))
