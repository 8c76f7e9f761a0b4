"""Topology: stable NodeState codes, version bumps on every real change, stable encoding, and a
decoder that turns any malformed input into MalformedTopology (never KeyError/TypeError)."""

from __future__ import annotations

import contextlib
import ipaddress

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodedb_cluster.addr import SocketAddr, parse_socket_addr
from nodedb_cluster.errors import MalformedTopology, TopologyError, UnknownNode, UnknownNodeState
from nodedb_cluster.topology import NodeInfo, NodeState, Topology


def node(node_id: int, port: int | None = None, **kw: object) -> NodeInfo:
    addr = parse_socket_addr(f"127.0.0.1:{port or 9400 + node_id}")
    fields: dict[str, object] = {"state": NodeState.ACTIVE, "wire_version": 1, **kw}
    return NodeInfo(node_id, addr, **fields)  # type: ignore[arg-type]


def test_node_state_codes_are_the_wire_table() -> None:
    assert [(s.name, int(s)) for s in NodeState] == [
        ("JOINING", 0),
        ("ACTIVE", 1),
        ("DRAINING", 2),
        ("DECOMMISSIONED", 3),
        ("LEARNER", 4),
    ]
    assert NodeState.from_code(4) is NodeState.LEARNER


@pytest.mark.parametrize("code", [-1, 5, 255, 2**63, True, "1", None])
def test_unknown_node_state_codes(code: object) -> None:
    with pytest.raises(UnknownNodeState):
        NodeState.from_code(code)  # type: ignore[arg-type]


def test_node_info_validation() -> None:
    with pytest.raises(TopologyError, match="node_id"):
        node(0)
    with pytest.raises(TopologyError, match="spki_pin"):
        node(1, spki_pin=b"short")
    with pytest.raises(TopologyError, match="wire_version"):
        node(1, wire_version=70000)
    with pytest.raises(TopologyError, match="duplicates"):
        node(1, raft_groups=(0, 1, 1))
    with pytest.raises(TopologyError, match="state"):
        node(1, state=1)
    assert node(1, raft_groups=(3, 0, 1)).raft_groups == (0, 1, 3)


def test_version_bumps_on_every_change_and_not_on_no_ops() -> None:
    topo = Topology()
    assert topo.version == 0
    topo.add(node(1))
    topo.add(node(2))
    assert topo.version == 2
    assert topo.set_state(2, NodeState.DRAINING)
    assert topo.version == 3
    assert not topo.set_state(2, NodeState.DRAINING)
    assert topo.version == 3
    assert topo.update(node(2, port=9999, state=NodeState.DRAINING))
    assert topo.version == 4
    assert not topo.update(node(2, port=9999, state=NodeState.DRAINING))
    assert topo.remove(1) == node(1)
    assert topo.version == 5
    assert topo.node_ids() == (2,)


def test_changes_that_contradict_the_topology_are_refused() -> None:
    topo = Topology([node(1), node(2)], version=7)
    with pytest.raises(TopologyError, match="already in the topology"):
        topo.add(node(1, port=5000))
    with pytest.raises(TopologyError, match="already belongs to node 1"):
        topo.add(node(3, port=9401))
    with pytest.raises(TopologyError, match="already belongs to node 1"):
        topo.update(node(2, port=9401))
    with pytest.raises(UnknownNode) as info:
        topo.remove(9)
    assert str(info.value) == "unknown node 9"
    with pytest.raises(UnknownNode):
        topo.set_state(9, NodeState.ACTIVE)
    assert topo.version == 7
    assert topo.nodes() == (node(1), node(2))


def test_lookups() -> None:
    topo = Topology([node(2), node(1)])
    assert [n.node_id for n in topo] == [1, 2]
    assert 1 in topo
    assert 3 not in topo
    assert len(topo) == 2
    assert topo.get(3) is None
    assert topo[2] == node(2)
    assert topo.by_addr(parse_socket_addr("127.0.0.1:9402")) == node(2)
    assert topo.by_addr(parse_socket_addr("127.0.0.1:1")) is None


def test_equality_and_copy() -> None:
    a = Topology([node(1), node(2)], version=3)
    b = Topology([node(2), node(1)], version=3)
    assert a == b
    assert a != Topology([node(1), node(2)], version=4)
    c = a.copy()
    c.set_state(1, NodeState.DRAINING)
    assert a != c
    assert a.get(1) == node(1)


def test_encoding_is_stable_and_named() -> None:
    a = Topology([node(1), node(2, spki_pin=b"\x07" * 32, raft_groups=(0, 2))], version=3)
    b = Topology([node(2, spki_pin=b"\x07" * 32, raft_groups=(2, 0)), node(1)], version=3)
    assert a.encode() == b.encode()
    doc = msgpack.unpackb(a.encode(), raw=False)
    assert doc["version"] == 3
    assert doc["nodes"][1] == {
        "node_id": 2,
        "addr": "127.0.0.1:9402",
        "state": 1,
        "wire_version": 1,
        "spki_pin": b"\x07" * 32,
        "swim_addr": None,
        "raft_groups": [0, 2],
    }
    assert Topology.decode(a.encode()) == a


