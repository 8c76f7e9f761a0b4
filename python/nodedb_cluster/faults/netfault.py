"""Partitions with real packets: policy-routing blackholes inside a private network namespace.

The chaos run re-executes itself under `unshare --net` (util-linux), so it gets a loopback of
its own: every node listens on 127.0.0.N there, and a rule
`from 127.0.0.A to 127.0.0.B ipproto udp sport P dport P blackhole` drops the QUIC datagrams
node A sends to node B (the sender's `sendmsg` fails, nothing is delivered). Rules name the
cluster port on both ends, so clients and status requests (ephemeral ports) still reach every
node: the partition is between nodes only. Nothing outside the namespace is touched; the
namespace disappears with the run's process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

NETNS_ENV: Final = "NODEDB_CHAOS_NETNS"
"""Set by `reexec_in_private_netns` in the child it starts: the parent's namespace id."""
RULE_PREF: Final = 5
"""Blackhole rules sit before the local table, which `prepare_private_netns` moves to 10."""
IP_TIMEOUT_S: Final = 5.0


class NetFaultError(Exception):
    """An `ip` command failed, or partitions were asked for outside a namespace we made."""


def _ip(args: Sequence[str]) -> None:
    try:
        done = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetFaultError(f"ip {' '.join(args)}: {e}") from e
    if done.returncode != 0:
        raise NetFaultError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _netns_id() -> str:
    return os.readlink("/proc/self/ns/net")


def in_private_netns() -> bool:
    """True only in a namespace `reexec_in_private_netns` made: the marker names the parent's
    namespace and ours differs from it. The only place this module changes routing rules."""
    parent = os.environ.get(NETNS_ENV)
    if not parent:
        return False
    try:
        return _netns_id() != parent
    except OSError:
        return False


def can_make_private_netns() -> bool:
    """Root (or CAP_SYS_ADMIN) with `unshare` and `ip` on PATH."""
    from shutil import which

    return os.geteuid() == 0 and which("unshare") is not None and which("ip") is not None


def reexec_in_private_netns(argv: Sequence[str]) -> int:
    """Run `python -m nodedb_cluster.cli <argv>` in a new network namespace; its exit code.
    Refused when this process was itself started that way (no nesting)."""
    if os.environ.get(NETNS_ENV):
        raise NetFaultError("already re-executed once; the namespace did not take effect")
    env = dict(os.environ, **{NETNS_ENV: _netns_id()})
    cmd = ["unshare", "--net", "--", sys.executable, "-m", "nodedb_cluster.cli", *argv]
    return subprocess.run(cmd, env=env, check=False).returncode


def prepare_private_netns() -> None:
    """Loopback up; the local routing table moved behind the blackhole rules' preference."""
    if not in_private_netns():
        raise NetFaultError("refusing to change routing outside a private namespace")
    _ip(["link", "set", "lo", "up"])
    _ip(["rule", "add", "pref", "10", "lookup", "local"])
    _ip(["rule", "del", "pref", "0"])


@dataclass(slots=True)
class Partitioner:
    """Cuts node addresses apart on the cluster `port`; `heal` removes every rule it added."""

    port: int
    rules: list[tuple[str, str]] = field(default_factory=list)

    def _spec(self, src: str, dst: str) -> list[str]:
        p = str(self.port)
        return [
            "pref", str(RULE_PREF), "from", src, "to", dst,
            "ipproto", "udp", "sport", p, "dport", p, "blackhole",
        ]  # fmt: skip

    def isolate(self, host: str, others: Iterable[str]) -> None:
        """Drop every datagram between `host` and each of `others`, both ways."""
        if not in_private_netns():
            raise NetFaultError("partitions need the private namespace (run under chaos)")
        for other in others:
            for src, dst in ((host, other), (other, host)):
                _ip(["rule", "add", *self._spec(src, dst)])
                self.rules.append((src, dst))

    def heal(self) -> None:
        errors: list[str] = []
        while self.rules:
            src, dst = self.rules.pop()
            try:
                _ip(["rule", "del", *self._spec(src, dst)])
            except NetFaultError as e:
                errors.append(str(e))
        if errors:
            raise NetFaultError("heal left rules behind: " + "; ".join(errors))
