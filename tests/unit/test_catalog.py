"""Catalog over real LMDB files: API round trips and reopen, one transaction per logical save,
refusals (foreign cluster id, closed, double open, full map), typed errors naming the key for
corrupt or missing values, format stamping, refusing a newer format, and the 0 -> 1 -> 2 migration
on the committed fixture built by catalog_make_v0_fixture.py. Damage below the value decoders
(checksums, truncation, LMDB pages) is tested in test_catalog_integrity.py."""

from __future__ import annotations

import importlib.util
import shutil
import struct
from pathlib import Path
from types import ModuleType
from typing import Self

import lmdb
import msgpack
import pytest

import support
from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.catalog import FORMAT_VERSION, MIGRATIONS, Catalog
from nodedb_cluster.catalog.checksum import seal
from nodedb_cluster.errors import CatalogCorrupt, CatalogError, CatalogFormatError
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.topology import NodeInfo, NodeState, Topology

FIXTURE_V0 = support.DIR / "fixtures" / "catalog_v0"


def load_fixture_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "catalog_make_v0_fixture", support.DIR / "catalog_make_v0_fixture.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def topology(version: int = 1, count: int = 2) -> Topology:
    nodes = [
        NodeInfo(i, parse_socket_addr(f"127.0.0.{i}:9400"), NodeState.ACTIVE, 1)
        for i in range(1, count + 1)
    ]
    return Topology(nodes, version)


