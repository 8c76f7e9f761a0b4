"""The mark of a bootstrap under way: `<data_dir>/BOOTSTRAPPING`, written before the catalog names
the new cluster and removed once every group of its routing exists in the Raft log.

Why: the bootstrap saves the catalog before it creates the groups (a crash after the save must
restart, never found a second cluster), so a crash in between, or a host state machine factory
raising there, left a node that restarted Ready without the groups it never created: every key
of theirs timed out, for good, and nothing said why. A restart that finds the mark creates them
as the bootstrap would have (this node their one voter) and then removes it.

The mark holds the cluster id, sealed (`catalog.checksum`): a restart believes it only for the
cluster its catalog names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from nodedb_cluster.catalog.checksum import read_sealed_file, seal
from nodedb_cluster.durable import fsync_dir, write_atomic
from nodedb_cluster.errors import CatalogError

MARK_FILE_NAME: Final = "BOOTSTRAPPING"
_SEAL_KEY: Final = b"BOOTSTRAPPING"
_MARK_BYTES_MAX: Final = 4096
"""A cluster id is 32 hex characters; anything much longer is not a mark."""


def mark_path(data_dir: Path) -> Path:
    return data_dir / MARK_FILE_NAME


def write_mark(data_dir: Path, cluster_id: str) -> None:
    """Durably mark the bootstrap of `cluster_id` as under way (temp file, fsync, rename)."""
    path = mark_path(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(path, seal(_SEAL_KEY, cluster_id.encode()))
    except OSError as e:
        raise CatalogError(f"cannot write {path}: {e}") from e


def read_mark(data_dir: Path) -> str | None:
    """The cluster id whose bootstrap did not finish here, None when none is marked. A mark that
    is not one (changed on disk) raises `CatalogError` naming the file and the ways out."""
    path = mark_path(data_dir)
    try:
        payload = read_sealed_file(path, _SEAL_KEY, _MARK_BYTES_MAX)
    except OSError as e:
        raise CatalogError(f"cannot read {path}: {e}") from e
    except ValueError as e:
        raise CatalogError(
            f"{path} is damaged (its checksum does not match): it marks a bootstrap of this node "
            "that did not finish. Refusing to start: delete it if every group of the routing "
            "exists on this node, or delete the data dir to bootstrap again"
        ) from e
    return None if payload is None else payload.decode("utf-8", errors="replace")


def clear_mark(data_dir: Path) -> None:
    """Remove the mark (durably: a crash after this never resumes a finished bootstrap)."""
    path = mark_path(data_dir)
    try:
        path.unlink(missing_ok=True)
        fsync_dir(data_dir)
    except OSError as e:
        raise CatalogError(f"cannot remove {path}: {e}") from e
