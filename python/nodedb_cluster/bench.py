"""`nodedb-cluster bench`: N concurrent KV clients for D seconds against a 3-node cluster.

Two placements, labelled in the output:
- "client": the clients are coroutines in this process, a `Client` talking to the leaders over
  QUIC (how etcd is used);
- "embedded": the clients run inside the node processes on `node.kv` (how NodeDB uses it): this
  process asks each node (KV_REQUEST op "load") to run its share, polls progress and collects
  latencies (op "load_result").

Without `--addr` a fresh 3-node cluster (mTLS, every write fsynced before it is acknowledged) is
started on 127.0.0.1-3 under a temporary directory and removed afterwards. Every load loop is
bounded in time (`--duration`, ≤ `DURATION_S_MAX`) and in count (`OPS_PER_CLIENT_MAX`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, TypeVar

import msgpack
import numpy as np
import numpy.typing as npt

from nodedb_cluster import wire
from nodedb_cluster.errors import ClusterError, ConfigError
from nodedb_cluster.kv import ReadLevel

if TYPE_CHECKING:
    from nodedb_cluster.control import ControlDispatch
    from nodedb_cluster.transport import Credentials, Peer, Reply

Driver = Literal["asyncio", "native"]
"""Who makes the client placement's calls: asyncio coroutines, or callers in Rust."""

DURATION_S_MAX: Final = 300.0
CLIENTS_MAX: Final = 4096
OPS_PER_CLIENT_MAX: Final = 10_000_000
KEYSPACE_DEFAULT: Final = 100_000

T = TypeVar("T")
PREFILL_BATCH: Final = 5000


def _encode_doc(doc: Mapping[str, object]) -> bytes:
    """A BENCH_LOAD payload (the bench tool's own messages: a MessagePack map)."""
    return bytes(msgpack.packb(doc, use_bin_type=True))


