"""The node's QUIC transport, driven from asyncio.

A thin shell over the Rust core (`nodedb_cluster_core.Transport`): one quinn endpoint per node on a
real UDP port, one pooled connection per peer, one stream per request, many in flight. Requests run
on the core's tokio threads (no GIL held while they wait or do I/O); outcomes come back through
the core's loop bridge, a socketpair this loop watches (`add_reader`), drained in batches. A
transport belongs to the first event loop that uses it. Credentials are explicit:
`Mtls(ca, cert, key)` or `Insecure()` (logged, counted).

Errors are the classes of `nodedb_cluster.errors`: `Timeout`, `Unreachable`, `HandshakeError`,
`FrameError`, `RemoteError`, `UnknownPeer`, `TransportClosed`, `BindError`, `CredentialsError`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import nodedb_cluster_core as _core

from nodedb_cluster.addr import SocketAddr
from nodedb_cluster.errors import NoSpace, NotServing, PermissionDenied
from nodedb_cluster.loop_bridge import BridgeWatch
from nodedb_cluster.ratelimit import KeyedRateLimitedLog

_log = logging.getLogger(__name__)

HANDLER_ERROR_LOG_INTERVAL_MS: Final = 10_000
"""A handler's error is logged at most once per peer, kind and error class per this (as the
core's refusals are)."""

RPC_TIMEOUT_SECS_DEFAULT: Final = 5.0
"""docs/JOIN.md: connect and whole-RPC bounded, default 5 s."""
KEEP_ALIVE_INTERVAL_SECS_DEFAULT: Final = 1.0
IDLE_TIMEOUT_SECS_DEFAULT: Final = 5.0
"""A peer silent this long (keep-alives included) is dead; its connection is replaced on next
use."""

Peer = _core.Peer
Responder = _core.Responder
"""Who sent an inbound frame: `.addr` (str), `.spki_pin` (bytes, mTLS only), and the verified
certificate identity: `.identity` (URI), `.role` ("node" | "admin" | "client") and `.node_id`
(node role only); all three None on an insecure transport."""


@dataclass(frozen=True, slots=True)
class RefusalLine:
    """One rate-limited log line of refused requests."""

    peer: str
    """The sender's identity URI, `unidentified` or `unauthenticated`."""
    addr: str
    kind: str
    reason: str
    message: str
    suppressed: int
    """Refusals of the same (peer, kind, reason) since the previous line that were not logged."""


@dataclass(frozen=True, slots=True)
class CertIdentity:
    """The identity a certificate carries in its `spiffe://<cluster>/<role>/<name>` URI SAN."""

    uri: str
    role: str
    name: str
    node_id: int | None
    """Set for the node role (the name is the node id)."""


def read_cert_identity(path: Path) -> CertIdentity:
    """The identity of the certificate in `path` (PEM); `CredentialsError` naming the file when
    it has none (issued before roles existed: `nodedb-cluster gen-certs` makes new ones)."""
    return CertIdentity(*_core.cert_identity(path))


Reply = tuple[int, bytes]
"""(message kind, payload) of an answer."""

Handler = Callable[[Peer, int, bytes], Awaitable[Reply | None]]
"""Async callable answering inbound control frames: (peer, kind, payload) -> (kind, payload).
Raising an exception answers the requester with an Error message (`code` attribute if present,
else the exception class name); the requester sees `RemoteError`."""


@dataclass(frozen=True, slots=True)
class Mtls:
    """Mutual TLS: cluster CA, this node's certificate and key (PEM files), and optional
    certificate revocation lists signed by the CA (peers they revoke are refused)."""

    ca: Path
    cert: Path
    key: Path
    crls: tuple[Path, ...] = ()

    def spki_pin(self) -> bytes:
        """SHA-256 of this node's SubjectPublicKeyInfo (what peers pin)."""
        pin = _core.Credentials.mtls(self.ca, self.cert, self.key, list(self.crls)).spki_pin()
        assert pin is not None  # mTLS identities always have one
        return pin


@dataclass(frozen=True, slots=True)
class Insecure:
    """No authentication at all. Only when asked for by name; logged and counted in metrics."""


Credentials = Mtls | Insecure


def _core_credentials(credentials: Credentials) -> _core.Credentials:
    if isinstance(credentials, Mtls):
        return _core.Credentials.mtls(
            credentials.ca, credentials.cert, credentials.key, list(credentials.crls)
        )
    if isinstance(credentials, Insecure):
        return _core.Credentials.insecure()
    raise TypeError(f"credentials must be Mtls(...) or Insecure(), not {credentials!r}")


