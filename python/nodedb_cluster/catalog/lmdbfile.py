"""data.mdb checked with ordinary reads before LMDB maps it: damage is refused, never mapped.

LMDB maps the whole file and trusts what it finds: a page the meta counts as written but the file
no longer holds is read through the mapping and the process dies of SIGBUS without a word, and a
damaged page header can trip an assertion in liblmdb that aborts it (a leaf page marked as a
branch does). So `check_data_file` first reads the two meta pages and checks the file is as long
as the newest valid one says, then runs py-lmdb's offline structural verifier (`lmdb.verify`,
pure Python, reads only, built for files nobody vouches for) over every page reachable from it.
The whole file is read once per open: a catalog is a few MiB at most.

On-disk layout (liblmdb 0.9, mdb.c; 64-bit build, host byte order), offsets from each meta page:

    MDB_page header (PAGEHDRSZ = 16): mp_pgno u64 @0, mp_pad u16 @8, mp_flags u16 @10 (P_META 0x08),
        mp_lower u16 @12, mp_upper u16 @14
    MDB_meta @16: mm_magic u32 @16 (0xBEEFC0DE), mm_version u32 @20 (1), mm_address ptr @24,
        mm_mapsize u64 @32, mm_dbs[2] MDB_db (48 bytes each) @40 and @88, mm_last_pg u64 @136,
        mm_txnid u64 @144
    mm_psize (the page size) is mm_dbs[0].md_pad: u32 @40.

Meta page 0 is at offset 0, meta page 1 at offset psize; LMDB uses the one with the larger
mm_txnid (mdb_env_read_header / mdb_env_pick_meta) and refuses the file when either page lacks
P_META, the magic or the version. The file must then hold pages 0..mm_last_pg: at least
(mm_last_pg + 1) * psize bytes. (Verified against files py-lmdb writes on this machine:
tests/inprocess/test_catalog_integrity.py reads them back with `read_header` and compares with
`Environment.info()`.)

mdb.c allows one exception: "the file may be shorter if the freeDB lists the final pages" (pages
a transaction allocated and freed again are never written). LMDB never reads a free page, so such
a file is safe: a short file is accepted when the verifier proves every page reachable from the
committed meta is inside it and finds nothing else wrong.

An empty (0-byte) data.mdb is what LMDB itself treats as a new environment (mdb_env_read_header
returns ENOENT), and what a crash during the very first open can leave: it is accepted as an
empty catalog. A node that had formed and lost its catalog that way is caught by the identity
kept beside its Raft log, not here.
"""

from __future__ import annotations

import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from lmdb import verify as lmdb_verify

from nodedb_cluster.catalog.checksum import RESTORE_HINT
from nodedb_cluster.errors import CatalogCorrupt

MDB_MAGIC: Final = 0xBEEFC0DE
MDB_DATA_VERSION: Final = 1
P_META: Final = 0x08
PAGE_HEADER_BYTES: Final = 16
META_BYTES: Final = 136
"""sizeof(MDB_meta) on a 64-bit build: 4 + 4 + 8 + 8 + 2 * 48 + 8 + 8."""
PAGE_SIZE_MIN: Final = 256
PAGE_SIZE_MAX: Final = 0x8000
"""liblmdb 0.9's MAX_PAGESIZE."""

_E: Final = "<" if sys.byteorder == "little" else ">"
_FLAGS: Final = struct.Struct(_E + "H")  # mp_flags @10
_MAGIC_VERSION: Final = struct.Struct(_E + "II")  # @16
_PSIZE: Final = struct.Struct(_E + "I")  # mm_dbs[0].md_pad @40
_LAST_PG_TXNID: Final = struct.Struct(_E + "QQ")  # @136
_SUPPORTED: Final = struct.calcsize("P") == 8
"""The offsets above are a 64-bit build's; elsewhere the check is skipped (LMDB's own rules)."""


@dataclass(frozen=True, slots=True)
class Meta:
    """One meta page's fields that decide how long the file must be."""

    page: int
    page_size: int
    last_page: int
    txnid: int


