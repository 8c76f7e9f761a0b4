"""Catalog integrity on real LMDB files changed with a byte editor: every damage is refused with a
`CatalogError` naming data.mdb (and the key, for a value), never a wrong value, never another
exception type, never a signal (the cases that could crash liblmdb run in a child process).

Covered: the header offsets against LMDB's own view; one flipped byte at several positions of
every stored value, at open and while open; flipped key bytes; damaged page flags and database
records; truncation at several sizes (and the free-tail truncation LMDB allows); migrations
1 -> 2 and 0 -> 2 and a damaged format_version; ENOSPC on a real tmpfs, in the catalog and in the
metadata applier that keeps applying and saves once space is freed; and a real node started
through the CLI on a catalog with one changed byte of its routing table or cluster id.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import lmdb
import msgpack
import pytest

import support
from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.catalog import FORMAT_VERSION, Catalog
from nodedb_cluster.catalog.checksum import CHECKSUM_BYTES, is_sealed, seal
from nodedb_cluster.catalog.lmdbfile import read_header, verify_structure
from nodedb_cluster.errors import CatalogCorrupt, CatalogError, CatalogNoSpace
from nodedb_cluster.localcluster import LocalCluster
from nodedb_cluster.metadata.applier import Applied, MetadataState, MetadataStateMachine
from nodedb_cluster.metadata.commands import MetadataEntry, PutSetting
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.topology import NodeInfo, NodeState, Topology
from support.tmpfs import fill, tmpfs

CHILD = support.DIR / "catalog_open_child.py"
CHILD_TIMEOUT_S = 120.0
EXIT_WAIT_S = 30.0
CLUSTER_ID = "0123456789abcdef0123456789abcdef"
SECRET = bytes(range(32))
P_BRANCH, P_LEAF, P_OVERFLOW, P_META = 0x01, 0x02, 0x04, 0x08
KEYS = (
    b"cluster_id",
    b"topology",
    b"routing",
    b"settings",
    b"metadata_applied_index",
    b"cluster_secret",
)


def topology(count: int = 3) -> Topology:
    nodes = [
        NodeInfo(i, parse_socket_addr(f"10.0.0.{i}:9400"), NodeState.ACTIVE, 1, None, None, (1,))
        for i in range(1, count + 1)
    ]
    return Topology(nodes, version=count)


def formed(data_dir: Path, groups: int = 64) -> Path:
    """A catalog holding every key, the routing table big enough for overflow pages; returns
    its data.mdb."""
    with Catalog.open(data_dir) as catalog:
        routing = RoutingTable.bootstrap(groups, 1)
        catalog.save_formation(CLUSTER_ID, topology(), routing, SECRET)
        catalog.save_metadata_state(topology(), routing, {"s": "v", "n": 7}, 41)
    return data_dir / "catalog" / "data.mdb"


def stored(data_dir: Path, key: bytes) -> bytes:
    """The bytes LMDB holds under `key` (sealed), read behind the catalog's back."""
    env = lmdb.open(str(data_dir / "catalog"), subdir=True, max_dbs=2, readonly=True, lock=False)
    try:
        with env.begin(db=env.open_db(b"meta", create=False)) as txn:
            value = txn.get(key)
            assert value is not None, key
            return bytes(value)
    finally:
        env.close()


def edit(data_file: Path, needle: bytes, position: int, new_byte: int | None = None) -> int:
    """Change the byte at `position` of every copy of `needle` in the file (old copies in free
    pages too: the live one is surely among them); returns how many copies there were."""
    data = data_file.read_bytes()
    starts = []
    at = data.find(needle)
    while at >= 0:
        starts.append(at)
        at = data.find(needle, at + 1)
    assert starts, f"{needle[:16]!r}... not found in {data_file}"
    with data_file.open("r+b") as f:  # in place: the file never shrinks under a live mapping
        for start in starts:
            old = data[start + position]
            f.seek(start + position)
            f.write(bytes([old ^ 0x5A if new_byte is None else new_byte]))
    return len(starts)


def assert_names_the_file(error: CatalogError, data_file: Path) -> None:
    text = str(error)
    assert str(data_file) in text, text
    assert "\n" not in text


