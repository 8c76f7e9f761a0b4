"""The node's catalog: an LMDB environment at `data_dir/catalog` (cluster id, topology, routing,
settings). See `layout.py` for the keys and `store.py` for the API."""

from nodedb_cluster.catalog.layout import FORMAT_VERSION
from nodedb_cluster.catalog.migrations import MIGRATIONS
from nodedb_cluster.catalog.store import Catalog, Formation, RoutingCodec

__all__ = ["FORMAT_VERSION", "MIGRATIONS", "Catalog", "Formation", "RoutingCodec"]
