"""The trust boundary on real node processes: what a stolen certificate can and cannot do.

An attacker holds the `client` certificate of a 3-node mTLS cluster (or, for the last test, node
2's certificate) and sends hand-built frames: forged Raft heartbeats, appends and snapshot
frames, every metadata command, joins and bench load. Each is refused before any handler runs
(`PermissionDenied` at the caller), and afterwards the cluster is as it was: same terms, same
membership, same settings, same data; the refusal counters moved.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest

from nodedb_cluster import wire
from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.client import CLIENT_NODE_ID, Client
from nodedb_cluster.errors import (
    ClusterError,
    HandshakeError,
    PermissionDenied,
    RemoteError,
    Unavailable,
)
from nodedb_cluster.formation.join_token import issue_token
from nodedb_cluster.host_proposals import encode_batch
from nodedb_cluster.localcluster import LocalCluster, Status, leader_of
from nodedb_cluster.metadata.commands import (
    AddGroupLearner,
    AddNode,
    AssignVShard,
    MetadataCommand,
    MetadataEntry,
    PromoteGroupLearner,
    PutSetting,
    RemoveGroupMember,
    RemoveNode,
    SetGroupMembers,
    SetNodeState,
)
from nodedb_cluster.metadata.forward import encode_metadata_propose
from nodedb_cluster.placement_control import encode_placement_request
from nodedb_cluster.raft import kv_vshard_command
from nodedb_cluster.routing import vshard_for_key
from nodedb_cluster.topology import NodeInfo, NodeState
from nodedb_cluster.transport import (
    Mtls,
    Transport,
    ca_key_path,
    generate_cluster_credentials,
    issue_node_credentials,
)
from support.metrics_scrape import formed_with_metrics, scrape

pytestmark = pytest.mark.multiprocess

MSG_APPEND = 3
MSG_HEARTBEAT = 8
MSG_SNAPSHOT = 7


# --- hand-built raft frames (rust/multiraft/src/codec.rs layouts, eraftpb field numbers) ----------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _pb(fields: list[tuple[int, int | bytes]]) -> bytes:
    out = bytearray()
    for number, value in fields:
        if isinstance(value, bytes):
            out += _varint(number << 3 | 2) + _varint(len(value)) + value
        elif value:
            out += _varint(number << 3) + _varint(value)
    return bytes(out)


def raft_message(
    msg_type: int,
    to: int,
    sender: int,
    term: int,
    index: int = 0,
    commit: int = 0,
    entry_data: bytes | None = None,
) -> bytes:
    fields: list[tuple[int, int | bytes]] = [
        (1, msg_type),
        (2, to),
        (3, sender),
        (4, term),
        (5, term),
        (6, index),
        (8, commit),
    ]
    if entry_data is not None:
        fields.append((7, _pb([(2, term), (3, index + 1), (4, entry_data)])))
    return _pb(fields)


def raft_batch(sender: int, messages: list[tuple[int, bytes]]) -> bytes:
    out = bytearray(struct.pack("<BQI", 1, sender, len(messages)))
    for group, message in messages:
        out += struct.pack("<QI", group, len(message)) + message
    return bytes(out)


def snapshot_chunk(sender: int, group: int, index: int, term: int, data: bytes) -> bytes:
    head = struct.pack("<BQQQQQQQ", 1, sender, group, index, term, 0, len(data), 0)
    return head + struct.pack("<I", len(data)) + data + b"\x00"


def snapshot_ack(sender: int, group: int, index: int, term: int) -> bytes:
    return struct.pack("<BQQQQB", 1, sender, group, index, term, 1)


# --- the cluster ---------------------------------------------------------------------------------


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    async with formed_with_metrics(tmp_path) as c:
        yield c


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        sample, _, label_text = key.partition("{")
        found = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if sample == name and found == want:
            return float(value)
    return 0.0


async def _wait_metric(
    cluster: LocalCluster, node_id: int, name: str, at_least: float, **labels: str
) -> float:
    """Metrics refresh once a second: wait (bounded) until the sample reaches `at_least`."""
    async with asyncio.timeout(10):
        while True:
            value = _metric(await asyncio.to_thread(scrape, cluster, node_id), name, **labels)
            if value >= at_least:
                return value
            await asyncio.sleep(0.2)  # the scrape endpoint has no push channel: poll, bounded


async def _wait_log(cluster: LocalCluster, node_id: int, text: str) -> None:
    """Until node `node_id`'s log holds `text`, bounded. Refusals are counted at once but logged
    by a task that drains them once a second (`control.log_refusals`), so the count can be
    scraped before the line is written: on a loaded machine, by seconds."""
    path = cluster.nodes[node_id].log_path
    try:
        async with asyncio.timeout(10):
            while True:
                if text in path.read_text():
                    return
                await asyncio.sleep(0.1)  # a log file has no push channel: poll, bounded
    except TimeoutError:
        raise AssertionError(f"{text!r} not logged:\n{path.read_text()[-3000:]}") from None


def _picture(statuses: dict[int, Status]) -> dict[int, object]:
    """What must not change: terms, members, leaders' existence, topology, settings."""
    out: dict[int, object] = {}
    for node_id, st in statuses.items():
        groups = st["groups"]
        assert isinstance(groups, list)
        out[node_id] = (
            sorted(
                (g["group_id"], g["term"], tuple(g["voters"]), tuple(g["learners"])) for g in groups
            ),
            st["nodes"],
            st["settings"],
        )
    return out


