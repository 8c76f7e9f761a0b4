"""A small real filesystem for ENOSPC tests: a tmpfs mounted for the test, and a file that fills it.

    with tmpfs(tmp_path / "mnt", "4m") as fs:   # skips the test unless root may mount
        blocker = fill(fs)                       # the next write that needs space fails
        ...
        blocker.unlink()                         # space again

Mounting needs root (CAP_SYS_ADMIN): elsewhere the test is skipped with that reason. The mount is
always undone, also when the test fails.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

FILL_CHUNK_BYTES = 65536
FILL_CHUNKS_MAX = 16384
"""1 GiB of chunks: far more than any test's tmpfs holds, so a fill that never ends is a bug."""


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (mount's syntax: "4m") at `mount_point` for the block."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs (for a real ENOSPC) needs root")
    mount_point.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"mount -t tmpfs failed (needs root with CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(fs: Path, leave_bytes: int = 0, name: str = "blocker") -> Path:
    """Another process's file, written until the filesystem is full; then `leave_bytes` given
    back (a later write that needs more than that is cut short). Returns the file."""
    blocker = fs / name
    chunk = b"\xab" * FILL_CHUNK_BYTES
    with blocker.open("wb", buffering=0) as f:
        for _ in range(FILL_CHUNKS_MAX):
            try:
                f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
        else:
            pytest.fail(f"the tmpfs at {fs} never filled up")
    if leave_bytes:
        os.truncate(blocker, max(0, blocker.stat().st_size - leave_bytes))
    return blocker
