"""The SWIM machine against a holder of captured datagrams or of the cluster secret (attack probe,
session 30, findings 5-7), at fixed `now_ms` like test_swim_machine.py.

- Replays: only an ack echoing a nonce this node sent and still waits for proves a member alive. A
  replayed PING, a replayed ACK (ours, another node's, or a relayed one) keeps no stopped node
  alive, and every node's nonces are its own.
- Incarnations never overflow: an accusation at 2^64 - 1 (unrefutable) is refused; one just below
  is refuted at 2^64 - 1, which encodes and wins everywhere.
- Members come from the topology alone: a datagram from another sender id is dropped, counted and
  reported; claims about non-members are ignored."""

from __future__ import annotations

import random

import pytest
from test_swim_machine import CFG, CODEC, changes, deliver, machine, sends

from nodedb_cluster.membership import Codec, MemberState, Send, SwimMachine
from nodedb_cluster.membership.codec import U64_MAX, Message, MessageKind, Update
from nodedb_cluster.membership.machine import INCARNATION_MAX, UnknownSender
from support.swim_sim import addr_of

REPLAY_EVERY_MS = 300
"""The attack probe replayed its captured datagram every 0.3 s."""


def run_replaying(a: SwimMachine, captured: bytes, src: int, start_ms: int, until_ms: int) -> None:
    """Tick `a` at its deadlines and replay `captured` (as from node `src`) every 300 ms; every
    datagram `a` sends is lost (the node it probes is stopped)."""
    for t in range(start_ms, until_ms + 1):
        if (t - start_ms) % REPLAY_EVERY_MS == 0:
            a.on_datagram(captured, addr_of(src), t)
        if a.next_deadline_ms() <= t:
            a.tick(t)


def state(a: SwimMachine, node_id: int) -> MemberState:
    m = a.member(node_id)
    assert m is not None
    return m.state


# --- finding 5: replays prove nothing ------------------------------------------------------------


def test_a_replayed_ping_does_not_keep_a_stopped_node_alive() -> None:
    # B pings A once (captured), then B is SIGSTOPped; its PING is replayed to A every 300 ms.
    a, b = machine(1, [2]), machine(2, [1])
    [captured] = [x.data for x in b.tick(1000) if isinstance(x, Send)]
    a.on_datagram(captured, addr_of(2), 1000)  # the genuine delivery
    run_replaying(a, captured, 2, 1001, 2000 + CFG.suspicion_timeout_ms(2) + 1500)
    assert state(a, 2) is MemberState.DEAD
    assert a.member(2).last_contact_ms is None  # type: ignore[union-attr]
    # Each probe re-pinged the silent target once at most, however many replays it heard.
    assert 1 <= a.counters["probes_rechecked"] <= a.counters["probes"]


def test_another_nodes_ack_does_not_answer_our_probe() -> None:
    # A and C probe B at the same time; only C's ping arrives, and B's ack to C is replayed to A.
    # When nonces counted from 0 on every node, both probes were nonce 1 and it answered A's.
    a, b, c = machine(1, [2], seed=1), machine(2, [1, 3], seed=2), machine(3, [2], seed=3)
    [(_, ping_a)] = sends(a.tick(1000))  # lost
    [(_, reply_c)] = deliver(c.tick(1000), {2: b}, 3, 1001)
    [(_, ack_c)] = sends(reply_c)
    assert ack_c.sender == 2
    [ack_c_data] = [x.data for x in reply_c if isinstance(x, Send)]
    a.on_datagram(ack_c_data, addr_of(3), 1100)
    a.tick(1500)
    assert changes(a.tick(2000)) == [(2, MemberState.SUSPECT)]
    assert a.member(2).last_contact_ms is None  # type: ignore[union-attr]
    assert ack_c.seq != ping_a.seq  # nonces are per node (and per life): random starts
    assert a.counters["acks_unmatched"] == 1


