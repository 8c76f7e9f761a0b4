"""Embedding nodedb-cluster with your own state machine: replicated counters.

    python examples/replicated_counters.py demo            # 3 local node processes, a summary
    python examples/replicated_counters.py node --config node1.toml   # one node of your own

Each node process runs `start_cluster(config, state_machine=Counters)`: every data group applies
`Counters` commands, and `node.data` proposes them (from any node: a follower forwards to the
leader in one hop), reads them linearizably after `read_index`, locates keys and reports leader
changes. A `node` reads one JSON command per line on stdin and answers one JSON line on stdout:
  {"op": "incr", "key": "a", "by": 2}   -> {"ok": true, "value": 2}
  {"op": "incr", "key": "a", "times": 3} -> {"ok": true, "values": [3, 4, 5]}  (concurrently)
  {"op": "get", "key": "a"}             -> {"ok": true, "value": 2}   (read_index, then local)
  {"op": "locate", "key": "a"}          -> {"ok": true, "location": {...}}
and prints {"event": "leader", "group": g, "leader": n, "term": t} on every leader change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from nodedb_cluster.cli_support import READY_PREFIX
from nodedb_cluster.config import ClusterConfig
from nodedb_cluster.errors import ClusterError
from nodedb_cluster.formation.start import start_cluster
from nodedb_cluster.metrics import serve_metrics
from nodedb_cluster.node import Node


class Counters:
    """The host state machine of one data group: named integer counters.

    A command is msgpack `[key, by]`; its result is the counter's new value as decimal text.
    Deterministic, so every replica holds the same counters."""

    def __init__(self) -> None:
        self.values: dict[bytes, int] = {}

    def apply_batch(self, entries: list[tuple[int, bytes]]) -> list[bytes]:
        results = []
        for _index, command in entries:
            key, by = msgpack.unpackb(command)
            self.values[key] = self.values.get(key, 0) + int(by)
            results.append(str(self.values[key]).encode())
        return results

    def snapshot(self) -> bytes:
        return bytes(msgpack.packb(self.values))

    def snapshot_view(self) -> Callable[[], bytes]:
        """A copy now (cheap), encoded later on the engine's snapshot thread: a large state's
        encoding then never holds up the engine's ticks and applies."""
        values = dict(self.values)
        return lambda: bytes(msgpack.packb(values))

    def restore(self, data: bytes) -> None:
        self.values = self.decode_snapshot(data)

    def decode_snapshot(self, data: bytes) -> dict[bytes, int]:
        """A snapshot from the leader, decoded on the engine's snapshot thread..."""
        return dict(msgpack.unpackb(data, strict_map_key=False))

    def install(self, values: dict[bytes, int]) -> None:
        """...and swapped in on its driver thread."""
        self.values = values


