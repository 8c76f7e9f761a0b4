"""The types of keys and vShard ids the routing kernels accept (shared by the compiled kernels'
stub and the Python wrappers, so neither imports the other for a type)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

Key: TypeAlias = bytes | bytearray | memoryview
"""One key as the kernels accept it."""

KeyBatch: TypeAlias = Iterable[Key] | npt.NDArray[np.bytes_] | npt.NDArray[np.object_]
"""A batch of keys: a list or tuple (fast path), any other iterable of keys (copied into a list
first), or a 1-D numpy `S<n>` (or object) array."""

VShardIds: TypeAlias = npt.NDArray[np.integer] | Sequence[int]
"""A batch of vShard ids; uint16 arrays are the zero-copy fast path."""