LEAF_VALIDITY_DAYS_DEFAULT: Final = 365
"""A leaf is valid a year (from an hour before issue, for clock skew); the CA ten years."""
CA_KEY_RELPATH: Final = Path("ca-key") / "ca.key"
"""Where the generator puts the CA key under its folder: a folder of its own (0700), so the
folder a node is given never needs to hold it."""

LeafRole = Literal["auto", "node", "admin", "client"]
"""A leaf's role; "auto" is `gen-certs --node`'s rule: `n<id>` is node <id>, other names clients."""

Leaf = tuple[str, list[str]]
"""(name, SANs): SANs are the IP addresses (or DNS names) peers use to reach the holder."""


def ca_key_path(directory: Path) -> Path:
    """The CA key the generator wrote under `directory`."""
    return directory / CA_KEY_RELPATH


def generate_cluster_credentials(
    directory: Path,
    cluster_name: str,
    nodes: Sequence[Leaf],
    *,
    admins: Sequence[Leaf] = (),
    clients: Sequence[Leaf] = (),
    days: int = LEAF_VALIDITY_DAYS_DEFAULT,
) -> list[Mtls]:
    """A fresh cluster CA (`ca.pem`, `ca-key/ca.key`) plus one leaf per entry under
    `directory` (keys 0600, folders 0700), each carrying `spiffe://<cluster_name>/<role>/<name>`.

    `nodes` follow gen-certs' rule (`n<id>` is node <id>, any other name a client); `admins` and
    `clients` are explicit. Returns the leaves in that order: nodes, admins, clients.
    """
    leaves = [
        *(("auto", name, list(sans)) for name, sans in nodes),
        *(("admin", name, list(sans)) for name, sans in admins),
        *(("client", name, list(sans)) for name, sans in clients),
    ]
    files = _core.generate_cluster_credentials(directory, cluster_name, leaves, days)
    return [Mtls(Path(ca), Path(cert), Path(key)) for ca, cert, key in files]


def issue_node_credentials(
    ca_cert: Path,
    ca_key: Path,
    name: str,
    sans: list[str],
    directory: Path,
    *,
    role: LeafRole = "auto",
    days: int = LEAF_VALIDITY_DAYS_DEFAULT,
) -> Mtls:
    """One more leaf from an existing CA (its cluster name comes from the CA certificate)."""
    ca, cert, key = _core.issue_node_credentials(ca_cert, ca_key, role, name, sans, days, directory)
    return Mtls(Path(ca), Path(cert), Path(key))


def renew_node_credentials(
    ca_cert: Path,
    ca_key: Path,
    cert: Path,
    key: Path,
    *,
    days: int = LEAF_VALIDITY_DAYS_DEFAULT,
    sans: Sequence[str] | None = None,
) -> Mtls:
    """A new certificate in place of `cert` for the key it has (peers pin a node's key: a new
    key would cut the node off), same identity, valid `days` from now, naming `sans` (IPs or
    DNS names; None: the addresses it names)."""
    ca, new_cert, same_key = _core.renew_node_credentials(
        ca_cert, ca_key, cert, key, days, None if sans is None else list(sans)
    )
    return Mtls(Path(ca), Path(new_cert), Path(same_key))


def certificate_addresses(path: Path) -> tuple[str, ...]:
    """The IP addresses and DNS names the certificate in `path` (PEM) names."""
    return tuple(_core.certificate_addresses(path))


def certificate_not_after(path: Path) -> int:
    """When the certificate in `path` (PEM) expires, in seconds since the Unix epoch."""
    return _core.certificate_not_after(path)


class _Resumed:
    """The rest of a coroutine that was stepped once outside a Task: awaiting this re-yields the
    future it suspended on, then keeps driving it exactly as a Task would (values and
    exceptions, including cancellation, pass straight through)."""

    __slots__ = ("_coroutine", "_first_yield")

    def __init__(self, coroutine: Generator[Any, Any, Any], first_yield: Any) -> None:
        self._coroutine = coroutine
        self._first_yield = first_yield

    def __await__(self) -> Generator[Any, Any, Any]:
        yielded = self._first_yield
        while True:
            try:
                sent = yield yielded
            except BaseException as exc:  # thrown in by the driving Task (e.g. CancelledError)
                try:
                    yielded = self._coroutine.throw(exc)
                except StopIteration as finished:
                    return finished.value
            else:
                try:
                    yielded = self._coroutine.send(sent)
                except StopIteration as finished:
                    return finished.value