def _meta_at(buf: bytes, page: int, offset: int, data_file: Path, size: int) -> Meta:
    """Parse meta page `page`, whose first bytes `buf` were read at file offset `offset`."""
    if len(buf) < PAGE_HEADER_BYTES + META_BYTES:
        raise _corrupt(
            data_file,
            f"the file is {size} bytes, too short to hold LMDB meta page {page} "
            f"(needs {offset + PAGE_HEADER_BYTES + META_BYTES})",
        )
    (flags,) = _FLAGS.unpack_from(buf, 10)
    magic, version = _MAGIC_VERSION.unpack_from(buf, 16)
    (page_size,) = _PSIZE.unpack_from(buf, 40)
    last_page, txnid = _LAST_PG_TXNID.unpack_from(buf, 136)
    if not flags & P_META:
        raise _corrupt(data_file, f"LMDB meta page {page} is not marked as a meta page")
    if magic != MDB_MAGIC:
        raise _corrupt(
            data_file, f"LMDB meta page {page} has magic 0x{magic:08x}, not an LMDB file"
        )
    if version != MDB_DATA_VERSION:
        raise _corrupt(
            data_file,
            f"LMDB meta page {page} has data version {version}, not {MDB_DATA_VERSION}",
        )
    return Meta(page, page_size, last_page, txnid)


def read_header(data_file: Path) -> Meta | None:
    """The meta page LMDB would use, or None for a missing or empty file (a new environment).

    Raises `CatalogCorrupt` naming the file when a meta page is missing or invalid.
    """
    try:
        with data_file.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return None
            head = f.read(PAGE_HEADER_BYTES + META_BYTES)
            first = _meta_at(head, 0, 0, data_file, size)
            page_size = first.page_size
            if not PAGE_SIZE_MIN <= page_size <= PAGE_SIZE_MAX or page_size & (page_size - 1) != 0:
                raise _corrupt(
                    data_file, f"LMDB meta page 0 has an impossible page size {page_size}"
                )
            if size < 2 * page_size:
                raise _corrupt(
                    data_file,
                    f"the file is {size} bytes, shorter than LMDB's two meta pages "
                    f"({2 * page_size} bytes): it was truncated",
                )
            f.seek(page_size)
            tail = f.read(PAGE_HEADER_BYTES + META_BYTES)
            second = _meta_at(tail, 1, page_size, data_file, size)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CatalogCorrupt(None, f"cannot read LMDB's header: {e}", data_file) from e
    if second.page_size != page_size:
        raise _corrupt(
            data_file,
            f"LMDB's meta pages disagree on the page size ({page_size} vs {second.page_size})",
        )
    return second if first.txnid < second.txnid else first


def check_data_file(data_file: Path) -> None:
    """Refuse, with `CatalogCorrupt` naming the file, a data.mdb LMDB must not map: shorter than
    its committed pages (the message gives its size and the size LMDB's header requires), or
    with damaged pages."""
    if not _SUPPORTED:
        return
    meta = read_header(data_file)
    if meta is None:
        return
    required = (meta.last_page + 1) * meta.page_size
    try:
        size = data_file.stat().st_size
    except OSError as e:
        raise CatalogCorrupt(None, f"cannot stat it: {e}", data_file) from e
    problems = verify_structure(data_file)
    if size < required and problems:
        raise _corrupt(
            data_file,
            f"the file is {size} bytes but LMDB's header requires {required} "
            f"({meta.last_page + 1} pages of {meta.page_size} bytes, transaction {meta.txnid}): "
            f"it was truncated ({_summary(problems)})",
        )
    if problems:
        raise _corrupt(data_file, f"LMDB's pages are damaged ({_summary(problems)})")


def verify_structure(data_file: Path) -> list[str]:
    """What py-lmdb's offline verifier finds wrong with the file's pages (empty: sound)."""
    try:
        problems = lmdb_verify.verify(str(data_file), subdir=False)  # type: ignore[no-untyped-call]
    except Exception as e:  # its VerifyError, an OSError, or whatever hostile bytes provoke
        return [f"{type(e).__name__}: {e}"]
    return [str(p) for p in problems]


def _summary(problems: list[str]) -> str:
    more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
    return f"LMDB verifier: {problems[0]}{more}"


def _corrupt(data_file: Path, reason: str) -> CatalogCorrupt:
    """Damage to the file itself: the message says what, and the two ways out."""
    return CatalogCorrupt(None, f"{reason}; {RESTORE_HINT}", data_file)
