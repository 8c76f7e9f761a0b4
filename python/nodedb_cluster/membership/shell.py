"""The asyncio shell around `SwimMachine`: one UDP socket, one timer, observers.

It only moves data: a received datagram goes to the machine, the machine's `Send`s go to the
socket, its `MemberChanged`s go to observers, and one `loop.call_at` timer is re-armed for
`next_deadline_ms()` after every input. Each callback does a bounded amount of work (one datagram,
or one `tick`, whose work is bounded by the member count).

Observers: `subscribe(callback)` (called on the loop, must not block; an exception is logged and
the observer stays subscribed) and `events()`, an async iterator over a bounded queue whose oldest
event is dropped (and counted as `events_dropped`) when a slow consumer lets it fill.

Nothing stops SWIM but `close`: an exception from the machine (a bug, or an input it did not
foresee) in the datagram handler or the timer is logged (rate-limited) and counted as
`handler_errors`, and the timer is re-armed regardless (no sooner than one probe interval after a
failed tick, so a tick that keeps failing cannot spin the loop). Datagrams from sender ids that
are not members (`UnknownSender`) are logged at most once per `LOG_INTERVAL_MS`, with a count.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Final

from nodedb_cluster.addr import SocketAddr, parse_socket_addr
from nodedb_cluster.clock import Clock, SystemClock
from nodedb_cluster.errors import ClusterError
from nodedb_cluster.membership.codec import Codec
from nodedb_cluster.membership.config import SwimConfig
from nodedb_cluster.membership.machine import (
    Action,
    Member,
    MemberChanged,
    Send,
    SwimMachine,
    UnknownSender,
)
from nodedb_cluster.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

Observer = Callable[[MemberChanged], None]
OBSERVERS_MAX: Final = 64
LOG_INTERVAL_MS: Final = 10_000
"""At most one log line per kind of trouble (unknown senders, handler errors) per this long: a
flood of datagrams must not become a flood of log lines."""


class SwimError(ClusterError):
    """The SWIM shell could not start (bind failed) or was used after close."""


def bind_udp(addr: SocketAddr) -> socket.socket:
    """The SWIM socket, bound. A node takes it before it forms, so a port in use fails the start
    before anything is written or any cluster learns of the node."""
    sock = socket.socket(socket.AF_INET6 if addr.is_ipv6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(addr.as_tuple())
    except OSError as e:
        sock.close()
        raise SwimError(f"cannot bind SWIM UDP {addr}: {e.strerror or e}") from e
    sock.setblocking(False)
    return sock


class SwimNode:
    """SWIM on one UDP address. `await start(seeds)`, then read `members()`; `await close()`."""

    def __init__(
        self,
        node_id: int,
        bind_addr: SocketAddr,
        config: SwimConfig,
        secret: bytes | None,
        *,
        rng: random.Random | None = None,
        clock: Clock | None = None,
        incarnation: int | None = None,
    ) -> None:
        """`secret` None runs unauthenticated (only when the caller asked for it by name).
        `incarnation` defaults to the wall clock in ms, so a restarted node outranks every claim
        about its previous life without having to hear and refute them first."""
        self._clock = clock or SystemClock()
        self._machine = SwimMachine(
            node_id,
            bind_addr,
            config,
            Codec(secret, config.datagram_bytes_max),
            rng or random.Random(),
            incarnation=self._clock.now_ms() if incarnation is None else incarnation,
            now_ms=self._clock.monotonic_ms(),
        )
        self._bind_addr = bind_addr
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._observers: list[Observer] = []
        self._queue: asyncio.Queue[MemberChanged] = asyncio.Queue(maxsize=config.event_queue_max)
        self._paused = False
        self._closed = False
        self._closed_event = asyncio.Event()
        self.counters: dict[str, int] = {"events_dropped": 0, "send_errors": 0, "handler_errors": 0}
        self._log_unknown = RateLimitedLog(log, LOG_INTERVAL_MS)
        self._log_error = RateLimitedLog(log, LOG_INTERVAL_MS)
        self._probe_interval_ms = config.probe_interval_ms

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(
        self, seeds: Iterable[tuple[int, SocketAddr]] = (), sock: socket.socket | None = None
    ) -> None:
        """Serve on `sock` (bound to the node's address by `bind_udp`; bound here when None)."""
        loop = asyncio.get_running_loop()
        sock = sock if sock is not None else bind_udp(self._bind_addr)
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        except OSError as e:
            sock.close()
            raise SwimError(f"cannot serve SWIM UDP {self._bind_addr}: {e.strerror or e}") from e
        self._transport = transport
        for node_id, addr in seeds:
            self.add_member(node_id, addr)
        self._rearm()

    async def close(self, *, leave: bool = True) -> None:
        """Announce departure (unless `leave` is False, e.g. to simulate a crash), stop, unbind."""
        if self._closed:
            return
        if leave and self._transport is not None and not self._paused:
            self._carry_out(self._machine.leave(self._clock.monotonic_ms()))
        self._closed = True
        self._closed_event.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()

    def pause(self) -> None:
        """Stop reacting (no timers, incoming datagrams dropped): an in-process SIGSTOP."""
        self._paused = True
        if self._timer is not None:
            self._timer.cancel()

    def resume(self) -> None:
        self._paused = False
        self._rearm()

    # --- reads and inputs ----------------------------------------------------------------------

    @property
    def node_id(self) -> int:
        return self._machine.node_id

    @property
    def addr(self) -> SocketAddr:
        if self._transport is None:
            return self._bind_addr
        host, port = self._transport.get_extra_info("sockname")[:2]
        return parse_socket_addr(f"{host}:{port}" if ":" not in host else f"[{host}]:{port}")

    @property
    def incarnation(self) -> int:
        return self._machine.incarnation

    def members(self) -> tuple[Member, ...]:
        return self._machine.members()

    def now_ms(self) -> int:
        """The machine's clock (monotonic ms): what `Member.last_contact_ms` is measured on."""
        return self._clock.monotonic_ms()

    def metrics(self) -> dict[str, int]:
        return {**self._machine.counters, **self.counters}

    def add_member(self, node_id: int, addr: SocketAddr) -> None:
        self._carry_out(self._machine.add_member(node_id, addr, self._clock.monotonic_ms()))
        self._rearm()

    def subscribe(self, observer: Observer) -> None:
        if len(self._observers) >= OBSERVERS_MAX:
            raise SwimError(f"at most {OBSERVERS_MAX} observers")
        self._observers.append(observer)

    async def events(self) -> AsyncIterator[MemberChanged]:
        """Membership events in order (oldest dropped if the bounded queue overflows); ends once
        the node is closed and the queue drained, so no consumer waits forever."""
        while True:
            if not self._queue.empty():
                yield self._queue.get_nowait()
                continue
            if self._closed:
                return
            getter = asyncio.ensure_future(self._queue.get())
            closer = asyncio.ensure_future(self._closed_event.wait())
            try:
                await asyncio.wait({getter, closer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closer.cancel()
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                yield getter.result()

    # --- the shell -----------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, src: tuple[str, int]) -> None:
        if self._paused or self._closed:
            return
        try:
            src_addr: SocketAddr | None = SocketAddr(ipaddress.ip_address(src[0]), src[1])
        except (ValueError, ClusterError):  # a scoped IPv6 source, which we do not support
            src_addr = None
        if src_addr is None:
            self._machine.counters["dropped_malformed"] += 1
            return
        now_ms = self._clock.monotonic_ms()
        try:
            self._carry_out(self._machine.on_datagram(data, src_addr, now_ms))
        except Exception:  # SWIM must outlive any one datagram
            self._failed(now_ms, "a datagram from %s", src_addr)
        self._rearm()

    def _on_timer(self) -> None:
        self._timer = None
        if self._paused or self._closed:
            return
        now_ms = self._clock.monotonic_ms()
        try:
            self._carry_out(self._machine.tick(now_ms))
        except Exception:  # an unhandled raise here used to leave the timer unarmed for good
            self._failed(now_ms, "a timer tick")
            self._rearm(min_delay_ms=self._probe_interval_ms)
        else:
            self._rearm()

    def _failed(self, now_ms: int, what: str, *args: object) -> None:
        self.counters["handler_errors"] += 1
        msg = "SWIM failed on " + what + "; it keeps running"
        self._log_error(now_ms, logging.ERROR, msg, *args, exc_info=True)

    def _rearm(self, min_delay_ms: int = 0) -> None:
        if self._closed or self._paused or self._transport is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        try:
            deadline_ms = self._machine.next_deadline_ms()
        except Exception:
            self._failed(self._clock.monotonic_ms(), "its next deadline")
            deadline_ms, min_delay_ms = 0, self._probe_interval_ms
        delay_ms = max(min_delay_ms, deadline_ms - self._clock.monotonic_ms())
        self._timer = loop.call_at(loop.time() + delay_ms / 1000, self._on_timer)

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                if self._transport is not None and not self._transport.is_closing():
                    self._transport.sendto(action.data, action.addr.as_tuple())
            elif isinstance(action, UnknownSender):
                self._log_unknown(
                    self._clock.monotonic_ms(),
                    logging.WARNING,
                    "SWIM dropped a datagram from node id %d at %s: not a member in this node's "
                    "topology (a node whose join is not applied here yet, or a forgery with the "
                    "cluster secret)",
                    action.node_id,
                    action.addr,
                )
            else:
                self._publish(action)

    def _publish(self, event: MemberChanged) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.counters["events_dropped"] += 1
        self._queue.put_nowait(event)
        for observer in self._observers:
            try:
                observer(event)
            except Exception:  # an observer's bug must not stop failure detection
                log.exception("SWIM observer %r failed on %s", observer, event)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, node: SwimNode) -> None:
        self._node = node

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        host, port = addr[0], addr[1]
        if isinstance(host, str):
            self._node._on_datagram(data, (host, port))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a dead peer surfaces here; SWIM already treats silence as such.
        self._node.counters["send_errors"] += 1
