"""Transport benchmark: nodedb-cluster's QUIC transport from Python vs an aioquic echo, same run.

Run (release build of the Rust core required; refuses a debug build):

    python benches/bench_transport.py            # full run, 3 repetitions per case
    python benches/bench_transport.py --quick    # smaller counts, 1 repetition

Servers run in their own processes (this script re-invoked with `_serve-nodedb` / `_serve-aioquic`);
the client is this process. Cases, each against both stacks:
  - serial: 64 B echo, 1 in flight → p50 / p99 latency (µs);
  - 64 in flight: 64 B echo → requests/s (nodedb: 64 concurrent `send_rpc` calls, and
    `send_rpc_many` batches of 64; aioquic: 64 concurrent requests, one stream each);
  - bulk: 256 MiB in 4 MiB messages (4 in flight), server acks each → MB/s;
  - bridge floor: one trip Python → Rust runtime → Python with no network (p50/p99).
nodedb's server answers with a Python async handler (like aioquic's, which echoes in Python);
"rust echo" rows show the same client against a handler inside Rust (transport cost alone).
Every loop is bounded by a count and a wall-clock cap. Medians of the repetitions are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nodedb_cluster_core

SMALL_PAYLOAD = b"x" * 64
BULK_MESSAGE_BYTES = 4 * 1024 * 1024
BULK_INFLIGHT = 4
CASE_WALL_CAP_SECS = 120.0
ALPN_AIOQUIC = ["bench-echo"]


# --- servers (child processes) -------------------------------------------------------------------


async def serve_nodedb(creds: list[str], rust_echo: bool) -> None:
    from nodedb_cluster.transport import Mtls, Peer, Reply, Transport
    from nodedb_cluster.wire import MessageKind

    async def handler(peer: Peer, kind: int, payload: bytes) -> Reply:
        if kind == MessageKind.SNAPSHOT_CHUNK:  # bulk: ack with the byte count
            return (MessageKind.SNAPSHOT_ACK, len(payload).to_bytes(8, "little"))
        return (MessageKind.PONG, payload)

    transport = Transport(
        1, "127.0.0.1:0", Mtls(Path(creds[0]), Path(creds[1]), Path(creds[2])), rpc_timeout=60.0
    )
    transport.serve(handler)
    if rust_echo:
        transport.register_echo_handler(MessageKind.PING)
    print(f"READY {transport.local_addr}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await transport.close()


async def serve_aioquic(cert: str, key: str) -> None:
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.asyncio.server import serve
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import QuicEvent, StreamDataReceived

    class Echo(QuicConnectionProtocol):
        """Echo each stream; a stream starting with b"B" is bulk: count, ack at FIN."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._bulk: dict[int, int] = {}

        def quic_event_received(self, event: QuicEvent) -> None:
            if not isinstance(event, StreamDataReceived):
                return
            sid = event.stream_id
            if sid in self._bulk or event.data[:1] == b"B":
                self._bulk[sid] = self._bulk.get(sid, 0) + len(event.data)
                if event.end_stream:
                    ack = self._bulk.pop(sid).to_bytes(8, "little")
                    self._quic.send_stream_data(sid, ack, end_stream=True)
                    self.transmit()
                return
            self._quic.send_stream_data(sid, event.data, end_stream=event.end_stream)
            self.transmit()

    config = QuicConfiguration(is_client=False, alpn_protocols=ALPN_AIOQUIC, idle_timeout=60.0)
    config.load_cert_chain(cert, key)
    server = await serve("127.0.0.1", 0, configuration=config, create_protocol=Echo)
    udp = server._transport
    assert udp is not None
    port = udp.get_extra_info("sockname")[1]
    print(f"READY 127.0.0.1:{port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()


# --- client side ----------------------------------------------------------------------------------


class Child:
    """A server child process; stdin held open keeps it alive."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "READY":
            self.stop()
            raise RuntimeError(f"server {args[0]} did not start: {line!r}")
        self.addr = line[1]

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def percentile_us(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6


async def bounded(coro: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(coro, CASE_WALL_CAP_SECS)


async def serial(call: Callable[[], Awaitable[Any]], count: int) -> dict[str, float]:
    for _ in range(min(200, count)):  # warm-up: connection, caches
        await call()
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - started)
    return {"p50_us": percentile_us(latencies, 0.5), "p99_us": percentile_us(latencies, 0.99)}


async def concurrent(
    call: Callable[[], Awaitable[Any]], count: int, inflight: int
) -> dict[str, float]:
    async def worker(share: int) -> None:
        for _ in range(share):
            await call()

    await asyncio.gather(*(worker(10) for _ in range(inflight)))  # warm-up
    started = time.perf_counter()
    await asyncio.gather(*(worker(count // inflight) for _ in range(inflight)))
    elapsed = time.perf_counter() - started
    return {"req_per_s": (count // inflight) * inflight / elapsed}


async def batched(
    call_many: Callable[[int], Awaitable[Any]], count: int, batch: int
) -> dict[str, float]:
    await call_many(batch)  # warm-up
    started = time.perf_counter()
    for _ in range(count // batch):
        await call_many(batch)
    elapsed = time.perf_counter() - started
    return {"req_per_s": (count // batch) * batch / elapsed}


async def bulk(send: Callable[[bytes], Awaitable[int]], total_bytes: int) -> dict[str, float]:
    message = os.urandom(BULK_MESSAGE_BYTES)
    messages = total_bytes // BULK_MESSAGE_BYTES
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(messages):
        queue.put_nowait(index)

    async def worker() -> None:
        while not queue.empty():
            queue.get_nowait()
            acked = await send(message)
            assert acked == len(message), acked

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(BULK_INFLIGHT)))
    elapsed = time.perf_counter() - started
    return {"MB_per_s": messages * BULK_MESSAGE_BYTES / elapsed / 1e6}


async def bench_nodedb(addr: str, creds: list[str], args: argparse.Namespace) -> dict[str, Any]:
    from nodedb_cluster.transport import Mtls, Transport
    from nodedb_cluster.wire import MessageKind

    out: dict[str, Any] = {}
    async with Transport(
        2, "127.0.0.1:0", Mtls(Path(creds[0]), Path(creds[1]), Path(creds[2])), rpc_timeout=60.0
    ) as client:
        client.register_peer(1, addr)

        async def one() -> Any:
            return await client.send_rpc(1, MessageKind.PING, SMALL_PAYLOAD)

        async def many(n: int) -> Any:
            return await client.send_rpc_many(1, MessageKind.PING, [SMALL_PAYLOAD] * n)

        async def chunk(message: bytes) -> int:
            _, ack = await client.send_rpc(1, MessageKind.SNAPSHOT_CHUNK, message)
            return int.from_bytes(ack, "little")

        out["serial"] = await bounded(serial(one, args.requests))
        out["bridge_floor"] = await bounded(serial(client.probe_bridge, args.requests))
        out["inflight64"] = await bounded(concurrent(one, args.requests * 4, 64))
        out["many64"] = await bounded(batched(many, args.requests * 8, 64))
        if args.bulk:
            out["bulk"] = await bounded(bulk(chunk, args.bulk_mib * 1024 * 1024))
    return out


async def bench_aioquic(addr: str, ca: str, args: argparse.Namespace) -> dict[str, Any]:
    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import QuicEvent, StreamDataReceived

    class Client(QuicConnectionProtocol):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            self._waiting: dict[int, tuple[asyncio.Future[bytes], bytearray]] = {}

        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, StreamDataReceived) and event.stream_id in self._waiting:
                future, buffer = self._waiting[event.stream_id]
                buffer += event.data
                if event.end_stream:
                    del self._waiting[event.stream_id]
                    future.set_result(bytes(buffer))

        async def request(self, data: bytes) -> bytes:
            sid = self._quic.get_next_available_stream_id()
            future = asyncio.get_running_loop().create_future()
            self._waiting[sid] = (future, bytearray())
            self._quic.send_stream_data(sid, data, end_stream=True)
            self.transmit()
            reply: bytes = await future
            return reply

    host, port = addr.rsplit(":", 1)
    config = QuicConfiguration(is_client=True, alpn_protocols=ALPN_AIOQUIC, idle_timeout=60.0)
    config.load_verify_locations(ca)
    config.verify_mode = ssl.CERT_REQUIRED
    out: dict[str, Any] = {}
    async with connect(host, int(port), configuration=config, create_protocol=Client) as client:
        assert isinstance(client, Client)

        async def one() -> Any:
            return await client.request(SMALL_PAYLOAD)

        async def chunk(message: bytes) -> int:
            ack = await client.request(b"B" + message[1:])
            return int.from_bytes(ack, "little")

        out["serial"] = await bounded(serial(one, args.requests))
        out["inflight64"] = await bounded(concurrent(one, args.requests * 4, 64))
        if args.bulk:
            out["bulk"] = await bounded(bulk(chunk, args.aioquic_bulk_mib * 1024 * 1024))
    return out


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for case in runs[0]:
        merged[case] = {
            metric: statistics.median(run[case][metric] for run in runs) for metric in runs[0][case]
        }
    return merged


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_serve-nodedb":
        asyncio.run(serve_nodedb(sys.argv[2:5], rust_echo="--rust-echo" in sys.argv))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_serve-aioquic":
        asyncio.run(serve_aioquic(sys.argv[2], sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--bulk-mib", type=int, default=256)
    parser.add_argument("--aioquic-bulk-mib", type=int, default=64)
    parser.add_argument("--no-bulk", dest="bulk", action="store_false")
    args = parser.parse_args()
    if nodedb_cluster_core.build_profile() != "release":
        sys.exit(
            "refusing to benchmark a debug build of nodedb_cluster_core (pip install ./rust/py)"
        )
    if args.quick:
        args.runs, args.requests, args.bulk_mib, args.aioquic_bulk_mib = 1, 500, 64, 16
    from nodedb_cluster.transport import generate_cluster_credentials

    with tempfile.TemporaryDirectory() as tmp:
        # Two node certificates: the bulk case sends SnapshotChunk, a kind only nodes may send
        # (docs/WIRE.md's kind table); the server is node 1, this client node 2.
        files = generate_cluster_credentials(
            Path(tmp), "bench", [("n1", ["127.0.0.1"]), ("n2", ["127.0.0.1"])]
        )
        server_creds = [str(files[0].ca), str(files[0].cert), str(files[0].key)]
        client_creds = [str(files[1].ca), str(files[1].cert), str(files[1].key)]
        results: dict[str, list[dict[str, Any]]] = {
            "nodedb": [],
            "nodedb_rust_echo": [],
            "aioquic": [],
        }
        for _ in range(args.runs):
            for name, extra in [("nodedb", []), ("nodedb_rust_echo", ["--rust-echo"])]:
                child = Child(["_serve-nodedb", *server_creds, *extra])
                try:
                    run_args = argparse.Namespace(**{**vars(args), "bulk": args.bulk and not extra})
                    results[name].append(
                        asyncio.run(bench_nodedb(child.addr, client_creds, run_args))
                    )
                finally:
                    child.stop()
            child = Child(["_serve-aioquic", server_creds[1], server_creds[2]])
            try:
                results["aioquic"].append(
                    asyncio.run(bench_aioquic(child.addr, server_creds[0], args))
                )
            finally:
                child.stop()
    summary = {name: median_of(runs) for name, runs in results.items()}
    base = summary["aioquic"]
    summary["ratios_vs_aioquic"] = {
        "inflight64_req_per_s": summary["nodedb"]["inflight64"]["req_per_s"]
        / base["inflight64"]["req_per_s"],
        "many64_req_per_s": summary["nodedb"]["many64"]["req_per_s"]
        / base["inflight64"]["req_per_s"],
        "rust_echo_many64_req_per_s": summary["nodedb_rust_echo"]["many64"]["req_per_s"]
        / base["inflight64"]["req_per_s"],
        "serial_p50": summary["nodedb"]["serial"]["p50_us"] / base["serial"]["p50_us"],
    }
    if args.bulk:
        summary["ratios_vs_aioquic"]["bulk_MB_per_s"] = (
            summary["nodedb"]["bulk"]["MB_per_s"] / base["bulk"]["MB_per_s"]
        )
    summary["runs"] = args.runs
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
