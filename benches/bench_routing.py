"""Routing hot path: compiled kernels vs the best pure-Python / numpy baselines, in one run.

Run:  pytest benches/bench_routing.py --benchmark-enable

(a) keys -> leader, 1M random 16-byte keys (a Python list of bytes):
    kernel   `leaders_for_keys(keys, vshard_to_leader, out)` (hash + gather in one C pass),
             and `vshards_for_keys(keys)` (hash only);
    baseline a Python comprehension `xxh3_64_intdigest(k) % 1024` + dict vShard -> leader,
             and the xxh3-only loop `list(map(xxh3_64_intdigest, keys))` (a floor for any
             per-key Python approach: it does not even route).
(a') the same keys in shuffled order: each key is its own heap object, so a batch gathered from
    many requests is scattered in memory; the kernel prefetches ahead, Python cannot.
(b) vShard -> leader, 1M precomputed uint16 vShard ids, preallocated output:
    kernel   `leaders_for_vshards(vs, vshard_to_leader, out)` (one fused gather);
    baseline numpy's two-step take `np.take(v2g, vs, out=g); np.take(g2l, g, out=l)`, in both
             index modes ('raise' buffers `out`, 'clip' does not), and a one-step `np.take` on
             the fused table (numpy doing exactly the kernel's job).

Every case is timed with fixed rounds (`pedantic`), so the run is bounded in count; the summary
printed at the end (benches/conftest.py) gives medians, items/s and ratios of this run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
import xxhash

from nodedb_cluster.routing import _kernels
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.routing.vshard import NUM_VSHARDS

KEYS_COUNT = 1_000_000
KEY_BYTES = 16
NUM_GROUPS = 64
ROUNDS_KERNEL = 40
"""Kernel calls take a few ms: 40 rounds give a stable median within ~1 s."""
ROUNDS_PYTHON = 7
"""Python loops take ~0.1-0.5 s per round: 7 rounds bound each baseline to a few seconds."""

RecordSummary = Callable[[str, str, object, int, bool], None]
"""The `record_summary` fixture of benches/conftest.py."""

GROUP_KEYS = "(a) 1M 16-byte keys -> leader"
GROUP_SHUFFLED = "(a') 1M keys, scattered -> leader"
GROUP_VSHARDS = "(b) 1M vShard ids -> leader"


def _table() -> RoutingTable:
    """64 data groups on 3 voters, leaders spread over the 3 nodes."""
    table = RoutingTable.bootstrap(NUM_GROUPS, node_id=1)
    for group in table.group_ids:
        table.set_members(group, [1, 2, 3])
        table.set_leader(group, 1 + group % 3)
    return table


TABLE = _table()
V2G = TABLE.vshard_to_group
V2L = TABLE.vshard_to_leader
G2L = np.array([TABLE.leader_for_group(g) for g in TABLE.group_ids], dtype=np.uint64)
VSHARD_TO_LEADER_DICT = {v: int(V2L[v]) for v in range(NUM_VSHARDS)}


@pytest.fixture(scope="module")
def keys() -> list[bytes]:
    rng = np.random.default_rng(42)
    blob = rng.bytes(KEY_BYTES * KEYS_COUNT)
    return [blob[i : i + KEY_BYTES] for i in range(0, KEY_BYTES * KEYS_COUNT, KEY_BYTES)]


@pytest.fixture(scope="module")
def shuffled_keys(keys: list[bytes]) -> list[bytes]:
    order = np.random.default_rng(44).permutation(len(keys))
    return [keys[i] for i in order]


@pytest.fixture(scope="module")
def expected_leaders(keys: list[bytes]) -> list[int]:
    """Reference routing of `keys`, used to check every case computes the same answer."""
    x3 = xxhash.xxh3_64_intdigest
    return [VSHARD_TO_LEADER_DICT[x3(k) % NUM_VSHARDS] for k in keys]


@pytest.fixture(scope="module")
def vshards() -> npt.NDArray[np.uint16]:
    rng = np.random.default_rng(43)
    return rng.integers(0, NUM_VSHARDS, size=KEYS_COUNT, dtype=np.uint16)


def _run(benchmark: object, fn: Callable[[], object], rounds: int) -> object:
    result = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)  # type: ignore[attr-defined]
    return result


# --- (a) keys -> leader ---------------------------------------------------------------------------


def test_keys_kernel_leaders_for_keys(
    benchmark: object, record_summary: RecordSummary, keys: list[bytes], expected_leaders: list[int]
) -> None:
    benchmark.group = GROUP_KEYS  # type: ignore[attr-defined]
    out = np.empty(KEYS_COUNT, dtype=np.uint64)
    _run(benchmark, lambda: _kernels.leaders_for_keys(keys, V2L, out), ROUNDS_KERNEL)
    assert out.tolist() == expected_leaders
    record_summary(
        GROUP_KEYS, "kernel leaders_for_keys (hash+gather)", benchmark, KEYS_COUNT, False
    )


def test_keys_kernel_vshards_for_keys(
    benchmark: object, record_summary: RecordSummary, keys: list[bytes]
) -> None:
    benchmark.group = GROUP_KEYS  # type: ignore[attr-defined]
    result = _run(benchmark, lambda: _kernels.vshards_for_keys(keys), ROUNDS_KERNEL)
    assert isinstance(result, np.ndarray)
    assert result.shape == (KEYS_COUNT,)
    record_summary(GROUP_KEYS, "kernel vshards_for_keys (hash only)", benchmark, KEYS_COUNT, False)


def test_keys_python_xxh3_dict(
    benchmark: object, record_summary: RecordSummary, keys: list[bytes], expected_leaders: list[int]
) -> None:
    benchmark.group = GROUP_KEYS  # type: ignore[attr-defined]
    x3 = xxhash.xxh3_64_intdigest
    route = VSHARD_TO_LEADER_DICT

    def python_loop() -> list[int]:
        return [route[x3(k) % 1024] for k in keys]

    result = _run(benchmark, python_loop, ROUNDS_PYTHON)
    assert result == expected_leaders
    record_summary(GROUP_KEYS, "python xxh3 + dict loop", benchmark, KEYS_COUNT, True)


def test_keys_python_xxh3_only(
    benchmark: object, record_summary: RecordSummary, keys: list[bytes]
) -> None:
    benchmark.group = GROUP_KEYS  # type: ignore[attr-defined]
    x3 = xxhash.xxh3_64_intdigest
    _run(benchmark, lambda: list(map(x3, keys)), ROUNDS_PYTHON)
    record_summary(GROUP_KEYS, "python map(xxh3) only, no routing", benchmark, KEYS_COUNT, True)


def test_shuffled_kernel_leaders_for_keys(
    benchmark: object, record_summary: RecordSummary, shuffled_keys: list[bytes]
) -> None:
    benchmark.group = GROUP_SHUFFLED  # type: ignore[attr-defined]
    out = np.empty(KEYS_COUNT, dtype=np.uint64)
    _run(benchmark, lambda: _kernels.leaders_for_keys(shuffled_keys, V2L, out), ROUNDS_KERNEL)
    x3 = xxhash.xxh3_64_intdigest
    assert out[:1000].tolist() == [int(V2L[x3(k) % 1024]) for k in shuffled_keys[:1000]]
    record_summary(GROUP_SHUFFLED, "kernel leaders_for_keys", benchmark, KEYS_COUNT, False)


def test_shuffled_python_xxh3_dict(
    benchmark: object, record_summary: RecordSummary, shuffled_keys: list[bytes]
) -> None:
    benchmark.group = GROUP_SHUFFLED  # type: ignore[attr-defined]
    x3 = xxhash.xxh3_64_intdigest
    route = VSHARD_TO_LEADER_DICT
    _run(benchmark, lambda: [route[x3(k) % 1024] for k in shuffled_keys], ROUNDS_PYTHON)
    record_summary(GROUP_SHUFFLED, "python xxh3 + dict loop", benchmark, KEYS_COUNT, True)


# --- (b) vShard ids -> leader ---------------------------------------------------------------------


def test_vshards_kernel_leaders_for_vshards(
    benchmark: object, record_summary: RecordSummary, vshards: npt.NDArray[np.uint16]
) -> None:
    benchmark.group = GROUP_VSHARDS  # type: ignore[attr-defined]
    out = np.empty(KEYS_COUNT, dtype=np.uint64)
    _run(benchmark, lambda: _kernels.leaders_for_vshards(vshards, V2L, out), ROUNDS_KERNEL)
    np.testing.assert_array_equal(out, G2L[V2G[vshards]])
    record_summary(GROUP_VSHARDS, "kernel leaders_for_vshards", benchmark, KEYS_COUNT, False)


def test_vshards_kernel_groups_for_vshards(
    benchmark: object, record_summary: RecordSummary, vshards: npt.NDArray[np.uint16]
) -> None:
    benchmark.group = GROUP_VSHARDS  # type: ignore[attr-defined]
    out = np.empty(KEYS_COUNT, dtype=np.uint32)
    _run(benchmark, lambda: _kernels.groups_for_vshards(vshards, V2G, out), ROUNDS_KERNEL)
    np.testing.assert_array_equal(out, V2G[vshards])
    record_summary(
        GROUP_VSHARDS, "kernel groups_for_vshards (group only)", benchmark, KEYS_COUNT, False
    )


@pytest.mark.parametrize("mode", ["raise", "clip"])
def test_vshards_numpy_two_step_take(
    benchmark: object,
    record_summary: RecordSummary,
    vshards: npt.NDArray[np.uint16],
    mode: str,
) -> None:
    benchmark.group = GROUP_VSHARDS  # type: ignore[attr-defined]
    groups = np.empty(KEYS_COUNT, dtype=np.uint32)
    leaders = np.empty(KEYS_COUNT, dtype=np.uint64)

    def two_step() -> None:
        np.take(V2G, vshards, out=groups, mode=mode)  # type: ignore[call-overload]
        np.take(G2L, groups, out=leaders, mode=mode)  # type: ignore[call-overload]

    _run(benchmark, two_step, ROUNDS_KERNEL)
    np.testing.assert_array_equal(leaders, G2L[V2G[vshards]])
    record_summary(
        GROUP_VSHARDS, f"numpy 2-step take out= mode={mode}", benchmark, KEYS_COUNT, True
    )


def test_vshards_numpy_fused_take(
    benchmark: object, record_summary: RecordSummary, vshards: npt.NDArray[np.uint16]
) -> None:
    benchmark.group = GROUP_VSHARDS  # type: ignore[attr-defined]
    leaders = np.empty(KEYS_COUNT, dtype=np.uint64)
    _run(benchmark, lambda: np.take(V2L, vshards, out=leaders, mode="clip"), ROUNDS_KERNEL)
    np.testing.assert_array_equal(leaders, G2L[V2G[vshards]])
    record_summary(
        GROUP_VSHARDS, "numpy 1-step take on fused table, clip", benchmark, KEYS_COUNT, True
    )
