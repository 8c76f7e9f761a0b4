"""Who forms the cluster: restart, bootstrap or join (docs/JOIN.md "Who bootstraps").

A pure function of the catalog's state and the config. Liveness of other seeds never enters it, so
nodes started at the same moment with the same seed list cannot form two clusters: exactly one of
them (the smallest seed in socket-address order, or the one told `force_bootstrap`) bootstraps.
"""

from __future__ import annotations

import enum

from nodedb_cluster.config import ClusterConfig


class FormationPath(enum.Enum):
    """The three ways a node becomes a member."""

    RESTART = "restart"
    """The catalog holds a cluster id: reload everything from data_dir; seeds are ignored."""
    BOOTSTRAP = "bootstrap"
    """Create a new cluster with this node as its only member."""
    JOIN = "join"
    """Ask the seeds to admit this node."""


def decide_formation(config: ClusterConfig, catalog_bootstrapped: bool) -> FormationPath:
    """The formation path for `config` given whether the catalog already holds a cluster id."""
    if catalog_bootstrapped:
        return FormationPath.RESTART
    if config.rejoin:  # a member that lost its catalog rejoins; it never founds a new cluster
        return FormationPath.JOIN
    seeds = config.seed_nodes
    if config.listen_addr in seeds and (config.force_bootstrap or config.listen_addr == min(seeds)):
        return FormationPath.BOOTSTRAP
    return FormationPath.JOIN
