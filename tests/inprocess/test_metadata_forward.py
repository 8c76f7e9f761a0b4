"""Metadata proposals from a member that knows no leader of group 0, over real QUIC: the voter
asked to forward goes round across proposals, past one that did not answer.

Chaos seed 73003 (5 nodes): node 1 (group 0's leader) and node 5 had both moved to other
addresses, each while the other was down. Node 5 asked node 1, at the address it still had, to
record its own new address, and its retries asked node 1 first every time: node 1 never heard
of node 5's new address, node 5 never of node 1's, and node 5's replicas stayed behind for
good. Here node 3 plays node 5: voter 1 is unreachable where node 3 would dial it, voter 2
answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest

from nodedb_cluster.errors import ClusterError
from nodedb_cluster.metadata.commands import MetadataEntry, PutSetting
from nodedb_cluster.metadata.forward import MetadataProposer
from nodedb_cluster.raft import RaftEngine, RaftSettings
from nodedb_cluster.routing.table import METADATA_GROUP_ID, RoutingTable
from nodedb_cluster.transport import Insecure, Peer, Reply, Transport
from nodedb_cluster.wire import MessageKind

RPC_TIMEOUT_S = 0.5
UNREACHABLE = "127.0.0.2:9"
"""Where node 3 would dial voter 1: nothing listens there."""


class Voter:
    """Voter 2: takes every METADATA_PROPOSE (as if it forwarded it to the leader, which
    applied it)."""

    def __init__(self) -> None:
        self.asked: list[dict[str, object]] = []

    async def __call__(self, peer: Peer, kind: int, payload: bytes) -> Reply:
        assert kind == MessageKind.METADATA_PROPOSE
        self.asked.append(msgpack.unpackb(payload))
        return MessageKind.METADATA_PROPOSE_RESPONSE, msgpack.packb({"refused": None})


@pytest.fixture
async def proposer_and_voter(tmp_path: Path) -> AsyncIterator[tuple[MetadataProposer, Voter]]:
    me = Transport(3, "127.0.0.1:0", Insecure(), rpc_timeout=RPC_TIMEOUT_S)
    two = Transport(2, "127.0.0.1:0", Insecure())
    voter = Voter()
    two.serve(voter)
    me.register_peer(1, UNREACHABLE)
    me.register_peer(2, two.local_addr)
    engine = RaftEngine(3, tmp_path / "n3", me, None, RaftSettings(tick_interval_ms=20))
    table = RoutingTable.bootstrap(1, 1)
    table.set_members(METADATA_GROUP_ID, voters=[1, 2, 3])
    # No replica of group 0 here (status: UnknownGroup), so no leader is known: ask a voter.
    proposer = MetadataProposer(3, lambda: engine, me, lambda: table, timeout_ms=2000)
    try:
        yield proposer, voter
    finally:
        await engine.close()
        await me.close()
        await two.close()


async def test_a_retry_asks_the_next_voter_after_one_that_did_not_answer(
    proposer_and_voter: tuple[MetadataProposer, Voter],
) -> None:
    proposer, voter = proposer_and_voter
    entry = MetadataEntry((PutSetting("where", "here"),))
    with pytest.raises(ClusterError):
        await proposer.propose(entry)  # voter 1 first: no answer
    assert voter.asked == []
    assert await proposer.propose(entry) is None  # the retry: voter 2, which forwards it
    assert len(voter.asked) == 1
    assert voter.asked[0]["forwarded"] is False
    asked = voter.asked[0]["entry"]
    assert isinstance(asked, bytes)
    assert MetadataEntry.decode(asked).commands == entry.commands
    # The voter that answered is asked again next time.
    assert await proposer.propose(entry) is None
    assert len(voter.asked) == 2
