"""The cluster's recorded settings over a node's config (metadata/cluster_settings.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.config import ClusterConfig
from nodedb_cluster.errors import ClusterError
from nodedb_cluster.metadata.cluster_settings import adopt, check_data_kind, founded_with


def config(rf: int) -> ClusterConfig:
    return ClusterConfig(
        node_id=2,
        listen_addr=parse_socket_addr("127.0.0.2:9400"),
        seed_nodes=(parse_socket_addr("127.0.0.1:9400"),),
        data_dir=Path("/nonexistent"),
        insecure_transport=True,
        replication_factor=rf,
    )


def test_a_bootstrap_records_its_factor_and_every_node_adopts_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert founded_with(config(5), "kv") == {"replication_factor": 5, "data_state_machine": "kv"}
    assert adopt(config(3), {"replication_factor": 3}) == config(3)
    assert caplog.text == "", "the same value: nothing to say"
    assert adopt(config(5), {"replication_factor": 3}).replication_factor == 3
    assert "replication_factor 5 in node 2's config differs from the cluster's 3" in caplog.text


def test_a_cluster_that_recorded_none_keeps_each_nodes_own() -> None:
    assert adopt(config(5), {"k": "v"}) == config(5)


@pytest.mark.parametrize("recorded", [0, 16, True, "3", 2.0])
def test_a_recorded_value_out_of_range_is_refused_by_name(recorded: object) -> None:
    with pytest.raises(ClusterError, match="group 0 records replication_factor"):
        adopt(config(3), {"replication_factor": recorded})


def test_adopting_keeps_every_other_field() -> None:
    mine = dataclasses.replace(config(5), kv_quota_bytes=123)
    assert adopt(mine, {"replication_factor": 3}) == dataclasses.replace(mine, replication_factor=3)


def test_a_node_started_the_other_way_than_its_cluster_is_refused_naming_both() -> None:
    """Embedding probe, session 31: a host's factory given to a node of a KV cluster was
    never called, and the node came up Ready."""
    check_data_kind(2, "kv", {"data_state_machine": "kv"})
    check_data_kind(2, "python", {"data_state_machine": "python"})
    check_data_kind(2, "python", {}), "a cluster that recorded none is taken as it is"
    with pytest.raises(
        ClusterError,
        match=r"run the built-in KV .* node 2 was started to run "
        r"the embedding host's state machine .* without a state machine factory",
    ):
        check_data_kind(2, "python", {"data_state_machine": "kv"})
    with pytest.raises(ClusterError, match=r"state_machine=factory"):
        check_data_kind(2, "kv", {"data_state_machine": "python"})
    with pytest.raises(ClusterError, match="group 0 records data_state_machine 'lua'"):
        check_data_kind(2, "kv", {"data_state_machine": "lua"})
