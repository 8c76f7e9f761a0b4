"""Helper process for the multi-process transport tests: one node serving an echo handler.

Usage: python tests/support/transport_server.py NODE_ID LISTEN_ADDR
           (--insecure | CA CERT KEY) [--rust-echo]
Prints `READY <local_addr> <pin-hex or ->` on stdout once bound, then serves until stdin closes
(the test holds the pipe) or it is killed. Handler: Ping → Pong with the same payload; kind 3
(JoinRequest) → raises, to exercise the Error reply path. `--rust-echo` answers Ping inside Rust
instead (benchmarks of the transport alone).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from nodedb_cluster.transport import Insecure, Mtls, Peer, Reply, Transport
from nodedb_cluster.wire import MessageKind


async def handler(peer: Peer, kind: int, payload: bytes) -> Reply:
    if kind == MessageKind.JOIN_REQUEST:
        raise ValueError("this test server refuses joins")
    return (MessageKind.PONG, payload)


async def main(argv: list[str]) -> None:
    node_id, listen = int(argv[0]), argv[1]
    credentials = (
        Insecure() if argv[2] == "--insecure" else Mtls(Path(argv[2]), Path(argv[3]), Path(argv[4]))
    )
    argv = argv[2:]
    transport = Transport(node_id, listen, credentials, rpc_timeout=5.0)
    transport.serve(handler)
    if "--rust-echo" in argv:
        transport.register_echo_handler(MessageKind.PING)
    pin = transport.spki_pin.hex() if transport.spki_pin else "-"
    print(f"READY {transport.local_addr} {pin}", flush=True)
    loop = asyncio.get_running_loop()
    # Serve until the parent closes our stdin (or kills us).
    await loop.run_in_executor(None, sys.stdin.read)
    await transport.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
