"""The reconciler records this node as a group's leader in group 0 off the round
(`Reconciler._propose_hints`): a proposal that does not come back (group 0 without a quorum)
holds up no round, a second is not started while one is in flight, and `close` ends it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from nodedb_cluster.metadata.commands import MetadataEntry, SetGroupLeader
from nodedb_cluster.raft import RaftEngine, RaftSettings
from nodedb_cluster.reconcile import ProposeLeaderHints
from nodedb_cluster.reconciler import ReconcilePolicy, Reconciler
from nodedb_cluster.routing.table import UNKNOWN_LEADER, RoutingTable
from nodedb_cluster.transport import Insecure, Transport

FAST = RaftSettings(tick_interval_ms=20)
ROUND_BOUND_S = 1.0
"""A round with a hint pending returns within this (the proposal's own bound is 2 x 5 s)."""


async def test_a_hint_that_never_lands_holds_up_no_round_and_is_proposed_once(
    tmp_path: Path,
) -> None:
    transport = Transport(1, "127.0.0.1:0", Insecure())
    engine = RaftEngine(1, tmp_path / "n1", transport, None, FAST)
    routing = RoutingTable.bootstrap(1, 1)
    routing.set_leader(1, UNKNOWN_LEADER)  # group 1's recorded leader lost (say, it died)
    proposed: list[MetadataEntry] = []
    never = asyncio.Event()

    async def propose(entry: MetadataEntry) -> str | None:
        proposed.append(entry)
        await never.wait()  # group 0 has no quorum: no outcome
        return None

    reconciler = Reconciler(
        ReconcilePolicy(1, 1, False, 5_000),
        lambda: engine,
        lambda: routing,
        lambda g: "kv",
        propose,
    )
    try:
        await engine.add_group(1, [1], "kv")
        await engine.campaign(1)
        async with asyncio.timeout(5):  # leadership seen through the engine's leader epoch
            epoch, now = engine.leaders()
            while (1, 1) not in {(g, leader) for g, leader, _ in now}:
                await engine.wait_leaders_changed(epoch, 5_000)
                epoch, now = engine.leaders()
        for _ in range(3):
            started = time.monotonic()
            actions = await reconciler.reconcile_once()
            assert time.monotonic() - started < ROUND_BOUND_S
            assert actions == [ProposeLeaderHints((1,))]
            await asyncio.sleep(0)  # the background proposal runs up to its await
        assert proposed == [MetadataEntry((SetGroupLeader(1, 1),))], "one in flight at a time"
        hints = reconciler._hints
        assert hints is not None
        assert not hints.done()
        await reconciler.close()
        assert hints.cancelled()
    finally:
        await reconciler.close()
        await engine.close()
        await transport.close()
