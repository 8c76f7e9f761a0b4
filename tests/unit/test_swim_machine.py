"""The SWIM machine alone, at fixed `now_ms`: each protocol step's exact datagrams and events.

Method: machines are wired by hand (datagrams passed with `deliver`), so every assertion names the
message a step must produce; no sockets and no clock."""

from __future__ import annotations

import random

import pytest

from nodedb_cluster.errors import ConfigError
from nodedb_cluster.membership import (
    Codec,
    MemberChanged,
    MemberState,
    Send,
    SwimConfig,
    SwimDatagramError,
    SwimMachine,
)
from nodedb_cluster.membership.codec import Message, MessageKind, Update
from nodedb_cluster.membership.machine import Action
from support.swim_sim import SECRET, addr_of

CFG = SwimConfig()
CODEC = Codec(SECRET, CFG.datagram_bytes_max)


def machine(node_id: int, peers: list[int], seed: int = 7) -> SwimMachine:
    m = SwimMachine(node_id, addr_of(node_id), CFG, CODEC, random.Random(seed))
    for p in peers:
        m.add_member(p, addr_of(p), 0)
    return m


def sends(actions: list[Action]) -> list[tuple[int, Message]]:
    """(destination node id, decoded message) for every Send."""
    return [
        (int(str(a.addr.ip).rsplit(".", 1)[1]), CODEC.decode(a.data))
        for a in actions
        if isinstance(a, Send)
    ]


def changes(actions: list[Action]) -> list[tuple[int, MemberState]]:
    return [(a.node_id, a.state) for a in actions if isinstance(a, MemberChanged)]


def deliver(
    actions: list[Action], machines: dict[int, SwimMachine], src: int, now_ms: int
) -> list[tuple[int, list[Action]]]:
    """Hand every Send to its destination; returns (receiver, its actions)."""
    out = []
    for a in actions:
        if isinstance(a, Send):
            dst = int(str(a.addr.ip).rsplit(".", 1)[1])
            if dst in machines:
                out.append((dst, machines[dst].on_datagram(a.data, addr_of(src), now_ms)))
    return out


def test_probe_then_ack_clears_the_probe() -> None:
    a, b = machine(1, [2]), machine(2, [1])
    probe = a.tick(CFG.probe_interval_ms)
    [(dst, ping)] = sends(probe)
    assert (dst, ping.kind) == (2, MessageKind.PING)
    [(_, reply)] = deliver(probe, {2: b}, 1, 1001)
    [(dst, ack)] = sends(reply)
    assert (dst, ack.kind, ack.seq, ack.sender) == (1, MessageKind.ACK, ping.seq, 2)
    deliver(reply, {1: a}, 2, 1002)
    # Past the probe timeout and the period's end: no ping-req, no suspicion.
    later = a.tick(1500) + a.tick(2000)
    assert not [m for _, m in sends(later) if m.kind is MessageKind.PING_REQ]
    assert changes(later) == []
    assert a.member(2) is not None
    assert a.member(2).state is MemberState.ALIVE


def test_probe_timeout_asks_k_helpers_and_a_relayed_ack_clears() -> None:
    ms = {i: machine(i, [j for j in range(1, 6) if j != i], seed=i) for i in range(1, 6)}
    a = ms[1]
    [(target, ping)] = sends(a.tick(1000))
    reqs = sends(a.tick(1500))
    ping_reqs = [(d, m) for d, m in reqs if m.kind is MessageKind.PING_REQ]
    assert len(ping_reqs) == CFG.indirect_probes == 3
    assert all(m.target == target and m.seq == ping.seq for _, m in ping_reqs)
    assert target not in {d for d, _ in ping_reqs}
    # One helper relays: helper pings the target, the target acks the helper, the helper acks A.
    helper, req = ping_reqs[0]
    helper_out = ms[helper].on_datagram(CODEC.encode(req), addr_of(1), 1501)
    [(dst, hping)] = sends(helper_out)
    assert (dst, hping.kind) == (target, MessageKind.PING)
    [(_, target_out)] = deliver(helper_out, ms, helper, 1502)
    [(_, helper_relay)] = deliver(target_out, ms, target, 1503)
    [(dst, relayed)] = sends(helper_relay)
    assert (dst, relayed.kind, relayed.seq, relayed.sender) == (
        1,
        MessageKind.ACK,
        ping.seq,
        target,
    )
    deliver(helper_relay, ms, helper, 1504)
    assert changes(a.tick(2000)) == []


