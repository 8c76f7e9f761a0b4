"""The join client (docs/JOIN.md "Join (client side)"): a pure per-attempt machine and its shell.

`JoinAttempt` decides which seed to ask next; it does no I/O and knows no clock, so every rule
of the contract (sorted seeds, each address once per attempt, redirects to the front of the queue,
at most three redirects, never revisiting) is tested by feeding it outcomes. `run_join` is the
shell: it sleeps per `JoinRetryPolicy`, reports `Joining{attempt}` to the lifecycle, sends the
requests and gives up with the last concrete error, or at once when every seed of an attempt
refused the TLS handshake (no retry changes a certificate). `join_sender` is how a node sends
them: each JoinRequest on a connection dialled for it alone (docs/JOIN.md: "no pooled
connection"), so a join attempt never rides a pooled connection to a seed that restarted since,
and the joiner's pool is left to the peers it later talks Raft to.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Generic, NoReturn, TypeVar

from nodedb_cluster import wire
from nodedb_cluster.addr import SocketAddr
from nodedb_cluster.errors import ClusterError, FormationFailed, FrameError, HandshakeError
from nodedb_cluster.formation.leader_hint import parse_leader_hint
from nodedb_cluster.formation.retry import JoinRetryPolicy
from nodedb_cluster.lifecycle import Failed, Joining, LifecycleTracker

if TYPE_CHECKING:
    from nodedb_cluster.transport import Transport

log = logging.getLogger(__name__)

REDIRECTS_PER_ATTEMPT_MAX: Final = 3
"""A redirect chain longer than this means the seeds disagree about the leader: retry later."""
NO_SEED_NODES: Final = "no seed nodes configured"
EVERY_HANDSHAKE_REFUSED: Final = (
    "every seed refused the TLS handshake, and no retry changes a certificate: "
    "check this node's --tls-ca-path and --tls-cert-path (or --insecure) against the cluster's"
)

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Accepted(Generic[R]):
    """The seed admitted us; `response` is what it sent."""

    response: R


@dataclass(frozen=True, slots=True)
class Rejected:
    """The seed answered with a rejection text (maybe a `not leader; retry at <addr>` redirect)."""

    text: str
    permanent: bool = False
    """The seed said no retry can cure it (a refused join token or certificate): stop at once."""


@dataclass(frozen=True, slots=True)
class SendFailed:
    """No usable answer: transport error, timeout or an unexpected reply."""

    reason: str


@dataclass(frozen=True, slots=True)
class HandshakeRefused:
    """The TLS handshake failed: one side's certificate is not of the other's CA, or it is
    revoked, expired or missing. A seed of another cluster may do this alone; every seed doing
    it means this node's own credentials are wrong."""

    reason: str


JoinOutcome = Accepted[R] | Rejected | SendFailed | HandshakeRefused


@dataclass(slots=True)
class JoinAttempt:
    """One pass over the seeds: which address to ask next, given the outcomes so far."""

    queue: deque[SocketAddr]
    visited: set[SocketAddr] = field(default_factory=set)
    redirects: int = 0
    handshakes_refused: int = 0
    last_error: str | None = None

    @classmethod
    def over(cls, seeds: Iterable[SocketAddr]) -> JoinAttempt:
        """A fresh attempt walking `seeds` ascending (the designated bootstrapper first)."""
        return cls(queue=deque(sorted(set(seeds))))

    def next_target(self) -> SocketAddr | None:
        """The next address to ask, or None when this attempt has nothing left to try."""
        while self.queue:
            addr = self.queue.popleft()
            if addr not in self.visited:
                self.visited.add(addr)
                return addr
        return None

    def on_rejected(self, addr: SocketAddr, text: str) -> None:
        """Follow a usable leader redirect; otherwise remember the rejection and go on."""
        hint = parse_leader_hint(text)
        if hint is not None and hint not in self.visited:
            if self.redirects < REDIRECTS_PER_ATTEMPT_MAX:
                self.redirects += 1
                self.queue.appendleft(hint)
                self.last_error = f"{addr}: {text}"
                return
            self.last_error = f"{addr}: {text} (redirect limit {REDIRECTS_PER_ATTEMPT_MAX} reached)"
            return
        self.last_error = f"{addr}: {text}"

    def on_send_failed(self, addr: SocketAddr, reason: str) -> None:
        """Remember a transport failure and go on to the next seed."""
        self.last_error = f"{addr}: {reason}"

    def on_handshake_refused(self, addr: SocketAddr, reason: str) -> None:
        """Remember a refused handshake and go on to the next seed."""
        self.handshakes_refused += 1
        self.last_error = f"{addr}: {reason}"

    def every_handshake_refused(self) -> bool:
        """Every seed asked so far refused the TLS handshake (or was refused by us)."""
        return bool(self.visited) and self.handshakes_refused == len(self.visited)


