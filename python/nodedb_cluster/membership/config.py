"""SwimConfig: the failure detector's knobs, validated once (each refusal names its field).

Defaults follow issue 7 and the SWIM/Lifeguard papers: a 1 s protocol period, a 500 ms direct-probe
timeout (a LAN round trip is well under 1 ms; 500 ms leaves room for a busy event loop), k = 3
indirect helpers, and a suspicion timeout of `suspicion_mult * max(1, log10(n)) * probe_interval_ms`
floored at `suspicion_min_ms`, so larger clusters (where a suspicion needs longer to reach everyone)
wait longer before declaring a member dead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from nodedb_cluster.errors import ConfigError
from nodedb_cluster.validate import check_int

PROBE_INTERVAL_MS_MAX: Final = 60_000
SUSPICION_MULT_MAX: Final = 100
INDIRECT_PROBES_MAX: Final = 16
"""Each indirect helper costs two datagrams per failed probe; 16 is far past diminishing returns."""
PIGGYBACK_UPDATES_MAX: Final = 64
DATAGRAM_BYTES_MIN: Final = 512
"""A ping with six updates is ~400 bytes; below 512 nothing useful fits."""
DATAGRAM_BYTES_MAX: Final = 65_507
"""The largest UDP payload over IPv4."""
EVENT_QUEUE_MAX: Final = 65_536


@dataclass(frozen=True, slots=True, kw_only=True)
class SwimConfig:
    """SWIM timings and bounds. Construct with keywords; invalid values raise `ConfigError`."""

    probe_interval_ms: int = 1000
    """One protocol period: one member is probed per period."""
    probe_timeout_ms: int = 500
    """Wait for a direct ack this long, then ask `indirect_probes` helpers (ping-req)."""
    indirect_probes: int = 3
    """k: helpers asked to probe a member that missed its direct ack."""
    suspicion_mult: int = 4
    """A suspect has suspicion_mult * max(1, log10(n)) * probe_interval_ms to refute (n: live
    members), then it is DEAD."""
    suspicion_min_ms: int = 2000
    """The shortest suspicion timeout."""
    piggyback_updates_max: int = 6
    """Membership updates carried per datagram."""
    retransmit_mult: int = 4
    """λ: an update is piggybacked retransmit_mult * ceil(log10(n + 1)) times."""
    datagram_bytes_max: int = 1400
    """Largest datagram sent or accepted; 1400 stays under a 1500-byte Ethernet MTU."""
    event_queue_max: int = 1024
    """Bound of the membership-event queue; when full the oldest event is dropped and counted."""

    def __post_init__(self) -> None:
        check_int("probe_interval_ms", self.probe_interval_ms, 10, PROBE_INTERVAL_MS_MAX)
        check_int("probe_timeout_ms", self.probe_timeout_ms, 1, PROBE_INTERVAL_MS_MAX)
        if self.probe_timeout_ms >= self.probe_interval_ms:
            raise ConfigError(
                "probe_timeout_ms",
                f"{self.probe_timeout_ms} ms must be below probe_interval_ms "
                f"({self.probe_interval_ms} ms): indirect probes need the rest of the period",
            )
        check_int("indirect_probes", self.indirect_probes, 0, INDIRECT_PROBES_MAX)
        check_int("suspicion_mult", self.suspicion_mult, 1, SUSPICION_MULT_MAX)
        check_int("suspicion_min_ms", self.suspicion_min_ms, 1, 3_600_000)
        check_int("piggyback_updates_max", self.piggyback_updates_max, 0, PIGGYBACK_UPDATES_MAX)
        check_int("retransmit_mult", self.retransmit_mult, 1, 100)
        check_int(
            "datagram_bytes_max", self.datagram_bytes_max, DATAGRAM_BYTES_MIN, DATAGRAM_BYTES_MAX
        )
        check_int("event_queue_max", self.event_queue_max, 1, EVENT_QUEUE_MAX)

    def suspicion_timeout_ms(self, members: int) -> int:
        """How long a suspect may refute before it is declared dead, for `members` live nodes."""
        scale = max(1.0, math.log10(max(1, members)))
        return max(self.suspicion_min_ms, int(self.suspicion_mult * scale * self.probe_interval_ms))

    def retransmit_limit(self, members: int) -> int:
        """How many datagrams carry one update before it is considered disseminated."""
        return self.retransmit_mult * max(1, math.ceil(math.log10(max(1, members) + 1)))