class BlobCodec:
    """A minimal real RoutingCodec: the catalog must not care what the bytes mean."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def encode(self) -> bytes:
        return b"BLOB" + self.payload

    @classmethod
    def decode(cls, data: bytes) -> Self:
        if not data.startswith(b"BLOB"):
            raise ValueError("not a blob")
        return cls(data[4:])


def raw_put(data_dir: Path, key: bytes, value: bytes | None, *, sealed: bool = True) -> None:
    """Write (or delete) one key behind the catalog's back, as damage or an old build would.

    `sealed` (not for format_version, which is stored bare) adds a valid format-2 checksum, so
    the value reaches the decoder under test instead of failing its checksum first."""
    env = lmdb.open(str(data_dir / "catalog"), subdir=True, max_dbs=2, map_size=1 << 26)
    try:
        db = env.open_db(b"meta")
        with env.begin(db=db, write=True) as txn:
            if value is None:
                txn.delete(key)
            else:
                txn.put(key, seal(key, value) if sealed and key != b"format_version" else value)
    finally:
        env.close()


def raw_get(data_dir: Path, key: bytes) -> bytes | None:
    env = lmdb.open(str(data_dir / "catalog"), subdir=True, max_dbs=2, readonly=True, lock=False)
    try:
        db = env.open_db(b"meta", create=False)
        with env.begin(db=db) as txn:
            value = txn.get(key)
            return None if value is None else bytes(value)
    finally:
        env.close()


def test_fresh_catalog(tmp_path: Path) -> None:
    data_dir = tmp_path / "a" / "b"
    with Catalog.open(data_dir) as catalog:
        assert catalog.path == data_dir / "catalog"
        assert catalog.format_version == FORMAT_VERSION == 2
        assert not catalog.is_bootstrapped()
        assert catalog.cluster_id() is None
        assert catalog.load_topology() is None
        assert catalog.load_routing() is None
        assert catalog.load_settings() == {}
        assert catalog.load_formation() is None
    assert (data_dir / "catalog" / "data.mdb").is_file()
    assert raw_get(data_dir, b"format_version") == struct.pack("<I", 2)


def test_values_survive_reopen(tmp_path: Path) -> None:
    routing = RoutingTable.bootstrap(4, 1)
    with Catalog.open(tmp_path) as catalog:
        catalog.save_cluster_id("c-1")
        catalog.save_topology(topology(3))
        catalog.save_routing(routing)
        catalog.save_settings({"rf": 3, "name": "x", "nested": {"a": [1, 2]}, "blob": b"\x00"})
    with Catalog.open(tmp_path) as catalog:
        assert catalog.is_bootstrapped()
        assert catalog.cluster_id() == "c-1"
        assert catalog.load_topology() == topology(3)
        assert catalog.load_routing() == routing
        assert catalog.load_settings() == {
            "rf": 3,
            "name": "x",
            "nested": {"a": [1, 2]},
            "blob": b"\x00",
        }
        formation = catalog.load_formation()
        assert formation is not None
        assert (formation.cluster_id, formation.topology) == ("c-1", topology(3))
        assert formation.routing == routing


def test_save_formation_and_codec_protocol(tmp_path: Path) -> None:
    with Catalog.open(tmp_path) as catalog:
        catalog.save_formation("c-2", topology(1), BlobCodec(b"r1"))
        assert catalog.cluster_id() == "c-2"
        loaded = catalog.load_routing(BlobCodec)
        assert loaded is not None
        assert loaded.payload == b"r1"
        formation = catalog.load_formation(BlobCodec)
        assert formation is not None
        assert formation.topology == topology(1)


def test_a_refused_formation_changes_nothing(tmp_path: Path) -> None:
    with Catalog.open(tmp_path) as catalog:
        catalog.save_formation("c-3", topology(1), BlobCodec(b"old"))
        catalog.save_formation("c-3", topology(2), BlobCodec(b"new"))  # same cluster: fine
        with pytest.raises(CatalogError, match="belongs to cluster 'c-3'"):
            catalog.save_formation("other", topology(9), BlobCodec(b"foreign"))
        with pytest.raises(CatalogError, match="belongs to cluster"):
            catalog.save_cluster_id("other")
        # one transaction: the topology and routing of the refused save did not land either
        assert catalog.load_topology() == topology(2)
        loaded = catalog.load_routing(BlobCodec)
        assert loaded is not None
        assert loaded.payload == b"new"
        assert catalog.cluster_id() == "c-3"


@pytest.mark.parametrize("bad", ["", "-x", "a b", "é", "x" * 129, "a/b"])
def test_cluster_id_is_validated(tmp_path: Path, bad: str) -> None:
    with Catalog.open(tmp_path) as catalog:
        with pytest.raises(CatalogError, match="cluster id"):
            catalog.save_cluster_id(bad)
        assert not catalog.is_bootstrapped()


def test_bootstrapped_catalog_missing_topology_or_routing(tmp_path: Path) -> None:
    with Catalog.open(tmp_path) as catalog:
        catalog.save_cluster_id("c-4")
        with pytest.raises(CatalogError, match="holds no topology"):
            catalog.load_formation()
        with pytest.raises(CatalogError, match="holds no topology"):
            catalog.load_topology()
        catalog.save_topology(topology())
        with pytest.raises(CatalogError, match="holds no routing"):
            catalog.load_formation()
        with pytest.raises(CatalogError, match="holds no routing"):
            catalog.load_routing()


@pytest.mark.parametrize(
    ("key", "value", "load"),
    [
        (b"topology", b"\xc1garbage", "load_topology"),
        (b"topology", msgpack.packb({"format": 1, "version": 1, "nodes": [7]}), "load_topology"),
        (b"routing", b"\x00\x01", "load_routing"),
        (b"settings", b"\xc1", "load_settings"),
        (b"settings", msgpack.packb([1, 2]), "load_settings"),
        (b"settings", msgpack.packb({1: 2}, strict_types=False), "load_settings"),
        (b"cluster_id", b"\xff\xfe", "cluster_id"),
        (b"cluster_id", b"has space", "cluster_id"),
    ],
)
def test_corrupt_values_name_the_key_and_stay(
    tmp_path: Path, key: bytes, value: bytes, load: str
) -> None:
    with Catalog.open(tmp_path) as catalog:
        catalog.save_formation("c-5", topology(), RoutingTable.bootstrap(2, 1))
    raw_put(tmp_path, key, value)
    with Catalog.open(tmp_path) as catalog, pytest.raises(CatalogCorrupt) as info:
        getattr(catalog, load)()
    assert info.value.key == key.decode()
    assert key.decode() in str(info.value)
    assert raw_get(tmp_path, key) == seal(key, value)  # reading never rewrites or drops it


def test_newer_format_is_refused_untouched(tmp_path: Path) -> None:
    Catalog.open(tmp_path).close()
    raw_put(tmp_path, b"format_version", struct.pack("<I", 3))
    with pytest.raises(CatalogFormatError) as info:
        Catalog.open(tmp_path)
    assert (info.value.found, info.value.supported) == (3, 2)
    assert str(tmp_path / "catalog" / "data.mdb") in str(info.value)
    assert raw_get(tmp_path, b"format_version") == struct.pack("<I", 3)
    Catalog.open(tmp_path / "other").close()  # the failed open released its registration
    raw_put(tmp_path, b"format_version", struct.pack("<I", 2))
    Catalog.open(tmp_path).close()  # and the same path opens again once the version is fine


def test_corrupt_or_missing_format_version(tmp_path: Path) -> None:
    with Catalog.open(tmp_path) as catalog:
        catalog.save_cluster_id("c-6")
    raw_put(tmp_path, b"format_version", b"\x01")
    with pytest.raises(CatalogCorrupt) as info:
        Catalog.open(tmp_path)
    assert info.value.key == "format_version"
    raw_put(tmp_path, b"format_version", None)
    with pytest.raises(CatalogCorrupt, match="missing from a non-empty catalog"):
        Catalog.open(tmp_path)


def open_fixture_copy(tmp_path: Path) -> Path:
    data_dir = tmp_path / "v0"
    shutil.copytree(FIXTURE_V0, data_dir)
    assert raw_get(data_dir, b"format_version") == struct.pack("<I", 0)
    return data_dir


def test_migration_from_format_0_fixture(tmp_path: Path) -> None:
    script = load_fixture_script()
    data_dir = open_fixture_copy(tmp_path)
    assert 0 in MIGRATIONS
    assert 1 in MIGRATIONS
    with Catalog.open(data_dir) as catalog:  # 0 -> 1 -> 2 in one transaction
        assert catalog.format_version == 2
        assert catalog.cluster_id() == script.CLUSTER_ID
        assert catalog.load_topology() == script.expected_topology()
        assert catalog.load_routing() == script.expected_routing()
        assert catalog.load_settings() == script.SETTINGS
    assert raw_get(data_dir, b"topo") is None
    assert raw_get(data_dir, b"format_version") == struct.pack("<I", 2)
    with Catalog.open(data_dir) as catalog:  # a second open finds format 2: nothing to do
        assert catalog.load_settings() == script.SETTINGS


def test_failed_migration_leaves_format_0_intact(tmp_path: Path) -> None:
    data_dir = open_fixture_copy(tmp_path)
    raw_put(data_dir, b"settings", b"{not json", sealed=False)
    with pytest.raises(CatalogCorrupt) as info:
        Catalog.open(data_dir)
    assert info.value.key == "settings"
    assert raw_get(data_dir, b"format_version") == struct.pack("<I", 0)
    assert raw_get(data_dir, b"topo") is not None  # the rename was rolled back with the rest
    assert raw_get(data_dir, b"topology") is None


def test_fixture_script_reproduces_the_fixture(tmp_path: Path) -> None:
    script = load_fixture_script()
    out = tmp_path / "fresh"
    script.write_v0(out)
    for key in (b"format_version", b"cluster_id", b"topo", b"routing", b"settings"):
        assert raw_get(out, key) == raw_get(FIXTURE_V0, key), key


def test_double_open_in_one_process_is_refused(tmp_path: Path) -> None:
    with Catalog.open(tmp_path), pytest.raises(CatalogError, match="already open"):
        Catalog.open(tmp_path)
    Catalog.open(tmp_path).close()


def test_closed_catalog(tmp_path: Path) -> None:
    catalog = Catalog.open(tmp_path)
    catalog.close()
    catalog.close()
    with pytest.raises(CatalogError, match="closed"):
        catalog.load_settings()
    with pytest.raises(CatalogError, match="closed"):
        catalog.save_cluster_id("c")


def test_settings_must_be_encodable(tmp_path: Path) -> None:
    with Catalog.open(tmp_path) as catalog:
        catalog.save_settings({"keep": 1})
        with pytest.raises(CatalogError, match="cannot be encoded"):
            catalog.save_settings({"x": object()})
        with pytest.raises(CatalogError, match="str keys"):
            catalog.save_settings({1: 2})  # type: ignore[dict-item]
        with pytest.raises(CatalogError, match="at most"):
            catalog.save_settings({"big": b"\x00" * (1024 * 1024)})
        assert catalog.load_settings() == {"keep": 1}


def test_full_map_is_a_clear_error_and_keeps_the_catalog(tmp_path: Path) -> None:
    with Catalog.open(tmp_path, map_size_bytes=1 << 20) as catalog:
        catalog.save_routing(BlobCodec(b"small"))
        with pytest.raises(CatalogError, match="map_size_bytes"):
            catalog.save_routing(BlobCodec(b"\x00" * (2 << 20)))
        loaded = catalog.load_routing(BlobCodec)
        assert loaded is not None
        assert loaded.payload == b"small"


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="map_size_bytes"):
        Catalog.open(tmp_path, map_size_bytes=1000)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CatalogError, match="cannot create catalog directory"):
        Catalog.open(blocker)


def test_cluster_secret_lands_with_the_formation_and_is_checked(tmp_path: Path) -> None:
    secret = bytes(range(32))
    with Catalog.open(tmp_path) as catalog:
        assert catalog.load_cluster_secret() is None
        catalog.save_formation("c-s", topology(1), BlobCodec(b"r"), secret)
        assert catalog.load_cluster_secret() == secret
        catalog.save_cluster_secret(secret)  # the same one again: fine
        with pytest.raises(CatalogError, match="different cluster secret"):
            catalog.save_cluster_secret(bytes(32))
        with pytest.raises(CatalogError, match="32 bytes, found 16"):
            catalog.save_cluster_secret(bytes(16))
    with Catalog.open(tmp_path) as catalog:
        assert catalog.load_cluster_secret() == secret


def test_a_catalog_without_a_secret_is_allowed_and_a_bad_one_is_corrupt(tmp_path: Path) -> None:
    with Catalog.open(tmp_path) as catalog:
        catalog.save_formation("c-old", topology(1), BlobCodec(b"r"))  # formed before secrets
        assert catalog.is_bootstrapped()
        assert catalog.load_cluster_secret() is None
    raw_put(tmp_path, b"cluster_secret", b"short")  # a valid checksum over a wrong length
    with Catalog.open(tmp_path) as catalog, pytest.raises(CatalogCorrupt) as info:
        catalog.load_cluster_secret()
    assert info.value.key == "cluster_secret"
    assert "short" not in str(info.value)  # the value itself is never quoted
