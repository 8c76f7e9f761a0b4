"""Catalog: the node's durable control-plane state in one LMDB environment (py-lmdb).

Durability: the environment is opened with LMDB's defaults `sync=True, metasync=True`, written out
here on purpose: every write transaction is fsynced when it commits, and that commit is the
durability point of the catalog. Each logical save is ONE write transaction, so a crash leaves every
key holding either its old or its new complete value, and `save_formation` lands cluster id,
topology and routing together or not at all.

Integrity (format 2): every value but `format_version` carries a checksum bound to its key
(`checksum.py`); `open` verifies all of them, and every load verifies what it reads, so a changed
byte is refused naming the file and the key instead of being decoded into a wrong answer. Before
LMDB maps data.mdb, `lmdbfile.check_data_file` checks its length against LMDB's own header (a
truncated file would otherwise kill the process with SIGBUS). Only `CatalogError`s leave this
module: every LMDB error is mapped to one naming the file (`CatalogCorrupt` for damage,
`CatalogNoSpace` for a full filesystem, whose write is rolled back and can simply be retried).

Calls block on disk I/O (a commit is an fsync); an asyncio caller that cannot afford a few
milliseconds runs them in a thread. One `Catalog` per environment per process (LMDB's rule).
"""

from __future__ import annotations

import os
import re
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, Protocol, Self, TypeVar, overload

import lmdb
import msgpack

from nodedb_cluster.catalog import layout
from nodedb_cluster.catalog.checksum import RESTORE_HINT, seal, unseal
from nodedb_cluster.catalog.lmdbfile import check_data_file
from nodedb_cluster.catalog.migrations import MIGRATIONS
from nodedb_cluster.catalog.owner import OwnerLock
from nodedb_cluster.errors import (
    CatalogCorrupt,
    CatalogError,
    CatalogFormatError,
    CatalogNoSpace,
    ClusterError,
    MalformedTopology,
)
from nodedb_cluster.topology import Topology

if TYPE_CHECKING:
    from lmdb import _Database

    from nodedb_cluster.routing.table import RoutingTable

DEFAULT_MAP_SIZE_BYTES: Final = 64 * 1024 * 1024
"""LMDB's address-space reservation (the file only grows as used). A topology of 4096 nodes and a
routing table are a few MiB; 64 MiB leaves room for both plus LMDB's copy-on-write pages."""
MAP_SIZE_BYTES_MAX: Final = 1 << 40
SETTINGS_ENCODED_BYTES_MAX: Final = 1024 * 1024
"""Settings are a handful of cluster knobs; a MiB is generous and bounds what decode accepts."""
_U64: Final = struct.Struct("<Q")
CLUSTER_ID_RE: Final = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,127}")
"""Printable, shell- and log-safe, at most 128 chars (a UUID fits)."""
DATA_FILE: Final = "data.mdb"
"""LMDB's data file inside the catalog directory: what every error message names."""
NO_SPACE_FREE_BYTES: Final = 1 << 20
"""LMDB reports a write cut short by a full disk as a plain EIO, not ENOSPC: a failed write on a
filesystem with less than this free is taken for no space (a retry is harmless either way)."""
_DAMAGE_ERRORS: Final[tuple[type[lmdb.Error], ...]] = (
    lmdb.CorruptedError,
    lmdb.PageNotFoundError,
    lmdb.InvalidError,
    lmdb.VersionMismatchError,
    lmdb.IncompatibleError,
    lmdb.CursorFullError,
)
"""What LMDB raises when its own structures are damaged (bad page flags, a page number past the
end, a bad meta page, a database record changed, a tree deeper than possible). The structural
check before mapping (`lmdbfile`) catches such damage first; these remain for damage it cannot
see, such as the file changing while it is open."""


class RoutingCodec(Protocol):
    """What the catalog needs of a routing table: bytes out, bytes in."""

    def encode(self) -> bytes: ...

    @classmethod
    def decode(cls, data: bytes) -> Self: ...


R = TypeVar("R", bound=RoutingCodec)


@dataclass(frozen=True, slots=True)
class Formation:
    """Everything a restart needs, read in one transaction."""

    cluster_id: str
    topology: Topology
    routing: RoutingTable