def test_no_ack_suspect_then_dead_after_the_suspicion_timeout() -> None:
    a = machine(1, [2, 3, 4, 5])
    a.tick(1000)
    a.tick(1500)
    [(target, state)] = changes(a.tick(2000))
    assert state is MemberState.SUSPECT
    timeout_ms = CFG.suspicion_timeout_ms(5)
    assert timeout_ms == 4000  # 4 * max(1, log10 5) * 1000 ms, above the 2 s floor
    # Nobody answers, so other members get suspected too; the target must die exactly on time.
    for t in range(2100, 2000 + timeout_ms, 100):
        assert (target, MemberState.DEAD) not in changes(a.tick(t))
    assert (target, MemberState.DEAD) in changes(a.tick(2000 + timeout_ms))
    assert a.member(target).state is MemberState.DEAD  # type: ignore[union-attr]


def test_a_late_timer_does_not_let_a_failed_probe_escape() -> None:
    # The shell's timer fires a millisecond late for the probe: the period starts then (a whole
    # period for the ack), and the failed probe is judged in the tick that starts the next one,
    # before it (a probe replaced unjudged would let a dead target escape suspicion).
    a = machine(1, [2])
    a.tick(1001)
    a.tick(1501)
    assert changes(a.tick(2000)) == []
    out = a.tick(2001)
    assert changes(out) == [(2, MemberState.SUSPECT)]
    assert [m.kind for _, m in sends(out)].count(MessageKind.PING) == 2  # the claim, the probe


def test_the_first_probe_after_a_stall_gets_a_whole_period() -> None:
    # A paused process resumes 2.5 periods late. Its probe in flight proves nothing (the silence
    # was its own), and the next probe must not get a 1 ms period judged failed at once (the old
    # `now + 1` schedule suspected B at 3501): B's ack, a few ms later, clears it.
    a, b = machine(1, [2]), machine(2, [1])
    a.tick(1000)  # probe B; then A stalls (no ticks, no datagrams) until 3500
    probe = a.tick(3500)
    assert a.counters["probes_stalled"] == 1
    assert changes(probe) == []
    assert a.next_deadline_ms() == 3500 + CFG.probe_timeout_ms
    [(_, reply)] = deliver(probe, {2: b}, 1, 3503)
    deliver(reply, {1: a}, 2, 3506)
    later = a.tick(4000) + a.tick(4500)
    assert changes(later) == []
    assert a.counters["probes_failed"] == 0
    assert a.member(2).state is MemberState.ALIVE  # type: ignore[union-attr]


def test_a_datagram_from_the_target_during_the_period_earns_it_one_fresh_ping() -> None:
    # The probe's ping is lost, but the target pings us during the period (its own probe, or a
    # refutation). That datagram proves nothing (it could be a replay), so A pings B once more
    # with a fresh nonce; B's ack to that one settles the probe, and is B's last contact.
    a, b = machine(1, [2]), machine(2, [1])
    a.tick(1000)  # A's ping to B is lost
    b_ping = b.tick(1000)
    [(_, a_out)] = deliver(b_ping, {1: a}, 2, 1200)
    [(_, ack), (_, recheck)] = sends(a_out)
    assert (ack.kind, recheck.kind) == (MessageKind.ACK, MessageKind.PING)
    assert a.member(2).last_contact_ms is None  # type: ignore[union-attr]
    b_out = [x for _, out in deliver(a_out, {2: b}, 1, 1201) for x in out]
    deliver(b_out, {1: a}, 2, 1202)
    assert changes(a.tick(1500)) == []  # ping-reqs: nobody to ask, fine
    assert changes(a.tick(2000)) == []
    assert a.counters["probes_failed"] == 0
    assert a.counters["probes_rechecked"] == 1
    assert a.member(2).last_contact_ms == 1202  # type: ignore[union-attr]


