"""The Rust KV server through the binding (nodedb_kv::serve, rust/py/src/raft.rs): every
KV_REQUEST answered in Rust — routing from the pushed snapshot, singles, lease and follower
reads, typed errors for bad input — plus `KvClient.set_dead` and `share_bridge`. One real node
(a sole voter of one KV group) over real QUIC, asked by a second transport; the raw binding is
used where the Python facade has no method of its own (`RaftEngine._core.set_kv_routing`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import nodedb_cluster_core as core
import pytest

from nodedb_cluster import wire
from nodedb_cluster.errors import ClusterError, RemoteError
from nodedb_cluster.raft import RaftEngine, RaftSettings, kv_put, kv_result
from nodedb_cluster.transport import Insecure, Transport

FAST = RaftSettings(tick_interval_ms=20)
GROUP = 1
ASKER = 7
LEADER_WAIT_S = 10.0


@dataclass
class One:
    transport: Transport
    engine: RaftEngine
    asker: Transport


async def until_leader(engine: RaftEngine) -> None:
    """Polls status: leadership has no event to await from Python. Bounded."""
    for _ in range(int(LEADER_WAIT_S / 0.01)):
        if (await engine.status(GROUP)).role == "leader":
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no leader within {LEADER_WAIT_S} s")


@pytest.fixture
async def one(tmp_path: Path) -> AsyncIterator[One]:
    transport = Transport(1, "127.0.0.1:0", Insecure())
    asker = Transport(ASKER, "127.0.0.2:0", Insecure())
    asker.register_peer(1, transport.local_addr)
    engine = RaftEngine(1, tmp_path / "n1", transport, None, FAST)
    await engine.add_group(GROUP, [1], "kv")
    await until_leader(engine)
    yield One(transport, engine, asker)
    await engine.close()
    await asker.close()
    await transport.close()


async def ask(one: One, doc: dict[str, object]) -> dict[str, object]:
    kind, payload = await one.asker.send_rpc(
        1, wire.MessageKind.KV_REQUEST, msgpack.packb(doc, use_bin_type=True)
    )
    assert kind == wire.MessageKind.KV_RESPONSE
    reply = msgpack.unpackb(payload, raw=False)
    assert isinstance(reply, dict)
    return reply


async def refused(one: One, doc: dict[str, object]) -> str:
    with pytest.raises(RemoteError) as err:
        await ask(one, doc)
    return err.value.code


async def test_routing_is_unavailable_until_pushed_then_the_snapshot(one: One) -> None:
    with pytest.raises(ClusterError):  # no server yet: nothing to push into
        one.engine._core.set_kv_routing(b"table", [])
    one.engine.serve_kv_requests(one.transport)
    assert await refused(one, {"op": "routing"}) == "Unavailable"
    nodes = [(1, "127.0.0.1:9400", b"\xab" * 32), (2, "127.0.0.2:9400", None)]
    one.engine._core.set_kv_routing(b"table", nodes)
    reply = await ask(one, {"op": "routing"})
    assert reply == {"routing": b"table", "nodes": [list(n) for n in nodes]}
    one.engine._core.set_kv_routing(b"table2", nodes[:1])  # the latest push wins
    assert (await ask(one, {"op": "routing"}))["routing"] == b"table2"


async def test_bad_input_gets_typed_errors_and_the_server_goes_on(one: One) -> None:
    one.engine.serve_kv_requests(one.transport)
    put = kv_put(b"k", b"v")
    bad: list[dict[str, object]] = [
        {"op": "frobnicate"},
        {"gs": [GROUP], "cmds": [put]},
        {"op": "propose_many", "gs": [GROUP, GROUP], "cmds": [put]},
        {"op": "propose_many", "gs": [-1], "cmds": [put]},
        {"op": "propose_many", "gs": [GROUP], "cmds": ["text, not bytes"]},
        {"op": "propose_many", "gs": [GROUP], "cmds": [put], "t": 0},
        {"op": "propose_many", "gs": [GROUP], "cmds": [put], "t": 60_001},
        {"op": "read_many", "gs": [GROUP], "keys": [b"k"], "level": "sloppy"},
        {"op": "read", "g": GROUP, "keys": [b"k"], "level": "follower", "stale_s": -1.0},
        {"op": "read", "keys": [b"k"]},
    ]
    for doc in bad:
        assert await refused(one, doc) == "InvalidRequest", doc
    newer = {"op": "propose_many", "gs": [GROUP], "cmds": [put], "v": 2}
    assert await refused(one, newer) == "UnsupportedVersion"
    for payload in (b"", b"\xc1", b"\x93\x01\x02\x03"):
        with pytest.raises(RemoteError) as err:
            await one.asker.send_rpc(1, wire.MessageKind.KV_REQUEST, payload)
        assert err.value.code == "InvalidRequest"
    reply = await ask(one, {"op": "propose_many", "gs": [GROUP], "cmds": [put]})
    assert kv_result(reply["r"][0]) == ("ok", None)


async def test_singles_and_every_read_level_are_served_here(one: One) -> None:
    one.engine.serve_kv_requests(one.transport)
    reply = await ask(one, {"op": "propose", "g": GROUP, "cmds": [kv_put(b"a", b"1")], "fwd": True})
    assert kv_result(reply["r"][0]) == ("ok", None)
    local = one.engine.metrics()["read_lease_local"]
    # Right after this leader's own commit: answered from the lease, here (no round, no
    # request to the driver).
    lease = {"op": "read", "g": GROUP, "keys": [b"a", b"b"], "level": "lease", "fwd": True}
    assert await ask(one, lease) == {"r": [b"1", None]}
    assert one.engine.metrics()["read_lease_local"] == local + 1
    for level in ("linearizable", "follower"):
        doc = {"op": "read", "g": GROUP, "keys": [b"a"], "level": level, "stale_s": 5.0}
        assert await ask(one, doc) == {"r": [b"1"]}, level
    many = {"op": "read_many", "gs": [GROUP, 99], "keys": [b"a", b"z"], "level": "follower"}
    assert await ask(one, many) == {"r": [b"1", None], "nlg": [[99, 0]]}
    # A group this node does not run: "nl" with the leader it knows (none).
    elsewhere = {"op": "propose", "g": 99, "cmds": [kv_put(b"x", b"y")], "fwd": True}
    assert await ask(one, elsewhere) == {"nl": 0}
    assert await ask(one, {"op": "read", "g": 99, "keys": [b"x"], "fwd": True}) == {"nl": 0}


async def test_set_dead_makes_the_client_core_ask_other_members(one: One) -> None:
    client = core.KvClient(one.asker._core, ASKER)
    client.set_routing([GROUP] * 1024, [(GROUP, 2, [2, 3])])
    assert client.leader_hint(GROUP) == 2
    client.set_dead(2, True)
    assert client.leader_hint(GROUP) == 0, "a dead leader is not a target"
    client.set_dead(2, False)
    assert client.leader_hint(GROUP) == 2
    client.close()


async def test_share_bridge_gives_one_fd_per_node(one: One, tmp_path: Path) -> None:
    fd = one.transport._core.bridge_fd()
    shared = core.KvClient(one.transport._core, 1, share_bridge=True)
    own = core.KvClient(one.transport._core, 1)
    assert shared.bridge_fd() == fd
    assert own.bridge_fd() != fd
    engine = core.RaftEngine(2, str(tmp_path / "n2"), one.asker._core, share_bridge=True)
    assert engine.bridge_fd() == one.asker._core.bridge_fd()
    engine.close()
    shared.close()
    own.close()