# py-lmdb must not open one environment twice in a process (closing either would drop the other's
# locks); this registry turns that mistake into an error instead of silent corruption.
_open_paths: set[Path] = set()
_open_paths_lock = threading.Lock()


class Catalog:
    """The catalog of one node. Open with `Catalog.open(data_dir)`; use as a context manager."""

    def __init__(
        self,
        env: lmdb.Environment,
        db: _Database,
        path: Path,
        key: Path,
        format_version: int,
        owner: OwnerLock | None,
    ) -> None:
        """Use `Catalog.open`."""
        self._env: lmdb.Environment | None = env
        self._owner = owner
        self._db = db
        self._path = path
        self._file = path / DATA_FILE
        self._key = key  # the resolved path registered in _open_paths
        self._format_version = format_version

    # --- opening and closing ---------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        *,
        map_size_bytes: int = DEFAULT_MAP_SIZE_BYTES,
        beside_owner: bool = False,
    ) -> Catalog:
        """Open (creating it if needed) the catalog at `data_dir/catalog`.

        A new catalog is stamped with the current format; an older one is migrated in one write
        transaction; a newer one raises `CatalogFormatError` and is left untouched. A truncated or
        damaged file, or a value failing its checksum, raises `CatalogCorrupt` naming the file.
        Held by another process, it raises `CatalogInUse` (`owner.py`) before reading anything;
        `beside_owner` opens it without the lock, beside a running node, to read it (a test, an
        inspection): the caller must not write.
        """
        if not 1 << 20 <= map_size_bytes <= MAP_SIZE_BYTES_MAX:
            raise CatalogError(f"map_size_bytes {map_size_bytes} is outside 1 MiB..1 TiB")
        path = Path(data_dir) / "catalog"
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CatalogError(f"cannot create catalog directory {path}: {e}") from e
        key = path.resolve()
        with _open_paths_lock:
            if key in _open_paths:
                raise CatalogError(f"catalog {path} is already open in this process")
            _open_paths.add(key)
        data_file = path / DATA_FILE
        env: lmdb.Environment | None = None
        owner: OwnerLock | None = None
        try:
            if not beside_owner:
                owner = OwnerLock.acquire(path)  # before anything of the data dir is read
            check_data_file(data_file)  # before mapping: short or damaged, it would SIGBUS/abort
            env = lmdb.open(
                str(path),
                subdir=True,
                map_size=map_size_bytes,
                max_dbs=layout.MAX_DBS,
                sync=True,  # fsync on every commit: the catalog's durability point
                metasync=True,  # ...including the meta page that makes the commit visible
                lock=True,
                readahead=False,
            )
            db = _open_meta_db(env, data_file)
            version = _stamp_or_migrate(env, db, data_file)
        except BaseException as e:
            if env is not None:
                env.close()
            if owner is not None:
                owner.release()
            with _open_paths_lock:
                _open_paths.discard(key)
            mapped = _catalog_error(e, data_file, "open", write=True)
            if mapped is e:
                raise
            raise mapped from e
        return cls(env, db, path, key, version, owner)

    def close(self) -> None:
        """Close the environment; idempotent. Every commit is already durable."""
        if self._env is None:
            return
        self._env.close()
        self._env = None
        if self._owner is not None:
            self._owner.release()
        with _open_paths_lock:
            _open_paths.discard(self._key)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def format_version(self) -> int:
        return self._format_version

    # --- cluster id ------------------------------------------------------------------------------

    def is_bootstrapped(self) -> bool:
        """True once a cluster id is stored: the node belongs to a cluster and must restart."""
        with self._read() as txn:
            return _get(txn, layout.KEY_CLUSTER_ID) is not None

    def cluster_id(self) -> str | None:
        with self._read() as txn:
            return _decode_cluster_id(_get(txn, layout.KEY_CLUSTER_ID))

    def save_cluster_id(self, cluster_id: str) -> None:
        """Store the cluster id; storing a *different* id over an existing one is refused."""
        raw = _encode_cluster_id(cluster_id)
        with self._write() as txn:
            _put_cluster_id(txn, raw, cluster_id)

    # --- topology, routing, settings -------------------------------------------------------------

    def save_topology(self, topology: Topology) -> None:
        data = topology.encode()
        with self._write() as txn:
            _put(txn, layout.KEY_TOPOLOGY, data)

    def load_topology(self) -> Topology | None:
        """The stored topology; None before formation; `CatalogError` if formed but missing."""
        with self._read() as txn:
            return _load_topology(txn)

    def save_routing(self, table: RoutingCodec) -> None:
        data = table.encode()
        with self._write() as txn:
            _put(txn, layout.KEY_ROUTING, data)

    @overload
    def load_routing(self) -> RoutingTable | None: ...

    @overload
    def load_routing(self, codec: type[R]) -> R | None: ...

    def load_routing(self, codec: type[RoutingCodec] | None = None) -> RoutingCodec | None:
        """The stored routing table (decoded by `codec`, default `RoutingTable`); None before
        formation; `CatalogError` if formed but missing."""
        with self._read() as txn:
            return _load_routing(txn, codec)

    def save_settings(self, settings: Mapping[str, object]) -> None:
        """Replace the cluster settings (a map of str -> MessagePack-encodable value)."""
        data = _encode_settings(settings)
        with self._write() as txn:
            _put(txn, layout.KEY_SETTINGS, data)

    def load_settings(self) -> dict[str, object]:
        """The stored settings; empty when none were saved."""
        with self._read() as txn:
            raw = _get(txn, layout.KEY_SETTINGS)
            return {} if raw is None else _decode_settings(raw)

    # --- the Raft log beside it -------------------------------------------------------------------

    def mark_raft_log_opened(self) -> None:
        """Record that this node's Raft log was opened (once; durable when this returns)."""
        with self._write() as txn:
            if _get(txn, layout.KEY_RAFT_LOG_OPENED) is None:
                _put(txn, layout.KEY_RAFT_LOG_OPENED, b"\x01")

    def raft_log_opened(self) -> bool:
        """Whether this node's Raft log was ever opened (`mark_raft_log_opened`)."""
        with self._read() as txn:
            return _get(txn, layout.KEY_RAFT_LOG_OPENED) is not None

    # --- formation: all three, one transaction ---------------------------------------------------

    def save_formation(
        self,
        cluster_id: str,
        topology: Topology,
        routing: RoutingCodec,
        cluster_secret: bytes | None = None,
        settings: Mapping[str, object] | None = None,
    ) -> None:
        """Persist cluster id, topology, routing and (when given) the cluster secret and the
        settings in one write transaction (bootstrap, join): a node never belongs to a cluster
        without its secret, nor a bootstrapped one without the settings it was founded with."""
        raw_id = _encode_cluster_id(cluster_id)
        topology_data = topology.encode()
        routing_data = routing.encode()
        settings_data = None if settings is None else _encode_settings(settings)
        if cluster_secret is not None:
            _check_cluster_secret(cluster_secret, CatalogError)
        with self._write() as txn:
            _put_cluster_id(txn, raw_id, cluster_id)
            _put(txn, layout.KEY_TOPOLOGY, topology_data)
            _put(txn, layout.KEY_ROUTING, routing_data)
            if cluster_secret is not None:
                _put_cluster_secret(txn, cluster_secret)
            if settings_data is not None:
                _put(txn, layout.KEY_SETTINGS, settings_data)

    # --- the cluster secret ----------------------------------------------------------------------

    def save_cluster_secret(self, secret: bytes) -> None:
        """Store the cluster secret (32 bytes); replacing a *different* one is refused (tokens and
        SWIM datagrams of the whole cluster are keyed by it)."""
        _check_cluster_secret(secret, CatalogError)
        with self._write() as txn:
            _put_cluster_secret(txn, secret)

    def load_cluster_secret(self) -> bytes | None:
        """The cluster secret; None in a catalog formed before the secret existed (or unformed).
        Callers must never log, print or export it."""
        with self._read() as txn:
            secret = _get(txn, layout.KEY_CLUSTER_SECRET)
            if secret is None:
                return None
            _check_cluster_secret(secret, _corrupt_secret)
            return secret

    def load_formation(self, codec: type[RoutingCodec] | None = None) -> Formation | None:
        """Cluster id, topology and routing from one consistent read; None when not bootstrapped.

        A bootstrapped catalog missing topology or routing raises `CatalogError` naming it.
        """
        with self._read() as txn:
            cluster_id = _decode_cluster_id(_get(txn, layout.KEY_CLUSTER_ID))
            if cluster_id is None:
                return None
            topology = _load_topology(txn)
            routing = _load_routing(txn, codec)
        assert topology is not None  # bootstrapped: the loaders raise instead of returning None
        assert routing is not None
        return Formation(cluster_id, topology, routing)  # type: ignore[arg-type]  # codec-typed

    # --- the metadata group's applied state: one transaction ------------------------------------

    def save_metadata_state(
        self,
        topology: Topology,
        routing: RoutingCodec,
        settings: Mapping[str, object],
        applied_index: int,
        vshard_moves: bytes | None = None,
    ) -> None:
        """Persist what group 0 has applied up to `applied_index`, all in one write transaction, so
        a restart resumes applying after exactly the entries whose effects are on disk.
        `vshard_moves` is `VShardMoves.encode()` (None: leave the key as it is)."""
        if not 0 <= applied_index < 2**64:
            raise ValueError(f"applied_index {applied_index} is not a u64")
        topology_data = topology.encode()
        routing_data = routing.encode()
        settings_data = _encode_settings(settings)
        with self._write() as txn:
            _put(txn, layout.KEY_TOPOLOGY, topology_data)
            _put(txn, layout.KEY_ROUTING, routing_data)
            _put(txn, layout.KEY_SETTINGS, settings_data)
            if vshard_moves is not None:
                _put(txn, layout.KEY_VSHARD_MOVES, vshard_moves)
            _put(txn, layout.KEY_METADATA_APPLIED_INDEX, _U64.pack(applied_index))

    def load_vshard_moves(self) -> bytes | None:
        """The stored `VShardMoves.encode()`; None when none was saved (catalogs from before
        vShard moves: none in flight)."""
        with self._read() as txn:
            return _get(txn, layout.KEY_VSHARD_MOVES)

    def load_metadata_applied_index(self) -> int:
        """The last applied metadata-group index; 0 when nothing was applied."""
        with self._read() as txn:
            raw = _get(txn, layout.KEY_METADATA_APPLIED_INDEX)
            if raw is None:
                return 0
            if len(raw) != _U64.size:
                raise CatalogCorrupt(
                    layout.KEY_METADATA_APPLIED_INDEX.decode(),
                    f"expected {_U64.size} bytes, found {len(raw)}",
                )
            (index,) = _U64.unpack(raw)
            assert isinstance(index, int)
            return index

    # --- transactions ----------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[lmdb.Transaction[bytes]]:
        """One read transaction; decode inside it, so a corrupt value is reported with the path."""
        env = self._require_open()
        try:
            with env.begin(db=self._db, write=False, buffers=False) as txn:
                yield txn
        except (lmdb.Error, CatalogCorrupt) as e:
            raise _catalog_error(e, self._file, "read", write=False) from e

    @contextmanager
    def _write(self) -> Iterator[lmdb.Transaction[bytes]]:
        """One write transaction: committed (and fsynced) on success, aborted on any exception."""
        env = self._require_open()
        try:
            with env.begin(db=self._db, write=True) as txn:
                yield txn
        except (lmdb.Error, CatalogCorrupt) as e:
            raise _catalog_error(e, self._file, "write", write=True) from e

    def _require_open(self) -> lmdb.Environment:
        if self._env is None:
            raise CatalogError(f"catalog {self._path} is closed")
        return self._env


