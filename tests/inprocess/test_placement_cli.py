"""The placement commands' view of a node that does not answer in time: the change may have
begun there (it was proposed, then the node waited on a metadata group that lost its leader), so
the error says so and where to look, not only that the node was unreachable. Real QUIC; the
node is a transport that takes the request and never answers it."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from nodedb_cluster.errors import Unreachable
from nodedb_cluster.placement_cli import _placement
from nodedb_cluster.transport import Insecure, Peer, Reply, Transport
from nodedb_cluster.wire import MessageKind


async def test_no_answer_in_time_says_the_change_may_have_begun() -> None:
    release = asyncio.Event()

    async def stuck(peer: Peer, kind: int, payload: bytes) -> Reply:
        assert kind == MessageKind.PLACEMENT_REQUEST
        await asyncio.wait_for(release.wait(), 10)
        return MessageKind.PLACEMENT_RESPONSE, b"\x80"

    async with Transport(1, "127.0.0.1:0", Insecure()) as node:
        node.serve(stuck)
        args = argparse.Namespace(
            addr=node.local_addr, insecure=True, ca=None, cert=None, key=None, timeout=0.5
        )
        with pytest.raises(Unreachable) as info:
            await asyncio.to_thread(_placement, args, "move_vshard", vshard=7, to_group=2)
        release.set()
    text = str(info.value)
    assert "no answer within 0.5 s; the move-vshard may have begun" in text, text
    assert "`nodedb-cluster status`" in text
