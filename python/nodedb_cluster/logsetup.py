"""A node process's log: the handler and its format (`--log-level`, `--log-format text|json`), and
the Rust core's records forwarded into Python `logging`.

Rust records (TLS handshake failures and malformed frames naming the peer, lost connections,
raft-rs's elections and votes) queue in the core (`nodedb-hostlog`: bounded, WARN and ERROR
rate-limited to one line per component, message and peer per 10 s) and are drained here, on the
event loop, into loggers named `nodedb_cluster_core.<component>` (`.transport`, `.raft`,
`.quinn`, `.rustls`, ...). No Rust thread ever waits for the GIL to log, which a bridge that
calls into Python from the emitting thread (pyo3-log) would make the Raft driver and the QUIC
workers do. The core queues only what the `nodedb_cluster_core` logger's effective level lets
through (checked in Rust before anything is formatted), re-read on every drain.

JSON lines are one object each: `time` (UTC, ISO 8601), `level`, `logger`, `message`, then the
record's structured fields (`node_id`, `group`, `peer`, `term`, the lifecycle's states, ...).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import sys
from typing import Final, TextIO

import nodedb_cluster_core as _core

CORE_LOGGER: Final = "nodedb_cluster_core"
"""Parent of the Rust core's loggers; its effective level is the core's level."""
FORWARD_INTERVAL_S: Final = 0.2
"""How often queued Rust records are written (a WARN appears at most this late)."""
WARN_INTERVAL_S: Final = 10
"""The core's rate limit: one WARN/ERROR line per component, message and peer per this."""
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_RECORD_ATTRS: Final = frozenset(
    {*logging.LogRecord("", 0, "", 0, "", (), None).__dict__, "message", "asctime", "taskName"}
)
"""Attributes every LogRecord has: anything else on a record is a structured field."""
_FIELD_NAMES: Final = {"node": "node_id"}
"""Rust field names given the name the Python side uses for the same thing."""

log = logging.getLogger(__name__)


def configure(
    level: str = "info", fmt: str = "text", node_id: int | None = None, stream: TextIO | None = None
) -> None:
    """One root handler on `stream` (stderr) in `fmt`, replacing any before it; with `node_id`,
    every record without one is stamped with it (a node process logs for one node)."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    if node_id is not None:
        handler.addFilter(_StampNodeId(node_id))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, then its structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            key: value if isinstance(value, str | int | float | bool | None) else str(value)
            for key, value in record.__dict__.items()
            if key not in _RECORD_ATTRS and not key.startswith("_")
        }
        created = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        doc.update(
            time=created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            level=record.levelname,
            logger=record.name,
            message=record.getMessage(),
        )
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class _StampNodeId(logging.Filter):
    def __init__(self, node_id: int) -> None:
        super().__init__()
        self._node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "node_id"):
            record.node_id = self._node_id
        return True


class CoreLogForwarder:
    """Keeps the core's level in step with Python's and writes its queued records."""

    def __init__(self) -> None:
        self._level: int | None = None
        self._dropped = 0

    def sync_level(self) -> None:
        level = logging.getLogger(CORE_LOGGER).getEffectiveLevel()
        if level != self._level:
            _core.set_log_level(level)
            self._level = level

    def forward(self) -> int:
        """Write every queued record now; how many were queued."""
        records = _core.take_log_records()
        for created, level, component, message, fields, left_out in records:
            logger = logging.getLogger(f"{CORE_LOGGER}.{component}")
            if not logger.isEnabledFor(level):
                continue
            text = message + "".join(f" {key}={value}" for key, value in fields)
            if left_out:
                text += f" (+{left_out} like it in the last {WARN_INTERVAL_S} s)"
            extra = {_field_name(key): _field_value(value) for key, value in fields}
            record = logger.makeRecord(logger.name, level, "(rust)", 0, text, (), None, extra=extra)
            record.created, record.msecs = created, (created % 1) * 1000
            logger.handle(record)
        dropped = _core.log_records_dropped()
        if dropped > self._dropped:
            log.warning("%d Rust log records dropped: the queue was full", dropped - self._dropped)
            self._dropped = dropped
        return len(records)

    async def run(self, interval_s: float = FORWARD_INTERVAL_S) -> None:
        """Forward until cancelled, then once more (what was queued on the way out)."""
        try:
            while True:
                self.sync_level()
                self.forward()
                await asyncio.sleep(interval_s)  # the core's queue has no push channel: poll
        finally:
            self.forward()


async def forward_core_logs(interval_s: float = FORWARD_INTERVAL_S) -> None:
    """The Rust core's records into Python `logging` until cancelled (`CoreLogForwarder`)."""
    await CoreLogForwarder().run(interval_s)


def _field_name(key: str) -> str:
    """A Rust field's attribute name on the LogRecord (one LogRecord already has gets a '_')."""
    key = _FIELD_NAMES.get(key, key)
    return f"{key}_" if key in _RECORD_ATTRS else key


def _field_value(value: str) -> str | int:
    """Integers (node ids, groups, terms) as numbers; the rest as the text Rust gave."""
    digits = value[1:] if value.startswith("-") else value
    return int(value) if digits.isascii() and digits.isdigit() and len(digits) < 20 else value
