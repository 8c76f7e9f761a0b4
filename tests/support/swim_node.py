"""One SWIM member as its own process (test and bench helper).

Usage: swim_node.py NODE_ID BIND_ADDR PEERS SECRET_HEX [PROBE_INTERVAL_MS]
PEERS is `id=host:port,...`. Prints one JSON line per event on stdout, flushed:
`{"ready": id}` once bound, then `{"node": n, "state": "DEAD", "inc": i, "wall_ms": t}` per
membership change (wall_ms: this host's wall clock, comparable across processes on one host).
Runs until killed (SIGTERM leaves gracefully; SIGKILL is the crash the tests want).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.membership import MemberChanged, SwimConfig, SwimNode


def emit(doc: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


async def main(argv: list[str]) -> None:
    node_id, bind, peers_text, secret_hex = int(argv[0]), argv[1], argv[2], argv[3]
    config = SwimConfig(probe_interval_ms=int(argv[4])) if len(argv) > 4 else SwimConfig()
    peers = []
    for part in filter(None, peers_text.split(",")):
        pid, _, addr = part.partition("=")
        peers.append((int(pid), parse_socket_addr(addr)))
    node = SwimNode(node_id, parse_socket_addr(bind), config, bytes.fromhex(secret_hex))

    def on_change(e: MemberChanged) -> None:
        wall_ms = time.time_ns() // 1_000_000
        emit({"node": e.node_id, "state": e.state.name, "inc": e.incarnation, "wall_ms": wall_ms})

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await node.start(peers)
    node.subscribe(on_change)  # after seeding: the seeds' initial ALIVE events are not news
    emit({"ready": node_id})
    await stop.wait()
    await node.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