def test_decode_ignores_unknown_fields_and_accepts_missing_optionals() -> None:
    doc = {
        "format": 1,
        "version": 1,
        "future": "x",
        "nodes": [
            {"node_id": 5, "addr": "[::1]:1", "state": 0, "wire_version": 2, "raft_groups": []}
        ],
    }
    topo = Topology.decode(msgpack.packb(doc))
    assert topo[5].spki_pin is None
    assert topo[5].state is NodeState.JOINING


GOOD_NODE = {
    "node_id": 1,
    "addr": "127.0.0.1:1",
    "state": 1,
    "wire_version": 1,
    "spki_pin": None,
    "swim_addr": None,
    "raft_groups": [0],
}


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ([], "expected a map"),
        ({"version": 1, "nodes": []}, "format: missing"),
        ({"format": 2, "version": 1, "nodes": []}, "format 2"),
        ({"format": 1, "nodes": []}, "version: missing"),
        ({"format": 1, "version": -1, "nodes": []}, "version: -1"),
        ({"format": 1, "version": "1", "nodes": []}, "version: expected an integer"),
        ({"format": 1, "version": 1, "nodes": {}}, "nodes: expected a list"),
        ({"format": 1, "version": 1, "nodes": [5]}, "nodes[0]: expected a map"),
        ({"format": 1, "version": 1, "nodes": [{**GOOD_NODE, "state": 9}]}, "nodes[0].state"),
        ({"format": 1, "version": 1, "nodes": [{**GOOD_NODE, "node_id": 0}]}, "node_id"),
        ({"format": 1, "version": 1, "nodes": [{**GOOD_NODE, "addr": "x"}]}, "nodes[0].addr"),
        ({"format": 1, "version": 1, "nodes": [{**GOOD_NODE, "addr": 5}]}, "nodes[0].addr"),
        ({"format": 1, "version": 1, "nodes": [{**GOOD_NODE, "spki_pin": "ab"}]}, "spki_pin"),
        ({"format": 1, "version": 1, "nodes": [{**GOOD_NODE, "spki_pin": b"ab"}]}, "spki_pin"),
        ({"format": 1, "version": 1, "nodes": [{**GOOD_NODE, "swim_addr": 1}]}, "swim_addr"),
        ({"format": 1, "version": 1, "nodes": [{**GOOD_NODE, "raft_groups": [True]}]}, "groups"),
        ({"format": 1, "version": 1, "nodes": [GOOD_NODE, GOOD_NODE]}, "already in"),
        (
            {"format": 1, "version": 1, "nodes": [GOOD_NODE, {**GOOD_NODE, "node_id": 2}]},
            "already belongs",
        ),
    ],
)
def test_malformed_documents_are_typed_errors(doc: object, where: str) -> None:
    with pytest.raises(MalformedTopology) as info:
        Topology.decode(msgpack.packb(doc, use_bin_type=True))
    assert where in info.value.reason


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x81", b"\x92\x01", msgpack.packb({1: 2}), msgpack.packb({"a": 1}) + b"\x00"],
)
def test_malformed_bytes_are_typed_errors(data: bytes) -> None:
    with pytest.raises(MalformedTopology):
        Topology.decode(data)


def test_decode_refuses_non_bytes_and_oversize() -> None:
    with pytest.raises(MalformedTopology, match="expected bytes"):
        Topology.decode("text")  # type: ignore[arg-type]
    with pytest.raises(MalformedTopology, match="byte bound"):
        Topology.decode(b"\x00" * (16 * 1024 * 1024 + 1))


ipv4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
ipv6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))
addrs = st.builds(SocketAddr, st.one_of(ipv4, ipv6), st.integers(1, 65535))
node_infos = st.builds(
    NodeInfo,
    node_id=st.integers(1, 2**64 - 1),
    addr=addrs,
    state=st.sampled_from(NodeState),
    wire_version=st.integers(0, 2**16 - 1),
    spki_pin=st.none() | st.binary(min_size=32, max_size=32),
    swim_addr=st.none() | addrs,
    raft_groups=st.lists(st.integers(0, 2**64 - 1), unique=True, max_size=8).map(tuple),
)


@st.composite
def topologies(draw: st.DrawFn) -> Topology:
    nodes = draw(
        st.lists(node_infos, max_size=8, unique_by=(lambda n: n.node_id, lambda n: n.addr))
    )
    return Topology(nodes, draw(st.integers(0, 2**64 - 1)))


@given(topologies())
def test_round_trip(topo: Topology) -> None:
    data = topo.encode()
    back = Topology.decode(data)
    assert back == topo
    assert back.encode() == data


@settings(max_examples=300)
@given(st.binary(max_size=256))
def test_arbitrary_bytes_decode_or_raise_typed(data: bytes) -> None:
    with contextlib.suppress(MalformedTopology):  # the only acceptable failure
        Topology.decode(data)


@given(topologies(), st.data())
def test_corrupted_encoding_decodes_or_raises_typed(topo: Topology, data: st.DataObject) -> None:
    encoded = bytearray(topo.encode())
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(MalformedTopology):  # the only acceptable failure
        Topology.decode(bytes(encoded))