class KvApi(Protocol):
    async def put(self, key: bytes, value: bytes, *, timeout_s: float | None = None) -> None: ...
    async def get(
        self,
        key: bytes,
        *,
        read: ReadLevel = "linearizable",
        max_staleness_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> bytes | None: ...
    async def put_many(
        self, items: Sequence[tuple[bytes, bytes]], *, timeout_s: float | None = None
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class LoadSpec:
    clients: int = 64
    duration_s: float = 10.0
    value_bytes: int = 100
    read_fraction: float = 0.0
    read_level: ReadLevel = "linearizable"
    batch: int = 0
    """0: single puts; >0: each write is a `put_many` of this many items."""
    keyspace: int = KEYSPACE_DEFAULT
    seed: int = 1

    def check(self) -> LoadSpec:
        if not 1 <= self.clients <= CLIENTS_MAX:
            raise ConfigError("clients", f"must be in 1..{CLIENTS_MAX}")
        if not 0 < self.duration_s <= DURATION_S_MAX:
            raise ConfigError("duration", f"must be in (0, {DURATION_S_MAX}] seconds")
        if not 0 <= self.value_bytes <= 1 << 20:
            raise ConfigError("value_bytes", "must be in 0..1 MiB")
        if not 0.0 <= self.read_fraction <= 1.0:
            raise ConfigError("read_fraction", "must be in [0, 1]")
        if not 0 <= self.batch <= 100_000:
            raise ConfigError("batch", "must be in 0..100000")
        if not 1 <= self.keyspace <= 100_000_000:
            raise ConfigError("keyspace", "must be in 1..1e8")
        return self

    def to_doc(self) -> dict[str, object]:
        return {
            "clients": self.clients,
            "duration_s": self.duration_s,
            "value_bytes": self.value_bytes,
            "read_fraction": self.read_fraction,
            "read_level": self.read_level,
            "batch": self.batch,
            "keyspace": self.keyspace,
            "seed": self.seed,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, object]) -> LoadSpec:
        try:
            return cls(
                clients=int(doc["clients"]),  # type: ignore[call-overload]
                duration_s=float(doc["duration_s"]),  # type: ignore[arg-type]
                value_bytes=int(doc["value_bytes"]),  # type: ignore[call-overload]
                read_fraction=float(doc["read_fraction"]),  # type: ignore[arg-type]
                read_level=doc["read_level"],  # type: ignore[arg-type]
                batch=int(doc["batch"]),  # type: ignore[call-overload]
                keyspace=int(doc["keyspace"]),  # type: ignore[call-overload]
                seed=int(doc["seed"]),  # type: ignore[call-overload]
            ).check()
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError("load", f"malformed load spec: {e}") from e


@dataclass(slots=True)
class LoadRun:
    """One run's counters; latencies in microseconds, one per operation."""

    writes: int = 0
    reads: int = 0
    errors: int = 0
    first_error: str = ""
    latencies_us: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0
    done: bool = False

    def to_doc(self) -> dict[str, object]:
        return {
            "writes": self.writes,
            "reads": self.reads,
            "errors": self.errors,
            "first_error": self.first_error,
            "latencies_us": np.asarray(self.latencies_us, dtype=np.uint32).tobytes(),
            "elapsed_s": self.elapsed_s,
            "done": self.done,
        }


def _key(i: int) -> bytes:
    return b"bench:%010d" % i


async def prefill(kv: KvApi, spec: LoadSpec, part: int = 0, parts: int = 1) -> None:
    """Write this part of the keyspace so reads find values (bounded: keyspace ≤ 1e8)."""
    value = b"p" * spec.value_bytes
    keys = range(part, spec.keyspace, parts)
    for start in range(0, len(keys), PREFILL_BATCH):
        chunk = keys[start : start + PREFILL_BATCH]
        await kv.put_many([(_key(i), value) for i in chunk], timeout_s=30.0)


async def run_load(kv: KvApi, spec: LoadSpec, run: LoadRun, client_offset: int = 0) -> None:
    """`spec.clients` coroutines for `spec.duration_s`; fills `run` as it goes."""
    value = b"v" * spec.value_bytes
    t0 = time.perf_counter()
    deadline = t0 + spec.duration_s
    samples = run.latencies_us

    async def client(n: int) -> None:
        rng = random.Random(spec.seed * 1_000_003 + client_offset + n)
        for _ in range(OPS_PER_CLIENT_MAX):
            start = time.perf_counter()
            if start >= deadline:
                return
            try:
                if rng.random() < spec.read_fraction:
                    await kv.get(_key(rng.randrange(spec.keyspace)), read=spec.read_level)
                    run.reads += 1
                elif spec.batch:
                    base = rng.randrange(spec.keyspace)
                    items = [(_key((base + j) % spec.keyspace), value) for j in range(spec.batch)]
                    await kv.put_many(items)
                    run.writes += spec.batch
                else:
                    await kv.put(_key(rng.randrange(spec.keyspace)), value)
                    run.writes += 1
            except ClusterError as e:
                run.errors += 1
                if not run.first_error:
                    run.first_error = f"{type(e).__name__}: {e}"
                continue
            samples.append(int((time.perf_counter() - start) * 1e6))

    await asyncio.gather(*(client(n) for n in range(spec.clients)))
    run.elapsed_s = time.perf_counter() - t0
    run.done = True


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    placement: str
    spec: LoadSpec
    writes: int
    reads: int
    errors: int
    first_error: str
    elapsed_s: float
    ops_per_s: float
    writes_per_s: float
    p50_ms: float
    p99_ms: float
    p999_ms: float

    def to_doc(self) -> dict[str, object]:
        return {
            "placement": self.placement,
            **self.spec.to_doc(),
            "writes": self.writes,
            "reads": self.reads,
            "errors": self.errors,
            "first_error": self.first_error,
            "elapsed_s": round(self.elapsed_s, 3),
            "ops_per_s": round(self.ops_per_s, 1),
            "writes_per_s": round(self.writes_per_s, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "p999_ms": round(self.p999_ms, 3),
            "fsync_before_ack": True,
        }

    def line(self) -> str:
        return (
            f"{self.placement:<9} clients={self.spec.clients:<4} "
            f"read={self.spec.read_fraction:.0%} batch={self.spec.batch}: "
            f"{self.ops_per_s:,.0f} ops/s ({self.writes_per_s:,.0f} writes/s)  "
            f"p50 {self.p50_ms:.2f} ms  p99 {self.p99_ms:.2f} ms  p999 {self.p999_ms:.2f} ms  "
            f"errors {self.errors}"
        )


def summarize(placement: str, spec: LoadSpec, runs: Sequence[LoadRun]) -> Summary:
    lat = np.concatenate(
        [np.asarray(r.latencies_us, dtype=np.float64) for r in runs] or [np.zeros(0)]
    )
    elapsed = max((r.elapsed_s for r in runs), default=0.0) or spec.duration_s
    writes = sum(r.writes for r in runs)
    reads = sum(r.reads for r in runs)
    pct: npt.NDArray[np.float64] = (
        np.percentile(lat, [50, 99, 99.9]) / 1000 if lat.size else np.zeros(3)
    )
    errors = [r.first_error for r in runs if r.first_error]
    return Summary(
        placement=placement,
        spec=spec,
        writes=writes,
        reads=reads,
        errors=sum(r.errors for r in runs),
        first_error=errors[0] if errors else "",
        elapsed_s=elapsed,
        ops_per_s=(writes + reads) / elapsed,
        writes_per_s=writes / elapsed,
        p50_ms=float(pct[0]),
        p99_ms=float(pct[1]),
        p999_ms=float(pct[2]),
    )


# --- embedded placement: the node side ----------------------------------------------------------


class EmbeddedLoad:
    """One bounded load run inside a node, started and polled over BENCH_LOAD (served only by
    nodes started with `--allow-bench-load`, to admin certificates)."""

    def __init__(self) -> None:
        self._run: LoadRun | None = None
        self._task: asyncio.Task[None] | None = None

    async def handle(self, kv: KvApi, doc: dict[str, object]) -> dict[str, object]:
        op = doc.get("op")
        if op == "load":
            if self._task is not None and not self._task.done():
                raise ClusterError("a load run is already in progress on this node")
            spec_doc = doc.get("spec")
            if not isinstance(spec_doc, dict):
                raise ClusterError("load needs a 'spec' map")
            spec = LoadSpec.from_doc(spec_doc)
            offset = doc.get("offset", 0)
            self._run = LoadRun()
            if doc.get("prefill"):
                parts = doc.get("parts", 1)
                if not isinstance(offset, int) or not isinstance(parts, int) or parts < 1:
                    raise ClusterError("prefill needs integer 'offset' and 'parts' >= 1")
                self._task = asyncio.ensure_future(
                    self._prefill_then_mark(kv, spec, offset, parts, self._run)
                )
            else:
                self._task = asyncio.ensure_future(
                    run_load(kv, spec, self._run, offset if isinstance(offset, int) else 0)
                )
            return {"started": True}
        run = self._run
        if run is None:
            return {"done": True, "writes": 0, "reads": 0, "errors": 0}
        if run.done:
            return run.to_doc()
        return {"done": False, "writes": run.writes, "reads": run.reads, "errors": run.errors}

    @staticmethod
    async def _prefill_then_mark(
        kv: KvApi, spec: LoadSpec, part: int, parts: int, run: LoadRun
    ) -> None:
        try:
            await prefill(kv, spec, part, parts)
        except ClusterError as e:
            run.errors += 1
            run.first_error = str(e)
        run.done = True


def serve_embedded_load(control: ControlDispatch, kv: Callable[[], KvApi]) -> None:
    """Answer BENCH_LOAD on a node with load generated inside it: the `start` command installs
    this on nodes started with `--allow-bench-load` (the node itself only refuses the kind, and
    the transport admits it from admins and nodes only). `kv()` is the node's KV API."""
    load = EmbeddedLoad()

    async def on_bench_load(peer: Peer, payload: bytes) -> Reply:
        request = wire.decode_map(payload, "bench load request")
        answer = await load.handle(kv(), request)
        return wire.MessageKind.BENCH_LOAD_RESPONSE, _encode_doc(answer)

    control.register(wire.MessageKind.BENCH_LOAD, on_bench_load)


def _run_from_doc(doc: dict[str, object]) -> LoadRun:
    raw = doc.get("latencies_us", b"")
    lat = np.frombuffer(raw if isinstance(raw, bytes) else b"", dtype=np.uint32)
    return LoadRun(
        writes=int(doc.get("writes", 0)),  # type: ignore[call-overload]
        reads=int(doc.get("reads", 0)),  # type: ignore[call-overload]
        errors=int(doc.get("errors", 0)),  # type: ignore[call-overload]
        first_error=str(doc.get("first_error", "")),
        latencies_us=lat.tolist(),
        elapsed_s=float(doc.get("elapsed_s", 0.0)),  # type: ignore[arg-type]
        done=True,
    )


# --- the orchestrator -------------------------------------------------------------------------


def _progress(text: str, quiet: bool) -> None:
    if not quiet:
        print(f"\r{text}", end="", file=sys.stderr, flush=True)


async def bench_client(
    addrs: Sequence[str],
    credentials: Credentials,
    spec: LoadSpec,
    quiet: bool = False,
    driver: Driver = "asyncio",
) -> Summary:
    """Clients in this process, over one `Client`: asyncio coroutines, or (`driver="native"`)
    callers in Rust on the same client core, as efficient as etcd's Go load generator."""
    from nodedb_cluster.client import Client

    if driver == "native" and (spec.batch or spec.read_level != "linearizable"):
        raise ConfigError("driver", "the native driver runs single puts and linearizable gets")
    async with Client(addrs, credentials) as client:
        if spec.read_fraction > 0:
            await prefill(client, spec)
        if driver == "native":
            load, done = client.start_native_load(
                clients=spec.clients,
                duration_s=spec.duration_s,
                value_bytes=spec.value_bytes,
                keyspace=spec.keyspace,
                read_fraction=spec.read_fraction,
                seed=spec.seed,
            )
            await _watch(done, lambda: load.counts, spec, quiet)
            return summarize("client-native", spec, [_run_from_doc(done.result())])
        run = LoadRun()
        task = asyncio.ensure_future(run_load(client, spec, run))
        await _watch(task, lambda: (run.writes, run.reads, run.errors), spec, quiet)
        return summarize("client", spec, [run])


async def _watch(
    task: asyncio.Future[Any],
    counts: Callable[[], tuple[int, int, int]],
    spec: LoadSpec,
    quiet: bool,
) -> None:
    t0 = time.perf_counter()
    limit = spec.duration_s + 60.0
    while not task.done():
        await asyncio.wait({task}, timeout=1.0)
        writes, reads, errors = counts()
        elapsed = time.perf_counter() - t0
        _progress(
            f"  {elapsed:5.1f}/{spec.duration_s:.0f} s  writes {writes:,}  reads {reads:,}  "
            f"errors {errors}  ({(writes + reads) / max(elapsed, 1e-9):,.0f} ops/s)   ",
            quiet,
        )
        if elapsed > limit:
            task.cancel()
            raise ClusterError(f"load did not finish within {limit:.0f} s")
    _progress("\n", quiet)
    task.result()


async def bench_embedded(
    addrs: Sequence[str], credentials: Credentials, spec: LoadSpec, quiet: bool = False
) -> Summary:
    """Clients inside the node processes: `spec.clients` split over the nodes."""
    from nodedb_cluster.client import Client

    async with Client(addrs, credentials) as client:
        transport = client.transport
        parts = len(addrs)
        if spec.read_fraction > 0:
            await _all_nodes(transport, addrs, spec, parts, prefill=True, quiet=True)
        shares = [
            spec.clients // parts + (1 if i < spec.clients % parts else 0) for i in range(parts)
        ]
        used = [(a, s) for a, s in zip(addrs, shares, strict=True) if s > 0]
        runs = await _run_on_nodes(transport, used, spec, quiet)
        return summarize("embedded", spec, runs)


async def _rpc(transport: object, addr: str, doc: dict[str, object]) -> dict[str, object]:
    from nodedb_cluster.transport import Transport

    assert isinstance(transport, Transport)
    kind, payload = await transport.send_rpc_to_addr(
        addr, wire.MessageKind.BENCH_LOAD, _encode_doc(doc)
    )
    if kind != wire.MessageKind.BENCH_LOAD_RESPONSE:
        raise ClusterError(f"{addr} answered with kind {kind}")
    return wire.decode_map(payload, "load response")


async def _all_nodes(
    transport: object,
    addrs: Sequence[str],
    spec: LoadSpec,
    parts: int,
    prefill: bool,
    quiet: bool,
) -> None:
    for i, addr in enumerate(addrs):
        await _rpc(
            transport,
            addr,
            {"op": "load", "spec": spec.to_doc(), "offset": i, "parts": parts, "prefill": prefill},
        )
    await _poll_until_done(transport, addrs, 120.0)


async def _poll_until_done(
    transport: object, addrs: Sequence[str], limit_s: float
) -> list[dict[str, object]]:
    deadline = time.perf_counter() + limit_s
    while True:
        docs = [await _rpc(transport, a, {"op": "load_result"}) for a in addrs]
        if all(d.get("done") for d in docs):
            return docs
        if time.perf_counter() > deadline:
            raise ClusterError(f"nodes did not finish the load within {limit_s:.0f} s")
        await asyncio.sleep(0.5)  # remote progress has no push channel: poll, bounded


async def _run_on_nodes(
    transport: object, used: Sequence[tuple[str, int]], spec: LoadSpec, quiet: bool
) -> list[LoadRun]:
    offset = 0
    for addr, share in used:
        node_spec = LoadSpec(**{**spec.to_doc(), "clients": share})  # type: ignore[arg-type]
        await _rpc(transport, addr, {"op": "load", "spec": node_spec.to_doc(), "offset": offset})
        offset += share
    t0 = time.perf_counter()
    addrs = [a for a, _ in used]
    deadline = t0 + spec.duration_s + 60.0
    while True:
        await asyncio.sleep(1.0)  # remote progress has no push channel: poll, bounded
        docs = [await _rpc(transport, a, {"op": "load_result"}) for a in addrs]
        writes = sum(int(d.get("writes", 0)) for d in docs)  # type: ignore[call-overload]
        reads = sum(int(d.get("reads", 0)) for d in docs)  # type: ignore[call-overload]
        elapsed = time.perf_counter() - t0
        _progress(
            f"  {elapsed:5.1f}/{spec.duration_s:.0f} s  writes {writes:,}  reads {reads:,}   ",
            quiet,
        )
        if all(d.get("done") for d in docs):
            _progress("\n", quiet)
            return [_run_from_doc(d) for d in docs]
        if time.perf_counter() > deadline:
            raise ClusterError("nodes did not finish the load in time")


# --- the command ---------------------------------------------------------------------------------


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--addr", action="append", metavar="IP:PORT", help="attach to these nodes (repeat)"
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=64,
        metavar="N",
        help="concurrent callers, one call each (default 64)",
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, metavar="SECS", help="seconds (default 10)"
    )
    parser.add_argument(
        "--value-bytes",
        type=int,
        default=100,
        metavar="BYTES",
        help="bytes per written value (default 100)",
    )
    parser.add_argument(
        "--read-fraction", type=float, default=0.0, metavar="F", help="0.9 = 90%% reads"
    )
    parser.add_argument(
        "--read-level",
        default="linearizable",
        choices=("linearizable", "lease", "follower"),
        help="how reads are served (docs/KV.md; default linearizable)",
    )
    parser.add_argument(
        "--batch", type=int, default=0, metavar="N", help="put_many of this many per write"
    )
    parser.add_argument(
        "--keyspace",
        type=int,
        metavar="N",
        default=KEYSPACE_DEFAULT,
        help=f"distinct keys the load picks from (default {KEYSPACE_DEFAULT})",
    )
    parser.add_argument(
        "--placement",
        choices=("client", "embedded"),
        default="client",
        help="where the callers run: this process, or inside the nodes (default client)",
    )
    parser.add_argument(
        "--driver",
        choices=("asyncio", "native"),
        default="asyncio",
        help="client placement: calls from asyncio coroutines, or from callers in Rust on the "
        "same client core (a load generator as efficient as etcd's Go one)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run_bench_command(args: argparse.Namespace) -> int:
    spec = LoadSpec(
        clients=args.clients,
        duration_s=args.duration,
        value_bytes=args.value_bytes,
        read_fraction=args.read_fraction,
        read_level=args.read_level,
        batch=args.batch,
        keyspace=args.keyspace,
    ).check()
    summary = asyncio.run(_bench_main(args, spec))
    if args.json:
        print(json.dumps(summary.to_doc(), sort_keys=True))
    else:
        print(summary.line())
        if summary.first_error:
            print(f"first error: {summary.first_error}")
    return 0 if summary.errors == 0 else 1


async def _bench_main(args: argparse.Namespace, spec: LoadSpec) -> Summary:
    from nodedb_cluster.cli_support import client_credentials

    quiet = bool(args.json)
    if args.placement == "embedded" and args.driver != "asyncio":
        raise ConfigError("driver", "the embedded placement runs asyncio callers in the nodes")

    def on(addrs: Sequence[str], creds: Credentials) -> Awaitable[Summary]:
        if args.placement == "embedded":
            return bench_embedded(addrs, creds, spec, quiet)
        return bench_client(addrs, creds, spec, quiet, args.driver)

    if args.addr:
        return await on(args.addr, client_credentials(args))
    return await with_local_cluster(on, quiet, operator=args.placement == "embedded")


async def with_local_cluster(
    body: Callable[[list[str], Credentials], Awaitable[T]],
    quiet: bool = False,
    size: int = 3,
    operator: bool = False,
) -> T:
    """Start a fresh mTLS cluster of `size` processes on 127.0.0.1.., run `body` with the
    client's credentials (the admin's when `operator`), remove it. Its nodes allow bench load."""
    from nodedb_cluster.localcluster import LocalCluster

    base = Path(tempfile.mkdtemp(prefix="nodedb-bench-"))
    cluster = LocalCluster(base, size, overrides={"allow_bench_load": True})
    try:
        if not quiet:
            print(f"starting a {size}-node cluster under {base}", file=sys.stderr)
        await cluster.start()
        await cluster.wait_formed(60.0)
        addrs = [n.addr for n in cluster.nodes.values()]
        creds = cluster.admin_credentials if operator else cluster.client_credentials
        return await body(addrs, creds)
    finally:
        await cluster.close()
        shutil.rmtree(base, ignore_errors=True)
