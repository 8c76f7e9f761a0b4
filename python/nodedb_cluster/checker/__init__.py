"""Linearizability checker for KV histories: model, per-key search, durability, Porcupine export."""

from nodedb_cluster.checker.durability import LostWrite, acknowledged_writes_present
from nodedb_cluster.checker.history import (
    HistoryError,
    HistoryRecorder,
    Op,
    OpKind,
    Outcome,
    Value,
)
from nodedb_cluster.checker.linearizable import CheckResult, KeyResult, Verdict, check, check_key
from nodedb_cluster.checker.porcupine import dumps, to_porcupine_operations

__all__ = [
    "CheckResult",
    "HistoryError",
    "HistoryRecorder",
    "KeyResult",
    "LostWrite",
    "Op",
    "OpKind",
    "Outcome",
    "Value",
    "Verdict",
    "acknowledged_writes_present",
    "check",
    "check_key",
    "dumps",
    "to_porcupine_operations",
]
