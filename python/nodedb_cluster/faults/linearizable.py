"""The bridge to `nodedb_cluster.checker` (the project's one linearizability checker).

This module converts the harness's events into the checker's history model and turns its
answer into anomalies; it searches nothing itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nodedb_cluster.faults.history import History


@dataclass(frozen=True, slots=True)
class Verdict:
    linearizable: bool | None
    """None: the checker is not available or gave up within its search bound."""
    note: str = ""
    anomalies: list[str] = field(default_factory=list)


def check_linearizable(history: History) -> Verdict:
    try:
        import nodedb_cluster.checker  # noqa: F401
    except ImportError:
        return Verdict(None, "not checked: nodedb_cluster.checker is not installed")
    return Verdict(None, "not checked: checker API not wired yet")


def export_porcupine(history: History, path: Path) -> Path | None:
    """The history in Porcupine's format (via the checker's exporter), or None."""
    return None