def test_a_replay_of_our_own_earlier_ack_does_not_answer_a_later_probe() -> None:
    a, b = machine(1, [2]), machine(2, [1])
    [(_, reply)] = deliver(a.tick(1000), {2: b}, 1, 1001)
    [ack] = [x.data for x in reply if isinstance(x, Send)]
    a.on_datagram(ack, addr_of(2), 1002)  # the genuine delivery answers probe 1
    assert a.member(2).last_contact_ms == 1002  # type: ignore[union-attr]
    assert changes(a.tick(2000)) == []  # B stops; probe 2 is lost
    a.on_datagram(ack, addr_of(2), 2100)  # consumed already
    a.tick(2500)
    assert changes(a.tick(3000)) == [(2, MemberState.SUSPECT)]
    assert a.member(2).last_contact_ms == 1002  # type: ignore[union-attr]
    assert a.counters["acks_unmatched"] == 1


def test_a_replayed_relayed_ack_does_not_answer_a_later_probe() -> None:
    # Period 1: A's direct ping to T is lost, helper H relays T's ack: the probe is answered.
    # T then stops; when A probes it again, H's relayed ack is replayed: it echoes an old nonce.
    ms = {i: machine(i, [j for j in (1, 2, 3) if j != i], seed=i) for i in (1, 2, 3)}
    a = ms[1]
    [(target, _)] = sends(a.tick(1000))
    helper = ({2, 3} - {target}).pop()
    [req] = [m for _, m in sends(a.tick(1500)) if m.kind is MessageKind.PING_REQ]
    helper_out = ms[helper].on_datagram(CODEC.encode(req), addr_of(1), 1501)
    target_out = [x for _, out in deliver(helper_out, ms, helper, 1502) for x in out]
    relayed = [x for _, out in deliver(target_out, {helper: ms[helper]}, target, 1503) for x in out]
    [relayed_ack] = [x.data for x in relayed if isinstance(x, Send) and x.addr == addr_of(1)]
    a.on_datagram(relayed_ack, addr_of(helper), 1504)
    assert a.member(target).last_contact_ms == 1504  # type: ignore[union-attr]
    t, out = 2000, a.tick(2000)
    assert changes(out) == []
    for _ in range(4):  # round-robin over two members: T again within a few periods
        if any(d == target and m.kind is MessageKind.PING for d, m in sends(out)):
            break
        a.tick(t + CFG.probe_timeout_ms)
        t, out = t + CFG.probe_interval_ms, a.tick(t + CFG.probe_interval_ms)
    else:
        raise AssertionError("A never probed T again")
    a.on_datagram(relayed_ack, addr_of(helper), t + 100)
    a.tick(t + CFG.probe_timeout_ms)
    assert (target, MemberState.SUSPECT) in changes(a.tick(t + CFG.probe_interval_ms))
    assert a.member(target).last_contact_ms == 1504  # type: ignore[union-attr]


def test_a_replayed_refutation_does_not_undo_a_later_suspicion() -> None:
    # B refuted a suspicion once (ALIVE, inc 1; captured). B stops, A suspects it again at inc 1:
    # replaying the refutation is stale (same incarnation), so B is still declared DEAD.
    a = machine(1, [2, 3])
    refutation = CODEC.encode(
        Message(MessageKind.PING, 77, 2, (Update(2, addr_of(2), MemberState.ALIVE, 1),))
    )
    a.on_datagram(refutation, addr_of(2), 10)
    assert a.member(2).incarnation == 1  # type: ignore[union-attr]
    suspect = Update(2, addr_of(2), MemberState.SUSPECT, 1)
    a.on_datagram(CODEC.encode(Message(MessageKind.PING, 5, 3, (suspect,))), addr_of(3), 20)
    assert state(a, 2) is MemberState.SUSPECT
    assert changes(a.on_datagram(refutation, addr_of(2), 30)) == []
    deadline = 20 + CFG.suspicion_timeout_ms(3)
    for t in range(1000, deadline + 100, 100):
        a.tick(t)
    assert state(a, 2) is MemberState.DEAD


# --- finding 6: incarnations never overflow ------------------------------------------------------


def test_an_accusation_at_the_top_incarnation_is_refused_everywhere() -> None:
    a, b = machine(1, [2, 3]), machine(2, [1, 3])
    for accused, receiver in ((1, a), (1, b)):  # about the receiver itself, and about another
        for st in (MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT):
            claim = Update(accused, addr_of(accused), st, U64_MAX)
            forged = CODEC.encode(Message(MessageKind.PING, 9, 3, (claim,)))
            assert changes(receiver.on_datagram(forged, addr_of(3), 10)) == []
    assert a.incarnation == 0
    assert a.counters["refutations"] == 0
    assert (
        a.counters["updates_dropped_unrefutable"],
        b.counters["updates_dropped_unrefutable"],
    ) == (
        3,
        3,
    )
    assert state(b, 1) is MemberState.ALIVE
    assert sends(a.tick(1000))  # A still encodes and sends its probe


