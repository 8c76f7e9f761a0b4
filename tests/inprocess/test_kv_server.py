"""The Rust KV server (nodedb-kv's serve/): every KV_REQUEST answered in Rust, none reaches
Python; payloads built here byte by byte as an old client or node would (the wire stays the
MessagePack maps of docs/KV.md). Real nodes over real QUIC on 127.0.0.x, real fsynced logs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
from test_kv import formed

from nodedb_cluster import wire
from nodedb_cluster.errors import RemoteError
from nodedb_cluster.node import Node
from nodedb_cluster.raft import kv_put, kv_result
from nodedb_cluster.routing import vshard_for_key

CONCURRENT_REQUESTS = 300
"""Single-command requests sent at once to one group's leader (group commit test)."""


@pytest.fixture
async def three(tmp_path: Path) -> AsyncIterator[list[Node]]:
    async with formed(tmp_path) as nodes:
        yield nodes


def encode_request(doc: dict[str, object]) -> bytes:
    return bytes(msgpack.packb(doc, use_bin_type=True))


def decode_doc(payload: bytes) -> dict[str, object]:
    doc = msgpack.unpackb(payload, raw=False)
    assert isinstance(doc, dict)
    return doc


async def test_no_kv_request_reaches_python(three: list[Node]) -> None:
    for node in three:
        with pytest.raises(KeyError):
            node.control.handler(wire.MessageKind.KV_REQUEST)


async def leaders(node: Node) -> dict[int, int]:
    status = await node.status()
    return {g.group_id: g.leader_id or 0 for g in status.groups if g.group_id != 0}


async def kv_rpc(sender: Node, target: Node, doc: dict[str, object]) -> dict[str, object]:
    kind, payload = await sender.transport.send_rpc(
        target.config.node_id, wire.MessageKind.KV_REQUEST, encode_request(doc)
    )
    assert kind == wire.MessageKind.KV_RESPONSE
    return decode_doc(payload)


async def test_propose_many_is_answered_in_rust_with_per_group_not_leader(
    three: list[Node],
) -> None:
    led_by = await leaders(three[0])
    target = next(n for n in three if n.config.node_id in led_by.values())
    sender = next(n for n in three if n is not target)
    routing = target.metadata.routing
    keys = [b"fast:%d" % i for i in range(64)]
    groups = [routing.group_for_vshard(vshard_for_key(k)) for k in keys]
    assert len(set(groups)) == 2  # both data groups in one request
    reply = await kv_rpc(
        sender,
        target,
        {"op": "propose_many", "gs": groups, "cmds": [kv_put(k, b"v" + k) for k in keys]},
    )
    here = {g for g, leader in led_by.items() if leader == target.config.node_id}
    results = reply["r"]
    assert isinstance(results, list)
    assert len(results) == len(keys)
    for g, r in zip(groups, results, strict=True):
        if g in here:
            assert isinstance(r, bytes)
            assert kv_result(r) == ("ok", None)
        else:
            assert r is None
    refused = {g: leader for g, leader in reply.get("nlg", [])}  # type: ignore[attr-defined]
    assert refused == {g: led_by[g] for g in set(groups) - here}
    assert "unk" not in reply
    for k, g in zip(keys, groups, strict=True):
        if g in here:
            assert await sender.kv.get(k) == b"v" + k
    # Routing too, from what the node pushed on its last metadata change.
    routed = await kv_rpc(sender, target, {"op": "routing"})
    assert "routing" in routed


async def test_unknown_group_and_bad_input_keep_their_answers(three: list[Node]) -> None:
    target, sender = three[0], three[1]
    put = kv_put(b"x", b"y")
    reply = await kv_rpc(sender, target, {"op": "propose_many", "gs": [999], "cmds": [put]})
    assert reply == {"r": [None], "nlg": [[999, 0]]}
    # Malformed propose_many: a typed error from the schema, the node goes on.
    bad: list[dict[str, object]] = [
        {"op": "propose_many", "gs": [1, 2], "cmds": [put]},
        {"op": "propose_many", "gs": [1], "cmds": [put], "t": 0},
        {"op": "propose_many", "gs": [-1], "cmds": [put]},
        {"op": "propose_many", "gs": [1], "cmds": [b"x"]},  # not a client command
    ]
    for doc in bad:
        with pytest.raises(RemoteError) as refused:
            await kv_rpc(sender, target, doc)
        assert refused.value.code == "InvalidRequest"
    await sender.kv.put(b"after-bad", b"fine")
    assert await target.kv.get(b"after-bad") == b"fine"