# --- LMDB's header, read before mapping -----------------------------------------------------------


@pytest.mark.parametrize("commits", [0, 1, 5, 30])
def test_header_offsets_match_lmdbs_own_view(tmp_path: Path, commits: int) -> None:
    with Catalog.open(tmp_path) as catalog:
        for i in range(commits):
            catalog.save_settings({"i": i, "pad": "x" * (i * 997 % 20_000)})
    data_file = tmp_path / "catalog" / "data.mdb"
    meta = read_header(data_file)
    env = lmdb.open(str(data_file.parent), subdir=True, max_dbs=2, readonly=True, lock=False)
    try:
        info, psize = env.info(), env.stat()["psize"]
    finally:
        env.close()
    assert meta is not None
    assert (meta.last_page, meta.txnid, meta.page_size) == (
        info["last_pgno"],
        info["last_txnid"],
        psize,
    )
    assert meta.page == meta.txnid % 2  # LMDB writes transaction n's meta into page n % 2
    assert data_file.stat().st_size >= (meta.last_page + 1) * meta.page_size
    assert verify_structure(data_file) == []


# --- checksummed values ---------------------------------------------------------------------------


def test_every_value_but_the_version_is_sealed_with_its_key(tmp_path: Path) -> None:
    formed(tmp_path)
    for key in KEYS:
        assert is_sealed(key, stored(tmp_path, key)), key
        assert not is_sealed(b"other", stored(tmp_path, key)), "the checksum binds the key"
    assert stored(tmp_path, b"format_version") == struct.pack("<I", FORMAT_VERSION)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("where", ["first", "middle", "last payload byte", "checksum"])
def test_a_flipped_byte_in_any_value_is_refused_naming_file_and_key(
    tmp_path: Path, key: bytes, where: str
) -> None:
    data_file = formed(tmp_path)
    value = stored(tmp_path, key)
    payload_bytes = len(value) - CHECKSUM_BYTES
    position = {
        "first": 0,
        "middle": payload_bytes // 2,
        "last payload byte": payload_bytes - 1,
        "checksum": payload_bytes + 1,
    }[where]
    edit(data_file, value, position)
    before = data_file.read_bytes()
    with pytest.raises(CatalogCorrupt) as info:
        Catalog.open(tmp_path)  # open checks every value: the node stops before acting on any
    assert info.value.key == key.decode()
    assert info.value.path == str(data_file)
    assert_names_the_file(info.value, data_file)
    assert f"key {key.decode()!r}" in str(info.value)
    assert "restore it from a backup or rejoin this node" in str(info.value)
    assert data_file.read_bytes() == before  # refusing never rewrites the evidence


