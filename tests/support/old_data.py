"""What the old-data fixture holds: the data directories of a 3-node cluster written by a build
from before issue 14 (`tests/fixtures/old_data.tar.xz`, made by `make_old_data_fixture.py`).

Plain Python with no import of the package: the maker runs it under the old build, the test
under this one, and both must agree on every key and value.
"""

from __future__ import annotations

from typing import Final

PORT: Final = 27411
"""The port the old cluster listened on (below the OS's ephemeral range, so free ports handed
to other tests never collide with it); its catalog records peers at 127.0.0.1..3 on it."""

LEAF_DAYS: Final = 3649
"""The certificates' validity: their CA's ten years (less a day: a leaf never outlives it)."""

HOT_KEY: Final = b"hot"
HOT_WRITES: Final = 21_000
"""One put each, one Raft entry each: more than the engine's 20,000-entry snapshot threshold,
so the hot key's group was snapshotted and its log compacted, and later entries follow."""

KEYS: Final = 3000
DELETED_EVERY: Final = 7
CAS_STEPS: Final = 50
CAS_KEY: Final = b"cas"
MANIFEST: Final = "manifest.json"


def hot_value(i: int) -> bytes:
    return b"hot-%d" % i


def key(i: int) -> bytes:
    return b"k%d" % i


def value(i: int) -> bytes:
    return b"v%d-" % i + bytes([i % 251]) * (i % 200)


def expected() -> dict[bytes, bytes | None]:
    """Every key the old cluster wrote and what it held when it stopped (None = deleted)."""
    out: dict[bytes, bytes | None] = {
        key(i): None if i % DELETED_EVERY == 0 else value(i) for i in range(KEYS)
    }
    out[HOT_KEY] = hot_value(HOT_WRITES - 1)
    out[CAS_KEY] = b"%d" % CAS_STEPS
    return out