@dataclass(frozen=True, slots=True)
class CrlSummary:
    """What `revoke_node_credentials` wrote."""

    path: Path
    crl_number: int
    """The previous CRL's number plus one (1 for a first CRL)."""
    revoked_total: int
    """Certificates the CRL revokes, earlier entries included."""
    newly_revoked: int
    """Of those asked for, the ones not revoked already."""


def revoke_node_credentials(
    ca_cert: Path, ca_key: Path, revoked: list[Path], out: Path
) -> CrlSummary:
    """Revoke the leaf certificates `revoked` (issued by this CA) in the CRL at `out`, keeping
    what an existing CRL there already revokes; replaced atomically. Nodes given it
    (`tls_crl_path`, reloaded on SIGHUP; `Mtls(..., crls=(out,))`) refuse those leaves."""
    number, total, new = _core.revoke_node_credentials(ca_cert, ca_key, list(revoked), out)
    return CrlSummary(out, number, total, new)


def _addr_text(addr: str | SocketAddr) -> str:
    return str(addr) if isinstance(addr, SocketAddr) else addr


def wire_error(exc: Exception) -> tuple[str, str]:
    """(code, message) of the Error message a handler's exception is answered with: the
    class's `code` (else its name) and its text (`NoSpace`: the data dir, which the requester
    raises `NoSpace` with again)."""
    code = getattr(exc, "code", None)
    code = code if isinstance(code, str) else type(exc).__name__
    if isinstance(exc, PermissionDenied):
        return code, exc.message
    if isinstance(exc, NoSpace):
        return code, exc.data_dir
    return code, str(exc)


