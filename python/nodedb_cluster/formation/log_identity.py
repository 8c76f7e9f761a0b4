"""Which cluster and node a Raft log belongs to, written beside it, and the start-time check.

The catalog (`data_dir/catalog`) and the Raft log (`data_dir/raft`) are separate files that an
operator can lose, restore or copy separately. `raft/IDENTITY` (checksummed) names the cluster
and node the log was written for, so that:
- a catalog and a log of different clusters or nodes are never combined;
- a node whose catalog is gone but whose log survives never bootstraps a second cluster on top
  of it (the old log would be replayed under a new cluster id).

`decide` is pure: the shell (`formation/start.py`) reads the two identities, acts on the verdict
and writes the identity before the catalog's formation, so that every log has one.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgpack

from nodedb_cluster.catalog.checksum import read_sealed_file, seal
from nodedb_cluster.durable import fsync_dir, write_atomic
from nodedb_cluster.errors import ClusterError

IDENTITY_FILE_NAME: Final = "IDENTITY"
_SEAL_KEY: Final = b"raft/IDENTITY"
_FORMAT: Final = 1
_IDENTITY_BYTES_MAX: Final = 4096
WAL_SEGMENT_SUFFIX: Final = ".wal"


class LogIdentityError(ClusterError):
    """The Raft log and the catalog cannot be combined, or the identity file is damaged."""


@dataclass(frozen=True, slots=True)
class LogIdentity:
    cluster_id: str
    node_id: int

    def __str__(self) -> str:
        return f"cluster {self.cluster_id} node {self.node_id}"


class Verdict(enum.Enum):
    PROCEED = "proceed"
    """Catalog and log agree (or there is neither)."""
    STAMP = "stamp"
    """A formed catalog and no identity file: written now (a data dir from before the file
    existed, or a crash between the two writes)."""
    DISCARD = "discard"
    """The operator asked to start over on this node: move the Raft state aside, then form."""


def raft_dir(data_dir: Path) -> Path:
    return data_dir / "raft"


def identity_path(data_dir: Path) -> Path:
    return raft_dir(data_dir) / IDENTITY_FILE_NAME


def has_raft_log(data_dir: Path) -> bool:
    """Whether `data_dir/raft` holds any log segment (an identity file alone is no log)."""
    try:
        return any(p.name.endswith(WAL_SEGMENT_SUFFIX) for p in raft_dir(data_dir).iterdir())
    except FileNotFoundError:
        return False
    except OSError as e:
        raise LogIdentityError(f"cannot list {raft_dir(data_dir)}: {e}") from e


def decide(
    catalog: LogIdentity | None,
    log: LogIdentity | None,
    has_log: bool,
    *,
    rejoin: bool,
    force_bootstrap: bool,
    catalog_path: Path,
    data_dir: Path,
    log_opened: bool = False,
) -> Verdict:
    """What to do at start given the catalog's identity (None: not formed), the identity file's
    (None: absent), whether a log exists and whether the catalog records that it was opened.
    Refusals raise `LogIdentityError` naming the files and the ways out."""
    ident = identity_path(data_dir)
    if catalog is not None and log_opened and not has_log:
        # Its segments deleted or lost: the node would come back empty and forget every entry
        # it acknowledged (operator probe, session 31: with every node's log gone, all three
        # came up Ready, no group ever had a leader, and nothing said why).
        if rejoin:
            return Verdict.DISCARD
        raise LogIdentityError(
            f"{raft_dir(data_dir)} holds no Raft log segment, but catalog {catalog_path} "
            f"records that {catalog}'s log was opened: the log was deleted or lost, with every "
            "entry this node acknowledged; refusing to start. Restore the log from a backup, "
            "or start with --rejoin to rejoin as a fresh replica that its peers refill (if "
            "every node lost its log, the cluster's data is gone: move the data dirs aside and "
            "bootstrap a new cluster)"
        )
    if catalog is not None:
        if log is None:
            return Verdict.STAMP
        if log == catalog:
            return Verdict.PROCEED
        if rejoin:
            return Verdict.DISCARD
        if log.cluster_id == catalog.cluster_id:
            # Most likely a wrong --node-id or --data-dir: say that first, and offer the way
            # that discards a log only for when that log is truly unwanted.
            raise LogIdentityError(
                f"data dir {data_dir} holds the Raft log of {log} ({ident}), but this process "
                f"is {catalog} (--node-id {catalog.node_id}): check --node-id and --data-dir; "
                "refusing to start. Only if that log is no longer wanted (its node runs on "
                "another data dir, or is gone), start with --rejoin to move it aside and "
                f"rejoin as a fresh replica of node {catalog.node_id}"
            )
        raise LogIdentityError(
            f"catalog {catalog_path} belongs to {catalog} but the Raft log beside it "
            f"({ident}) belongs to {log}: they were not written by the same node; refusing to "
            "start. Restore the matching catalog, or start with --rejoin to discard this "
            "log and rejoin as a fresh replica"
        )
    if not has_log:
        return Verdict.PROCEED
    if rejoin or force_bootstrap:
        return Verdict.DISCARD
    owner = f" of {log}" if log is not None else ""
    raise LogIdentityError(
        f"{raft_dir(data_dir)} holds a Raft log{owner} but catalog {catalog_path} is missing "
        "or empty; refusing to bootstrap or join on top of it (that would serve the old log "
        "under a new cluster identity). Either restore the catalog, or start with --rejoin to "
        "move the log aside and rejoin the cluster as a fresh replica with the same node id, "
        "or, if every node of the cluster is lost, start with --force-bootstrap to move it "
        "aside and bootstrap a new, empty cluster"
    )


def read_identity(data_dir: Path) -> LogIdentity | None:
    """The identity file's content; None when absent; `LogIdentityError` naming the file when it
    cannot be trusted."""
    path = identity_path(data_dir)
    try:
        payload = read_sealed_file(path, _SEAL_KEY, _IDENTITY_BYTES_MAX)
    except OSError as e:
        raise LogIdentityError(f"cannot read {path}: {e}") from e
    except ValueError as e:
        raise LogIdentityError(
            f"{path} is damaged (its checksum does not match); it names the cluster and node "
            "the Raft log beside it belongs to. Restore it from a backup, or start with "
            "--rejoin to discard this node's Raft log and rejoin as a fresh replica"
        ) from e
    if payload is None:
        return None
    try:
        doc = msgpack.unpackb(payload, raw=False)
        if doc.get("format") != _FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, this build reads {_FORMAT}")
        cluster_id, node_id = doc["cluster_id"], doc["node_id"]
        if not isinstance(cluster_id, str) or not isinstance(node_id, int):
            raise ValueError("cluster_id or node_id has the wrong type")
    except (ValueError, KeyError, AttributeError, msgpack.UnpackException) as e:
        raise LogIdentityError(f"{path} cannot be read: {e}") from e
    return LogIdentity(cluster_id, node_id)


def write_identity(data_dir: Path, identity: LogIdentity) -> None:
    """Write the identity file atomically and durably (temp file, fsync, rename, fsync dir)."""
    directory = raft_dir(data_dir)
    path = identity_path(data_dir)
    payload = msgpack.packb(
        {"format": _FORMAT, "cluster_id": identity.cluster_id, "node_id": identity.node_id},
        use_bin_type=True,
    )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(path, seal(_SEAL_KEY, payload))
    except OSError as e:
        raise LogIdentityError(f"cannot write {path}: {e}") from e


def discard_raft_state(data_dir: Path) -> Path:
    """Move `raft/` and `snapshots/` into `discarded-<UTC time>/` (kept for forensics; the
    operator deletes it) and return that directory."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = data_dir / f"discarded-{stamp}"
    suffix = 0
    while target.exists():
        suffix += 1
        target = data_dir / f"discarded-{stamp}-{suffix}"
    try:
        target.mkdir(parents=True)
        for name in ("raft", "snapshots"):
            source = data_dir / name
            if source.exists():
                source.replace(target / name)
        fsync_dir(data_dir)
    except OSError as e:
        raise LogIdentityError(f"cannot move the Raft state of {data_dir} aside: {e}") from e
    return target
