"""The SWIM failure detector as a pure state machine (no sockets, no clock, no global RNG).

Three entry points drive it, each taking `now_ms` (monotonic milliseconds) and returning the
actions to carry out, in order: `on_datagram(data, src, now_ms)`, `tick(now_ms)` (call it at
`next_deadline_ms()` or later) and the API calls `add_member` / `leave`. Actions are `Send`
(a datagram for an address) and `MemberChanged` (an observer event). `shell.py` does the I/O.

Protocol (SWIM, Das et al. 2002, with Lifeguard's log-scaled suspicion):
- Every `probe_interval_ms` one member is pinged, round-robin over a shuffled list that is
  reshuffled when exhausted (so every member is probed within two periods of n).
- No ack within `probe_timeout_ms`: `indirect_probes` random helpers are sent a PING_REQ; they ping
  the target with their own sequence number and relay its ack.
- No ack (direct or relayed) by the end of the period: the target becomes SUSPECT; a suspect that
  does not refute within `SwimConfig.suspicion_timeout_ms(n)` is declared DEAD.
- Liveness is fresh evidence only: an ACK echoing a nonce (`seq`) this node sent and still waits
  for. Nonces count up from a random 64-bit start, so one node's nonces never match another's or
  an earlier life's, and each is consumed by its ack. Any other authenticated datagram, which a
  replay of a captured one passes as well, proves nothing: from the target of the probe in
  flight it only makes us ping the target once more with a fresh nonce (its ack would count).
- Incarnations order claims about one member. A node that hears itself suspected (or declared
  dead) at an incarnation >= its own takes that incarnation + 1 and disseminates ALIVE, which
  overrides the suspicion everywhere and cancels its timer (a refuted suspicion never turns DEAD).
  An incarnation never passes 2^64 - 1 (the codec's bound): a received SUSPECT/DEAD/LEFT claim
  at 2^64 - 1 is refused, since no refutation could outrank it.
- Members come only from `add_member` (the node's topology): a datagram whose sender id is not a
  member is dropped (counted, and reported as `UnknownSender`), and claims about non-members are
  ignored (counted).
- Every accepted change is piggybacked on outgoing datagrams (at most `piggyback_updates_max` per
  datagram, least-sent first) `retransmit_limit(n)` times.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

from nodedb_cluster.addr import SocketAddr
from nodedb_cluster.membership.codec import (
    REASONS,
    U64_MAX,
    Codec,
    MemberState,
    Message,
    MessageKind,
    SwimDatagramError,
    Update,
)
from nodedb_cluster.membership.config import SwimConfig

MEMBERS_MAX: Final = 4096
"""Same bound as the topology (NODES_MAX); members come from the topology alone."""
RELAYS_MAX: Final = 256
"""Pending PING_REQ relays; each lives one probe timeout, so 256 covers 256 concurrent probers."""
NONCES_MAX: Final = 256
"""Pings besides the probe whose ack we still wait for (the suspicion notice, refutation pushes,
re-pings); each lives one period, a few are sent per period; when full the oldest is forgotten."""
SEQ_MAX: Final = U64_MAX
INCARNATION_MAX: Final = U64_MAX
"""The codec's bound. A node refutes a claim with its incarnation + 1, so a claim that a member is
suspect, dead or left at INCARNATION_MAX could never be refuted: such claims are refused."""


@dataclass(frozen=True, slots=True)
class Send:
    """Send `data` to `addr` (one UDP datagram)."""

    addr: SocketAddr
    data: bytes


@dataclass(frozen=True, slots=True)
class MemberChanged:
    """A member entered `state` (observers see alive/suspect/dead/left)."""

    node_id: int
    addr: SocketAddr
    state: MemberState
    incarnation: int
    at_ms: int
    """Monotonic time of the change, on the observing node's clock."""


@dataclass(frozen=True, slots=True)
class UnknownSender:
    """A datagram, authenticated, from a sender id that is not a member (not in the topology this
    node was seeded with) was dropped: a node whose join we have not applied yet, a misconfigured
    node, or a forgery by a holder of the secret. The shell logs it (rate-limited)."""

    node_id: int
    addr: SocketAddr


Action = Send | MemberChanged | UnknownSender


