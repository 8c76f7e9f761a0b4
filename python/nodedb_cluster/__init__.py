"""nodedb-cluster: the distributed coordination layer of NodeDB.

The entry points most users need: `ClusterConfig`, `start_cluster` (returns a running `Node`,
whose `kv` is the replicated KV), `Client` (the KV from another process).
"""

from nodedb_cluster.addr import SocketAddr, parse_socket_addr
from nodedb_cluster.client import Client
from nodedb_cluster.config import ClusterConfig
from nodedb_cluster.formation.start import start_cluster
from nodedb_cluster.node import Node
from nodedb_cluster.status import NodeStatus
from nodedb_cluster.transport import Insecure, Mtls

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ClusterConfig",
    "Insecure",
    "Mtls",
    "Node",
    "NodeStatus",
    "SocketAddr",
    "__version__",
    "parse_socket_addr",
    "start_cluster",
]
