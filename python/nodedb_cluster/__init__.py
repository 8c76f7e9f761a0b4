"""nodedb-cluster: the distributed coordination layer of NodeDB."""

__version__ = "0.1.0"