@dataclass(slots=True)
class Member:
    """What this node believes about one other node."""

    node_id: int
    addr: SocketAddr
    state: MemberState
    incarnation: int
    since_ms: int
    """When this node last changed the member's state."""
    last_contact_ms: int | None = None
    """When the member last proved itself alive: an ack (direct or relayed) echoing a nonce this
    node sent it and still waited for; None: never. Other datagrams claiming to come from it
    do not count: a replay of an old one would pass for it."""


@dataclass(slots=True)
class _Probe:
    seq: int
    target: int
    sent_ms: int
    direct_deadline_ms: int
    end_ms: int
    indirect_sent: bool = False
    rechecked: bool = False
    """The target spoke (or was said alive) during the probe and was pinged once more."""


@dataclass(slots=True)
class _Nonce:
    """A ping other than the probe's, awaiting its ack."""

    target: int
    sent_ms: int


@dataclass(slots=True)
class _Relay:
    origin_addr: SocketAddr
    origin_seq: int
    target: int
    expires_ms: int


@dataclass(slots=True)
class _Broadcast:
    update: Update
    transmits_left: int


class SwimMachine:
    """One node's SWIM state. Not thread-safe; time must never go backwards."""

    def __init__(
        self,
        node_id: int,
        addr: SocketAddr,
        config: SwimConfig,
        codec: Codec,
        rng: random.Random,
        *,
        incarnation: int = 0,
        now_ms: int = 0,
    ) -> None:
        if not 0 <= incarnation <= INCARNATION_MAX:
            raise ValueError(f"incarnation {incarnation} is outside 0..{INCARNATION_MAX}")
        self.node_id = node_id
        self.addr = addr
        self.config = config
        self.incarnation = incarnation
        self.counters: dict[str, int] = {
            "datagrams_received": 0,
            "datagrams_sent": 0,
            "probes": 0,
            "probes_failed": 0,
            "ping_reqs_sent": 0,
            "refutations": 0,
            "probes_stalled": 0,
            "probes_rechecked": 0,
            "acks_unmatched": 0,
            "members_dropped_full": 0,
            "relays_dropped_full": 0,
            "nonces_dropped_full": 0,
            "updates_dropped_unknown": 0,
            "updates_dropped_unrefutable": 0,
            "dropped_unknown_sender": 0,
            **{f"dropped_{r}": 0 for r in REASONS},
        }
        self._codec = codec
        self._rng = rng
        self._members: dict[int, Member] = {}
        self._suspect_deadline_ms: dict[int, int] = {}
        self._relays: dict[int, _Relay] = {}
        self._nonces: dict[int, _Nonce] = {}
        """seq -> ping awaiting its ack, oldest first (insertion order is send order)."""
        self._broadcasts: dict[int, _Broadcast] = {}
        self._probe: _Probe | None = None
        self._probe_order: list[int] = []
        self._seq = rng.getrandbits(64)
        """Nonces count up from a random start: unique to this node and this life."""
        self._next_probe_ms = now_ms + config.probe_interval_ms
        self._left = False
        self._last_now_ms = now_ms
        self._enqueue(Update(node_id, addr, MemberState.ALIVE, incarnation))

    # --- reads ---------------------------------------------------------------------------------

    def members(self) -> tuple[Member, ...]:
        """Every other node this one knows, ascending by id (dead and left ones included)."""
        return tuple(self._members[i] for i in sorted(self._members))

    def member(self, node_id: int) -> Member | None:
        return self._members.get(node_id)

    def live_count(self) -> int:
        """Alive and suspect members plus this node: the n of the log(n) scalings."""
        return 1 + sum(m.state <= MemberState.SUSPECT for m in self._members.values())

    def next_deadline_ms(self) -> int:
        """The earliest time `tick` has work; the shell arms one timer for it."""
        deadlines = [self._next_probe_ms]
        if self._probe is not None:
            deadlines.append(self._probe.end_ms)
            if not self._probe.indirect_sent:
                deadlines.append(self._probe.direct_deadline_ms)
        deadlines.extend(self._suspect_deadline_ms.values())
        deadlines.extend(r.expires_ms for r in self._relays.values())
        return min(deadlines)

    # --- inputs --------------------------------------------------------------------------------

    def add_member(self, node_id: int, addr: SocketAddr, now_ms: int) -> list[Action]:
        """A member from the node's topology, assumed alive at incarnation 0 until it says more.
        The only way a member enters: datagrams never add one."""
        self._advance(now_ms)
        if node_id == self.node_id or node_id in self._members:
            return []
        out: list[Action] = []
        self._apply(Update(node_id, addr, MemberState.ALIVE, 0), now_ms, out, rebroadcast=False)
        return out

    def on_datagram(self, data: bytes, src: SocketAddr, now_ms: int) -> list[Action]:
        """One received datagram; a bad one is dropped and counted under `dropped_<reason>`."""
        self._advance(now_ms)
        self.counters["datagrams_received"] += 1
        try:
            msg = self._codec.decode(data)
        except SwimDatagramError as e:
            self.counters[f"dropped_{e.reason}"] += 1
            return []
        out: list[Action] = []
        if self._left or msg.sender == self.node_id:
            return out
        if msg.sender not in self._members:
            # Only the topology makes members (add_member). An ACK's sender is the node it
            # speaks for (relayed ones included), and we never ping a non-member.
            self.counters["dropped_unknown_sender"] += 1
            out.append(UnknownSender(msg.sender, src))
            return out
        probe = self._probe
        said_alive = False  # the target of the probe in flight refuted, by gossip
        refutations_before = self.counters["refutations"]
        for update in msg.updates:
            if update.node_id != self.node_id and update.node_id not in self._members:
                self.counters["updates_dropped_unknown"] += 1
            elif update.state is not MemberState.ALIVE and update.incarnation >= INCARNATION_MAX:
                self.counters["updates_dropped_unrefutable"] += 1
            elif self._apply(update, now_ms, out, rebroadcast=True):
                said_alive |= (
                    probe is not None
                    and update.node_id == probe.target
                    and update.state is MemberState.ALIVE
                )
        if self.counters["refutations"] != refutations_before:
            self._push_refutation(msg.sender, src, now_ms, out)
        if msg.kind is MessageKind.PING:
            self._send(out, src, MessageKind.ACK, msg.seq, about=msg.sender)
        elif msg.kind is MessageKind.ACK:
            self._on_ack(msg, now_ms, out)
        else:
            self._on_ping_req(msg, src, now_ms, out)
        if self._probe is not None and (said_alive or msg.sender == self._probe.target):
            self._recheck(self._probe, now_ms, out)
        return out

    def tick(self, now_ms: int) -> list[Action]:
        """Fire every timer due at `now_ms`: suspicions, relays, the probe in flight, the next."""
        self._advance(now_ms)
        out: list[Action] = []
        if self._left:
            return out
        for node_id, deadline_ms in list(self._suspect_deadline_ms.items()):
            if deadline_ms <= now_ms:
                m = self._members[node_id]
                self._apply(Update(node_id, m.addr, MemberState.DEAD, m.incarnation), now_ms, out)
        for seq, relay in list(self._relays.items()):
            if relay.expires_ms <= now_ms:
                del self._relays[seq]
        while self._nonces:  # oldest first: stop at the first still waited for
            seq = next(iter(self._nonces))
            if self._nonces[seq].sent_ms + self.config.probe_interval_ms > now_ms:
                break
            del self._nonces[seq]
        probe = self._probe
        if probe is not None:
            if now_ms >= probe.end_ms + self.config.probe_interval_ms:
                # We were stalled (paused process, blocked loop) past a whole period: the silence
                # is ours, not the target's, so the probe proves nothing either way.
                self._probe = None
                self.counters["probes_stalled"] += 1
            elif now_ms >= probe.end_ms:
                self._probe_failed(probe, now_ms, out)
            elif now_ms >= probe.direct_deadline_ms and not probe.indirect_sent:
                self._send_ping_reqs(probe, out)
        if now_ms >= self._next_probe_ms:
            # Every probe gets a whole period from when it is sent: a late timer (a busy loop) or
            # a stall (a paused process) shifts the schedule instead of shortening this period,
            # which would judge the probe failed before its ack could arrive and suspect a live
            # node. The probe in flight was judged above, so none is replaced unjudged.
            self._next_probe_ms = now_ms + self.config.probe_interval_ms
            self._start_probe(now_ms, out)
            self._remind_suspects(now_ms, out)
        return out

    def leave(self, now_ms: int) -> list[Action]:
        """Announce a graceful departure to up to `indirect_probes` + 1 members; then go quiet."""
        self._advance(now_ms)
        out: list[Action] = []
        if self._left:
            return out
        update = Update(self.node_id, self.addr, MemberState.LEFT, self.incarnation)
        live = sorted(
            (m for m in self._members.values() if m.state <= MemberState.SUSPECT),
            key=lambda m: m.node_id,
        )
        for m in self._rng.sample(live, min(len(live), self.config.indirect_probes + 1)):
            self._broadcasts = {self.node_id: _Broadcast(update, 1)}  # only the farewell
            self._send(out, m.addr, MessageKind.PING, self._next_seq())
        self._left = True
        self._probe = None
        return out

    # --- merging claims ------------------------------------------------------------------------

    def _apply(self, u: Update, now_ms: int, out: list[Action], rebroadcast: bool = True) -> bool:
        """Merge one claim by the SWIM precedence rules; accepted changes are disseminated.
        True when the claim was accepted (about another node)."""
        if u.node_id == self.node_id:
            self._about_self(u)
            return False
        m = self._members.get(u.node_id)
        if m is None:
            if len(self._members) >= MEMBERS_MAX:
                self.counters["members_dropped_full"] += 1
                return False
            m = Member(u.node_id, u.addr, u.state, u.incarnation, now_ms)
            self._members[u.node_id] = m
            self._entered(m, now_ms, out)
        elif _supersedes(u, m):
            changed = u.state is not m.state
            m.addr, m.incarnation = u.addr, u.incarnation
            if changed:
                m.state, m.since_ms = u.state, now_ms
                self._entered(m, now_ms, out)
        else:
            return False
        if rebroadcast:
            self._enqueue(u)
        return True

    def _about_self(self, u: Update) -> None:
        if self._left or u.state is MemberState.ALIVE or u.state is MemberState.LEFT:
            return
        if u.incarnation >= self.incarnation:  # suspected or declared dead: refute
            if u.incarnation >= INCARNATION_MAX:  # refused on receipt; never wrap or overflow
                return
            self.incarnation = u.incarnation + 1
            self.counters["refutations"] += 1
        # An accusation older than our incarnation: its sender missed our refutation (lost, or
        # its gossip spent): our ALIVE rides again, first on the reply to that sender.
        self._enqueue(Update(self.node_id, self.addr, MemberState.ALIVE, self.incarnation))

    def _push_refutation(
        self, accuser: int, src: SocketAddr, now_ms: int, out: list[Action]
    ) -> None:
        """Tell the accuser (node `accuser` at `src`) and `indirect_probes` others at once that we
        are alive: waiting for our next probe would leave the suspicion a whole period to run out
        on other nodes."""
        others = sorted(
            (m for m in self._members.values() if m.state <= MemberState.SUSPECT and m.addr != src),
            key=lambda m: m.node_id,
        )
        targets = [
            (accuser, src),
            *(
                (m.node_id, m.addr)
                for m in self._rng.sample(others, min(len(others), self.config.indirect_probes))
            ),
        ]
        for node_id, addr in targets:
            self._ping(out, node_id, addr, now_ms)

    def _entered(self, m: Member, now_ms: int, out: list[Action]) -> None:
        if m.state is MemberState.SUSPECT:
            timeout_ms = self.config.suspicion_timeout_ms(self.live_count())
            self._suspect_deadline_ms[m.node_id] = now_ms + timeout_ms
        else:
            self._suspect_deadline_ms.pop(m.node_id, None)  # refuted or settled: no flapping
        out.append(MemberChanged(m.node_id, m.addr, m.state, m.incarnation, now_ms))

    # --- probing -------------------------------------------------------------------------------

    def _start_probe(self, now_ms: int, out: list[Action]) -> None:
        target = self._next_target()
        if target is None:
            return
        seq = self._next_seq()
        cfg = self.config
        end_ms = self._next_probe_ms
        self._probe = _Probe(
            seq, target.node_id, now_ms, min(now_ms + cfg.probe_timeout_ms, end_ms), end_ms
        )
        self.counters["probes"] += 1
        self._send(out, target.addr, MessageKind.PING, seq, about=target.node_id)

    def _next_target(self) -> Member | None:
        """Round-robin over a shuffled list; bounded: at most two passes over the members."""
        for _ in range(2 * len(self._members) + 1):
            if not self._probe_order:
                self._probe_order = [
                    m.node_id for m in self._members.values() if m.state <= MemberState.SUSPECT
                ]
                if not self._probe_order:
                    return None
                self._probe_order.sort()
                self._rng.shuffle(self._probe_order)
            m = self._members.get(self._probe_order.pop())
            if m is not None and m.state <= MemberState.SUSPECT:
                return m
        return None

    def _send_ping_reqs(self, probe: _Probe, out: list[Action]) -> None:
        probe.indirect_sent = True
        target = self._members.get(probe.target)
        if target is None:
            return
        helpers = sorted(
            (
                m
                for m in self._members.values()
                if m.state is MemberState.ALIVE and m.node_id != probe.target
            ),
            key=lambda m: m.node_id,
        )
        chosen = self._rng.sample(helpers, min(len(helpers), self.config.indirect_probes))
        for helper in chosen:
            self.counters["ping_reqs_sent"] += 1
            self._send(out, helper.addr, MessageKind.PING_REQ, probe.seq, probe.target, target.addr)

    def _probe_failed(self, probe: _Probe, now_ms: int, out: list[Action]) -> None:
        self._probe = None
        self.counters["probes_failed"] += 1
        m = self._members.get(probe.target)
        if m is not None and m.state is MemberState.ALIVE:
            self._apply(Update(m.node_id, m.addr, MemberState.SUSPECT, m.incarnation), now_ms, out)
            # Tell the suspect at once (Lifeguard's point: refutation needs the claim to reach the
            # one node able to refute it; on a lossy link the probe's silence may be the link's).
            self._ping(out, m.node_id, m.addr, now_ms)

    def _remind_suspects(self, now_ms: int, out: list[Action]) -> None:
        """Each period, ping members we hold suspect (but the one just probed, whose ping carries
        the claim already) with the claim: the one node able to refute must hear it, and a
        refutation we missed comes back on the ack (a node told of an accusation older than its
        incarnation gossips its ALIVE again). At most `indirect_probes + 1` a period (a random
        few when more are suspect, e.g. across a partition), so the cost stays O(1) per period."""
        probed = None if self._probe is None else self._probe.target
        suspects = [
            self._members[i]
            for i in sorted(self._suspect_deadline_ms)
            if i != probed and self._members[i].state is MemberState.SUSPECT
        ]
        most = self.config.indirect_probes + 1
        if len(suspects) > most:
            suspects = self._rng.sample(suspects, most)
        for m in suspects:
            self._ping(out, m.node_id, m.addr, now_ms)

    def _recheck(self, probe: _Probe, now_ms: int, out: list[Action]) -> None:
        """The target of the probe in flight sent us a datagram, or was said alive (a refutation
        that crossed our ping): neither proves it alive now (either may be a replay), so ping it
        once more with a fresh nonce; its ack, not the datagram, settles the probe. Once per
        probe, so replays cannot make us send more than one extra ping per period."""
        m = self._members.get(probe.target)
        if probe.rechecked or m is None:
            return
        probe.rechecked = True
        self.counters["probes_rechecked"] += 1
        self._ping(out, m.node_id, m.addr, now_ms)

    def _on_ack(self, msg: Message, now_ms: int, out: list[Action]) -> None:
        """An ack counts only if it echoes a nonce we sent its sender and still wait for: a
        replayed one echoes a nonce already consumed, expired, or never ours."""
        probe = self._probe
        if probe is not None and probe.seq == msg.seq and probe.target == msg.sender:
            self._probe = None
            self._alive(msg.sender, now_ms)
            return
        nonce = self._nonces.get(msg.seq)
        if nonce is not None and nonce.target == msg.sender:
            del self._nonces[msg.seq]
            self._alive(msg.sender, now_ms)
            if probe is not None and probe.target == msg.sender and nonce.sent_ms >= probe.sent_ms:
                self._probe = None  # the re-ping (or the suspicion notice) was answered
            return
        relay = self._relays.get(msg.seq)
        if relay is not None and relay.target == msg.sender:
            del self._relays[msg.seq]
            self._alive(msg.sender, now_ms)
            self._send(out, relay.origin_addr, MessageKind.ACK, relay.origin_seq, sender=msg.sender)
            return
        self.counters["acks_unmatched"] += 1  # late, duplicated, or replayed

    def _alive(self, node_id: int, now_ms: int) -> None:
        m = self._members.get(node_id)
        if m is not None:
            m.last_contact_ms = now_ms

    def _on_ping_req(self, msg: Message, src: SocketAddr, now_ms: int, out: list[Action]) -> None:
        assert msg.target_addr is not None  # the codec requires it on PING_REQ
        if len(self._relays) >= RELAYS_MAX:
            self.counters["relays_dropped_full"] += 1
            return
        seq = self._next_seq()
        self._relays[seq] = _Relay(src, msg.seq, msg.target, now_ms + self.config.probe_timeout_ms)
        self._send(out, msg.target_addr, MessageKind.PING, seq, about=msg.target)

    # --- output --------------------------------------------------------------------------------

    def _ping(self, out: list[Action], node_id: int, addr: SocketAddr, now_ms: int) -> None:
        """A PING to member `node_id` whose ack proves it alive (its nonce is remembered)."""
        seq = self._next_seq()
        if len(self._nonces) >= NONCES_MAX:
            del self._nonces[next(iter(self._nonces))]
            self.counters["nonces_dropped_full"] += 1
        self._nonces[seq] = _Nonce(node_id, now_ms)
        self._send(out, addr, MessageKind.PING, seq, about=node_id)

    def _send(
        self,
        out: list[Action],
        addr: SocketAddr,
        kind: MessageKind,
        seq: int,
        target: int = 0,
        target_addr: SocketAddr | None = None,
        sender: int | None = None,
        about: int | None = None,
    ) -> None:
        """`about`: the receiver's node id. If we hold it suspect or dead, that claim rides first,
        whatever the retransmit budget says: the one node that can refute it must hear it (gossip
        alone may have spent the claim's retransmissions while the node was paused)."""
        updates = self._piggyback()
        m = None if about is None else self._members.get(about)
        if m is not None and m.state in (MemberState.SUSPECT, MemberState.DEAD):
            claim = Update(m.node_id, m.addr, m.state, m.incarnation)
            rest = tuple(u for u in updates if u.node_id != m.node_id)
            updates = (claim, *rest)[: max(1, self.config.piggyback_updates_max)]
        sender_id = self.node_id if sender is None else sender
        data = self._codec.encode(Message(kind, seq, sender_id, updates, target, target_addr))
        while len(data) > self._codec.datagram_bytes_max and updates:
            updates = updates[:-1]  # bounded: at most piggyback_updates_max iterations
            data = self._codec.encode(Message(kind, seq, sender_id, updates, target, target_addr))
        self.counters["datagrams_sent"] += 1
        out.append(Send(addr, data))

    def _piggyback(self) -> tuple[Update, ...]:
        if not self._broadcasts or self.config.piggyback_updates_max == 0:
            return ()
        chosen = sorted(
            self._broadcasts.values(), key=lambda b: (-b.transmits_left, b.update.node_id)
        )[: self.config.piggyback_updates_max]
        for b in chosen:
            b.transmits_left -= 1
            if b.transmits_left <= 0:
                del self._broadcasts[b.update.node_id]
        return tuple(b.update for b in chosen)

    def _enqueue(self, u: Update) -> None:
        """Newest claim per node wins the slot, so the queue is bounded by the member count."""
        limit = self.config.retransmit_limit(self.live_count())
        self._broadcasts[u.node_id] = _Broadcast(u, limit)

    def _next_seq(self) -> int:
        self._seq = self._seq + 1 if self._seq < SEQ_MAX else 1
        return self._seq

    def _advance(self, now_ms: int) -> None:
        assert now_ms >= self._last_now_ms, "time went backwards"
        self._last_now_ms = now_ms


def _supersedes(u: Update, m: Member) -> bool:
    """SWIM precedence: does claim `u` override what we hold in `m`?"""
    if u.state is MemberState.ALIVE:
        return u.incarnation > m.incarnation
    if u.state is MemberState.SUSPECT:
        if m.state is MemberState.ALIVE:
            return u.incarnation >= m.incarnation
        return u.incarnation > m.incarnation
    if u.state is MemberState.DEAD:
        if m.state <= MemberState.SUSPECT:
            return u.incarnation >= m.incarnation
        return u.incarnation > m.incarnation and m.state is MemberState.DEAD
    # LEFT
    return m.state is not MemberState.LEFT and u.incarnation >= m.incarnation