async def _all_status(cluster: LocalCluster) -> dict[int, Status]:
    return {i: await cluster.status(i) for i in cluster.nodes}


def _leader_and_term(statuses: dict[int, Status], group_id: int) -> tuple[int, int]:
    """The group's leader and its term, as the leader reports them."""
    leader = leader_of(statuses, group_id)
    groups = statuses[leader]["groups"]
    assert isinstance(groups, list)
    term = next(g["term"] for g in groups if g["group_id"] == group_id)
    assert isinstance(term, int)
    return leader, term


def _creds(cluster: LocalCluster, which: str) -> Mtls:
    creds = cluster.admin_credentials if which == "admin" else cluster.client_credentials
    assert isinstance(creds, Mtls)
    return creds


# --- the tests -----------------------------------------------------------------------------------


async def test_a_client_certificate_cannot_forge_raft_change_membership_join_or_load(
    cluster: LocalCluster,
) -> None:
    before_status = await _all_status(cluster)
    before = _picture(before_status)
    async with Client([n.addr for n in cluster.nodes.values()], _creds(cluster, "client")) as c:
        await c.put(b"authz:before", b"1")
    g1_leader, term = _leader_and_term(before_status, 1)
    follower = next(i for i in cluster.nodes if i != g1_leader)
    forged: list[tuple[str, int, wire.MessageKind, bytes]] = []
    for node_id in cluster.nodes:
        forged += [
            # A heartbeat "from node 2" with a far higher term: made the leader step down before.
            (
                "heartbeat",
                node_id,
                wire.MessageKind.RAFT_BATCH,
                raft_batch(2, [(1, raft_message(MSG_HEARTBEAT, node_id, 2, term + 100))]),
            ),
            # An append from a node that does not exist, carrying a write.
            (
                "append",
                node_id,
                wire.MessageKind.RAFT_BATCH,
                raft_batch(
                    99,
                    [
                        (
                            1,
                            raft_message(
                                MSG_APPEND, node_id, 99, term + 100, 10_000, 10_001, b"forged"
                            ),
                        )
                    ],
                ),
            ),
            (
                "snapshot chunk",
                node_id,
                wire.MessageKind.SNAPSHOT_CHUNK,
                snapshot_chunk(g1_leader, 1, 10_000, term + 100, b"\x00" * 64),
            ),
            (
                "snapshot ack",
                node_id,
                wire.MessageKind.SNAPSHOT_ACK,
                snapshot_ack(follower, 1, 1, term),
            ),
        ]
    node3 = NodeInfo(3, parse_socket_addr("127.0.0.9:1"), NodeState.ACTIVE, 1)
    commands: list[MetadataCommand] = [
        SetGroupMembers(1, (1,), ()),
        RemoveNode(3),
        AddNode(node3),
        SetNodeState(3, NodeState.DECOMMISSIONED),
        AddGroupLearner(1, 77),
        PromoteGroupLearner(1, 77, 5),
        RemoveGroupMember(1, 2),
        AssignVShard(0, 2),
        PutSetting("owned", True),
    ]
    for command in commands:
        entry = MetadataEntry((command,)).encode()
        for forwarded in (False, True):
            forged.append(
                (
                    f"metadata {type(command).__name__}",
                    1,
                    wire.MessageKind.METADATA_PROPOSE,
                    encode_metadata_propose(entry, forwarded),
                )
            )
    join = wire.JoinRequest(node_id=77, listen_addr="127.0.0.77:9400", wire_version=1)
    secret = b"\x07" * 32  # not the cluster's: the role refuses before any token is looked at
    expired = replace(join, join_token=issue_token(secret, 77, int(time.time()) - 60))
    someone_elses = replace(join, join_token=issue_token(secret, 78, int(time.time()) + 600))
    forged += [
        ("join", 1, wire.MessageKind.JOIN_REQUEST, join.encode()),
        ("join, expired token", 1, wire.MessageKind.JOIN_REQUEST, expired.encode()),
        ("join, another node's token", 1, wire.MessageKind.JOIN_REQUEST, someone_elses.encode()),
        ("bench load", 1, wire.MessageKind.BENCH_LOAD, msgpack.packb({"op": "load_result"})),
        ("join token", 1, wire.MessageKind.JOIN_TOKEN_REQUEST, msgpack.packb({"node_id": 77})),
        ("audit", 1, wire.MessageKind.AUDIT_REQUEST, msgpack.packb({})),
        ("an answer kind", 1, wire.MessageKind.JOIN_RESPONSE, b""),
    ]
    async with Transport(CLIENT_NODE_ID, "127.0.0.1:0", _creds(cluster, "client")) as attacker:
        for what, node_id, kind, payload in forged:
            with pytest.raises(PermissionDenied) as refused:
                await attacker.send_rpc_to_addr(cluster.nodes[node_id].addr, kind, payload)
            assert "client" in str(refused.value), what
        # The same certificate still does what a client may.
        answer, _ = await attacker.send_rpc_to_addr(
            cluster.nodes[1].addr, wire.MessageKind.STATUS_REQUEST, b""
        )
        assert answer == wire.MessageKind.STATUS_RESPONSE
    after_status = await _all_status(cluster)
    assert _picture(after_status) == before, "a refused frame changed terms, members or settings"
    async with Client([n.addr for n in cluster.nodes.values()], _creds(cluster, "client")) as c:
        assert await c.get(b"authz:before") == b"1"
        assert await c.get(b"forged") is None
    for node_id in cluster.nodes:  # the heartbeat and the append, at every node
        seen = await _wait_metric(
            cluster, node_id, "nodedb_requests_refused_total", 2, kind="RaftBatch", reason="role"
        )
        assert seen == 2
    # The scrape is a snapshot refreshed once a second: one taken while the forged frames were
    # still being sent holds only the first kinds. Each count is awaited (bounded), then checked.
    proposes = await _wait_metric(
        cluster,
        1,
        "nodedb_requests_refused_total",
        2 * len(commands),
        kind="MetadataPropose",
        reason="role",
    )
    assert proposes == 2 * len(commands)
    for name in ("JoinRequest", "BenchLoad", "JoinTokenRequest", "AuditRequest", "SnapshotChunk"):
        await _wait_metric(cluster, 1, "nodedb_requests_refused_total", 1, kind=name, reason="role")
    await _wait_log(cluster, 1, "refused MetadataPropose from spiffe://localcluster/client/")


