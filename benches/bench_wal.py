"""Log append (issue 4): the durable segmented log `nodedb-wal`, against the disk's own limit.

Run:  pytest benches/bench_wal.py --benchmark-enable -s
  or: python benches/bench_wal.py --dir <dir on the data disk> --runs 3

Builds and runs the Rust bench binary `rust/wal/examples/wal_bench.rs` (release; it refuses a
debug build, and this file refuses a debug `nodedb_cluster_core` like every bench). One
invocation measures, so the ratios are same-run:
- the disk's physical limit: 4 KiB write + fsync / fdatasync (the model is
  shared/anchors/disk/fsync_bench.py), 128 B (one framed 100 B entry) write + fdatasync, and
  4 KiB overwrite + fdatasync of a pre-written file (what preallocation could buy);
- unsynced plain 1 MiB writes (the page-cache limit for the unsynced cases);
- unsynced append MB/s (4 KiB and 100 B payloads; target >= 1 GB/s);
- durable group commit of 100-byte entries, N entries per fsync (target >= 500k entries/s),
  with preallocated segments (the default) and, for N = 1, 100, 1000, growing ones (baseline);
- foreground syncs (1 entry each) while the next segment is zero-filled in the background, for
  three chunk sizes; `Wal::open` of an empty directory with and without preallocation;
- recovery: `Wal::open` replaying 2M 100-byte records (256 MB), preallocated and growing.
Each case: one discarded warm-up, then `runs` runs interleaved across cases; the summary
quotes medians [min-max].
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT_S = 1800
"""A cold release build of the crate and its deps takes minutes on 2 shared cores."""
RUN_TIMEOUT_S = 600
"""The bench takes ~15 s per run on this machine's disk (6 with the warm-up); 600 s bounds a
sick disk."""
RUNS_DEFAULT = 5
TARGET_UNSYNCED_MB_PER_S = 1000.0
TARGET_DURABLE_ENTRIES_PER_S = 500_000.0
HEADLINE_BATCH_ENTRIES = 1000
"""The group-commit batch quoted against the target (one Raft round's Ready over many groups)."""


@dataclass(frozen=True, slots=True)
class Summary:
    case: str
    metrics: dict[str, tuple[float, float, float]]
    """metric -> (median, min, max) across runs."""


def build_bench() -> Path:
    """`cargo build --release` of the example; returns the binary path."""
    subprocess.run(
        ["cargo", "build", "--release", "-p", "nodedb-wal", "--example", "wal_bench"],
        cwd=REPO_ROOT,
        check=True,
        timeout=BUILD_TIMEOUT_S,
    )
    return REPO_ROOT / "target" / "release" / "examples" / "wal_bench"


def run_bench(binary: Path, work_dir: Path, runs: int) -> list[Summary]:
    out = subprocess.run(
        [str(binary), "--dir", str(work_dir), "--runs", str(runs)],
        check=True,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    summaries = []
    for line in out.stdout.splitlines():
        if not line.startswith("SUMMARY "):
            continue
        raw = json.loads(line.removeprefix("SUMMARY "))
        metrics = {
            key: (float(v["median"]), float(v["min"]), float(v["max"]))
            for key, v in raw.items()
            if isinstance(v, dict)
        }
        summaries.append(Summary(case=str(raw["case"]), metrics=metrics))
    return summaries


def report(summaries: list[Summary]) -> list[str]:
    """Human-readable lines: every case, then the targets and the ratios to the disk limit."""
    lines = []
    for s in summaries:
        parts = [f"{k}={_num(m)} [{_num(lo)}-{_num(hi)}]" for k, (m, lo, hi) in s.metrics.items()]
        lines.append(f"{s.case:<42} " + "  ".join(parts))
    by_case = {s.case: s.metrics for s in summaries}
    raw_4k = by_case["raw_append_4k_fdatasync"]["syncs_per_s"][0]
    raw = by_case["raw_append_128b_fdatasync"]["syncs_per_s"][0]
    unsynced = by_case["wal_unsynced_100b_records"]["mb_per_s"][0]
    unsynced_4k = by_case["wal_unsynced_4k_records"]["mb_per_s"][0]
    head = by_case[f"wal_group_commit_100b_batch{HEADLINE_BATCH_ENTRIES}"]
    single = by_case["wal_group_commit_100b_batch1"]
    recovery = by_case["wal_recovery_100b_records"]
    lines += ["", "preallocated vs growing segments (same invocation):"]
    for batch in (1, 100, 1000):
        pre = by_case[f"wal_group_commit_100b_batch{batch}"]
        grow = by_case[f"wal_group_commit_100b_batch{batch}_growing"]
        lines.append(
            f"  {batch:>4} entries per sync: {pre['syncs_per_s'][0]:,.0f} vs"
            f" {grow['syncs_per_s'][0]:,.0f} syncs/s"
            f" = {pre['syncs_per_s'][0] / grow['syncs_per_s'][0]:.2f}x;"
            f" p50 {pre['p50_ms'][0]:.3f} vs {grow['p50_ms'][0]:.3f} ms,"
            f" p99 {pre['p99_ms'][0]:.3f} vs {grow['p99_ms'][0]:.3f} ms;"
            f" CPU {pre['cpu_us_per_sync'][0]:.1f} vs {grow['cpu_us_per_sync'][0]:.1f} us per sync"
        )
    for case in (
        "wal_sync_during_preparation_batch1",
        "wal_sync_during_preparation_batch1_chunk1m",
        "wal_sync_during_preparation_batch1_chunk64k",
    ):
        m = by_case[case]
        lines.append(
            f"  {case}: p50 {m['p50_ms'][0]:.3f} ms, p99 {m['p99_ms'][0]:.3f} ms,"
            f" max {m['max_ms'][0]:.3f} ms over {m['syncs'][0]:,.0f} syncs;"
            f" preparation {m['preparation_ms'][0]:,.0f} ms"
        )
    lines.append(
        f"  open of an empty dir: {by_case['wal_open_empty_preallocated']['open_ms'][0]:.1f} ms"
        f" preallocated vs {by_case['wal_open_empty_growing']['open_ms'][0]:.1f} ms growing;"
        f" recovery {recovery['seconds'][0]:.3f} s vs"
        f" {by_case['wal_recovery_100b_records_growing']['seconds'][0]:.3f} s"
    )
    lines += [
        "",
        f"unsynced append: {unsynced:,.0f} MB/s (100 B records), {unsynced_4k:,.0f} MB/s (4 KiB)"
        f" -- target {TARGET_UNSYNCED_MB_PER_S:,.0f} MB/s",
        f"durable, {HEADLINE_BATCH_ENTRIES} entries per fsync: "
        f"{head['entries_per_s'][0]:,.0f} entries/s at {head['syncs_per_s'][0]:,.0f} syncs/s"
        f" -- target {TARGET_DURABLE_ENTRIES_PER_S:,.0f}/s",
        f"disk limit: append + fdatasync {raw_4k:,.0f}/s (4 KiB), {raw:,.0f}/s (128 B = one framed"
        f" entry); wal, 1 entry per sync: {single['syncs_per_s'][0]:,.0f} syncs/s"
        f" = {single['syncs_per_s'][0] / raw:.2f}x of the 128 B limit",
        f"recovery: {recovery['mb_per_s'][0]:,.0f} MB/s"
        f" ({recovery['records_per_s'][0]:,.0f} records/s, 2M records in"
        f" {recovery['seconds'][0]:.3f} s)",
    ]
    return lines


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3f}"


def refuse_debug_core() -> None:
    profile = str(importlib.import_module("nodedb_cluster_core").build_profile())
    if profile != "release":
        sys.exit(f"refusing to benchmark a {profile!r} build of nodedb_cluster_core")


def test_wal_append(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    enabled = request.config.getoption("benchmark_enable")
    if request.config.getoption("benchmark_disable") and not enabled:
        pytest.skip("benchmarks are disabled by default: run with --benchmark-enable")
    summaries = run_bench(build_bench(), tmp_path, RUNS_DEFAULT)
    lines = report(summaries)
    print("\n" + "\n".join(lines))
    # Sanity, not targets: every case produced positive figures.
    assert len(summaries) >= 20
    assert all(m > 0 for s in summaries for (m, _, _) in s.metrics.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, required=True, help="directory on the disk under test")
    ap.add_argument("--runs", type=int, default=RUNS_DEFAULT)
    args = ap.parse_args()
    refuse_debug_core()
    print("\n".join(report(run_bench(build_bench(), args.dir, args.runs))))


if __name__ == "__main__":
    main()