# --- helpers --------------------------------------------------------------------------------------


def _catalog_error(e: BaseException, data_file: Path, doing: str, *, write: bool) -> BaseException:
    """The `CatalogError` an exception from LMDB or a decoder becomes: every one names the file.

    Anything else (a `CatalogError` that already says what is wrong, a KeyboardInterrupt) is
    returned as is.
    """
    if isinstance(e, CatalogCorrupt):
        return e.at(data_file)
    if not isinstance(e, lmdb.Error):
        return e
    if isinstance(e, lmdb.DiskError) or (write and _looks_like_no_space(e, data_file.parent)):
        return CatalogNoSpace(data_file, f"{doing} failed: {e}")
    if isinstance(e, lmdb.MapFullError):
        return CatalogError(
            f"catalog {data_file} is full: reopen with a larger map_size_bytes ({e})"
        )
    if isinstance(e, _DAMAGE_ERRORS):
        return CatalogCorrupt(None, f"LMDB refused it: {e}: {RESTORE_HINT}", data_file)
    return CatalogError(f"catalog {data_file}: {doing} failed: {e}")


def _looks_like_no_space(e: lmdb.Error, directory: Path) -> bool:
    """A plain lmdb.Error (EIO: a write cut short) on a filesystem that is all but full."""
    if type(e) is not lmdb.Error:
        return False
    try:
        stat = os.statvfs(directory)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < NO_SPACE_FREE_BYTES