async def test_a_node_certificate_cannot_speak_for_another_node(cluster: LocalCluster) -> None:
    statuses = await _all_status(cluster)
    before = _picture(statuses)
    g1_leader, term = _leader_and_term(statuses, 1)
    target = next(i for i in cluster.nodes if i not in (2, 3)) if g1_leader in (2, 3) else g1_leader
    # Node 2's own certificate on another port, claiming to be node 3 (in the frame, and in a
    # message of an honest-looking frame).
    frames = [
        raft_batch(3, [(1, raft_message(MSG_HEARTBEAT, target, 3, term + 100))]),
        raft_batch(2, [(1, raft_message(MSG_HEARTBEAT, target, 3, term + 100))]),
    ]
    async with Transport(2, "127.0.0.1:0", cluster.node_credentials(2)) as impostor:
        for frame in frames:
            with pytest.raises(ClusterError):  # one-way kind on a request stream: no reply
                await impostor.send_rpc_to_addr(
                    cluster.nodes[target].addr, wire.MessageKind.RAFT_BATCH, frame
                )
    await _wait_metric(
        cluster,
        target,
        "nodedb_requests_refused_total",
        2,
        kind="RaftBatch",
        reason="sender_mismatch",
    )
    await _wait_metric(cluster, target, "nodedb_raft_inbound_forged_sender_total", 2)
    assert _picture(await _all_status(cluster)) == before


