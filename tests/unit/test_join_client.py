"""The join client's contract (docs/JOIN.md "Join (client side)"), driven without a network.

`JoinAttempt` is fed outcomes directly; `run_join` is driven by a scripted responder per address
and a sleep that records the schedule instead of waiting, so the production retry arithmetic is
checked without spending its 64 s.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from nodedb_cluster.addr import SocketAddr, parse_socket_addr
from nodedb_cluster.errors import FormationFailed, HandshakeError, Unreachable
from nodedb_cluster.formation.join_client import (
    EVERY_HANDSHAKE_REFUSED,
    NO_SEED_NODES,
    REDIRECTS_PER_ATTEMPT_MAX,
    Accepted,
    HandshakeRefused,
    JoinAttempt,
    JoinOutcome,
    Rejected,
    SendFailed,
    run_join,
)
from nodedb_cluster.formation.leader_hint import format_not_leader
from nodedb_cluster.formation.retry import JoinRetryPolicy
from nodedb_cluster.lifecycle import Failed, Joining, LifecycleTracker

A = parse_socket_addr


def test_attempt_walks_seeds_ascending_each_once() -> None:
    attempt = JoinAttempt.over([A("10.0.0.10:1"), A("10.0.0.9:1"), A("10.0.0.9:1"), A("[::1]:1")])
    order = []
    while (addr := attempt.next_target()) is not None:
        order.append(str(addr))
        attempt.on_send_failed(addr, "down")
    assert order == ["10.0.0.9:1", "10.0.0.10:1", "[::1]:1"]
    assert attempt.last_error == "[::1]:1: down"


def test_redirect_goes_to_the_front_of_the_queue() -> None:
    attempt = JoinAttempt.over([A("127.0.0.1:1"), A("127.0.0.2:1"), A("127.0.0.3:1")])
    first = attempt.next_target()
    assert first == A("127.0.0.1:1")
    attempt.on_rejected(first, format_not_leader(A("127.0.0.3:1")))
    assert attempt.next_target() == A("127.0.0.3:1")
    assert attempt.next_target() == A("127.0.0.2:1")
    assert attempt.next_target() is None


def test_redirect_to_a_visited_address_is_an_ordinary_rejection() -> None:
    attempt = JoinAttempt.over([A("127.0.0.1:1"), A("127.0.0.2:1")])
    a1 = attempt.next_target()
    assert a1 is not None
    attempt.on_send_failed(a1, "x")
    a2 = attempt.next_target()
    assert a2 is not None
    attempt.on_rejected(a2, format_not_leader(a1))
    assert attempt.next_target() is None
    assert attempt.redirects == 0


def test_at_most_three_redirects_per_attempt() -> None:
    seeds = [A("127.0.0.1:1")]
    attempt = JoinAttempt.over(seeds)
    hops = [A(f"127.0.1.{i}:1") for i in range(1, 10)]
    asked = []
    addr = attempt.next_target()
    i = 0
    while addr is not None:
        asked.append(addr)
        attempt.on_rejected(addr, format_not_leader(hops[i]))
        i += 1
        addr = attempt.next_target()
    assert len(asked) == 1 + REDIRECTS_PER_ATTEMPT_MAX
    assert attempt.last_error is not None
    assert "redirect limit" in attempt.last_error


def test_unparseable_hint_is_not_followed() -> None:
    attempt = JoinAttempt.over([A("127.0.0.1:1")])
    a = attempt.next_target()
    assert a is not None
    attempt.on_rejected(a, "not leader; retry at notanaddress")
    assert attempt.next_target() is None
    assert attempt.last_error == "127.0.0.1:1: not leader; retry at notanaddress"


class Script:
    """Answers per address from a table; records every request and every sleep."""

    def __init__(self, table: dict[str, Callable[[int], JoinOutcome[str]]]) -> None:
        self.table = table
        self.asked: list[str] = []
        self.slept_s: list[float] = []
        self.attempt = 0

    async def send(self, addr: SocketAddr) -> JoinOutcome[str]:
        self.asked.append(str(addr))
        answer = self.table.get(str(addr))
        if answer is None:
            raise Unreachable(str(addr), "connection refused")
        return answer(self.attempt)

    async def sleep(self, delay_s: float) -> None:
        self.slept_s.append(delay_s)
        self.attempt += 1


async def test_follows_redirect_and_returns_the_response() -> None:
    leader = "127.0.0.3:9400"
    script = Script(
        {
            "127.0.0.1:9400": lambda _: Rejected(format_not_leader(A(leader))),
            leader: lambda _: Accepted("welcome"),
        }
    )
    tracker = LifecycleTracker()
    seeds = [A("127.0.0.2:9400"), A("127.0.0.1:9400")]
    response = await run_join(seeds, JoinRetryPolicy(), script.send, tracker, script.sleep)
    assert response == "welcome"
    assert script.asked == ["127.0.0.1:9400", leader]
    assert tracker.state == Joining(0)


async def test_succeeds_on_a_later_attempt_after_the_backoff() -> None:
    script = Script({"127.0.0.1:9400": lambda n: Accepted("ok") if n >= 2 else SendFailed("busy")})
    tracker = LifecycleTracker()
    policy = JoinRetryPolicy(max_attempts=8, max_backoff_secs=32)
    result = await run_join([A("127.0.0.1:9400")], policy, script.send, tracker, script.sleep)
    assert result == "ok"
    assert script.slept_s == [0.25, 0.5]
    assert [t.next for t in tracker.history] == [Joining(0), Joining(1), Joining(2)]


async def test_gives_up_after_the_whole_production_schedule_with_the_last_error() -> None:
    script = Script({"127.0.0.1:9400": lambda n: Rejected(f"refused #{n}")})
    tracker = LifecycleTracker()
    with pytest.raises(FormationFailed, match="connection refused"):
        await run_join(
            [A("127.0.0.1:9400"), A("127.0.0.2:9400")],
            JoinRetryPolicy(),
            script.send,
            tracker,
            script.sleep,
        )
    assert script.slept_s == [0.25, 0.5, 1, 2, 4, 8, 16, 32]
    assert len(script.asked) == 2 * 9  # every seed once in each of attempts 0..8
    state = tracker.state
    assert isinstance(state, Failed)
    assert "127.0.0.2:9400" in state.reason  # the last concrete error: the unreachable seed
    assert "connection refused" in state.reason
    assert "gave up after 9 attempts at every seed: check the seed addresses" in state.reason


async def test_empty_seed_list_fails_at_once() -> None:
    script = Script({})
    tracker = LifecycleTracker()
    with pytest.raises(FormationFailed, match=NO_SEED_NODES):
        await run_join([], JoinRetryPolicy(), script.send, tracker, script.sleep)
    assert script.asked == []
    assert script.slept_s == []
    assert isinstance(tracker.state, Failed)


async def test_a_permanent_refusal_stops_at_once_with_its_text() -> None:
    """A refused join token cannot be cured by retrying: no second seed, no backoff, Failed."""
    text = "join refused: join token expired 5 s ago"
    script = Script({"127.0.0.1:9400": lambda _: Rejected(text, permanent=True)})
    tracker = LifecycleTracker()
    seeds = [A("127.0.0.1:9400"), A("127.0.0.2:9400")]
    with pytest.raises(FormationFailed, match="token expired"):
        await run_join(seeds, JoinRetryPolicy(), script.send, tracker, script.sleep)
    assert script.asked == ["127.0.0.1:9400"]
    assert script.slept_s == []
    state = tracker.state
    assert isinstance(state, Failed)
    assert state.reason == f"127.0.0.1:9400: {text}"


OTHER_CA = "TLS handshake with 127.0.0.1:9400 failed: the peer refused us: decrypt error (alert 51)"


async def test_every_seed_refusing_the_handshake_stops_after_one_attempt() -> None:
    """A certificate of another CA (ours or theirs) is not cured by waiting: the whole ~2 min
    schedule would end the same way. Raised or returned, the refusal counts the same."""

    def raise_handshake(_: int) -> JoinOutcome[str]:
        raise HandshakeError("127.0.0.2:9400", "we refused the peer: unknown CA (alert 48)")

    script = Script(
        {"127.0.0.1:9400": lambda _: HandshakeRefused(OTHER_CA), "127.0.0.2:9400": raise_handshake}
    )
    tracker = LifecycleTracker()
    seeds = [A("127.0.0.1:9400"), A("127.0.0.2:9400")]
    with pytest.raises(FormationFailed, match="every seed refused the TLS handshake"):
        await run_join(seeds, JoinRetryPolicy(), script.send, tracker, script.sleep)
    assert script.asked == ["127.0.0.1:9400", "127.0.0.2:9400"], "every seed asked once"
    assert script.slept_s == []
    state = tracker.state
    assert isinstance(state, Failed)
    assert "unknown CA" in state.reason, "the last seed's own reason"
    assert state.reason.endswith(EVERY_HANDSHAKE_REFUSED)


async def test_a_handshake_refused_by_some_seeds_only_is_retried() -> None:
    """One seed of another cluster, or one seed down while the others refuse: the rest of the
    seeds may still admit us, so the schedule runs on."""
    script = Script(
        {
            "127.0.0.1:9400": lambda _: HandshakeRefused(OTHER_CA),
            "127.0.0.2:9400": lambda n: Accepted("in") if n >= 1 else SendFailed("timed out"),
        }
    )
    tracker = LifecycleTracker()
    seeds = [A("127.0.0.1:9400"), A("127.0.0.2:9400"), A("127.0.0.3:9400")]
    result = await run_join(seeds, JoinRetryPolicy(), script.send, tracker, script.sleep)
    assert result == "in"
    assert script.slept_s == [0.25]
    every_seed = ["127.0.0.1:9400", "127.0.0.2:9400", "127.0.0.3:9400"]
    assert script.asked == [*every_seed, "127.0.0.1:9400", "127.0.0.2:9400"]


def test_an_attempt_counts_refused_handshakes_against_the_seeds_asked() -> None:
    attempt = JoinAttempt.over([A("127.0.0.1:9400"), A("127.0.0.2:9400")])
    assert not attempt.every_handshake_refused(), "nothing asked yet"
    first = attempt.next_target()
    assert first is not None
    attempt.on_handshake_refused(first, OTHER_CA)
    assert attempt.every_handshake_refused()
    second = attempt.next_target()
    assert second is not None
    attempt.on_send_failed(second, "connection refused")
    assert not attempt.every_handshake_refused()