def test_refutation_with_a_higher_incarnation_cancels_the_suspicion_timer() -> None:
    a, b = machine(1, [2]), machine(2, [1])
    a.tick(1000)
    a.tick(1500)
    assert changes(a.tick(2000)) == [(2, MemberState.SUSPECT)]
    # A's next datagram carries the suspicion; B hears it and refutes with incarnation + 1.
    ping = a.tick(2000 + 1) or a.tick(3000)
    suspect = [u for _, m in sends(ping) for u in m.updates if u.node_id == 2]
    assert suspect
    assert suspect[0].state is MemberState.SUSPECT
    [(_, reply)] = deliver(ping, {2: b}, 1, 3001)
    assert b.incarnation == 1
    assert b.counters["refutations"] == 1
    alive = [u for _, m in sends(reply) for u in m.updates if u.node_id == 2]
    # Every datagram of the reply (the ack and the immediate push to the accuser) says so.
    assert len(alive) == len(sends(reply)) == 2
    assert set(alive) == {Update(2, addr_of(2), MemberState.ALIVE, 1)}
    deliver(reply, {1: a}, 2, 3002)
    assert a.member(2).state is MemberState.ALIVE  # type: ignore[union-attr]
    # Long past the old deadline: no DEAD, and nothing reinstates the suspicion.
    seen = []
    for t in range(3100, 2000 + 3 * CFG.suspicion_timeout_ms(2), 100):
        out = a.tick(t)
        seen += changes(out)
        for _, b_out in deliver(out, {2: b}, 1, t):  # B keeps answering A's pings
            for _, a_out in deliver(b_out, {1: a}, 2, t):
                seen += changes(a_out)
    assert seen == []
    assert a.member(2).state is MemberState.ALIVE  # type: ignore[union-attr]


def test_stale_claims_lose_to_newer_incarnations() -> None:
    a = machine(1, [2, 3])
    upd = [Update(2, addr_of(2), MemberState.ALIVE, 5)]
    a.on_datagram(CODEC.encode(Message(MessageKind.PING, 1, 3, tuple(upd))), addr_of(3), 10)
    stale = Update(2, addr_of(2), MemberState.SUSPECT, 4)
    out = a.on_datagram(CODEC.encode(Message(MessageKind.PING, 2, 3, (stale,))), addr_of(3), 11)
    assert changes(out) == []
    assert a.member(2).state is MemberState.ALIVE
    dead = Update(2, addr_of(2), MemberState.DEAD, 5)
    out = a.on_datagram(CODEC.encode(Message(MessageKind.PING, 3, 3, (dead,))), addr_of(3), 12)
    assert changes(out) == [(2, MemberState.DEAD)]
    back = Update(2, addr_of(2), MemberState.ALIVE, 6)  # a restart with a newer incarnation
    out = a.on_datagram(CODEC.encode(Message(MessageKind.PING, 4, 3, (back,))), addr_of(3), 13)
    assert changes(out) == [(2, MemberState.ALIVE)]


def test_piggyback_is_bounded_and_retransmits_stop() -> None:
    a = machine(1, [9, *range(10, 30)])
    updates = tuple(Update(i, addr_of(i), MemberState.ALIVE, 1) for i in range(10, 30))
    for k in range(0, 20, 5):
        a.on_datagram(
            CODEC.encode(Message(MessageKind.PING, k, 9, updates[k : k + 5])), addr_of(9), 1
        )
    limit = CFG.retransmit_limit(a.live_count())
    carried: dict[int, int] = {}
    for seq in range(200):
        out = a.on_datagram(CODEC.encode(Message(MessageKind.PING, seq, 9)), addr_of(9), 2)
        [(_, ack)] = sends(out)
        assert len(ack.updates) <= CFG.piggyback_updates_max
        for u in ack.updates:
            carried[u.node_id] = carried.get(u.node_id, 0) + 1
    assert all(1 <= carried[i] <= limit for i in range(10, 30))
    assert len(ack.updates) == 0  # every update has used up its retransmissions