async def test_concurrent_requests_share_raft_entries(three: list[Node]) -> None:
    led_by = await leaders(three[0])
    group, leader_id = next(iter(sorted(led_by.items())))
    leader = next(n for n in three if n.config.node_id == leader_id)
    sender = next(n for n in three if n is not leader)
    routing = leader.metadata.routing
    keys = [
        k
        for k in (b"gc:%d" % i for i in range(CONCURRENT_REQUESTS * 4))
        if routing.group_for_vshard(vshard_for_key(k)) == group
    ][:CONCURRENT_REQUESTS]
    assert len(keys) == CONCURRENT_REQUESTS
    before = next(g.commit_index for g in (await leader.status()).groups if g.group_id == group)
    payloads = [
        encode_request({"op": "propose_many", "gs": [group], "cmds": [kv_put(k, k)]}) for k in keys
    ]
    replies = await sender.transport.send_rpc_many(leader_id, wire.MessageKind.KV_REQUEST, payloads)
    for _kind, payload in replies:
        r = decode_doc(payload)["r"]
        assert isinstance(r, list)
        assert kv_result(r[0]) == ("ok", None)
    after = next(g.commit_index for g in (await leader.status()).groups if g.group_id == group)
    # Every command committed, in fewer entries than requests (group commit).
    assert 0 < after - before < CONCURRENT_REQUESTS
    values = await asyncio.gather(*(sender.kv.get(k) for k in keys[:20]))
    assert values == keys[:20]


async def test_linearizable_read_many_is_answered_in_rust_on_any_member(
    three: list[Node],
) -> None:
    keys = [b"read:%d" % i for i in range(40)]
    await three[0].kv.put_many([(k, b"v" + k) for k in keys[:30]])  # the rest stay absent
    routing = three[0].metadata.routing
    groups = [routing.group_for_vshard(vshard_for_key(k)) for k in keys]
    expected = [b"v" + k if i < 30 else None for i, k in enumerate(keys)]
    for target in three:  # leader of some groups, follower of others: ReadIndex works on both
        sender = next(n for n in three if n is not target)
        doc: dict[str, object] = {"op": "read_many", "gs": groups, "keys": keys}
        assert await kv_rpc(sender, target, doc) == {"r": expected}
        doc.update(level="linearizable", stale_s=1.0, t=2000)
        assert await kv_rpc(sender, target, doc) == {"r": expected}
        # A lease read, on a member that may lead or follow the groups: answered too.
        doc.update(level="lease")
        assert (await kv_rpc(sender, target, doc))["r"] == expected
    reply = await kv_rpc(three[1], three[0], {"op": "read_many", "gs": [999], "keys": [b"k"]})
    assert reply == {"r": [None], "nlg": [[999, 0]]}


async def test_a_read_of_group_0_never_names_its_leader_as_the_way(three: list[Node]) -> None:
    """Attack probe, session 31: group 0's leader answered a KV read of group 0 (no KV group)
    "not leader, the leader is me", so a requester that followed the hint asked it again."""
    status = await three[0].status()
    leader_id = next(g.leader_id for g in status.groups if g.group_id == 0)
    leader = next(n for n in three if n.config.node_id == leader_id)
    sender = next(n for n in three if n is not leader)
    read = {"op": "read", "g": 0, "keys": [b"k"], "level": "linearizable", "t": 2000}
    assert await kv_rpc(sender, leader, read) == {"nl": 0}
    many = {"op": "read_many", "gs": [0], "keys": [b"k"], "level": "linearizable", "t": 2000}
    reply = await kv_rpc(sender, leader, many)
    assert reply.get("nlg") == [[0, 0]], reply
