"""An in-process network of SwimMachines on one manual clock (test helper, no sockets).

Datagrams travel with a fixed latency; a node can be `crash`ed (its datagrams vanish, its timers
never fire) or `pause`d and later `resume`d (everything addressed to it while paused is lost, like a
SIGSTOPped process whose socket buffer overflowed). An attacker (at `ATTACKER`, where replies go
nowhere) can `inject` a datagram (one forged with the secret) or `replay` one a node sent.
`run_until` is bounded in steps and time.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from nodedb_cluster.addr import SocketAddr, parse_socket_addr
from nodedb_cluster.membership import Codec, MemberChanged, MemberState, Send, SwimConfig
from nodedb_cluster.membership.machine import Action, SwimMachine, UnknownSender

SECRET = b"test-cluster-secret-0123456789"
STEPS_MAX = 2_000_000
ATTACKER = parse_socket_addr("127.0.0.250:7946")


def addr_of(node_id: int) -> SocketAddr:
    return parse_socket_addr(f"127.0.0.{node_id}:7946")


@dataclass
class SimNet:
    n: int
    config: SwimConfig = field(default_factory=SwimConfig)
    seed: int = 1
    latency_ms: int = 1
    loss: float = 0.0
    """Probability that any one datagram is lost (drawn from a seeded RNG)."""
    now_ms: int = 0
    machines: dict[int, SwimMachine] = field(default_factory=dict)
    down: set[int] = field(default_factory=set)
    events: list[tuple[int, MemberChanged]] = field(default_factory=list)
    """(observer node id, event) in the order they happened."""
    unknown_senders: list[tuple[int, UnknownSender]] = field(default_factory=list)
    """(receiving node id, report) for every datagram dropped as from a non-member."""
    _inflight: list[tuple[int, int, int, bytes, SocketAddr]] = field(default_factory=list)
    _counter: int = 0
    _last_sent: dict[tuple[int, int], bytes] = field(default_factory=dict)
    """(sender, receiver) -> the last datagram sent (lost or not): what a capture would hold."""

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        self._loss_rng = random.Random(self.seed + 1)
        for i in range(1, self.n + 1):
            self.machines[i] = SwimMachine(
                i,
                addr_of(i),
                self.config,
                Codec(SECRET, self.config.datagram_bytes_max),
                random.Random(rng.getrandbits(64)),
                incarnation=0,
                now_ms=0,
            )
        by_addr = {addr_of(i): i for i in self.machines}
        self._by_addr = by_addr
        for i, m in self.machines.items():
            for j in self.machines:
                self._carry_out(i, m.add_member(j, addr_of(j), 0))

    def add_member(self, observer: int, node_id: int) -> None:
        """`observer` learns `node_id` from its topology (what a topology change seeds)."""
        self._carry_out(
            observer, self.machines[observer].add_member(node_id, addr_of(node_id), self.now_ms)
        )

    def inject(self, dst: int, data: bytes) -> None:
        """The attacker's datagram reaches `dst` now (unless `dst` is down)."""
        if dst not in self.down:
            self._carry_out(dst, self.machines[dst].on_datagram(data, ATTACKER, self.now_ms))

    def replay(self, src: int, dst: int, every_ms: int, until_ms: int) -> None:
        """From now until `until_ms`, every `every_ms` the attacker resends to `dst` the last
        datagram `src` sent it (captured on the wire)."""
        data = self._last_sent.get((src, dst))
        if data is None:
            raise ValueError(f"node {src} has sent node {dst} nothing to capture yet")
        for t in range(self.now_ms + every_ms, until_ms + 1, every_ms):
            self._counter += 1
            heapq.heappush(self._inflight, (t, self._counter, dst, data, ATTACKER))

    def crash(self, node_id: int) -> None:
        self.down.add(node_id)

    def pause(self, node_id: int) -> None:
        self.down.add(node_id)

    def resume(self, node_id: int) -> None:
        self.down.discard(node_id)

    def leave(self, node_id: int) -> None:
        """`node_id` leaves gracefully now: its farewell datagrams go out, then it is quiet."""
        self._carry_out(node_id, self.machines[node_id].leave(self.now_ms))
        self.down.add(node_id)  # a machine that left has no timers to fire

    def state_seen(self, observer: int, node_id: int) -> MemberState | None:
        m = self.machines[observer].member(node_id)
        return None if m is None else m.state

    def first_event_ms(self, node_id: int, state: MemberState, observer: int) -> int | None:
        for obs, e in self.events:
            if obs == observer and e.node_id == node_id and e.state is state:
                return e.at_ms
        return None

    def run_until(self, until_ms: int) -> None:
        """Deliver datagrams and fire timers in time order until `until_ms` (bounded in steps)."""
        for _ in range(STEPS_MAX):
            t_next = min(
                (m.next_deadline_ms() for i, m in self.machines.items() if i not in self.down),
                default=until_ms + 1,
            )
            if self._inflight:
                t_next = min(t_next, self._inflight[0][0])
            if t_next > until_ms:
                self.now_ms = until_ms
                return
            self.now_ms = max(self.now_ms, t_next)
            if self._inflight and self._inflight[0][0] <= self.now_ms:
                _, _, dst, data, src = heapq.heappop(self._inflight)
                if dst not in self.down:
                    self._carry_out(dst, self.machines[dst].on_datagram(data, src, self.now_ms))
                continue
            for i, m in self.machines.items():
                if i not in self.down and m.next_deadline_ms() <= self.now_ms:
                    self._carry_out(i, m.tick(self.now_ms))
        raise AssertionError(f"simulation did not reach {until_ms} ms in {STEPS_MAX} steps")

    def _carry_out(self, src_id: int, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                dst = self._by_addr.get(a.addr)
                if dst is None:
                    continue
                self._last_sent[(src_id, dst)] = a.data
                if self.loss and self._loss_rng.random() < self.loss:
                    continue
                self._counter += 1
                heapq.heappush(
                    self._inflight,
                    (self.now_ms + self.latency_ms, self._counter, dst, a.data, addr_of(src_id)),
                )
            elif isinstance(a, MemberChanged):
                self.events.append((src_id, a))
            else:
                self.unknown_senders.append((src_id, a))
