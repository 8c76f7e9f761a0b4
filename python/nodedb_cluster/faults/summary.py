"""The summary of many chaos runs: fault counts, anomalies, failover and election percentiles,
operations and moves, as `nodedb-cluster chaos` prints and writes it (`--json`)."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from nodedb_cluster.faults.run import RunResult


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def summarize(results: Sequence[RunResult]) -> dict[str, object]:
    failovers = [f for r in results for f in r.failovers_ms]
    elections = [f for r in results for f in r.elections_ms]
    ops = _sum_counts(r.ops for r in results)
    return {
        "runs": len(results),
        "faults": dict(sorted(Counter(f.kind for r in results for f in r.schedule).items())),
        "stale_replicas": sum(len(r.stale_replicas) for r in results),
        "failed_runs": [r.seed for r in results if not r.passed],
        "anomalies": sum(len(r.anomalies) for r in results),
        "linearizable_unknown": [r.seed for r in results if r.linearizable is None],
        "failovers": len(failovers),
        "failover_ms_p50": statistics.median(failovers) if failovers else None,
        "failover_ms_p99": percentile(failovers, 99) if failovers else None,
        "failover_ms_max": max(failovers) if failovers else None,
        "elections": len(elections),
        "election_ms_p50": statistics.median(elections) if elections else None,
        "election_ms_p99": percentile(elections, 99) if elections else None,
        "ops": dict(sorted(ops.items())),
        "moves": _sum_counts(r.moves for r in results),
    }


def _sum_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for c in counts:
        out.update(c)
    return dict(sorted(out.items()))


def write_summary(path: Path, results: Sequence[RunResult]) -> None:
    doc = {"summary": summarize(results), "runs": [r.to_doc() for r in results]}
    path.write_text(json.dumps(doc, indent=2))
