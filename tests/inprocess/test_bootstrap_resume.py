"""Restarts that must not come up Ready with nothing to serve. A bootstrap cut short after its
catalog was saved, before every group existed (formation/bootstrap_mark.py): the restart creates
the missing groups (every key of theirs used to time out, for good); the cut is a host state
machine factory that raises for one group, as a crash at that point would leave it. A node its
catalog says was decommissioned (formation/retired.py): refused. Real engine, real files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.catalog import Catalog
from nodedb_cluster.config import ClusterConfig
from nodedb_cluster.errors import CatalogError, ClusterError, NodeRetired
from nodedb_cluster.formation.bootstrap_mark import mark_path, read_mark, write_mark
from nodedb_cluster.formation.start import start_cluster
from nodedb_cluster.localcluster import free_port
from nodedb_cluster.raft import StateMachine, StateMachineFactory
from nodedb_cluster.topology import NodeState

GROUPS = 3


class Log:
    """Keeps every command applied: enough to see a group serve."""

    def __init__(self) -> None:
        self.applied: list[bytes] = []

    def apply_batch(self, entries: list[tuple[int, bytes]]) -> list[bytes]:
        self.applied += [command for _, command in entries]
        return [b"ok"] * len(entries)

    def snapshot(self) -> bytes:
        return b"\n".join(self.applied)

    def restore(self, data: bytes) -> None:
        self.applied = data.split(b"\n") if data else []


def factory(failing_group: int | None) -> StateMachineFactory:
    def make(group_id: int) -> StateMachine:
        if group_id == failing_group:
            raise OSError(28, "the host's store could not open its files")
        return Log()

    return make


def config(tmp_path: Path) -> ClusterConfig:
    addr = parse_socket_addr(f"127.0.0.1:{free_port(['127.0.0.1'])}")
    return ClusterConfig(
        node_id=1,
        listen_addr=addr,
        seed_nodes=(addr,),
        data_dir=tmp_path / "node1",
        insecure_transport=True,
        num_groups=GROUPS,
    )


async def test_a_restart_creates_the_groups_a_cut_bootstrap_did_not(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with pytest.raises(Exception, match="could not open its files"):
        await start_cluster(cfg, state_machine=factory(failing_group=2))
    assert read_mark(cfg.data_dir) is not None, "the cut bootstrap left its mark"
    node = await start_cluster(cfg, state_machine=factory(failing_group=None))
    try:
        status = await node.status()
        assert {g.group_id: g.role for g in status.groups} == {
            g: "leader" for g in range(GROUPS + 1)
        }
        for group in range(1, GROUPS + 1):  # group 2 and 3 were never created by the bootstrap
            assert await node.data.propose(b"x", group=group, timeout_s=5.0) == b"ok"
        assert not mark_path(cfg.data_dir).exists(), "finished: the mark is gone"
    finally:
        await node.shutdown()
    again = await start_cluster(cfg, state_machine=factory(failing_group=None))
    try:  # a plain restart now, every group from the log
        assert await again.data.propose(b"y", group=3, timeout_s=5.0) == b"ok"
    finally:
        await again.shutdown()


async def test_a_mark_of_another_cluster_or_damaged_is_refused_naming_it(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    node = await start_cluster(cfg, state_machine=factory(failing_group=None))
    await node.shutdown()
    write_mark(cfg.data_dir, "0" * 32)
    with pytest.raises(CatalogError, match="marks an unfinished bootstrap of cluster 0000"):
        await start_cluster(cfg, state_machine=factory(failing_group=None))
    path = mark_path(cfg.data_dir)
    path.write_bytes(b"#" + path.read_bytes()[1:])
    with pytest.raises(CatalogError, match=f"{path} is damaged"):
        await start_cluster(cfg, state_machine=factory(failing_group=None))
    path.unlink()  # the operator's way out once every group exists
    node = await start_cluster(cfg, state_machine=factory(failing_group=None))
    await node.shutdown()


async def test_a_node_its_catalog_says_decommissioned_refuses_to_restart(tmp_path: Path) -> None:
    """Found by an operator probe: restarted, a decommissioned node came up Ready with nothing
    to serve, its stale groups campaigning for good."""
    cfg = config(tmp_path)
    node = await start_cluster(cfg, state_machine=factory(failing_group=None))
    await node.shutdown()
    with Catalog.open(cfg.data_dir) as catalog:
        topology = catalog.load_topology()
        assert topology is not None
        topology.set_state(1, NodeState.DECOMMISSIONED)
        catalog.save_topology(topology)
    with pytest.raises(
        NodeRetired, match=r"node 1 was decommissioned \(catalog .*join it as a new"
    ):
        await start_cluster(cfg, state_machine=factory(failing_group=None))


@pytest.mark.parametrize("founded_as", ["kv", "python"])
async def test_a_restart_the_other_way_than_its_cluster_is_refused(
    tmp_path: Path, founded_as: str
) -> None:
    """Embedding probe, session 31: a factory given to a node of a KV cluster was never called
    and the node came up Ready (its `node.data` calls refused by the leaders one by one)."""
    cfg = config(tmp_path)
    host = factory(failing_group=None)
    node = await start_cluster(cfg, state_machine=host if founded_as == "python" else None)
    await node.shutdown()
    other = None if founded_as == "python" else host
    with pytest.raises(ClusterError, match="was started to run") as refused:
        await start_cluster(cfg, state_machine=other)
    assert ("state_machine=factory" in str(refused.value)) == (founded_as == "python")
    node = await start_cluster(cfg, state_machine=host if founded_as == "python" else None)
    await node.shutdown()  # the cluster's own way still starts
