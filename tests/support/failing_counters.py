"""The README's embedding example (examples/replicated_counters.py) with a host store that can
fail: while `<data_dir>/store-broken` exists, applying a counter command whose increment is
"fail" raises OSError on this node, as a host whose own storage failed mid-batch. On the other
nodes (and once the file is gone) "fail" counts as 1, so the replicas agree.

While `<data_dir>/store-hung` exists, a command whose increment is "hang" never returns from
`apply_batch` on this node (its store's lock is held for good); elsewhere it counts as 1.

`node-empty-state` instead runs counters whose empty state encodes to no byte at all (`b""`,
as a host with nothing to say may): every replica added at formation receives such a
snapshot.

    python tests/support/failing_counters.py node --config node2.toml
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
import threading
from pathlib import Path
from typing import Any

import msgpack

from nodedb_cluster.config import ClusterConfig

BROKEN_MARKER = "store-broken"
"""The file under a node's data dir that breaks its host store (the test creates it)."""
HUNG_MARKER = "store-hung"
"""The file under a node's data dir that hangs its host store (the test creates it)."""

_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "replicated_counters.py"
_spec = importlib.util.spec_from_file_location("replicated_counters", _EXAMPLE)
assert _spec is not None
assert _spec.loader is not None
example: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)


def failing_counters(data_dir: Path) -> type:
    class FailingCounters(example.Counters):  # type: ignore[misc]
        def apply_batch(self, entries: list[tuple[int, bytes]]) -> list[bytes]:
            commands = [(i, msgpack.unpackb(c)) for i, c in entries]
            if (data_dir / BROKEN_MARKER).exists() and any(by == "fail" for _, (_, by) in commands):
                raise OSError(5, "the host's store failed")
            if (data_dir / HUNG_MARKER).exists() and any(by == "hang" for _, (_, by) in commands):
                threading.Event().wait()  # a lock nobody releases
            special = ("fail", "hang")
            ones = [(i, msgpack.packb([k, 1 if by in special else by])) for i, (k, by) in commands]
            result: list[bytes] = super().apply_batch(ones)
            return result

    return FailingCounters


class EmptyStateCounters(example.Counters):  # type: ignore[misc]
    """Counters whose empty state is the empty snapshot."""

    def snapshot(self) -> bytes:
        return super().snapshot() if self.values else b""

    def snapshot_view(self) -> Any:
        view = super().snapshot_view()
        return view if self.values else (lambda: b"")

    def decode_snapshot(self, data: bytes) -> dict[bytes, int]:
        return super().decode_snapshot(data) if data else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cmd", choices=["node", "node-empty-state"])
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args()
    config = ClusterConfig.from_toml(args.config)
    if args.cmd == "node-empty-state":
        example.Counters = EmptyStateCounters
    else:
        example.Counters = failing_counters(config.data_dir)
    result: int = asyncio.run(example.run_node(config))
    return result


if __name__ == "__main__":
    sys.exit(main())
