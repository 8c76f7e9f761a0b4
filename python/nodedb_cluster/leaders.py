"""Leader changes seen on this node, from the engine's leader epoch (awaited, not polled): which
groups changed leader (`changed_leaders`, pure) and one INFO line per change (`log_leader_changes`).
The embedding API's `on_leader_change` uses the same diff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Final

from nodedb_cluster.errors import ClusterError
from nodedb_cluster.raft import RaftEngine

log = logging.getLogger(__name__)

LeaderView = dict[int, tuple[int | None, int]]
"""group -> (its leader or None, term), as last seen."""
WAIT_MS: Final = 60_000
"""One wait for the epoch; it returns at once when a leader changes or the engine stops."""


def changed_leaders(
    seen: LeaderView, now: Iterable[tuple[int, int | None, int]]
) -> list[tuple[int, int | None, int, int | None]]:
    """(group, leader, term, previous leader) for every group in `now` whose leader is not the one
    in `seen` (a group seen for the first time is a change; a new term alone is not), and every
    group whose replica left this node or came back (term 0: the engine dropped it; a replica
    dropped while it knew no leader, as a stale one is, changed no leader but must be told);
    `seen` takes `now`'s values."""
    changes: list[tuple[int, int | None, int, int | None]] = []
    for group, leader, term in now:
        previous = seen.get(group)
        seen[group] = (leader, term)
        if previous is None or previous[0] != leader or (previous[1] == 0) != (term == 0):
            changes.append((group, leader, term, None if previous is None else previous[0]))
    return changes


async def log_leader_changes(engine: RaftEngine, node_id: int) -> None:
    """Log every group's current leader, then each change, at INFO until cancelled or the
    engine stops."""
    seen: LeaderView = {}
    stopped = asyncio.ensure_future(engine.wait_stopped())
    try:  # an engine stopping under us ends the watch (EngineStopped is a ClusterError)
        while not stopped.done():
            epoch, now = engine.leaders()
            for group, leader, term, previous in changed_leaders(seen, now):
                log.info(
                    "group %d: leader is %s (term %d; was %s)",
                    group,
                    _who(leader),
                    term,
                    _who(previous),
                    extra={"node_id": node_id, "group": group, "leader": leader, "term": term},
                )
            await engine.wait_leaders_changed(epoch, WAIT_MS)
    except ClusterError:
        return
    finally:
        stopped.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await stopped


def _who(leader: int | None) -> str:
    return "none" if leader is None else f"node {leader}"
