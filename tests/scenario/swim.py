"""SWIM scripts (membership/machine.py): simulated nodes with exact timers and instant-ish
delivery (tests/support/swim_sim.py), printing every membership change each node observes.

    cluster n=3 [seed=1] [loss=0.0] [latency=1]
         [probe-interval=1000] [probe-timeout=500] [suspicion-min=2000] [suspicion-mult=4]
    run until=5000                 # events since the last run, in order
    crash node=3                   # silent from now on (never comes back)
    pause node=2 / resume node=2   # silent for a while (a stopped process), then back
    leave node=2                   # a graceful departure
    members node=1                 # what node 1 believes now
    replay from=3 to=1 every=300 until=9000   # resend node 3's last datagram to node 1
    forge from=3 to=(1,2) node=2 state=DEAD inc=max   # a datagram made with the secret
                                   # (inc: a number, max or max-1); prints each receiver's verdict
"""

from __future__ import annotations

from nodedb_cluster.membership import Codec, MemberState, SwimConfig
from nodedb_cluster.membership.codec import U64_MAX, Message, MessageKind, Update
from scenario.datadriven import ScriptError, Stanza
from support.swim_sim import SECRET, SimNet, addr_of


class SwimScript:
    def __init__(self) -> None:
        self.net: SimNet | None = None
        self.printed = 0
        """Events already printed by earlier `run`s."""

    def _net(self, st: Stanza) -> SimNet:
        if self.net is None:
            raise ScriptError(f"{st.pos}: start with `cluster`")
        return self.net

    def handle(self, st: Stanza) -> str:
        match st.cmd:
            case "cluster":
                defaults = SwimConfig()
                config = SwimConfig(
                    probe_interval_ms=st.get_int("probe-interval", defaults.probe_interval_ms),
                    probe_timeout_ms=st.get_int("probe-timeout", defaults.probe_timeout_ms),
                    suspicion_min_ms=st.get_int("suspicion-min", defaults.suspicion_min_ms),
                    suspicion_mult=st.get_int("suspicion-mult", defaults.suspicion_mult),
                )
                self.net = SimNet(
                    st.get_int("n"),
                    config,
                    seed=st.get_int("seed", 1),
                    latency_ms=st.get_int("latency", 1),
                    loss=float(st.get("loss", "0")),
                )
                self.printed = 0
                return f"{st.get_int('n')} nodes"
            case "run":
                net = self._net(st)
                net.run_until(st.get_int("until"))
                fresh = net.events[self.printed :]
                self.printed = len(net.events)
                lines = [
                    f"t={e.at_ms} n{observer} sees n{e.node_id} {e.state.name} inc={e.incarnation}"
                    for observer, e in fresh
                ]
                return "\n".join(lines) or f"t={net.now_ms} no change"
            case "crash" | "pause":
                self._net(st).pause(st.get_int("node"))
                return "ok"
            case "resume":
                self._net(st).resume(st.get_int("node"))
                return "ok"
            case "leave":
                self._net(st).leave(st.get_int("node"))
                return "ok"
            case "replay":
                net = self._net(st)
                try:
                    net.replay(
                        st.get_int("from"),
                        st.get_int("to"),
                        st.get_int("every"),
                        st.get_int("until"),
                    )
                except ValueError as e:
                    raise ScriptError(f"{st.pos}: {e}") from None
                return "ok"
            case "forge":
                return self._forge(st)
            case "members":
                machine = self._net(st).machines[st.get_int("node")]
                return "\n".join(
                    f"n{m.node_id} {m.state.name} inc={m.incarnation}" for m in machine.members()
                )
        raise ScriptError(f"{st.pos}: unknown command {st.cmd!r}")

    def _forge(self, st: Stanza) -> str:
        net = self._net(st)
        inc_text = st.get("inc")
        inc = {"max": U64_MAX, "max-1": U64_MAX - 1}.get(inc_text)
        node = st.get_int("node")
        claim = Update(
            node,
            addr_of(node),
            MemberState[st.get("state")],
            int(inc_text) if inc is None else inc,
        )
        codec = Codec(SECRET, net.config.datagram_bytes_max)
        data = codec.encode(Message(MessageKind.PING, 1, st.get_int("from"), (claim,)))
        lines = []
        for dst in st.get_ints("to"):
            counters = net.machines[dst].counters
            before = dict(counters)
            net.inject(dst, data)
            diff = [f"{k}+{counters[k] - v}" for k, v in before.items() if counters[k] != v]
            lines.append(f"n{dst}: " + " ".join(d for d in diff if not d.startswith("datagrams_")))
        return "\n".join(lines)