class Transport:
    """One QUIC endpoint bound to `listen_addr` (port 0 → ephemeral; see `local_addr`)."""

    __slots__ = (
        "_bridge",
        "_core",
        "_handler",
        "_handler_errors_log",
        "_insecure",
        "_tasks",
        "_warned_insecure",
    )

    def __init__(
        self,
        node_id: int,
        listen_addr: str | SocketAddr,
        credentials: Credentials,
        rpc_timeout: float = RPC_TIMEOUT_SECS_DEFAULT,
        *,
        connect_timeout: float | None = None,
        keep_alive_interval: float = KEEP_ALIVE_INTERVAL_SECS_DEFAULT,
        idle_timeout: float = IDLE_TIMEOUT_SECS_DEFAULT,
    ) -> None:
        self._insecure = isinstance(credentials, Insecure)
        self._warned_insecure = False
        self._core = _core.Transport(
            node_id,
            _addr_text(listen_addr),
            _core_credentials(credentials),
            rpc_timeout=rpc_timeout,
            connect_timeout=rpc_timeout if connect_timeout is None else connect_timeout,
            keep_alive_interval=keep_alive_interval,
            idle_timeout=idle_timeout,
        )
        self._handler: Handler | None = None
        self._bridge = BridgeWatch(self._core, "Transport")
        self._tasks: set[asyncio.Task[None]] = set()
        """Handler tasks in flight (the loop keeps only weak references to tasks)."""
        self._handler_errors_log = KeyedRateLimitedLog(_log, HANDLER_ERROR_LOG_INTERVAL_MS)

    def _attach(self) -> asyncio.AbstractEventLoop:
        """The running loop, which must be this transport's (see `BridgeWatch.attach`)."""
        return self._bridge.attach()

    @property
    def node_id(self) -> int:
        return self._core.node_id

    @property
    def local_addr(self) -> str:
        """The bound address, `ip:port` (the real port when bound to port 0)."""
        return self._core.local_addr

    @property
    def spki_pin(self) -> bytes | None:
        return self._core.spki_pin

    @property
    def identity(self) -> str | None:
        """This node's certificate identity URI (`spiffe://<cluster>/<role>/<name>`); None when
        insecure."""
        return self._core.identity

    def refusal_counts(self) -> dict[tuple[str, str], int]:
        """Requests refused before (or by) their handler: {(kind name, reason): count}."""
        return dict(self._core.refusal_counts())

    def take_refusal_lines(self) -> list[RefusalLine]:
        """Refusal log lines not yet logged (at most one per peer, kind and reason per 10 s)."""
        return [RefusalLine(*line) for line in self._core.take_refusal_lines()]

    def record_refusal(self, peer: Peer, kind: int, reason: str, message: str) -> None:
        """Count and queue a log line for a refusal decided in a handler (`reason` is one of the
        stable labels of rust/transport/src/refusals.rs)."""
        self._core.record_refusal(peer, kind, reason, message)

    @property
    def closed(self) -> bool:
        return self._core.closed

    def set_crls(self, paths: Sequence[Path]) -> int:
        """Put the CRL files `paths` in force (empty: none): new handshakes in both directions
        are checked against them, and live connections whose peer they revoke are closed (only
        those: the others carry Raft and client traffic that has nothing to do with it).
        Returns how many were closed. A broken file raises `CredentialsError` and the CRLs in
        force stay."""
        return self._core.set_crls(list(paths))

    def register_peer(
        self, node_id: int, addr: str | SocketAddr, spki_pin: bytes | None = None
    ) -> None:
        """Map a node id to its address; with `spki_pin`, connections to it must present it."""
        self._core.register_peer(node_id, _addr_text(addr), spki_pin)

    def unregister_peer(self, node_id: int) -> bool:
        return self._core.unregister_peer(node_id)

    def dial_peers(self) -> None:
        """Dial every registered peer not yet connected, in the background (errors ignored).
        A restarted node calls it once its peers are registered: a peer that sees this node
        dial it again drops its connection to the previous process at once, instead of sending
        into it until a QUIC probe draws a stateless reset (seconds after a crash)."""
        self._core.dial_peers()

    def announce_address(self) -> None:
        """Tell every registered peer, in the background, that this node listens at its local
        address (PEER_ADDRESS; errors ignored): a node restarted at another address is reached
        there before the cluster's topology records it."""
        self._core.announce_address()

    def announce_address_to(self, addrs: Sequence[str]) -> None:
        """`announce_address` to addresses no registered peer is known at (a node's seeds):
        when a whole cluster moved at once, every peer listens where this node never knew."""
        self._core.announce_address_to(list(addrs))

    async def send_rpc(self, node_id: int, kind: int, payload: bytes) -> Reply:
        """Request/response to a registered peer; an Error reply raises `RemoteError`."""
        return await self.send_rpc_nowait(node_id, kind, payload)

    def send_rpc_nowait(
        self, node_id: int, kind: int, payload: bytes, *, answer_within_ms: int | None = None
    ) -> asyncio.Future[Reply]:
        """`send_rpc` begun now, its reply a future: for a caller that settles many waiters
        from one reply in a callback, with no task of its own. With `answer_within_ms`, the
        peer's handler may take that long (the RPC bound is then for the network alone)."""
        future: asyncio.Future[Reply] = self._attach().create_future()
        self._core.send_rpc(node_id, kind, payload, future, answer_within_ms)
        return future

    async def send_rpc_to_addr(self, addr: str | SocketAddr, kind: int, payload: bytes) -> Reply:
        """Request/response to an address (e.g. a join seed, whose node id is unknown)."""
        future: asyncio.Future[Reply] = self._attach().create_future()
        self._core.send_rpc_to_addr(_addr_text(addr), kind, payload, future)
        return await future

    async def send_rpc_fresh(self, addr: str | SocketAddr, kind: int, payload: bytes) -> Reply:
        """Request/response to an address on a connection dialled for it alone and closed after
        (never pooled): docs/JOIN.md's join attempts, which must not ride a pooled connection."""
        future: asyncio.Future[Reply] = self._attach().create_future()
        self._core.send_rpc_fresh(_addr_text(addr), kind, payload, future)
        return await future

    async def send_rpc_many(self, node_id: int, kind: int, payloads: list[bytes]) -> list[Reply]:
        """Many requests to one peer in one boundary crossing, run concurrently in Rust.

        Replies are in request order; if any request fails, the first error is raised after all
        have finished.
        """
        future: asyncio.Future[list[Reply]] = self._attach().create_future()
        self._core.send_rpc_many(node_id, kind, payloads, future)
        return await future

    async def send_oneway(self, node_id: int, kind: int, payload: bytes) -> None:
        """One frame on a unidirectional stream, no reply."""
        future: asyncio.Future[None] = self._attach().create_future()
        self._core.send_oneway(node_id, kind, payload, future)
        await future

    def serve(self, handler: Handler | None) -> None:
        """Answer inbound frames without a Rust handler with `handler`, on the running loop.

        An insecure endpoint warns here, when it starts answering strangers: a client endpoint
        (the CLI's `--insecure`, `Client`) never serves, and its user asked for it by name."""
        if self._insecure and handler is not None and not self._warned_insecure:
            self._warned_insecure = True
            _log.warning(
                "node %d: INSECURE transport on %s: peers are not authenticated",
                self.node_id,
                self.local_addr,
            )
        self._attach()
        self._handler = handler
        self._core.serve(None if handler is None else self._dispatch)

    def _dispatch(self, responder: Responder, peer: Peer, kind: int, payload: bytes) -> None:
        """Called by the core on this loop (from `drain`); never blocks.

        The handler coroutine is stepped once right here: one that finishes without suspending
        (most control handlers) is answered with no Task and no extra loop iteration; one that
        suspends continues in a Task from exactly where it stopped.
        """
        handler = self._handler
        if handler is None:
            responder.fail("no_handler", f"node {self.node_id} serves no handler")
            return
        try:
            coroutine = handler(peer, kind, payload).__await__()
            first_yield = next(coroutine)
        except StopIteration as finished:
            self._reply(responder, peer, kind, finished.value)
        except Exception as exc:  # the requester gets it as RemoteError; logged here too
            self._fail(responder, peer, kind, exc)
        else:
            task = asyncio.ensure_future(
                self._finish(responder, peer, kind, _Resumed(coroutine, first_yield))
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _finish(self, responder: Responder, peer: Peer, kind: int, rest: _Resumed) -> None:
        try:
            reply = await rest
        except Exception as exc:  # the requester gets it as RemoteError; logged here too
            self._fail(responder, peer, kind, exc)
        else:
            self._reply(responder, peer, kind, reply)

    def _fail(self, responder: Responder, peer: Peer, kind: int, exc: Exception) -> None:
        code, message = wire_error(exc)
        # PermissionDenied is counted and logged (rate-limited) by its raiser; NotServing
        # (starting, joining) and NoSpace are states the node shows: not a warning each. The
        # rest at most once per peer, kind and error class per 10 s: a peer causes them.
        if not isinstance(exc, (PermissionDenied, NotServing, NoSpace)):
            who = peer.identity or peer.addr
            self._handler_errors_log(
                (who, kind, type(exc).__name__),
                int(asyncio.get_running_loop().time() * 1000),
                logging.WARNING,
                "handler for kind %d from %s (%s) raised %r",
                kind,
                peer.addr,
                who,
                exc,
            )
        responder.fail(code, message)

    @staticmethod
    def _reply(responder: Responder, peer: Peer, kind: int, reply: Reply | None) -> None:
        if reply is None:
            responder.done()
            return
        try:
            responder.reply(reply[0], reply[1])
        except (TypeError, IndexError, ValueError) as exc:  # bad reply shape or kind
            _log.warning("handler for kind %d from %s replied %r", kind, peer.addr, reply)
            responder.fail("bad_handler_reply", f"handler reply {reply!r:.80} invalid: {exc}")

    def register_echo_handler(self, kind: int) -> None:
        """Answer `kind` inside Rust with Pong echoing the payload (liveness probes, benchmarks
        of the transport alone); takes precedence over the Python handler for that kind."""
        self._core.register_echo_handler(kind)

    async def close(self) -> None:
        """Close all connections and release the port at once. Idempotent."""
        loop = self._attach()
        future: asyncio.Future[None] = loop.create_future()
        self._core.close(future)
        await future
        for task in list(self._tasks):
            task.cancel()
        self._bridge.close()

    def metrics(self) -> dict[str, int]:
        """Counters: rpcs sent/received, errors by type, decode errors by code, insecure, ..."""
        return self._core.metrics()

    def served_histograms(self) -> list[_core.HistogramRow]:
        """How long inbound requests took to serve, by kind (kinds served at least once)."""
        return self._core.served_histograms()

    def pooled_connection_id(self, addr: str | SocketAddr) -> int | None:
        """Identity of the pooled connection to `addr` (tests: reuse across requests)."""
        return self._core.pooled_connection_id(_addr_text(addr))

    async def probe_bridge(self) -> None:
        """One trip loop → Rust runtime → loop with no network: the latency floor under every
        request (diagnostics and benchmarks)."""
        future: asyncio.Future[None] = self._attach().create_future()
        self._core._probe_bridge(future)
        await future

    async def send_raw_for_tests(self, addr: str | SocketAddr, data: bytes) -> Reply | int:
        """TESTS ONLY: raw bytes on a new stream of the pooled connection; the reply frame or
        the stream-reset code the peer answered with."""
        future: asyncio.Future[Reply | int] = self._attach().create_future()
        self._core._send_raw_to_addr(_addr_text(addr), data, future)
        return await future

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
