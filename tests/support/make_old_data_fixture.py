"""Writes `tests/fixtures/old_data.tar.xz`: the data directories of a 3-node cluster run by an
OLDER build, for `tests/multiprocess/test_old_data_multiprocess.py`.

It uses only APIs that build has. Run it with the old package and its core first on the path:

    git worktree add /tmp/old <commit>
    cp python/nodedb_cluster/routing/_kernels*.so /tmp/old/python/nodedb_cluster/routing/
    cd /tmp/old && CARGO_TARGET_DIR=/tmp/old/target \
        pip install --no-deps --target /tmp/old_site ./rust/py && cd -
    PYTHONPATH=/tmp/old/python:/tmp/old_site:tests/support \
        python tests/support/make_old_data_fixture.py <commit> tests/fixtures/old_data.tar.xz

The cluster is stopped the way an operator stops it (SIGTERM), so the directories are what an
upgrade finds. The certificates go in too (not the CA key): peers pin each other's keys.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import tarfile
import tempfile
from pathlib import Path

import old_data as od

import nodedb_cluster.localcluster as lc
from nodedb_cluster.client import Client


async def write(base: Path) -> dict[str, object]:
    lc.free_port = lambda hosts: od.PORT  # the catalog records peers at this port
    # Leaves valid as long as their CA (ten years), so the fixture outlives many releases.
    lc.generate_cluster_credentials = functools.partial(
        lc.generate_cluster_credentials, days=od.LEAF_DAYS
    )
    cluster = lc.LocalCluster(base, 3)
    try:
        await cluster.start()
        await cluster.wait_formed(60.0)
        addrs = [n.addr for n in cluster.nodes.values()]
        async with Client(addrs, cluster.client_credentials) as client:
            items = [(od.key(i), od.value(i)) for i in range(od.KEYS)]
            for at in range(0, len(items), 500):
                await client.put_many(items[at : at + 500])
            for i in range(0, od.KEYS, od.DELETED_EVERY):
                assert await client.delete(od.key(i))
            previous: bytes | None = None
            for step in range(1, od.CAS_STEPS + 1):
                assert await client.cas(od.CAS_KEY, previous, b"%d" % step)
                previous = b"%d" % step
            for i in range(od.HOT_WRITES):  # one at a time: one entry each
                await client.put(od.HOT_KEY, od.hot_value(i))
            hot_group = client.router.group_of(od.HOT_KEY)  # that build's spelling
            got = await client.get_many(list(od.expected()))
            assert got == list(od.expected().values()), "the old cluster holds what it wrote"
    finally:
        await cluster.close()
    return {"hot_group": hot_group}


def main() -> None:
    commit, out = sys.argv[1], Path(sys.argv[2])
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        facts = asyncio.run(write(base))
        snaps = sorted(p.name for p in base.glob(f"node*/snapshots/g{facts['hot_group']}-*.snap"))
        assert len(snaps) == 3, f"not every node snapshotted group {facts['hot_group']}: {snaps}"
        facts["snapshots"] = snaps
        manifest = {"commit": commit, "port": od.PORT, **facts}
        (base / od.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        with tarfile.open(out, "w:xz") as tar:
            tar.add(base / od.MANIFEST, od.MANIFEST)
            for node in ("node1", "node2", "node3"):
                tar.add(base / node, node)
            for cert in sorted((base / "certs").glob("*.*")):  # not ca-key/: no node needs it
                tar.add(cert, f"certs/{cert.name}")
    print(json.dumps(manifest))


if __name__ == "__main__":
    main()
