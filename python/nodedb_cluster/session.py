"""`WriteSession`: the client half of exactly-once writes.

A write whose outcome is unknown (the leader lost its leadership, a reply was lost, an attempt
timed out) can only be retried safely if the state machine can tell the retry from a new write.
So every write carries (client id, seq) and the lowest seq this client still waits for; the KV
state machine applies one copy of each (client, seq), answers later copies from a cache, and
drops cached results below that floor (rust/multiraft/src/kv.rs, `KvCommand::Session`). A retry
resends the same bytes.

The client id is random (64 bits): clients need no registration round trip, and two clients
colliding is as likely as a 64-bit hash collision among the live ones.
"""

from __future__ import annotations

import secrets
from collections import deque

from nodedb_cluster.raft import kv_session


class WriteSession:
    """Sequence numbers for one client's writes, and the floor of those still in flight."""

    __slots__ = ("_done", "_next_seq", "_open", "client_id")

    def __init__(self, client_id: int | None = None) -> None:
        self.client_id = client_id if client_id is not None else secrets.randbits(64) or 1
        self._next_seq = 1
        self._open: deque[int] = deque()
        """Seqs handed out and not yet finished, ascending (they are handed out in order)."""
        self._done: set[int] = set()
        """Finished seqs still behind an unfinished one in `_open`."""

    @property
    def acked_below(self) -> int:
        """Every seq below this is finished: the state machine may drop their results."""
        return self._open[0] if self._open else self._next_seq

    def wrap(self, commands: list[bytes]) -> tuple[list[int], list[bytes]]:
        """Give each encoded command the next seq; the caller must `finish` every seq."""
        floor = self.acked_below
        seqs = list(range(self._next_seq, self._next_seq + len(commands)))
        self._next_seq += len(commands)
        self._open.extend(seqs)
        client = self.client_id
        return seqs, [kv_session(client, s, floor, c) for s, c in zip(seqs, commands, strict=True)]

    def finish(self, seqs: list[int]) -> None:
        """The caller has these seqs' outcomes (or gave up on them): never retried again."""
        self._done.update(seqs)
        open_, done = self._open, self._done
        while open_ and open_[0] in done:
            done.discard(open_.popleft())

    @property
    def in_flight(self) -> int:
        return len(self._open) - len(self._done)
