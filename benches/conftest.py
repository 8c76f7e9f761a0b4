"""Shared benchmark plumbing: refuse a debug Rust core, collect `bench_*.py`, print a summary.

Figures from a debug build are meaningless (10-50x slower), so the session exits before running
anything unless `nodedb_cluster_core.build_profile()` is "release".

A benchmark that wants a row in the end-of-run summary calls `record_summary(...)`: the table
prints each case's median, its items/s, and its speed-up over the baseline of the same group
(measured in the same invocation).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

BUILD_PROFILE_REQUIRED = "release"


def pytest_sessionstart(session: pytest.Session) -> None:
    # Imported by name: the pyo3 module ships no type stubs, and this is its only use here.
    profile = str(importlib.import_module("nodedb_cluster_core").build_profile())
    if profile != BUILD_PROFILE_REQUIRED:
        pytest.exit(
            f"benchmarks refuse a {profile!r} build of nodedb_cluster_core; "
            "rebuild with `pip install ./rust/py` (release profile)",
            returncode=2,
        )


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Collect `bench_*.py` in a directory run (a file named on the command line is collected
    anyway, so it is skipped here to avoid collecting it twice)."""
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@dataclass(frozen=True, slots=True)
class SummaryRow:
    group: str
    """Cases compared with each other; one of them is the baseline."""
    case: str
    median_s: float
    min_s: float
    items: int
    """Keys or lookups processed by one call."""
    is_baseline: bool


_rows_key = pytest.StashKey[list[SummaryRow]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_rows_key] = []


RecordSummary = Callable[[str, str, object, int, bool], None]


@pytest.fixture
def record_summary(request: pytest.FixtureRequest) -> RecordSummary:
    """`record_summary(group, case, benchmark, items, is_baseline)` after a benchmark has run."""
    rows = request.config.stash[_rows_key]

    def record(group: str, case: str, benchmark: object, items: int, is_baseline: bool) -> None:
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # benchmarks disabled (--benchmark-disable): nothing was measured
            return
        rows.append(
            SummaryRow(
                group,
                case,
                float(stats.stats.median),
                float(stats.stats.min),
                items,
                is_baseline,
            )
        )

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = terminalreporter.config.stash.get(_rows_key, [])
    if not rows:
        return
    write = terminalreporter.write_line
    write("")
    write("summary (items/s from the median; min shown to expose noise from a shared machine)")
    header = f"{'group':<34} {'case':<46} {'median':>11} {'items/s':>12} {'min':>11}"
    write(header)
    write("-" * len(header))
    for r in rows:
        mark = " [baseline]" if r.is_baseline else ""
        write(
            f"{r.group:<34} {(r.case + mark):<46} {r.median_s * 1e3:9.3f}ms "
            f"{_si(r.items / r.median_s):>12} {r.min_s * 1e3:9.3f}ms"
        )
    write("")
    write("speed-up = baseline median / case median (same run, same input)")
    for group in dict.fromkeys(r.group for r in rows):
        members = [r for r in rows if r.group == group]
        for case in (r for r in members if not r.is_baseline):
            for base in (r for r in members if r.is_baseline):
                write(f"{group}: {case.case} vs {base.case}: {base.median_s / case.median_s:.1f}x")


def _si(rate: float) -> str:
    for unit, scale in (("G/s", 1e9), ("M/s", 1e6), ("k/s", 1e3)):
        if rate >= scale:
            return f"{rate / scale:.2f} {unit}"
    return f"{rate:.0f} /s"
