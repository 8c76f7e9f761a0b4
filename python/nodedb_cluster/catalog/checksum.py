"""The checksum every catalog value carries from format 2 on: the one place that seals and checks.

A stored value is `payload || crc32(u16 len(key) || key || payload)` (zlib's CRC-32, 4 bytes
little-endian). Binding the key means a value copied or renamed under another key fails too.
CRC-32 comes with Python (no new dependency) and is the right tool for this job: it detects every
burst of up to 32 flipped bits, so every changed byte, in values of the catalog's sizes; it is
not a defence against someone who rewrites the file on purpose (nothing that lives beside the
data could be).

`format_version` is the one key stored bare (a u32): old builds must still read it to refuse a
newer format.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Final

from nodedb_cluster.errors import CatalogCorrupt

CHECKSUM_BYTES: Final = 4
_CRC: Final = struct.Struct("<I")
_KEY_LEN: Final = struct.Struct("<H")
RESTORE_HINT: Final = (
    "the file was changed outside nodedb-cluster; restore it from a backup or rejoin this node "
    "as a fresh replica"
)


def _crc(key: bytes, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(_KEY_LEN.pack(len(key)) + key))


def seal(key: bytes, payload: bytes) -> bytes:
    """The value to store under `key`: `payload` followed by its checksum."""
    return payload + _CRC.pack(_crc(key, payload))


def is_sealed(key: bytes, value: bytes) -> bool:
    """Whether `value` carries a valid checksum for `key` (no error either way)."""
    if len(value) < CHECKSUM_BYTES:
        return False
    payload, stored = value[:-CHECKSUM_BYTES], value[-CHECKSUM_BYTES:]
    return bool(_CRC.unpack(stored)[0] == _crc(key, payload))


def read_sealed_file(path: Path, key: bytes, max_bytes: int) -> bytes | None:
    """The payload of a small file written as `seal(key, payload)`; None when there is no file.
    Raises OSError when it cannot be read, ValueError when it is longer than `max_bytes` or its
    checksum does not match (it was changed on disk)."""
    try:
        with path.open("rb") as f:
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        return None
    if len(raw) > max_bytes or not is_sealed(key, raw):
        raise ValueError(f"{path}: its checksum does not match")
    return raw[:-CHECKSUM_BYTES]


def unseal(key: bytes, value: bytes) -> bytes:
    """The payload of a stored value; `CatalogCorrupt` naming the key if the checksum fails (the
    caller attaches the file's path)."""
    name = key.decode("utf-8", errors="backslashreplace")
    if len(value) < CHECKSUM_BYTES:
        raise CatalogCorrupt(
            name,
            f"{len(value)} bytes is too short to hold its {CHECKSUM_BYTES}-byte checksum: "
            + RESTORE_HINT,
        )
    payload = value[:-CHECKSUM_BYTES]
    (stored,) = _CRC.unpack(value[-CHECKSUM_BYTES:])
    computed = _crc(key, payload)
    if stored != computed:
        raise CatalogCorrupt(
            name,
            f"its checksum does not match (stored 0x{stored:08x}, computed 0x{computed:08x}): "
            + RESTORE_HINT,
        )
    return payload