SendJoin = Callable[[SocketAddr], Awaitable[JoinOutcome[R]]]
Sleep = Callable[[float], Awaitable[None]]


async def run_join(
    seeds: Iterable[SocketAddr],
    policy: JoinRetryPolicy,
    send: SendJoin[R],
    tracker: LifecycleTracker,
    sleep: Sleep = asyncio.sleep,
) -> R:
    """Walk the seeds attempt after attempt until one admits us; raise `FormationFailed` after the
    last attempt with the last concrete error (the lifecycle ends Failed with the same reason),
    or at once on a permanent rejection (a refused token: retrying would only repeat it) and
    after an attempt in which every seed refused the TLS handshake.

    `send` must be bounded by the RPC timeout and turn every failure into `SendFailed`/`Rejected`
    (a raised `HandshakeError` is taken as `HandshakeRefused`, any other `ClusterError` as
    `SendFailed`).
    """
    seed_list = sorted(set(seeds))
    if not seed_list:
        _fail(tracker, NO_SEED_NODES)
    last_error = "no attempt made"
    for attempt_no in range(policy.max_attempts + 1):
        delay_s = policy.backoff_for(attempt_no)
        if delay_s > 0:
            await sleep(delay_s)
        tracker.transition(Joining(attempt_no), detail=f"{len(seed_list)} seeds")
        attempt = JoinAttempt.over(seed_list)
        while (addr := attempt.next_target()) is not None:
            try:
                outcome = await send(addr)
            except HandshakeError as exc:
                outcome = HandshakeRefused(str(exc))
            except ClusterError as exc:
                outcome = SendFailed(str(exc))
            match outcome:
                case Accepted(response=response):
                    return response
                case Rejected(text=text, permanent=True):
                    log.error("join: %s refused us for good: %s", addr, text)
                    _fail(tracker, f"{addr}: {text}")
                case Rejected(text=text):
                    verb = "redirected" if parse_leader_hint(text) is not None else "rejected"
                    log.info("join: %s %s us: %s", addr, verb, text)
                    attempt.on_rejected(addr, text)
                case SendFailed(reason=reason):
                    log.info("join: %s failed: %s", addr, reason)
                    attempt.on_send_failed(addr, reason)
                case HandshakeRefused(reason=reason):
                    log.warning("join: %s: %s", addr, reason)
                    attempt.on_handshake_refused(addr, reason)
        last_error = attempt.last_error or last_error
        if attempt.every_handshake_refused():
            log.error("join: %s", EVERY_HANDSHAKE_REFUSED)
            _fail(tracker, f"{last_error}; {EVERY_HANDSHAKE_REFUSED}")
        log.info("join attempt %d failed: %s", attempt_no, last_error)
    _fail(tracker, f"{last_error}; {gave_up_hint(policy.max_attempts + 1)}")


def join_sender(transport: Transport, request: wire.JoinRequest) -> SendJoin[wire.JoinResponse]:
    """`send` for `run_join`: `request` to one seed on a fresh, unpooled connection (dialled,
    used once, closed; connect plus reply bounded by the transport's rpc timeout), every failure
    turned into an outcome."""
    payload = request.encode()

    async def send(addr: SocketAddr) -> JoinOutcome[wire.JoinResponse]:
        try:
            kind_in, reply = await transport.send_rpc_fresh(
                addr, wire.MessageKind.JOIN_REQUEST, payload
            )
            if kind_in != wire.MessageKind.JOIN_RESPONSE:
                return SendFailed(f"unexpected reply kind {kind_in}")
            response = wire.JoinResponse.decode(reply)
        except HandshakeError as e:
            return HandshakeRefused(str(e))
        except (FrameError, ClusterError) as e:
            return SendFailed(str(e))
        if response.success:
            return Accepted(response)
        return Rejected(response.error, permanent=response.permanent)

    return send


def gave_up_hint(attempts: int) -> str:
    """What to check once every attempt failed: the last error alone named one seed and said
    nothing of the way out (operator probe, session 31)."""
    return (
        f"gave up after {attempts} attempts at every seed: check the seed addresses "
        "(--seed-nodes) and that this host reaches them over UDP (QUIC), and that at least "
        "one of them runs; --join-retry-max-attempts sets how long a start keeps trying"
    )


def _fail(tracker: LifecycleTracker, reason: str) -> NoReturn:
    error = FormationFailed(reason)
    tracker.transition(Failed(reason, error=error), detail="join gave up")
    raise error