def _open_meta_db(env: lmdb.Environment, data_file: Path) -> _Database:
    """The `meta` database; refused when LMDB's main database lists others but not it (a damaged
    name would otherwise make LMDB create an empty `meta`: a formed node would look new), or when
    its record in the main database was changed to other flags."""
    with env.begin() as txn:
        names = [bytes(name) for name in txn.cursor().iternext(keys=True, values=False)]
    if names and layout.DB_NAME not in names:
        listed = ", ".join(repr(n) for n in names[:4])
        raise CatalogCorrupt(
            None,
            f"LMDB's main database lists {listed} but not the catalog's database "
            f"{layout.DB_NAME.decode()!r}: {RESTORE_HINT}",
            data_file,
        )
    db = env.open_db(layout.DB_NAME, create=not names)
    flags = sorted(name for name, on in db.flags().items() if on)
    if flags:  # e.g. dupsort: a put would then add a duplicate and a get find the old value
        raise CatalogCorrupt(
            None,
            f"the catalog's database {layout.DB_NAME.decode()!r} carries LMDB flags it is never "
            f"created with ({', '.join(flags)}): {RESTORE_HINT}",
            data_file,
        )
    return db


def _stamp_or_migrate(env: lmdb.Environment, db: _Database, data_file: Path) -> int:
    """Stamp a new catalog, migrate an old one, refuse a newer one, then check every value's
    checksum; one write transaction (a crash or refusal mid-migration leaves the old format)."""
    with env.begin(db=db, write=True) as txn:
        raw = txn.get(layout.KEY_FORMAT_VERSION)
        if raw is None:
            if txn.stat(db)["entries"] != 0:
                raise CatalogCorrupt("format_version", "missing from a non-empty catalog")
            txn.put(layout.KEY_FORMAT_VERSION, layout.encode_version(layout.FORMAT_VERSION))
            return layout.FORMAT_VERSION
        version = layout.decode_version(bytes(raw))
        if version > layout.FORMAT_VERSION:
            raise CatalogFormatError(version, layout.FORMAT_VERSION, data_file)
        while version < layout.FORMAT_VERSION:
            step = MIGRATIONS.get(version)
            if step is None:
                raise CatalogError(f"catalog {data_file}: no migration from format {version}")
            step(txn)
            version += 1
            txn.put(layout.KEY_FORMAT_VERSION, layout.encode_version(version))
        for key, value in txn.cursor():  # every value, known keys or not: a renamed key fails too
            if key != layout.KEY_FORMAT_VERSION:
                unseal(bytes(key), bytes(value))
        return version