def test_forged_oversized_and_garbage_datagrams_are_dropped_and_counted() -> None:
    a = machine(1, [2])
    forged = Codec(b"another-secret-0123456789abcdef", CFG.datagram_bytes_max)
    evil = Update(2, addr_of(2), MemberState.DEAD, 99)
    assert (
        a.on_datagram(forged.encode(Message(MessageKind.PING, 1, 2, (evil,))), addr_of(2), 1) == []
    )
    assert a.on_datagram(b"\x00" * (CFG.datagram_bytes_max + 1), addr_of(2), 2) == []
    assert a.on_datagram(b"\x01" * 40, addr_of(2), 3) == []
    assert a.on_datagram(b"short", addr_of(2), 4) == []
    c = a.counters
    # 40 bytes of 0x01 carry a (wrong) tag: refused on the tag before any parsing.
    assert (c["dropped_bad_mac"], c["dropped_oversize"], c["dropped_malformed"]) == (2, 1, 1)
    assert a.member(2).state is MemberState.ALIVE  # type: ignore[union-attr]
    # Unauthenticated codec: a zero tag is written and nothing is checked.
    open_codec = Codec(None, CFG.datagram_bytes_max)
    msg = Message(MessageKind.ACK, 3, 2)
    assert open_codec.decode(open_codec.encode(msg)) == msg
    with pytest.raises(SwimDatagramError) as e:
        CODEC.decode(open_codec.encode(msg))
    assert e.value.reason == "bad_mac"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("probe_interval_ms", 0),
        ("probe_timeout_ms", 1000),
        ("indirect_probes", -1),
        ("suspicion_mult", 0),
        ("suspicion_min_ms", True),
        ("piggyback_updates_max", 65),
        ("datagram_bytes_max", 100),
        ("event_queue_max", 0),
    ],
)
def test_config_refusals_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as e:
        SwimConfig(**{field: value})  # type: ignore[arg-type]
    assert e.value.field == field


def test_suspicion_timeout_grows_with_log_n_and_has_a_floor() -> None:
    cfg = SwimConfig()
    assert cfg.suspicion_timeout_ms(3) == 4000
    assert cfg.suspicion_timeout_ms(100) == 8000
    assert cfg.suspicion_timeout_ms(1000) == 12000
    assert SwimConfig(suspicion_mult=1).suspicion_timeout_ms(5) == 2000  # the floor


def test_a_suspect_is_reminded_of_the_claim_every_period() -> None:
    # The claim must reach the one node able to refute it, even when the first notice (and the
    # gossip's retransmissions) were lost: every period, a ping to it carries the claim.
    a = machine(1, [2, 3])
    suspect = Update(2, addr_of(2), MemberState.SUSPECT, 0)
    a.on_datagram(CODEC.encode(Message(MessageKind.PING, 1, 3, (suspect,))), addr_of(3), 10)
    for t in (1000, 2000, 3000):
        to_2 = [m for d, m in sends(a.tick(t)) if d == 2 and m.kind is MessageKind.PING]
        assert len(to_2) == 1, t
        assert to_2[0].updates[0] == suspect, t
        a.tick(t + CFG.probe_timeout_ms)


def test_a_stale_accusation_brings_the_refutation_back_on_the_reply() -> None:
    # B refuted (inc 1) long ago and its gossip spent the ALIVE; A missed it and still says B is
    # suspect at inc 0. B's ack to A carries its ALIVE at inc 1 again.
    b = machine(2, [1])
    suspect = Update(2, addr_of(2), MemberState.SUSPECT, 0)
    b.on_datagram(CODEC.encode(Message(MessageKind.PING, 1, 1, (suspect,))), addr_of(1), 10)
    assert b.incarnation == 1
    for seq in range(2, 40):  # spend every retransmission
        out = b.on_datagram(CODEC.encode(Message(MessageKind.PING, seq, 1)), addr_of(1), 20)
    assert all(not m.updates for _, m in sends(out))
    out = b.on_datagram(CODEC.encode(Message(MessageKind.PING, 50, 1, (suspect,))), addr_of(1), 30)
    [(dst, ack)] = sends(out)
    assert (dst, ack.kind) == (1, MessageKind.ACK)
    assert Update(2, addr_of(2), MemberState.ALIVE, 1) in ack.updates
    assert b.counters["refutations"] == 1  # stale: nothing to refute, only to repeat
