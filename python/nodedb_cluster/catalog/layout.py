"""The catalog's on-disk layout: one LMDB environment, one named database, a few fixed keys.

Format 2 (current), all in the named database `meta`. Every value except `format_version` is
stored sealed: `payload || crc32` where the CRC-32 covers the key and the payload (`checksum.py`);
the payloads are:

    format_version  u32 little-endian, NOT sealed (old builds must read it to refuse a newer
                    format); stamped when the catalog is created
    cluster_id      UTF-8 text; present once the node belongs to a cluster ("bootstrapped")
    topology        Topology.encode()
    routing         RoutingTable.encode()
    settings        MessagePack map of str -> value
    metadata_applied_index  u64 little-endian; the last metadata-group (group 0) log index whose
                    effects topology/routing/settings hold (absent = 0, nothing applied yet)
    vshard_moves    VShardMoves.encode(): vShard moves in flight (metadata/vshard_moves.py),
                    saved with the rest of the metadata state. Optional: catalogs made before it
                    lack it (none in flight; no format change, old builds ignore the key)
    cluster_secret  32 raw bytes; made at bootstrap, handed to joiners in the JoinResponse; keys
                    join tokens and (without cluster_secret_path) SWIM. Optional: catalogs made
                    before it existed lack it (no format change: old builds ignore the key), and
                    such a cluster can issue no join token until it is rebuilt. Never logged.
    raft_log_opened b"\x01" once this node's Raft log was first opened (it may have acknowledged
                    entries since): a catalog that says so beside a `raft/` with no segment is a
                    lost log, refused at start. Optional (no format change: old builds ignore
                    the key; a catalog without it is marked at its next start).

A value whose checksum fails (a changed byte, a changed key name, a value copied under another
key) is refused with `CatalogCorrupt` naming the file and the key; `Catalog.open` checks every
value, so a damaged catalog stops the node before it acts on anything.

Format 1 stored the same payloads bare; migration 1 -> 2 seals them. Format 0 (pre-release)
differed from 1 in two keys: topology was stored under `topo`, and settings were a JSON object;
migration 0 -> 1 converts them. `migrations.py` holds both steps.
"""

from __future__ import annotations

import struct
from typing import Final

from nodedb_cluster.errors import CatalogCorrupt

FORMAT_VERSION: Final = 2
"""The format this build writes; older ones are migrated, newer ones refused."""

DB_NAME: Final = b"meta"
MAX_DBS: Final = 2
"""`meta`, plus one spare so a future format can add a database before dropping an old one."""

KEY_FORMAT_VERSION: Final = b"format_version"
KEY_CLUSTER_ID: Final = b"cluster_id"
KEY_TOPOLOGY: Final = b"topology"
KEY_ROUTING: Final = b"routing"
KEY_SETTINGS: Final = b"settings"
KEY_METADATA_APPLIED_INDEX: Final = b"metadata_applied_index"
KEY_CLUSTER_SECRET: Final = b"cluster_secret"
KEY_VSHARD_MOVES: Final = b"vshard_moves"
KEY_RAFT_LOG_OPENED: Final = b"raft_log_opened"
CLUSTER_SECRET_BYTES: Final = 32
"""256 bits: HMAC-SHA256's full key strength."""

KEY_TOPOLOGY_V0: Final = b"topo"
"""Format 0 name of KEY_TOPOLOGY."""

_VERSION: Final = struct.Struct("<I")


def encode_version(version: int) -> bytes:
    return _VERSION.pack(version)


def decode_version(raw: bytes) -> int:
    if len(raw) != _VERSION.size:
        raise CatalogCorrupt(
            KEY_FORMAT_VERSION.decode(), f"expected {_VERSION.size} bytes, found {len(raw)}"
        )
    (version,) = _VERSION.unpack(raw)
    assert isinstance(version, int)
    return version
