"""A data group's memory is bounded (session 20), on three real node processes with mTLS:

- at its quota (`kv_quota_bytes`) a group refuses writes with `QuotaExceeded`, naming itself
  and the quota, from the `Client` and from the CLI, keeps serving reads and deletes, and takes
  writes again once deletes bring it below;
- a client certificate that never acknowledges its session results cannot make every replica
  keep a copy of a large value per compare-and-set it loses (it held ~32 MiB of each node's
  memory per 100-byte request)."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import nodedb_cluster_core as core
import pytest

from nodedb_cluster import wire
from nodedb_cluster.client import CLIENT_NODE_ID, Client
from nodedb_cluster.errors import QuotaExceeded
from nodedb_cluster.localcluster import LocalCluster, leader_of
from nodedb_cluster.routing import vshard_for_key
from nodedb_cluster.transport import Mtls, Transport
from support.cli_run import cred_flags, run_cli

pytestmark = pytest.mark.multiprocess

QUOTA = 256 << 10
VALUE = b"v" * 4096
WRITES_MAX = 200
"""Bound on the writes that fill the group (the quota is reached after ~64)."""
BIG = 16 << 20
LOST_CAS = 24
GROWTH_MAX = 64 << 20
"""Each node's RSS may grow this much over the lost CAS (it grew 24 x 16 MiB before)."""


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


async def _fill(client: Client) -> int:
    """Writes of `VALUE` until the group refuses one; how many were taken."""
    for written in range(WRITES_MAX):
        try:
            await client.put(b"k%d" % written, VALUE)
        except QuotaExceeded:
            return written
    raise AssertionError(f"{WRITES_MAX} writes of {len(VALUE)} bytes taken under a {QUOTA} quota")


def _pids(cluster: LocalCluster) -> dict[int, int]:
    pids = {}
    for node_id, node in cluster.nodes.items():
        assert node.proc is not None
        pids[node_id] = node.proc.pid
    return pids


async def test_a_group_at_its_quota_refuses_writes_but_serves_reads_and_deletes(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster(tmp_path / "c", 3, overrides={"num_groups": 1, "kv_quota_bytes": QUOTA})
    try:
        await cluster.start()
        await cluster.wait_formed(60.0)
        addrs = [n.addr for n in cluster.nodes.values()]
        async with Client(addrs, cluster.client_credentials) as client:
            written = await _fill(client)
            with pytest.raises(QuotaExceeded) as refused:
                await client.put(b"one more", VALUE)
            assert QUOTA // (len(VALUE) + 8) <= written < QUOTA // len(VALUE) + 2
            assert refused.value.group == 1
            assert f"at its quota of {QUOTA}" in str(refused.value)
            assert "deletes are served" in str(refused.value)
            with pytest.raises(QuotaExceeded):
                await client.cas(b"k0", VALUE, b"x")

            flags = ["--addr", addrs[1], *cred_flags(cluster.client_credentials)]
            code, _, err = await run_cli("put", "more", "x", *flags)
            assert code == 1, err
            assert "kv_quota_bytes" in err, err
            code, out, err = await run_cli("get", "k3", "--json", *flags)
            assert code == 0, err
            assert json.loads(out)["value"] == VALUE.decode()
            code, out, err = await run_cli("status", "--json", *flags)
            assert code == 0, err
            doc = json.loads(out)
            assert doc["kv_quota_bytes"] == QUOTA
            (group,) = [g for g in doc["groups"] if g["group_id"] == 1]
            assert group["kv_bytes"] >= QUOTA
            code, out, err = await run_cli("status", *flags)
            assert code == 0, err
            assert "AT QUOTA (256.0 KiB): writes refused" in out, out

            assert await client.get_many([b"k%d" % i for i in range(written)]) == [VALUE] * written
            for i in range(8):
                assert await client.delete(b"k%d" % i)
            await client.put(b"after", b"1")
            assert await client.get(b"after") == b"1"
    finally:
        await cluster.close()


async def test_lost_compare_and_sets_on_a_large_value_do_not_grow_every_replica(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster(tmp_path / "c", 3, overrides={"num_groups": 1})
    try:
        await cluster.start()
        statuses = await cluster.wait_formed(60.0)
        key = b"large"
        addrs = [n.addr for n in cluster.nodes.values()]
        async with Client(addrs, cluster.client_credentials) as c:
            await c.put(key, b"x" * BIG)
            group = c.routing.group_for_vshard(vshard_for_key(key))
        leader = cluster.nodes[leader_of(statuses, group)]
        pids = _pids(cluster)
        before = {n: _rss(pid) for n, pid in pids.items()}
        creds = cluster.client_credentials
        assert isinstance(creds, Mtls)
        async with Transport(CLIENT_NODE_ID, "127.0.0.1:0", creds) as attacker:

            async def lost_cas(seq: int) -> bytes:
                cas = core.kv_command("cas", key, b"y", b"not-it")
                # acked_below 0: this client never acknowledges a result.
                cmd = core.kv_session(0xA77AC4, seq, 0, cas)
                request = {"op": "propose_many", "gs": [group], "cmds": [cmd], "t": 20_000}
                kind, reply = await attacker.send_rpc_to_addr(
                    leader.addr, wire.MessageKind.KV_REQUEST, msgpack.packb(request)
                )
                assert kind == wire.MessageKind.KV_RESPONSE
                result: bytes = msgpack.unpackb(reply)["r"][0]
                return result

            for seq in range(1, LOST_CAS + 1):
                result = await lost_cas(seq)
                assert result[0] == 2, "CasMismatch"
                assert len(result) > BIG, "with the current value"
            # The same seq again is not applied twice; its large result was not kept.
            assert await lost_cas(1) == bytes([3]), "Duplicate"
        after = {n: _rss(pid) for n, pid in pids.items()}
        grown = {n: after[n] - before[n] for n in pids}
        assert all(g < GROWTH_MAX for g in grown.values()), grown
        async with Client(addrs, cluster.client_credentials) as c:
            assert await c.get(key) == b"x" * BIG
    finally:
        await cluster.close()
