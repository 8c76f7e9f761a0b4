"""The vShard hash: xxh3_64(key, seed=0) % 1024, scalar and batch, against the reference package.

Goal: pin the hash forever (golden vectors cover every XXH3 length class), prove the compiled scalar
and batch paths agree with `xxhash.xxh3_64_intdigest` on arbitrary keys, and check that the 1024
bins fill uniformly. Method: hard-coded expectations, hypothesis, and a chi-square statistic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from nodedb_cluster.routing.vshard import (
    NUM_VSHARDS,
    VSHARD_HASH_SEED,
    Key,
    KeyBatch,
    check_vshard,
    vshard_for_key,
    vshards_for_keys,
)


def _pattern(length: int) -> bytes:
    """A fixed, non-trivial byte pattern of `length` bytes."""
    return bytes((i * 7 + 3) % 256 for i in range(length))


# (name, key, expected vShard, expected full XXH3 64-bit digest). Never edit an expectation: a
# change here moves data between groups on every existing cluster.
GOLDEN = [
    ("empty", b"", 194, 0x2D06800538D394C2),
    ("one_zero", b"\x00", 219, 0xC44BDFF4074EECDB),
    ("one_a", b"a", 543, 0xE6C632B61E964E1F),
    ("len3", _pattern(3), 28, 0xA9088DDA485B481C),
    ("len4", _pattern(4), 723, 0x6D9253B16C8B1ED3),
    ("len8", _pattern(8), 355, 0x60539DB630471163),
    ("len9", _pattern(9), 936, 0xFEFF668361D723A8),
    ("len16", _pattern(16), 389, 0xB8C859B0F030B585),
    ("len17", _pattern(17), 15, 0x714A04408E79B80F),
    ("len64", _pattern(64), 705, 0x287EB1FA9E4BE2C1),
    ("len128", _pattern(128), 447, 0x67425A03650261BF),
    ("len129", _pattern(129), 964, 0xC664BF3311C6ABC4),
    ("len240", _pattern(240), 719, 0x64556DC6B462A6CF),
    ("len241", _pattern(241), 535, 0x8BEADD3A8874FE17),
    ("len1024", _pattern(1024), 689, 0x9B81661C641C72B1),
    ("len4096", _pattern(4096), 894, 0xD7428746842BE37E),
    ("user_42", b"user:42", 170, 0x9FC1E605FA7174AA),
    ("fox", b"The quick brown fox jumps over the lazy dog", 869, 0xCE7D19A5418FB365),
    ("ff16", b"\xff" * 16, 787, 0x722A202F07A4B313),
]


def test_hash_constants() -> None:
    assert NUM_VSHARDS == 1024
    assert VSHARD_HASH_SEED == 0


@pytest.mark.parametrize(("name", "key", "vshard", "digest"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_vector(name: str, key: bytes, vshard: int, digest: int) -> None:
    assert xxhash.xxh3_64_intdigest(key, seed=VSHARD_HASH_SEED) == digest, name
    assert digest % NUM_VSHARDS == vshard
    assert vshard_for_key(key) == vshard
    assert vshard_for_key(bytearray(key)) == vshard
    assert vshard_for_key(memoryview(key)) == vshard


def test_golden_vectors_batch() -> None:
    keys = [g[1] for g in GOLDEN]
    got = vshards_for_keys(keys)
    assert got.dtype == np.uint16
    assert got.tolist() == [g[2] for g in GOLDEN]


def test_random_lengths_match_reference() -> None:
    """10k keys of every length 0..300 (all short/medium/long code paths), fixed seed."""
    rng = np.random.default_rng(20261126)
    keys = [rng.bytes(int(n)) for n in rng.integers(0, 301, size=10_000)]
    expected = [xxhash.xxh3_64_intdigest(k) % NUM_VSHARDS for k in keys]
    assert vshards_for_keys(keys).tolist() == expected
    assert [vshard_for_key(k) for k in keys] == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=600), max_size=50))
def test_batch_equals_scalar_equals_reference(keys: list[bytes]) -> None:
    reference = [xxhash.xxh3_64_intdigest(k) % NUM_VSHARDS for k in keys]
    assert [vshard_for_key(k) for k in keys] == reference
    assert vshards_for_keys(keys).tolist() == reference
    assert vshards_for_keys(tuple(keys)).tolist() == reference
    assert vshards_for_keys([bytearray(k) for k in keys]).tolist() == reference
    assert vshards_for_keys(iter(keys)).tolist() == reference


KEY_TYPES = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=64), st.sampled_from(sorted(KEY_TYPES))), max_size=40))
def test_mixed_key_types_in_one_batch(items: list[tuple[bytes, str]]) -> None:
    """memoryview keys leave the C fast loop and re-enter it; every position must still match."""
    keys: list[Key] = [KEY_TYPES[kind](raw) for raw, kind in items]
    reference = [xxhash.xxh3_64_intdigest(raw) % NUM_VSHARDS for raw, _ in items]
    assert vshards_for_keys(keys).tolist() == reference
    assert vshards_for_keys(tuple(keys)).tolist() == reference


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=30))
def test_fixed_width_array_agrees_with_its_elements(keys: list[bytes]) -> None:
    """An 'S<n>' array hashes each element as numpy hands it out: trailing NULs stripped."""
    array = np.array(keys, dtype=f"S{max(len(k) for k in keys)}")
    elements = [bytes(x) for x in array]
    assert [k.rstrip(b"\x00") for k in keys] == elements
    reference = [xxhash.xxh3_64_intdigest(k) % NUM_VSHARDS for k in elements]
    assert vshards_for_keys(array).tolist() == reference
    strided = array[::2]
    assert vshards_for_keys(strided).tolist() == reference[::2]
    assert vshards_for_keys(array[::-1]).tolist() == reference[::-1]


def test_memoryview_keys_and_object_arrays() -> None:
    raw = _pattern(100)
    keys = [memoryview(raw)[i : i + 20] for i in range(0, 80, 7)]
    reference = [xxhash.xxh3_64_intdigest(bytes(k)) % NUM_VSHARDS for k in keys]
    assert vshards_for_keys(keys).tolist() == reference
    objects = np.array([bytes(k) for k in keys], dtype=object)
    assert vshards_for_keys(objects).tolist() == reference


def test_empty_batch() -> None:
    empties: list[KeyBatch] = [[], (), np.array([], dtype="S4")]
    for empty in empties:
        got = vshards_for_keys(empty)
        assert got.dtype == np.uint16
        assert got.shape == (0,)


@pytest.mark.parametrize("bad", ["text", 12, None, 1.5, [b"a"], np.uint8(3)])
def test_scalar_rejects_non_bytes_keys(bad: object) -> None:
    with pytest.raises(TypeError, match="bytes, bytearray or memoryview"):
        vshard_for_key(bad)  # type: ignore[arg-type]


def test_batch_rejects_a_bad_key_naming_its_index() -> None:
    with pytest.raises(TypeError, match=r"keys\[2\] is str"):
        vshards_for_keys([b"a", b"b", "c"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"keys\[3\] is int"):
        vshards_for_keys([b"a", memoryview(b"b"), b"c", 5])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"keys\[0\] is int"):
        vshards_for_keys((7,))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [b"single", "text", np.arange(4), np.zeros((2, 2), dtype="S3")])
def test_batch_rejects_non_sequences_and_wrong_arrays(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        vshards_for_keys(bad)  # type: ignore[arg-type]


def test_non_contiguous_memoryview_is_rejected() -> None:
    view = memoryview(bytes(range(20)))[::2]
    with pytest.raises(BufferError):
        vshard_for_key(view)


def test_check_vshard() -> None:
    from nodedb_cluster.errors import UnknownVShard

    assert check_vshard(0) == 0
    assert check_vshard(np.uint16(1023)) == 1023
    for bad in (-1, 1024, 65535):
        with pytest.raises(UnknownVShard):
            check_vshard(bad)
    with pytest.raises(TypeError):
        check_vshard(True)
    with pytest.raises(TypeError):
        check_vshard(1.0)  # type: ignore[arg-type]


def test_uniformity_chi_square() -> None:
    """1M random 16-byte keys into 1024 bins: chi-square below the p=0.001 critical value.

    For 1023 degrees of freedom the 0.999 quantile is ~1168.4 (Wilson-Hilferty: k(1 - 2/(9k) +
    z*sqrt(2/(9k)))^3 with z = 3.0902). A fixed seed keeps the test deterministic; a good hash
    lands near the mean 1023, a biased one (e.g. hashing only the first bytes of structured keys)
    far above.
    """
    n = 1_000_000
    rng = np.random.default_rng(7)
    blob = rng.bytes(16 * n)
    keys = [blob[i : i + 16] for i in range(0, 16 * n, 16)]
    counts = np.bincount(vshards_for_keys(keys), minlength=NUM_VSHARDS)
    assert counts.shape == (NUM_VSHARDS,)
    expected = n / NUM_VSHARDS
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    k = NUM_VSHARDS - 1
    critical = k * (1 - 2 / (9 * k) + 3.0902 * (2 / (9 * k)) ** 0.5) ** 3
    assert 1160 < critical < 1175
    assert chi_square < critical, f"chi-square {chi_square:.1f} >= {critical:.1f}"
    # Structured keys (a counter, as an application would use) must spread too.
    structured = [b"user:%d" % i for i in range(n)]
    counts = np.bincount(vshards_for_keys(structured), minlength=NUM_VSHARDS)
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < critical, f"structured keys: chi-square {chi_square:.1f}"


RUST_VECTORS = Path(__file__).resolve().parents[2] / "rust/kv/tests/fixtures/vshard_vectors.json"


def test_the_cython_kernels_agree_with_the_rust_routing_vectors() -> None:
    """The same file pins the Rust side (rust/kv/tests/vshard_vectors.rs): one hash, two
    implementations, one answer."""
    vectors = json.loads(RUST_VECTORS.read_text())
    assert len(vectors) >= 100
    keys = [bytes.fromhex(v["key_hex"]) for v in vectors]
    expected = [int(v["vshard"]) for v in vectors]
    assert [vshard_for_key(k) for k in keys] == expected
    assert vshards_for_keys(keys).tolist() == expected
