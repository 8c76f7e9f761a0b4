"""`PeerHealth`: which nodes a KV router should avoid, and how long to wait for one answer.

Failover from the client's side is "stop waiting for the dead leader, find the new one". The
new leader exists one election after the crash (election timeout 0.5-1 s here), so waiting
longer than that for the dead node only delays the client; waiting much less than the slowest
healthy answer turns a loaded cluster into a storm of retries. So the bound of one attempt is a
multiple (`SLOWEST_MULT`) of the slowest answer seen lately (halving every
`SLOWEST_HALF_LIFE_S`), between `ATTEMPT_TIMEOUT_MIN_S` (below the shortest election timeout)
and `ATTEMPT_TIMEOUT_MAX_S` (the longest one). Retrying early is safe: reads change nothing
and writes are exactly-once (`nodedb_cluster.session`).

A node that failed to answer is tried after the others for `DOWN_HOLD_S` (about one election);
one that SWIM declared dead is avoided until SWIM sees it alive again. When every candidate is
to be avoided, all are tried.

The other side of the bound: a serving node waits at most `serve_budget_ms(t)` of a request's
bound `t` before answering (a little less than `t`), so a request that waited out an election
or a slow commit comes back as an answer to retry, not as a timeout that marks a live node down.

The rule lives in ONE place, Rust (rust/py/src/peer_health.rs): the client core
(`nodedb_cluster.Client`) and `KvRouter` (through this class) share it. `PeerHealth(clock)`
takes an optional callable returning monotonic seconds (tests drive time by hand).
"""

from __future__ import annotations

from nodedb_cluster_core import (
    ATTEMPT_TIMEOUT_MAX_S,
    ATTEMPT_TIMEOUT_MIN_S,
    DOWN_HOLD_S,
    DOWN_NODES_MAX,
    SLOWEST_HALF_LIFE_S,
    SLOWEST_MULT,
    PeerHealth,
    serve_budget_ms,
)

__all__ = [
    "ATTEMPT_TIMEOUT_MAX_S",
    "ATTEMPT_TIMEOUT_MIN_S",
    "DOWN_HOLD_S",
    "DOWN_NODES_MAX",
    "SLOWEST_HALF_LIFE_S",
    "SLOWEST_MULT",
    "PeerHealth",
    "serve_budget_ms",
]