async def test_bench_load_needs_the_node_to_allow_it(cluster: LocalCluster) -> None:
    payload = msgpack.packb({"op": "load_result"})
    async with Transport(CLIENT_NODE_ID, "127.0.0.1:0", _creds(cluster, "admin")) as admin:
        with pytest.raises(PermissionDenied, match="allow-bench-load"):
            await admin.send_rpc_to_addr(
                cluster.nodes[1].addr, wire.MessageKind.BENCH_LOAD, payload
            )
    await _wait_metric(
        cluster,
        1,
        "nodedb_requests_refused_total",
        1,
        kind="BenchLoad",
        reason="bench_load_disabled",
    )


async def test_the_kv_path_cannot_write_into_the_metadata_group(cluster: LocalCluster) -> None:
    """KV_REQUEST is open to clients; a metadata entry sent through it as if group 0 were a KV
    group must not be applied (it would bypass METADATA_PROPOSE's node-only rule)."""
    statuses = await _all_status(cluster)
    before = _picture(statuses)
    g0_leader = leader_of(statuses, 0)
    entry = MetadataEntry((PutSetting("owned", True), RemoveNode(3))).encode()
    requests = [
        {"op": "propose_many", "gs": [0], "cmds": [entry], "t": 2000},  # the Rust serving path
        {"op": "propose", "g": 0, "cmds": [entry], "fwd": False, "t": 2000},  # the Python one
    ]
    async with Transport(CLIENT_NODE_ID, "127.0.0.1:0", _creds(cluster, "client")) as attacker:
        for request in requests:
            refused = "does not run the Kv state machine|only put, delete, cas and get"
            with pytest.raises(ClusterError, match=refused):
                await attacker.send_rpc_to_addr(
                    cluster.nodes[g0_leader].addr,
                    wire.MessageKind.KV_REQUEST,
                    msgpack.packb(request),
                )
    # The cluster still serves, and nothing of the refused entry was applied anywhere.
    async with Client([n.addr for n in cluster.nodes.values()], _creds(cluster, "client")) as c:
        await c.put(b"after", b"1")
    assert _picture(await _all_status(cluster)) == before


async def test_host_propose_is_refused_by_a_node_of_the_built_in_kv(cluster: LocalCluster) -> None:
    """HOST_PROPOSE carries commands for an embedding host's state machine (node certificates
    only). A node whose data groups run the built-in KV answers `NotEmbedded` for any group, the
    metadata group's leader included, and applies nothing."""
    statuses = await _all_status(cluster)
    before = _picture(statuses)
    g0_leader = leader_of(statuses, 0)
    entry = MetadataEntry((PutSetting("owned", True), RemoveNode(3))).encode()
    async with Transport(2, "127.0.0.1:0", cluster.node_credentials(2)) as node:
        for group, command in ((0, entry), (1, b"x")):
            with pytest.raises(RemoteError) as refused:
                await node.send_rpc_to_addr(
                    cluster.nodes[g0_leader].addr,
                    wire.MessageKind.HOST_PROPOSE,
                    encode_batch([(group, command)], 2000),
                )
            assert refused.value.code == "NotEmbedded", refused.value
    assert _picture(await _all_status(cluster)) == before