@pytest.mark.parametrize("key", [b"routing", b"cluster_id", b"settings"])
def test_damage_while_open_is_refused_by_the_load(tmp_path: Path, key: bytes) -> None:
    data_file = formed(tmp_path)
    value = stored(tmp_path, key)
    load = {b"routing": "load_routing", b"cluster_id": "cluster_id", b"settings": "load_settings"}
    with Catalog.open(tmp_path) as catalog:
        edit(data_file, value, len(value) // 3)  # LMDB's map shares the page cache: seen at once
        with pytest.raises(CatalogCorrupt) as info:
            getattr(catalog, load[key])()
        assert info.value.key == key.decode()
        assert_names_the_file(info.value, data_file)
        if key != b"settings":  # the formation is cluster id, topology and routing
            with pytest.raises(CatalogCorrupt):
                catalog.load_formation()


def test_a_value_copied_under_another_key_fails(tmp_path: Path) -> None:
    formed(tmp_path)
    env = lmdb.open(str(tmp_path / "catalog"), subdir=True, max_dbs=2)
    with env.begin(db=env.open_db(b"meta"), write=True) as txn:
        txn.put(b"settings", txn.get(b"topology"))  # a valid seal, but for "topology"
    env.close()
    with pytest.raises(CatalogCorrupt) as info:
        Catalog.open(tmp_path)
    assert info.value.key == "settings"


# --- keys, page flags, database records, truncation: in a child process -------------------------


def run_child(data_dirs: list[Path]) -> dict[Path, dict[str, object]]:
    """Open each catalog in one child process; every case must end in a JSON line."""
    proc = subprocess.run(
        [sys.executable, str(CHILD), *map(str, data_dirs)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, (
        f"child exited {proc.returncode} (negative: killed by that signal)\n"
        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    results = {Path(doc["dir"]): doc for doc in map(json.loads, proc.stdout.splitlines())}
    assert set(results) == set(data_dirs)
    return results


def copies(template: Path, tmp_path: Path, names: list[str]) -> dict[str, Path]:
    out = {}
    for name in names:
        shutil.copytree(template, tmp_path / name / "catalog")
        out[name] = tmp_path / name
    return out


def page_of_meta_db(data_file: Path) -> tuple[int, int]:
    """(main DB root page, `meta` DB root page), parsed from LMDB's structures."""
    meta = read_header(data_file)
    assert meta is not None
    psize, data = meta.page_size, data_file.read_bytes()
    base = meta.page * psize
    # mm_dbs[1] (the main DB's MDB_db) is at 88 in the meta page; its md_root is its last u64
    (main_root,) = struct.unpack_from("<Q", data, base + 88 + 40)
    page = data[main_root * psize : (main_root + 1) * psize]
    at = page.find(b"meta")
    assert at > 0
    (depth,) = struct.unpack_from("<H", page, at + 4 + 6)
    (meta_root,) = struct.unpack_from("<Q", page, at + 4 + 40)
    assert depth == 1, "the test expects the meta DB in one leaf"
    return main_root, meta_root


def test_damaged_keys_page_flags_and_records_are_refused(tmp_path: Path) -> None:
    template = formed(tmp_path / "template").parent
    data_file = template / "data.mdb"
    psize = 4096
    main_root, meta_root = page_of_meta_db(data_file)
    meta_leaf = data_file.read_bytes()[meta_root * psize : (meta_root + 1) * psize]
    routing_overflow = struct.unpack_from(
        "<Q", meta_leaf, meta_leaf.find(b"routing") + len(b"routing")
    )[0]
    cases: dict[str, tuple[int, bytes]] = {}  # name -> (file offset, new bytes)
    for key in KEYS:
        at = meta_root * psize + meta_leaf.find(key)
        cases[f"key-{key.decode()}"] = (at + len(key) // 2, b"#")
    mdb_db_of_meta = main_root * psize + data_file.read_bytes()[
        main_root * psize : (main_root + 1) * psize
    ].find(b"meta")
    cases["key-meta-db-name"] = (mdb_db_of_meta + 1, b"#")
    cases["meta-db-record-flags"] = (mdb_db_of_meta + 4 + 4, b"\x04")  # md_flags: DUPSORT
    cases["meta-db-record-root"] = (mdb_db_of_meta + 4 + 40, b"\x01")  # md_root: a meta page
    for page, label in ((main_root, "main"), (meta_root, "meta"), (routing_overflow, "overflow")):
        for flags in (0, P_BRANCH, P_LEAF, P_OVERFLOW, P_META, 0x12, 0xFFFF):
            cases[f"flags-{label}-{flags:#x}"] = (page * psize + 10, struct.pack("<H", flags))
    dirs = copies(template, tmp_path, list(cases))
    for name, (offset, new) in cases.items():
        target = dirs[name] / "catalog" / "data.mdb"
        with target.open("r+b") as f:
            f.seek(offset)
            f.write(new)
    results = run_child(list(dirs.values()))
    for name, data_dir in dirs.items():
        result = results[data_dir]
        unchanged = (f"flags-main-{P_LEAF:#x}", f"flags-meta-{P_LEAF:#x}")
        if name in (*unchanged, f"flags-overflow-{P_OVERFLOW:#x}"):
            assert result["outcome"] == "ok", (name, result)  # the flags it already had
            continue
        assert result["outcome"] == "refused", (name, result)
        assert result["type"] == "CatalogCorrupt", (name, result)
        assert str(data_dir / "catalog" / "data.mdb") in str(result["message"]), (name, result)


def test_truncation_is_refused_with_both_sizes_never_a_sigbus(tmp_path: Path) -> None:
    data_file = formed(tmp_path / "template")
    template = data_file.parent
    meta = read_header(data_file)
    assert meta is not None
    psize, required = meta.page_size, (meta.last_page + 1) * meta.page_size
    sizes = {
        "one-byte": 1,
        "in-meta-0": 100,
        "one-page": psize,
        "meta-1-cut": psize + 100,
        "two-pages": 2 * psize,
        "half": required // 2,
        "one-page-short": required - psize,
        "one-byte-short": required - 1,
    }
    dirs = copies(template, tmp_path, [*sizes, "empty", "intact"])
    for name, size in {**sizes, "empty": 0}.items():
        os.truncate(dirs[name] / "catalog" / "data.mdb", size)
    results = run_child(list(dirs.values()))
    # An empty data.mdb is what LMDB itself takes for a new environment (and what a crash
    # during the first open leaves): an empty catalog. A formed node's lost catalog is caught
    # by the identity beside its Raft log.
    assert results[dirs["empty"]] == {
        "dir": str(dirs["empty"]),
        "outcome": "ok",
        "bootstrapped": False,
    }
    assert results[dirs["intact"]]["outcome"] == "ok"
    for name, size in sizes.items():
        result = results[dirs[name]]
        message = str(result.get("message"))
        assert result["outcome"] == "refused", (name, result)
        assert result["type"] == "CatalogCorrupt", (name, result)
        assert str(dirs[name] / "catalog" / "data.mdb") in message, message
        assert f"{size} bytes" in message, message
        if size >= 2 * psize:
            assert f"requires {required}" in message, message


def test_a_tail_of_free_pages_may_be_missing(tmp_path: Path) -> None:
    """mdb.c: "the file may be shorter if the freeDB lists the final pages"; such a file opens."""
    with Catalog.open(tmp_path) as catalog:
        catalog.save_settings({"big": "x" * 400_000})  # ~100 pages at the end of the file...
        for i in range(5):
            catalog.save_settings({"big": f"small {i}"})  # ...all free once replaced
    data_file = tmp_path / "catalog" / "data.mdb"
    meta = read_header(data_file)
    assert meta is not None
    short = (meta.last_page + 1 - 40) * meta.page_size
    os.truncate(data_file, short)
    assert verify_structure(data_file) == []
    result = run_child([tmp_path])[tmp_path]
    assert result["outcome"] == "ok", result
    with Catalog.open(tmp_path) as catalog:
        assert catalog.load_settings() == {"big": "small 4"}
        catalog.save_settings({"big": "y" * 300_000})  # reuses the free pages, past the end
    with Catalog.open(tmp_path) as catalog:
        assert catalog.load_settings() == {"big": "y" * 300_000}
    assert verify_structure(data_file) == []


def test_a_directory_in_place_of_data_mdb_is_a_catalog_error(tmp_path: Path) -> None:
    (tmp_path / "catalog" / "data.mdb").mkdir(parents=True)
    with pytest.raises(CatalogError) as info:
        Catalog.open(tmp_path)
    assert str(tmp_path / "catalog" / "data.mdb") in str(info.value)


# --- migrations -----------------------------------------------------------------------------------


def write_raw(data_dir: Path, values: dict[bytes, bytes]) -> None:
    path = data_dir / "catalog"
    path.mkdir(parents=True)
    env = lmdb.open(str(path), subdir=True, map_size=1 << 22, max_dbs=2)
    try:
        with env.begin(db=env.open_db(b"meta"), write=True) as txn:
            for key, value in values.items():
                txn.put(key, value)
    finally:
        env.close()


def format_1_values() -> dict[bytes, bytes]:
    return {
        b"format_version": struct.pack("<I", 1),
        b"cluster_id": CLUSTER_ID.encode(),
        b"topology": topology().encode(),
        b"routing": RoutingTable.bootstrap(4, 1).encode(),
        b"settings": msgpack.packb({"a": 1}, use_bin_type=True),
        b"metadata_applied_index": struct.pack("<Q", 9),
        b"cluster_secret": SECRET,
        b"written_by_a_later_build": b"kept as it is, sealed",
    }


def test_migration_from_format_1_seals_every_value(tmp_path: Path) -> None:
    values = format_1_values()
    write_raw(tmp_path, values)
    with Catalog.open(tmp_path) as catalog:
        assert catalog.format_version == 2
        formation = catalog.load_formation()
        assert formation is not None
        assert formation.cluster_id == CLUSTER_ID
        assert formation.topology == topology()
        assert formation.routing == RoutingTable.bootstrap(4, 1)
        assert catalog.load_settings() == {"a": 1}
        assert catalog.load_metadata_applied_index() == 9
        assert catalog.load_cluster_secret() == SECRET
    assert stored(tmp_path, b"format_version") == struct.pack("<I", 2)
    for key, value in values.items():
        if key != b"format_version":
            assert stored(tmp_path, key) == seal(key, value), key
    with Catalog.open(tmp_path) as catalog:  # format 2 now: opens again without a step
        assert catalog.load_metadata_applied_index() == 9


def test_migration_from_format_0_goes_through_both_steps(tmp_path: Path) -> None:
    values = format_1_values()
    values[b"format_version"] = struct.pack("<I", 0)
    values[b"topo"] = values.pop(b"topology")
    values[b"settings"] = json.dumps({"a": 1}).encode()
    write_raw(tmp_path, values)
    with Catalog.open(tmp_path) as catalog:
        assert catalog.format_version == 2
        assert catalog.load_topology() == topology()
        assert catalog.load_settings() == {"a": 1}
    assert stored(tmp_path, b"topology") == seal(b"topology", topology().encode())


@pytest.mark.parametrize("damaged_version", [0, 1])
def test_a_format_version_damaged_downwards_is_refused_and_changes_nothing(
    tmp_path: Path, damaged_version: int
) -> None:
    data_file = formed(tmp_path)
    env = lmdb.open(str(data_file.parent), subdir=True, max_dbs=2)
    with env.begin(db=env.open_db(b"meta"), write=True) as txn:
        txn.put(b"format_version", struct.pack("<I", damaged_version))
    env.close()
    before = {key: stored(tmp_path, key) for key in KEYS}
    with pytest.raises(CatalogCorrupt) as info:
        Catalog.open(tmp_path)
    assert_names_the_file(info.value, data_file)
    assert {key: stored(tmp_path, key) for key in KEYS} == before  # the migration rolled back
    assert stored(tmp_path, b"format_version") == struct.pack("<I", damaged_version)


# --- disk full: a real tmpfs ----------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (skipped unless root may mount one), unmounted afterwards."""
    with tmpfs(tmp_path / "mnt", "4m") as fs:
        yield fs


@pytest.mark.parametrize("leave_bytes", [0, 100_000], ids=["nothing-free", "some-free"])
def test_enospc_is_catalog_no_space_and_rolls_back(small_fs: Path, leave_bytes: int) -> None:
    data_file = small_fs / "catalog" / "data.mdb"
    with Catalog.open(small_fs) as catalog:
        catalog.save_formation(CLUSTER_ID, topology(), RoutingTable.bootstrap(4, 1), SECRET)
        catalog.save_settings({"v": "before"})
        blocker = fill(small_fs, leave_bytes)
        with pytest.raises(CatalogNoSpace) as info:
            catalog.save_settings({"v": "x" * 500_000})  # more than is left: a short write
        assert info.value.path == str(data_file)
        assert_names_the_file(info.value, data_file)
        assert info.value.retryable
        assert catalog.load_settings() == {"v": "before"}  # nothing half-written
        blocker.unlink()
        catalog.save_settings({"v": "after"})  # space again: the same catalog writes on
    with Catalog.open(small_fs) as catalog:
        assert catalog.load_settings() == {"v": "after"}
        assert catalog.cluster_id() == CLUSTER_ID
    assert verify_structure(data_file) == []


def setting_entry(value: str) -> bytes:
    return MetadataEntry((PutSetting("blob", value),)).encode()


def test_the_applier_keeps_applying_on_a_full_disk_and_saves_once_space_is_freed(
    small_fs: Path,
) -> None:
    catalog = Catalog.open(small_fs)
    routing = RoutingTable.bootstrap(4, 1)
    catalog.save_formation(CLUSTER_ID, topology(), routing, SECRET)
    events: list[CatalogNoSpace | None] = []
    cleared, failing = threading.Event(), threading.Event()

    def observe(error: CatalogNoSpace | None) -> None:
        events.append(error)
        (failing if error is not None else cleared).set()

    def persist(s: MetadataState) -> None:
        catalog.save_metadata_state(s.topology, s.routing, s.settings, s.applied_index)

    machine = MetadataStateMachine(
        MetadataState(topology(), routing, {}, 0), persist, on_no_space=observe
    )
    try:
        assert machine.apply_batch([(1, setting_entry("a"))]) == [Applied(1)]
        assert machine.flush(5.0)
        blocker = fill(small_fs)
        first = machine.apply_batch([(2, setting_entry("b" * 300_000))])
        second = machine.apply_batch([(3, setting_entry("c" * 200_000)), (4, b"")])
        assert (first, second) == ([Applied(2)], [Applied(3), Applied(4)])  # not lost, not raised
        assert failing.wait(10.0), "the saver met the full disk"
        assert not machine.flush(0.2), "nothing lands while the disk is full"
        assert machine.no_space
        assert isinstance(machine.no_space_error, CatalogNoSpace)
        assert len(events) == 1
        assert isinstance(events[0], CatalogNoSpace)
        assert str(small_fs / "catalog" / "data.mdb") in str(events[0])
        assert machine.state.applied_index == 4
        assert machine.state.settings == {"blob": "c" * 200_000}
        assert catalog.load_metadata_applied_index() == 1  # the disk still holds batch 1
        blocker.unlink()
        assert cleared.wait(10.0), "the retry saved once space was freed"
        assert not machine.no_space
        assert events[1:] == [None]
        assert catalog.load_metadata_applied_index() == 4
        assert catalog.load_settings() == {"blob": "c" * 200_000}
    finally:
        machine.close()
        catalog.close()


def test_the_applier_still_raises_other_catalog_errors(tmp_path: Path) -> None:
    catalog = Catalog.open(tmp_path)
    catalog.close()

    def persist(s: MetadataState) -> None:
        catalog.save_metadata_state(s.topology, s.routing, s.settings, s.applied_index)

    machine = MetadataStateMachine(
        MetadataState(topology(), RoutingTable.bootstrap(4, 1), {}, 0), persist
    )
    assert machine.apply_batch([(1, setting_entry("a"))]) == [Applied(1)]  # saved behind
    machine.flush(5.0)
    # The save failed: the next batch raises it (the engine stops the node with the reason).
    with pytest.raises(CatalogError, match="closed"):
        machine.apply_batch([(2, setting_entry("b"))])
    assert not machine.no_space
    assert machine.state.applied_index == 1
    machine.close()


# --- a real node through the CLI ------------------------------------------------------------------


@pytest.mark.multiprocess
@pytest.mark.parametrize("key", [b"routing", b"cluster_id"])
async def test_a_node_on_a_changed_catalog_refuses_to_start_in_one_line(
    tmp_path: Path, key: bytes
) -> None:
    cluster = LocalCluster(tmp_path, 1, secure=False, overrides={"num_groups": 2})
    node = cluster.nodes[1]
    data_file = node.config.data_dir / "catalog" / "data.mdb"
    try:
        await cluster.start()
        assert await node.stop() == 0
        value = stored(node.config.data_dir, key)
        if key == b"cluster_id":  # one character of the id changed: still a valid-looking id
            text = value[:-CHECKSUM_BYTES]
            position = len(text) // 2
            edit(data_file, value, position, ord("0" if text[position] != ord("0") else "1"))
        else:
            edit(data_file, value, (len(value) - CHECKSUM_BYTES) // 2)
        first_run = node.log_path.stat().st_size
        await node.start()
        code = await node.wait_exit(EXIT_WAIT_S)
    finally:
        await cluster.close()
    log = node.log_path.read_bytes()[first_run:].decode(errors="replace")
    assert code != 0, f"started on a changed catalog:\n{log}"
    assert "Traceback" not in log, log
    lines = [line for line in log.splitlines() if str(data_file) in line]
    assert len(lines) == 1, log
    assert f"key {key.decode()!r}" in lines[0], lines[0]
    assert "checksum does not match" in lines[0], lines[0]
