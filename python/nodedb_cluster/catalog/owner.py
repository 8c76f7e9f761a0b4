"""One process per catalog: an exclusive `flock` on `catalog/OWNER`, held while it is open.

Why: LMDB lets several processes open one environment, so a second node process started on a
running node's data dir (a typo in `--data-dir`, a supervisor starting a copy) got as far as
reading the catalog, checking the Raft log and logging an address change before the Raft log's
own lock refused it; given another `--node-id` and `--rejoin`, it would have moved the running
node's log aside first (the log-identity step runs before the Raft log is opened).
The lock is taken before anything of the data dir is read. The kernel drops it when the process
dies, `kill -9` included, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Final

from nodedb_cluster.errors import CatalogError, CatalogInUse

OWNER_FILE_NAME: Final = "OWNER"
_PID_BYTES_MAX: Final = 32


class OwnerLock:
    """The held lock; `release` (idempotent) gives it up."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, catalog_dir: Path) -> OwnerLock:
        """Lock `catalog_dir/OWNER` (created if absent) and write this process's id into it;
        `CatalogInUse` naming the holder's pid when another process holds it."""
        path = catalog_dir / OWNER_FILE_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise CatalogError(f"cannot open {path}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise CatalogInUse(
                f"catalog {catalog_dir} is in use by another process{holder} (a node running "
                "on this data dir): one node process per data dir"
            ) from None
        except OSError as e:
            os.close(fd)
            raise CatalogError(f"cannot lock {path}: {e}") from e
        try:  # the pid is for the message above only: not written durably
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # a full disk must not stop a node that holds the lock
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def _read_pid(fd: int) -> str:
    try:
        raw = os.pread(fd, _PID_BYTES_MAX, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {raw})" if raw.isdigit() else ""