async def test_a_client_certificate_cannot_move_freeze_or_empty_a_vshard(
    cluster: LocalCluster,
) -> None:
    """vShard placement commands (freeze, drop, release, imports) change which keys a group
    serves: KV_REQUEST refuses them from anyone, VSHARD_STEP and PLACEMENT_REQUEST refuse a
    client certificate before any handler runs, and the key stays readable and writable."""
    async with Client([n.addr for n in cluster.nodes.values()], _creds(cluster, "client")) as c:
        await c.put(b"authz:vshard", b"kept")
        vshard = vshard_for_key(b"authz:vshard")
        group = c.routing.group_for_vshard(vshard)
    statuses = await _all_status(cluster)
    leader = leader_of(statuses, group)
    freeze = kv_vshard_command("freeze", vshard, 3 - group if group in (1, 2) else 1, 1)
    release = kv_vshard_command("release", vshard, 3 - group if group in (1, 2) else 1, 1)
    step = msgpack.packb({"g": group, "cmds": [freeze], "t": 2000})
    async with Transport(CLIENT_NODE_ID, "127.0.0.1:0", _creds(cluster, "client")) as attacker:
        for cmds in ([freeze], [release]):
            for request in (
                {"op": "propose_many", "gs": [group], "cmds": cmds, "t": 2000},
                {"op": "propose", "g": group, "cmds": cmds, "fwd": False, "t": 2000},
            ):
                with pytest.raises(ClusterError, match="only put, delete, cas and get"):
                    await attacker.send_rpc_to_addr(
                        cluster.nodes[leader].addr,
                        wire.MessageKind.KV_REQUEST,
                        msgpack.packb(request),
                    )
        with pytest.raises(PermissionDenied):
            await attacker.send_rpc_to_addr(
                cluster.nodes[leader].addr, wire.MessageKind.VSHARD_STEP, step
            )
        with pytest.raises(PermissionDenied):
            await attacker.send_rpc_to_addr(
                cluster.nodes[leader].addr,
                wire.MessageKind.PLACEMENT_REQUEST,
                encode_placement_request("move_vshard", vshard=vshard, to_group=1),
            )
    async with Client([n.addr for n in cluster.nodes.values()], _creds(cluster, "client")) as c:
        assert await c.get(b"authz:vshard") == b"kept"
        await c.put(b"authz:vshard", b"still served")
        assert await c.get(b"authz:vshard") == b"still served"


