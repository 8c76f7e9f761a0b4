"""Key -> vShard: the one hash every node, client and language binding must agree on.

    vshard = XXH3_64(key_bytes, seed=0) % NUM_VSHARDS        (NUM_VSHARDS = 1024)

XXH3 64-bit is the function `xxhash.xxh3_64_intdigest(key)` of the PyPI `xxhash` package and
`XXH3_64bits(data, len)` of the C library (docs/ARCHITECTURE.md, "vShard hash"). It was picked
because it is a stable, specified, widely implemented hash that is cheap on short keys (the inlined
kernel hashes 16-byte keys at ~200 M/s on one core, BENCHMARKS.md) and whose final avalanche makes
the low 10 bits we keep uniform; tests/unit/test_vshard_hash.py checks that with a chi-square test.

The functions here are the compiled kernels (`cython/routing_kernels.pyx`), re-exported unwrapped so
the scalar path costs one C call. A key is `bytes`, `bytearray` or a C-contiguous `memoryview`;
anything else is a `TypeError`. A batch is any sequence of keys, or a 1-D numpy `S<n>` array (hashed
as numpy hands its elements out, i.e. without trailing NUL bytes).
"""

from __future__ import annotations

import operator
from typing import Final

import numpy as np

from nodedb_cluster.errors import UnknownVShard
from nodedb_cluster.routing import _kernels
from nodedb_cluster.routing._kernels import vshard_for_key, vshards_for_keys
from nodedb_cluster.routing.keys import Key, KeyBatch, VShardIds

__all__ = [
    "NUM_VSHARDS",
    "VSHARD_HASH_SEED",
    "Key",
    "KeyBatch",
    "VShardIds",
    "check_vshard",
    "vshard_for_key",
    "vshards_for_keys",
]


NUM_VSHARDS: Final = 1024
"""Fixed for the life of a cluster: changing it moves almost every key."""

VSHARD_HASH_SEED: Final = 0
"""The XXH3 seed; part of the on-disk contract, never changes."""

# The kernel hard-codes the modulus (as a mask); a mismatch here would route keys inconsistently.
assert _kernels.NUM_VSHARDS == NUM_VSHARDS


def check_vshard(vshard: int | np.integer) -> int:
    """`vshard` as an int when it is a valid vShard id (0..1023), else `UnknownVShard`.

    Python and numpy integers are accepted (ids often come out of numpy arrays); `bool` and
    non-integers are a `TypeError`, not an id.
    """
    if isinstance(vshard, bool) or not isinstance(vshard, int | np.integer):
        raise TypeError(f"a vShard id must be an int, not {type(vshard).__name__}")
    value = operator.index(vshard)
    if not 0 <= value < NUM_VSHARDS:
        raise UnknownVShard(value)
    return value