def test_an_accusation_just_below_the_top_is_refuted_at_the_top_and_wins() -> None:
    # The attack probe's claim was at 2^64 - 1: refuting it needed 2^64, msgpack raised
    # OverflowError and the node's SWIM stopped. One below, the refutation fits and wins.
    a, b = machine(1, [2, 3]), machine(2, [1, 3])
    dead = Update(1, addr_of(1), MemberState.DEAD, INCARNATION_MAX - 1)
    forged = CODEC.encode(Message(MessageKind.PING, 9, 3, (dead,)))
    assert changes(b.on_datagram(forged, addr_of(3), 10)) == [(1, MemberState.DEAD)]
    reply = a.on_datagram(forged, addr_of(3), 10)
    assert a.incarnation == INCARNATION_MAX
    pushed = [m for d, m in sends(reply) if d == 2]
    assert pushed
    assert Update(1, addr_of(1), MemberState.ALIVE, INCARNATION_MAX) in pushed[0].updates
    deliver(reply, {2: b}, 1, 11)
    assert state(b, 1) is MemberState.ALIVE
    # Nothing can accuse A at its incarnation now, and A keeps running.
    again = CODEC.encode(
        Message(MessageKind.PING, 10, 3, (Update(1, addr_of(1), MemberState.DEAD, U64_MAX),))
    )
    assert changes(b.on_datagram(again, addr_of(3), 12)) == []
    a.on_datagram(again, addr_of(3), 12)
    assert a.incarnation == INCARNATION_MAX
    assert sends(a.tick(1000))


def test_a_start_incarnation_outside_the_wire_range_is_refused() -> None:
    with pytest.raises(ValueError, match="incarnation"):
        SwimMachine(1, addr_of(1), CFG, CODEC, random.Random(1), incarnation=U64_MAX + 1)


# --- finding 7: members come from the topology alone ---------------------------------------------


def test_a_datagram_from_a_sender_outside_the_topology_is_dropped_and_reported() -> None:
    a = machine(1, [2])
    for kind in (MessageKind.PING, MessageKind.ACK):
        out = a.on_datagram(CODEC.encode(Message(kind, 5, 99)), addr_of(99), 10)
        assert out == [UnknownSender(99, addr_of(99))]  # no ack, no event
    req = Message(MessageKind.PING_REQ, 6, 99, (), 2, addr_of(2))
    assert a.on_datagram(CODEC.encode(req), addr_of(99), 11) == [UnknownSender(99, addr_of(99))]
    assert [m.node_id for m in a.members()] == [2]
    assert a.counters["dropped_unknown_sender"] == 3


def test_claims_about_nodes_outside_the_topology_are_ignored() -> None:
    a = machine(1, [2])
    claims = (
        Update(98, addr_of(98), MemberState.ALIVE, 1),
        Update(2, addr_of(2), MemberState.ALIVE, 1),
    )
    out = a.on_datagram(CODEC.encode(Message(MessageKind.PING, 5, 2, claims)), addr_of(2), 10)
    assert changes(out) == []
    assert a.member(2).incarnation == 1  # type: ignore[union-attr]
    assert [m.node_id for m in a.members()] == [2]
    assert a.counters["updates_dropped_unknown"] == 1
    # Once the topology names it (add_member), it is a member like any other.
    assert changes(a.add_member(98, addr_of(98), 20)) == [(98, MemberState.ALIVE)]
    ping = CODEC.encode(Message(MessageKind.PING, 6, 98))
    [(dst, ack)] = sends(a.on_datagram(ping, addr_of(98), 21))
    assert (dst, ack.kind) == (98, MessageKind.ACK)


def test_codec_round_trips_the_top_incarnation() -> None:
    # Wire compatibility: no field changed; the top value still encodes for older nodes.
    codec = Codec(None, CFG.datagram_bytes_max)
    msg = Message(MessageKind.ACK, U64_MAX, 2, (Update(2, addr_of(2), MemberState.ALIVE, U64_MAX),))
    assert codec.decode(codec.encode(msg)) == msg