async def test_a_node_certificate_of_a_node_never_admitted_takes_no_part_in_raft(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """A valid node certificate (node 9, issued by the cluster CA) whose node was never admitted:
    its Raft frames are refused even with an honest `from`."""
    statuses = await _all_status(cluster)
    before = _picture(statuses)
    g1_leader, term = _leader_and_term(statuses, 1)
    ca = _creds(cluster, "client").ca
    stray = issue_node_credentials(
        ca, ca_key_path(ca.parent), "n9", ["127.0.0.1"], tmp_path / "stray"
    )
    frame = raft_batch(
        9, [(1, raft_message(MSG_APPEND, g1_leader, 9, term + 100, 10_000, 10_001, b"x"))]
    )
    # Found by an attack probe: a never-admitted node's certificate got any metadata entry
    # applied (a forwarded METADATA_PROPOSE: itself admitted with no token, members removed)
    # and emptied a vShard through VSHARD_STEP. Every kind a member sends is members only.
    g0_leader = leader_of(statuses, 0)
    admit_me = MetadataEntry(
        (AddNode(NodeInfo(9, parse_socket_addr("127.0.0.1:9409"), NodeState.ACTIVE, 1)),)
    ).encode()
    vshard = 7
    release = kv_vshard_command("release", vshard, 2, 1 << 62)
    member_kinds = [
        (g0_leader, wire.MessageKind.METADATA_PROPOSE, encode_metadata_propose(admit_me, True)),
        (g0_leader, wire.MessageKind.METADATA_PROPOSE, encode_metadata_propose(admit_me, False)),
        (g1_leader, wire.MessageKind.VSHARD_STEP, msgpack.packb({"g": 1, "cmds": [release]})),
        (g1_leader, wire.MessageKind.HOST_PROPOSE, encode_batch([(1, b"x")], 2000)),
        (g1_leader, wire.MessageKind.PEER_ADDRESS, b"127.0.0.1:9409"),
    ]
    async with Transport(9, "127.0.0.1:0", stray) as outsider:
        with pytest.raises(ClusterError):  # one-way kind on a request stream: no reply
            await outsider.send_rpc_to_addr(
                cluster.nodes[g1_leader].addr, wire.MessageKind.RAFT_BATCH, frame
            )
        for target, kind, payload in member_kinds:
            with pytest.raises(ClusterError) as refused:
                await outsider.send_rpc_to_addr(cluster.nodes[target].addr, kind, payload)
            assert "node 9 is not a member this node knows" in str(refused.value), kind
        # Nor does a join claiming an address its certificate does not name (attack probe,
        # session 31: a seed's address let a node certificate join with no token).
        claim = wire.JoinRequest(node_id=9, listen_addr="127.0.0.9:9409", wire_version=1)
        _kind, payload = await outsider.send_rpc_to_addr(
            cluster.nodes[g0_leader].addr, wire.MessageKind.JOIN_REQUEST, claim.encode()
        )
        refusal = wire.JoinResponse.decode(payload)
        assert not refusal.success
        assert refusal.permanent
        assert refusal.cluster_secret is None
        assert "claims listen address 127.0.0.9:9409" in refusal.error
        # Nor does a join for a member's id with another key get the state and the secret.
        node2_ip = cluster.nodes[2].addr.rsplit(":", 1)[0]  # the address it names is node 2's
        node2 = issue_node_credentials(
            ca, ca_key_path(ca.parent), "n2", ["127.0.0.1", node2_ip], tmp_path / "rekeyed"
        )
        join = wire.JoinRequest(node_id=2, listen_addr=cluster.nodes[2].addr, wire_version=1)
    async with Transport(2, "127.0.0.1:0", node2) as rekeyed:
        _kind, payload = await rekeyed.send_rpc_to_addr(
            cluster.nodes[g0_leader].addr, wire.MessageKind.JOIN_REQUEST, join.encode()
        )
    answer = wire.JoinResponse.decode(payload)
    assert not answer.success
    assert answer.cluster_secret is None
    assert "is a member whose pinned key is not the one this certificate holds" in answer.error
    await _wait_metric(
        cluster,
        g1_leader,
        "nodedb_requests_refused_total",
        1,
        kind="RaftBatch",
        reason="unknown_sender",
    )
    await _wait_metric(
        cluster,
        g0_leader,
        "nodedb_requests_refused_total",
        2,
        kind="MetadataPropose",
        reason="unknown_sender",
    )
    assert _picture(await _all_status(cluster)) == before


def _leaf_without_identity(creds: Mtls, out: Path) -> Mtls:
    """A leaf the cluster CA signed the way certificates were made before identities: IP SAN
    only (made with `cryptography`, as another tool would)."""
    import datetime
    import ipaddress

    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = cx509.load_pem_x509_certificate(creds.ca.read_bytes())
    ca_key = serialization.load_pem_private_key(
        ca_key_path(creds.ca.parent).read_bytes(), password=None
    )
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        cx509.CertificateBuilder()
        .subject_name(cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, "legacy")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(cx509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            cx509.SubjectAlternativeName([cx509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            cx509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "legacy.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "legacy.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (out / "legacy.key").chmod(0o600)
    return Mtls(creds.ca, out / "legacy.pem", out / "legacy.key")


async def test_a_certificate_without_an_identity_gets_permission_denied_at_once(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    legacy = _leaf_without_identity(_creds(cluster, "client"), tmp_path / "legacy")
    client = Client([n.addr for n in cluster.nodes.values()], legacy)
    with pytest.raises(PermissionDenied, match="gen-certs"):
        await client.connect()  # not "no node answered" after trying every node
    await client.close()
    await _wait_metric(
        cluster, 1, "nodedb_requests_refused_total", 1, kind="KvRequest", reason="no_identity"
    )


async def test_a_client_certificate_of_another_ca_is_told_so_not_unavailable(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """Every node refusing the handshake means this client's credentials are not the cluster's:
    the error says whose certificate, at once. A node that could not be reached at all may
    still be the one that accepts it, so then the client is Unavailable as before."""
    foreign = generate_cluster_credentials(
        tmp_path / "foreign", "other", [("client", ["127.0.0.1"])]
    )[0]
    stranger = Mtls(_creds(cluster, "client").ca, foreign.cert, foreign.key)
    client = Client([n.addr for n in cluster.nodes.values()], stranger)
    began = time.monotonic()
    with pytest.raises(HandshakeError, match="our certificate is not issued by the CA"):
        await client.connect()
    assert time.monotonic() - began < 5.0, "no retry, no timeout"
    await client.close()
    with_a_dead_node = Client(["127.0.0.1:1", *(n.addr for n in cluster.nodes.values())], stranger)
    with pytest.raises(Unavailable, match="our certificate is not issued by the CA"):
        await with_a_dead_node.connect()
    await with_a_dead_node.close()