async def run_node(config: ClusterConfig) -> int:
    replicas: dict[int, Counters] = {}

    def factory(group: int) -> Counters:
        replicas[group] = Counters()
        return replicas[group]

    node = await start_cluster(config, state_machine=factory)
    # `metrics_addr` in the config: an embedding host serves /metrics itself (docs/METRICS.md).
    addr = config.metrics_addr
    metrics = None if addr is None else await serve_metrics(node, addr)
    out = sys.stdout

    def say(doc: dict[str, Any]) -> None:
        out.write(json.dumps(doc) + "\n")
        out.flush()

    node.data.on_leader_change(
        lambda g, leader, term: say({"event": "leader", "group": g, "leader": leader, "term": term})
    )
    print(READY_PREFIX + json.dumps({"node_id": config.node_id}), flush=True)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    serving = asyncio.ensure_future(serve(node, replicas, reader, say))
    failed = asyncio.ensure_future(node.failed.wait())
    # SIGTERM (kill, systemd, docker stop) and Ctrl-C end the host through node.shutdown():
    # without a handler, the default action ends the process with none of it run.
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        # A node that can no longer serve (its disk, or a state machine that raised) has
        # stopped itself; the host process exits with its reason rather than linger.
        await asyncio.wait((serving, failed, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        serving.cancel()
        failed.cancel()
        stopped.cancel()
        if metrics is not None:
            metrics.close()
        await node.shutdown()
    if node.failure is not None:
        print(f"node {config.node_id} failed: {node.failure}", file=sys.stderr, flush=True)
        return 1
    return 0


async def serve(
    node: Node,
    replicas: dict[int, Counters],
    reader: asyncio.StreamReader,
    say: Callable[[dict[str, Any]], None],
) -> None:
    """Answer the JSON commands on stdin until it closes."""
    while line := await reader.readline():
        request = json.loads(line)
        key = request.get("key", "").encode()
        try:
            if request["op"] == "incr" and "times" in request:
                # Concurrent proposals: those made in one turn of the loop travel together.
                command = msgpack.packb([key, 1])
                calls = (node.data.propose(command, key=key) for _ in range(request["times"]))
                values = await asyncio.gather(*calls)
                say({"ok": True, "values": sorted(int(v) for v in values)})
            elif request["op"] == "incr":
                command = msgpack.packb([key, request.get("by", 1)])
                value = await node.data.propose(command, key=key)
                say({"ok": True, "value": int(value)})
            elif request["op"] == "get":
                await node.data.read_index(key=key)
                group = node.data.locate(key).group
                say({"ok": True, "value": replicas[group].values.get(key, 0)})
            elif request["op"] == "locate":
                say({"ok": True, "location": node.data.locate(key).to_doc()})
            elif request["op"] == "kv_put":  # the built-in KV is off on host groups
                await node.kv.put(key, b"x")
                say({"ok": True})
            else:
                say({"ok": False, "error": f"unknown op {request['op']!r}"})
        except ClusterError as e:
            say({"ok": False, "error": f"{type(e).__name__}: {e}"})


async def demo() -> int:
    """Three node processes on 127.0.0.1-3; counters incremented through every node; the leader
    of one counter's group killed; the counters still right on the survivors."""
    from nodedb_cluster.localcluster import LocalCluster

    with tempfile.TemporaryDirectory(prefix="nodedb-embed-") as tmp:
        cluster = LocalCluster(Path(tmp), 3, program=(__file__, "node"))
        try:
            await cluster.start()
            await cluster.wait_formed()  # every group on all 3 nodes, so one may die
            nodes = cluster.nodes
            for i in range(30):
                doc = await nodes[1 + i % 3].request({"op": "incr", "key": f"c{i % 5}", "by": 1})
                assert doc["ok"], doc
            where = (await nodes[1].request({"op": "locate", "key": "c0"}))["location"]
            print(f"c0 lives in group {where['group']}, leader node {where['leader']}")
            victim = where["leader"]
            nodes[victim].kill()
            survivor = next(i for i in nodes if i != victim)
            # An increment is not idempotent: send it once a new leader is known, rather than
            # into the dead one (whose fate the sender could not tell).
            event = await nodes[survivor].wait_event(
                lambda e: e["group"] == where["group"] and e["leader"] not in (None, victim)
            )
            print(f"node {survivor} saw node {event['leader']} take over group {event['group']}")
            doc = await nodes[survivor].request({"op": "incr", "key": "c0", "by": 100})
            assert doc["ok"], doc
            print(f"after killing node {victim}: c0 = {doc['value']} (via node {survivor})")
            values = [
                (await nodes[survivor].request({"op": "get", "key": f"c{k}"}))["value"]
                for k in range(5)
            ]
            print(f"counters c0..c4 read linearizably on node {survivor}: {values}")
            return 0 if values == [106, 6, 6, 6, 6] else 1
        finally:
            await cluster.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    node = sub.add_parser("node", help="run one node (JSON commands on stdin)")
    node.add_argument("--config", type=Path, required=True, help="the node's TOML config")
    sub.add_parser("demo", help="3 local node processes and a summary")
    args = parser.parse_args()
    if args.cmd == "node":
        return asyncio.run(run_node(ClusterConfig.from_toml(args.config)))
    return asyncio.run(demo())


if __name__ == "__main__":
    sys.exit(main())
