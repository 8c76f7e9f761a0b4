"""Who bootstraps (docs/JOIN.md): the decision depends only on the catalog and the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.config import ClusterConfig
from nodedb_cluster.formation.decide import FormationPath, decide_formation


def _config(listen: str, seeds: list[str], tmp_path: Path, force: bool = False) -> ClusterConfig:
    return ClusterConfig(
        node_id=7,
        listen_addr=parse_socket_addr(listen),
        seed_nodes=tuple(parse_socket_addr(s) for s in seeds),
        data_dir=tmp_path,
        force_bootstrap=force,
        insecure_transport=True,
    )


def test_bootstrapped_catalog_restarts_whatever_the_seeds_say(tmp_path: Path) -> None:
    cfg = _config("10.0.0.1:9400", ["10.0.0.1:9400"], tmp_path, force=True)
    assert decide_formation(cfg, catalog_bootstrapped=True) is FormationPath.RESTART


def test_smallest_seed_in_socket_order_bootstraps(tmp_path: Path) -> None:
    # 10.0.0.9 < 10.0.0.10 numerically, although "10.0.0.10" < "10.0.0.9" as text.
    seeds = ["10.0.0.10:9400", "10.0.0.9:9400", "[::1]:9400"]
    assert decide_formation(_config("10.0.0.9:9400", seeds, tmp_path), False) is (
        FormationPath.BOOTSTRAP
    )
    assert decide_formation(_config("10.0.0.10:9400", seeds, tmp_path), False) is (
        FormationPath.JOIN
    )
    # IPv6 sorts after every IPv4 address.
    assert decide_formation(_config("[::1]:9400", seeds, tmp_path), False) is FormationPath.JOIN


def test_port_breaks_ties_between_equal_hosts(tmp_path: Path) -> None:
    seeds = ["127.0.0.1:9401", "127.0.0.1:9400"]
    assert decide_formation(_config("127.0.0.1:9400", seeds, tmp_path), False) is (
        FormationPath.BOOTSTRAP
    )
    assert decide_formation(_config("127.0.0.1:9401", seeds, tmp_path), False) is (
        FormationPath.JOIN
    )


def test_force_bootstrap_makes_any_seed_bootstrap(tmp_path: Path) -> None:
    seeds = ["127.0.0.1:9400", "127.0.0.1:9401"]
    cfg = _config("127.0.0.1:9401", seeds, tmp_path, force=True)
    assert decide_formation(cfg, False) is FormationPath.BOOTSTRAP


@pytest.mark.parametrize("seeds", [[], ["127.0.0.1:9400"]])
def test_non_seed_joins(tmp_path: Path, seeds: list[str]) -> None:
    cfg = _config("127.0.0.2:9400", seeds, tmp_path)
    assert decide_formation(cfg, False) is FormationPath.JOIN


def test_every_node_of_a_simultaneous_start_agrees_on_one_bootstrapper(tmp_path: Path) -> None:
    seeds = [f"127.0.0.{i}:9400" for i in (5, 3, 11, 2, 4)]
    paths = [decide_formation(_config(s, seeds, tmp_path), False) for s in seeds]
    assert paths.count(FormationPath.BOOTSTRAP) == 1
    assert paths[seeds.index("127.0.0.2:9400")] is FormationPath.BOOTSTRAP
