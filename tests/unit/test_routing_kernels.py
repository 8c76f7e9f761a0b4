"""The compiled gather kernels: vShard ids -> groups / leaders, keys -> leaders.

Goal: each kernel equals the obvious numpy expression, validates every input it reads (dtype, shape,
contiguity, writability, vShard range) with a typed error, and never reads outside its table: bad
ids raise `UnknownVShard` even where they sit in the unrolled part or the tail of the loop.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nodedb_cluster.errors import UnknownVShard
from nodedb_cluster.routing import _kernels
from nodedb_cluster.routing.vshard import NUM_VSHARDS


def _tables(seed: int = 1) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint64]]:
    rng = np.random.default_rng(seed)
    groups = rng.integers(1, 2**32, size=NUM_VSHARDS, dtype=np.uint32)
    leaders = rng.integers(0, 2**64 - 1, size=NUM_VSHARDS, dtype=np.uint64, endpoint=True)
    return groups, leaders


GROUPS, LEADERS = _tables()


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.uint16, st.integers(0, 70), elements=st.integers(0, NUM_VSHARDS - 1)))
def test_gathers_equal_numpy_take(vshards: npt.NDArray[np.uint16]) -> None:
    groups = _kernels.groups_for_vshards(vshards, GROUPS)
    leaders = _kernels.leaders_for_vshards(vshards, LEADERS)
    assert groups.dtype == np.uint32
    assert leaders.dtype == np.uint64
    np.testing.assert_array_equal(groups, np.take(GROUPS, vshards))
    np.testing.assert_array_equal(leaders, np.take(LEADERS, vshards))


def test_gather_large_batch_with_preallocated_out() -> None:
    rng = np.random.default_rng(3)
    vshards = rng.integers(0, NUM_VSHARDS, size=100_003, dtype=np.uint16)
    groups_out = np.zeros(vshards.shape[0], dtype=np.uint32)
    leaders_out = np.zeros(vshards.shape[0], dtype=np.uint64)
    assert _kernels.groups_for_vshards(vshards, GROUPS, out=groups_out) is groups_out
    assert _kernels.leaders_for_vshards(vshards, LEADERS, out=leaders_out) is leaders_out
    np.testing.assert_array_equal(groups_out, GROUPS[vshards])
    np.testing.assert_array_equal(leaders_out, LEADERS[vshards])


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint32, np.uint64])
def test_other_integer_dtypes_are_range_checked_then_converted(dtype: type[np.integer]) -> None:
    vshards = np.array([0, 5, 127], dtype=dtype)
    np.testing.assert_array_equal(
        _kernels.leaders_for_vshards(vshards, LEADERS), LEADERS[[0, 5, 127]]
    )
    assert _kernels.groups_for_vshards([1, 2, 3], GROUPS).tolist() == GROUPS[[1, 2, 3]].tolist()
    assert _kernels.leaders_for_vshards([], LEADERS).shape == (0,)
    strided = np.arange(0, 40, dtype=np.uint16)[::3]
    np.testing.assert_array_equal(_kernels.leaders_for_vshards(strided, LEADERS), LEADERS[strided])


@pytest.mark.parametrize("position", [0, 3, 4, 7, 1000, 1001, 1002])
@pytest.mark.parametrize("bad", [1024, 2047, 65535])
def test_out_of_range_uint16_ids_raise_naming_the_first(position: int, bad: int) -> None:
    """Positions cover the unrolled body (0..1000) and the 3-element tail of a 1003-long batch."""
    vshards = np.full(1003, 17, dtype=np.uint16)
    vshards[position] = bad
    vshards[-1] = 1025 if position != 1002 else bad
    with pytest.raises(UnknownVShard) as caught:
        _kernels.leaders_for_vshards(vshards, LEADERS)
    assert caught.value.vshard == bad
    with pytest.raises(UnknownVShard) as caught:
        _kernels.groups_for_vshards(vshards, GROUPS)
    assert caught.value.vshard == bad


@pytest.mark.parametrize("bad", [-1, 1024, 2**40, -(2**40)])
def test_out_of_range_wide_ids_raise_before_narrowing(bad: int) -> None:
    """-1 or 65536+1 would wrap into 0..1023 if narrowed to uint16 first."""
    vshards = np.array([1, bad, 2], dtype=np.int64)
    with pytest.raises(UnknownVShard) as caught:
        _kernels.leaders_for_vshards(vshards, LEADERS)
    assert caught.value.vshard == bad
    with pytest.raises(UnknownVShard):
        _kernels.groups_for_vshards([bad], GROUPS)


def test_wrong_vshard_arrays_are_rejected() -> None:
    with pytest.raises(TypeError, match="integer array"):
        _kernels.leaders_for_vshards(np.array([1.0, 2.0]), LEADERS)
    with pytest.raises(ValueError, match="1-D"):
        _kernels.leaders_for_vshards(np.zeros((2, 2), dtype=np.uint16), LEADERS)


def test_wrong_tables_are_rejected() -> None:
    vshards = np.arange(4, dtype=np.uint16)
    with pytest.raises(TypeError, match="uint64"):
        _kernels.leaders_for_vshards(vshards, LEADERS.astype(np.int64))
    with pytest.raises(TypeError, match="uint32"):
        _kernels.groups_for_vshards(vshards, GROUPS.astype(np.uint64))
    with pytest.raises(ValueError, match=r"shape \(1024,\)"):
        _kernels.leaders_for_vshards(vshards, LEADERS[:1000])
    with pytest.raises(ValueError, match="C-contiguous"):
        _kernels.leaders_for_vshards(vshards, np.repeat(LEADERS, 2)[::2])
    with pytest.raises(TypeError, match="numpy array"):
        _kernels.leaders_for_vshards(vshards, list(LEADERS))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="uint64"):
        _kernels.leaders_for_keys([b"a"], GROUPS)  # type: ignore[arg-type]


def test_read_only_tables_are_accepted() -> None:
    table = LEADERS.copy()
    table.flags.writeable = False
    assert _kernels.leaders_for_vshards([3], table).tolist() == [int(LEADERS[3])]


def test_wrong_out_arrays_are_rejected_and_left_untouched() -> None:
    vshards = np.arange(8, dtype=np.uint16)
    cases: list[tuple[object, type[Exception], str]] = [
        (np.zeros(8, dtype=np.int64), TypeError, "uint64"),
        (np.zeros(7, dtype=np.uint64), ValueError, r"shape \(8,\)"),
        (np.zeros(16, dtype=np.uint64)[::2], ValueError, "C-contiguous"),
        ([0] * 8, TypeError, "numpy array"),
    ]
    for out, error, message in cases:
        before = np.array(out, copy=True)
        with pytest.raises(error, match=message):
            _kernels.leaders_for_vshards(vshards, LEADERS, out=out)  # type: ignore[arg-type]
        np.testing.assert_array_equal(np.asarray(out), before)
    frozen = np.zeros(8, dtype=np.uint64)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        _kernels.leaders_for_vshards(vshards, LEADERS, out=frozen)
    assert not frozen.any()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=40))
def test_leaders_for_keys_is_hash_then_gather(keys: list[bytes]) -> None:
    expected = [int(LEADERS[xxhash.xxh3_64_intdigest(k) % NUM_VSHARDS]) for k in keys]
    assert _kernels.leaders_for_keys(keys, LEADERS).tolist() == expected
    out = np.zeros(len(keys), dtype=np.uint64)
    assert _kernels.leaders_for_keys(keys, LEADERS, out=out) is out
    assert out.tolist() == expected


def test_leaders_for_keys_fixed_width_array() -> None:
    keys = np.array([b"alpha", b"b", b"", b"gamma-delta"], dtype="S11")
    expected = [int(LEADERS[xxhash.xxh3_64_intdigest(bytes(k)) % NUM_VSHARDS]) for k in keys]
    assert _kernels.leaders_for_keys(keys, LEADERS).tolist() == expected


def test_leaders_for_keys_rejects_bad_keys_and_out() -> None:
    with pytest.raises(TypeError, match=r"keys\[1\] is NoneType"):
        _kernels.leaders_for_keys([b"a", None], LEADERS)  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        _kernels.leaders_for_keys([b"a", b"b"], LEADERS, out=np.zeros(3, dtype=np.uint64))