def _get(txn: lmdb.Transaction[bytes], key: bytes) -> bytes | None:
    """The payload stored under `key`, its checksum verified; None when absent."""
    raw = txn.get(key)
    return None if raw is None else unseal(key, bytes(raw))


def _put(txn: lmdb.Transaction[bytes], key: bytes, payload: bytes) -> None:
    txn.put(key, seal(key, payload))


def _encode_cluster_id(cluster_id: str) -> bytes:
    if not isinstance(cluster_id, str) or CLUSTER_ID_RE.fullmatch(cluster_id) is None:
        raise CatalogError(
            f"cluster id {cluster_id!r} must be 1..128 chars of [0-9A-Za-z._-], "
            "starting alphanumeric"
        )
    return cluster_id.encode("ascii")


def _decode_cluster_id(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as e:
        raise CatalogCorrupt("cluster_id", "not ASCII text") from e
    if CLUSTER_ID_RE.fullmatch(text) is None:
        raise CatalogCorrupt("cluster_id", f"{text[:40]!r} is not a valid cluster id")
    return text


def _put_cluster_id(txn: lmdb.Transaction[bytes], raw: bytes, cluster_id: str) -> None:
    existing = _decode_cluster_id(_get(txn, layout.KEY_CLUSTER_ID))
    if existing is not None and existing != cluster_id:
        raise CatalogError(
            f"catalog belongs to cluster {existing!r}; refusing to overwrite it with {cluster_id!r}"
        )
    _put(txn, layout.KEY_CLUSTER_ID, raw)


def _corrupt_secret(reason: str) -> CatalogError:
    return CatalogCorrupt(layout.KEY_CLUSTER_SECRET.decode(), reason)


def _check_cluster_secret(secret: object, error: Callable[[str], CatalogError]) -> None:
    """Exactly CLUSTER_SECRET_BYTES bytes, else `error` (the value itself is never quoted)."""
    if not isinstance(secret, bytes):
        raise error(f"the cluster secret must be bytes, not {type(secret).__name__}")
    if len(secret) != layout.CLUSTER_SECRET_BYTES:
        raise error(
            f"the cluster secret must be {layout.CLUSTER_SECRET_BYTES} bytes, found {len(secret)}"
        )


def _put_cluster_secret(txn: lmdb.Transaction[bytes], secret: bytes) -> None:
    existing = _get(txn, layout.KEY_CLUSTER_SECRET)
    if existing is not None and existing != secret:
        raise CatalogError(
            "catalog already holds a different cluster secret; refusing to replace it"
        )
    _put(txn, layout.KEY_CLUSTER_SECRET, secret)


def _require_if_bootstrapped(txn: lmdb.Transaction[bytes], key: bytes) -> None:
    if txn.get(layout.KEY_CLUSTER_ID) is not None:
        raise CatalogCorrupt(
            key.decode(),
            f"the catalog is bootstrapped (it holds a cluster id) but holds no {key.decode()}: "
            "it was damaged or written by a broken build; refusing to guess",
        )


def _load_topology(txn: lmdb.Transaction[bytes]) -> Topology | None:
    raw = _get(txn, layout.KEY_TOPOLOGY)
    if raw is None:
        _require_if_bootstrapped(txn, layout.KEY_TOPOLOGY)
        return None
    try:
        return Topology.decode(raw)
    except MalformedTopology as e:
        raise CatalogCorrupt("topology", e.reason) from e


def _load_routing(
    txn: lmdb.Transaction[bytes], codec: type[RoutingCodec] | None
) -> RoutingCodec | None:
    raw = _get(txn, layout.KEY_ROUTING)
    if raw is None:
        _require_if_bootstrapped(txn, layout.KEY_ROUTING)
        return None
    if codec is None:
        from nodedb_cluster.routing.table import RoutingTable  # lazy: numpy + Cython kernels

        codec = RoutingTable
    try:
        return codec.decode(raw)
    except (ClusterError, ValueError) as e:
        raise CatalogCorrupt("routing", str(e)) from e


def _encode_settings(settings: Mapping[str, object]) -> bytes:
    if not isinstance(settings, Mapping) or not all(isinstance(k, str) for k in settings):
        raise CatalogError("settings must be a mapping with str keys")
    try:
        data = msgpack.packb(dict(settings), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise CatalogError(f"settings cannot be encoded: {e}") from e
    assert isinstance(data, bytes)
    if len(data) > SETTINGS_ENCODED_BYTES_MAX:
        raise CatalogError(
            f"settings encode to {len(data)} bytes; at most {SETTINGS_ENCODED_BYTES_MAX}"
        )
    return data


def _decode_settings(raw: bytes) -> dict[str, object]:
    if len(raw) > SETTINGS_ENCODED_BYTES_MAX:
        raise CatalogCorrupt("settings", f"{len(raw)} bytes exceeds {SETTINGS_ENCODED_BYTES_MAX}")
    try:
        value = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as e:
        raise CatalogCorrupt("settings", f"not valid MessagePack: {e}") from e
    if not isinstance(value, dict):
        raise CatalogCorrupt("settings", f"expected a map, found {type(value).__name__}")
    if not all(isinstance(k, str) for k in value):
        raise CatalogCorrupt("settings", "a key is not text")
    return value
