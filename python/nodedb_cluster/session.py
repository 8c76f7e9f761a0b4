"""`WriteSession`: the client half of exactly-once writes.

A write whose outcome is unknown (the leader lost its leadership, a reply was lost, an attempt
timed out) can only be retried safely if the state machine can tell the retry from a new write.
So every write carries (client id, seq) and the lowest seq this client still waits for; the KV
state machine applies one copy of each (client, seq), answers later copies from a cache, and
drops cached results below that floor (rust/multiraft/src/kv.rs, `KvCommand::Session`). A retry
resends the same bytes.

The client id is random (64 bits): clients need no registration round trip, and two clients
colliding is as likely as a 64-bit hash collision among the live ones.

The rule lives in ONE place, Rust (rust/py/src/kv_session.rs): the client core
(`nodedb_cluster.Client`) and `KvRouter` (through this class) share it.
"""

from __future__ import annotations

from nodedb_cluster_core import WriteSession

__all__ = ["WriteSession"]
