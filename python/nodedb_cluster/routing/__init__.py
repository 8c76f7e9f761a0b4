"""Key -> vShard -> group -> leader routing.

`vshard` is the hash (the contract every client shares), `table` the RoutingTable with its
hot-path arrays, `_kernels` the compiled batch kernels both use.
"""

from nodedb_cluster.routing.table import (
    GroupRoute,
    InvalidRoute,
    MalformedRoutingTable,
    RoutingTable,
)
from nodedb_cluster.routing.vshard import NUM_VSHARDS, vshard_for_key, vshards_for_keys

__all__ = [
    "NUM_VSHARDS",
    "GroupRoute",
    "InvalidRoute",
    "MalformedRoutingTable",
    "RoutingTable",
    "vshard_for_key",
    "vshards_for_keys",
]
