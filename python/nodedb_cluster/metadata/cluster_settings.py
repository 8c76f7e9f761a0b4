"""Settings the whole cluster shares, recorded in group 0 when it is bootstrapped.

The replication factor is one per cluster: every node plans placement with it (the reconciler
fills and trims replicas to it, the rebalancer and admissions cap groups at it), so two nodes
with different values undid each other's work for as long as both ran. The bootstrapping node
records its configured value in group 0's settings; every node, at each start, adopts the
recorded value over its own config and says so when they differ. A cluster bootstrapped before
the value was recorded goes on with each node's own config, as it did.

What its data groups run is one per cluster too: the built-in KV, or the embedding host's state
machine. A node started the other way than the cluster was bootstrapped is refused, naming both:
a host's factory given to a node of a KV cluster was never called, and its `node.data` calls
were refused by the leaders one by one (embedding probe, session 31).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Final

from nodedb_cluster.config import REPLICATION_FACTOR_MAX, ClusterConfig
from nodedb_cluster.errors import ClusterError
from nodedb_cluster.metadata.commands import SettingValue
from nodedb_cluster.raft import StateMachineKind

log = logging.getLogger(__name__)

REPLICATION_FACTOR: Final = "replication_factor"
DATA_STATE_MACHINE: Final = "data_state_machine"
_RUNS: Final[dict[str, str]] = {
    "kv": "the built-in KV (node.kv)",
    "python": "the embedding host's state machine (node.data)",
}
_START_AS: Final[dict[str, str]] = {
    "kv": "start it without a state machine factory (`nodedb-cluster start`, or "
    "start_cluster(config))",
    "python": "start it with start_cluster(config, state_machine=factory)",
}


def founded_with(config: ClusterConfig, kind: StateMachineKind) -> dict[str, SettingValue]:
    """The settings a cluster bootstrapped from `config`, its data groups running `kind`,
    records."""
    return {REPLICATION_FACTOR: config.replication_factor, DATA_STATE_MACHINE: kind}


def check_data_kind(node_id: int, kind: StateMachineKind, settings: Mapping[str, object]) -> None:
    """Refuse a node started to run `kind` on a cluster whose data groups run another (a
    cluster that recorded none is taken as it is)."""
    recorded = settings.get(DATA_STATE_MACHINE)
    if recorded is None or recorded == kind:
        return
    if not isinstance(recorded, str) or recorded not in _RUNS:
        raise ClusterError(
            f"group 0 records {DATA_STATE_MACHINE} {recorded!r}, not one of {sorted(_RUNS)}: "
            f"refusing to guess what this cluster's data groups run"
        )
    raise ClusterError(
        f"this cluster's data groups run {_RUNS[recorded]}, as group 0 recorded when it was "
        f"bootstrapped, but node {node_id} was started to run {_RUNS[kind]}: "
        f"{_START_AS[recorded]}"
    )


def adopt(config: ClusterConfig, settings: Mapping[str, object]) -> ClusterConfig:
    """`config` with the cluster's recorded values in place of its own, each difference
    logged once (a warning: this node's config says something the cluster does not do)."""
    recorded = settings.get(REPLICATION_FACTOR)
    if recorded is None:
        return config
    if (
        isinstance(recorded, bool)
        or not isinstance(recorded, int)
        or not 1 <= recorded <= REPLICATION_FACTOR_MAX
    ):
        raise ClusterError(
            f"group 0 records replication_factor {recorded!r}, not an integer in "
            f"1..{REPLICATION_FACTOR_MAX}: refusing to place replicas by it"
        )
    if recorded != config.replication_factor:
        log.warning(
            "replication_factor %d in node %d's config differs from the cluster's %d, recorded "
            "in group 0 when it was bootstrapped: the cluster's is used (every node places "
            "replicas by one factor; set %d in this node's config to silence this)",
            config.replication_factor,
            config.node_id,
            recorded,
            recorded,
        )
    return dataclasses.replace(config, replication_factor=recorded)
