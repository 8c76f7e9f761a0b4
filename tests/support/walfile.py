"""Read the WAL's segment format (rust/wal/src/format.rs) from tests, to damage it on purpose
at record boundaries and inside records. A reader for tests only: the node never reads it."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

SEGMENT_HEADER_BYTES: Final = 32
FRAME_HEADER_BYTES: Final = 28
MAGIC: Final = b"NODEDBWL"
KIND_ENTRY: Final = 1
KIND_HARD_STATE: Final = 2
_FRAME: Final = struct.Struct("<IIQQB3x")


@dataclass(frozen=True, slots=True)
class Record:
    offset: int
    """Byte offset of the frame header in the segment file."""
    length: int
    """Frame header plus payload, in bytes."""
    group_id: int
    index: int
    kind: int


def segments(raft_dir: Path) -> list[Path]:
    return sorted(raft_dir.glob("*.wal"))


def records(segment: Path) -> list[Record]:
    """The records of `segment`, up to the first frame that is all zeros or not whole (its end:
    a preallocated segment is zero-filled after its records). Checksums are not verified."""
    data = segment.read_bytes()
    if data[:8] != MAGIC:
        raise ValueError(f"{segment} is not a WAL segment")
    out: list[Record] = []
    at = SEGMENT_HEADER_BYTES
    while at + FRAME_HEADER_BYTES <= len(data):
        crc, length, group_id, index, kind = _FRAME.unpack_from(data, at)
        if crc == 0 and length == 0 and kind == 0:
            break
        end = at + FRAME_HEADER_BYTES + length
        if end > len(data):
            break
        out.append(Record(at, FRAME_HEADER_BYTES + length, group_id, index, kind))
        at = end
    return out


def zero_from(segment: Path, offset: int, end: int) -> None:
    """Overwrite `segment[offset:end]` with zeros (a write that never reached the disk)."""
    with segment.open("r+b") as f:
        f.seek(offset)
        f.write(bytes(end - offset))
