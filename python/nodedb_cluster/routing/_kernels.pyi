"""Type stubs for the compiled routing kernels (`cython/routing_kernels.pyx`)."""

from typing import Final

import numpy as np
import numpy.typing as npt

from nodedb_cluster.errors import UnknownVShard as UnknownVShard
from nodedb_cluster.routing.keys import Key, KeyBatch, VShardIds

NUM_VSHARDS: Final[int]

def vshard_for_key(key: Key) -> int: ...
def vshards_for_keys(keys: KeyBatch) -> npt.NDArray[np.uint16]: ...
def leaders_for_keys(
    keys: KeyBatch,
    vshard_to_leader: npt.NDArray[np.uint64],
    out: npt.NDArray[np.uint64] | None = None,
) -> npt.NDArray[np.uint64]: ...
def groups_for_vshards(
    vshards: VShardIds,
    vshard_to_group: npt.NDArray[np.uint32],
    out: npt.NDArray[np.uint32] | None = None,
) -> npt.NDArray[np.uint32]: ...
def leaders_for_vshards(
    vshards: VShardIds,
    vshard_to_leader: npt.NDArray[np.uint64],
    out: npt.NDArray[np.uint64] | None = None,
) -> npt.NDArray[np.uint64]: ...
