"""The audit log: every membership or settings change this node applied, one JSON line each.

Group 0's applier hands each batch's applied entries to `AuditLog.append` (on the engine's
driver thread). Each command of an entry is one line:

    {"time": "2025-01-31T12:00:00.123Z", "index": 17, "part": 0, "parts": 3,
     "command": "add_node", "args": {...}, "proposer": "spiffe://c/node/4"}

`index` is the group-0 log index (the same on every node), `part`/`parts` number the entry's
commands, `proposer` is the certificate identity carried in the entry (`MetadataEntry.proposer`:
the joiner's for an admission, the proposing node's own otherwise; "insecure" when there was
none), `time` this node's wall clock when it applied the entry. Entries this node received inside
a snapshot (a joiner's history from before it joined) were never applied here and are absent.

Durability and crashes: a batch's lines are written with ONE write, flushed and fsynced BEFORE
the applier commits the catalog. A crash before the catalog commit makes the node re-apply those
entries on restart; `append` skips every index at or below the last one in the file, so nothing
is written twice. A crash inside the write leaves a torn tail: on open, a partial last line and an
entry with fewer than `parts` lines are cut off (the replay writes them again). A complete line
that is not a record was changed on disk: it is kept and shown as damaged, never cut. A failed write
(disk full) is logged and counted, and the apply goes on: the control plane stays up and the
other nodes' logs still hold the records.

Bounded growth: when the file would pass `AUDIT_FILE_BYTES_MAX` it is renamed to `audit.jsonl.1`
(replacing the previous one) and a new file starts, so a node keeps at most twice that.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgpack

from nodedb_cluster import wire
from nodedb_cluster.clock import Clock, SystemClock
from nodedb_cluster.durable import fsync_dir
from nodedb_cluster.errors import ClusterError, InvalidRequest
from nodedb_cluster.metadata.commands import MetadataEntry, command_name, command_to_doc

if TYPE_CHECKING:
    from nodedb_cluster.transport import Peer, Reply

log = logging.getLogger(__name__)

AUDIT_FILE_NAME: Final = "audit.jsonl"
AUDIT_FILE_BYTES_MAX: Final = 16 * 1024 * 1024
"""A join writes a few lines of ~300 bytes: 16 MiB is tens of thousands of membership changes,
and the rotated copy doubles that, so a node's audit never outgrows its catalog by much."""
AUDIT_LIMIT_DEFAULT: Final = 100
AUDIT_LIMIT_MAX: Final = 10_000
AUDIT_REPLY_BYTES_MAX: Final = 4 * 1024 * 1024
"""A reply is one control frame; 4 MiB keeps it far below the 64 MiB frame bound."""
TAIL_CHUNK_BYTES: Final = 64 * 1024
INSECURE_PROPOSER: Final = "insecure"
"""The proposer recorded when the entry carries no certificate identity (insecure transport)."""

AuditBatch = Sequence[tuple[int, MetadataEntry]]
"""(group-0 index, entry) of each applied entry of one batch, in log order."""


class AuditLog:
    """The audit file of one node. Thread-safe: appended on the driver thread, read on others."""

    def __init__(
        self,
        path: Path,
        clock: Clock | None = None,
        file_bytes_max: int = AUDIT_FILE_BYTES_MAX,
    ) -> None:
        """Cheap: the file is opened (and its tail repaired) on first use."""
        self.path = path
        self.rotated_path = path.with_name(path.name + ".1")
        self._clock = clock or SystemClock()
        self._file_bytes_max = file_bytes_max
        self._lock = threading.Lock()
        self._last_index: int | None = None
        self.write_errors = 0
        """Batches whose lines could not be written (counted in the node's metrics)."""

    # --- writing (driver thread) -----------------------------------------------------------------

    def append(self, batch: AuditBatch) -> None:
        """Write the lines of `batch`'s entries above the last index on file; fsync once."""
        with self._lock:
            try:
                last = self._recover()
                lines = [
                    line
                    for index, entry in batch
                    if index > last
                    for line in _lines(index, entry, self._clock.now_ms())
                ]
                if not lines:
                    return
                data = "".join(lines).encode("utf-8")
                self._rotate_if_full(len(data))
                with open(self.path, "ab") as f:
                    f.write(data)
                    f.flush()
                    os.fdatasync(f.fileno())  # before the catalog commit: see the module doc
                self._last_index = max(index for index, _ in batch)
            except OSError as e:
                self.write_errors += 1
                log.error("audit: cannot write %s: %s (records of this batch lost)", self.path, e)

    # --- reading ----------------------------------------------------------------------------------

    def tail(self, limit: int) -> list[str]:
        """The last `limit` lines (oldest first), from the rotated file too when needed."""
        if not 1 <= limit <= AUDIT_LIMIT_MAX:
            raise InvalidRequest(f"limit {limit} is outside 1..{AUDIT_LIMIT_MAX}")
        with self._lock:
            lines = _last_lines(self.path, limit)
            if len(lines) < limit:
                lines = _last_lines(self.rotated_path, limit - len(lines)) + lines
        return lines

    async def handle_request(self, peer: Peer, payload: bytes) -> Reply:
        """AUDIT_REQUEST `{"limit": n}` -> AUDIT_RESPONSE `{"records": [line...], "truncated"}`:
        the last n lines verbatim, oldest first, fewer when they pass AUDIT_REPLY_BYTES_MAX."""
        limit = decode_audit_request(payload)
        lines = await asyncio.to_thread(self.tail, limit)
        kept: list[str] = []
        size = 0
        for line in reversed(lines):
            size += len(line)
            if size > AUDIT_REPLY_BYTES_MAX:
                break
            kept.append(line)
        kept.reverse()
        doc = {"records": kept, "truncated": len(kept) < len(lines)}
        return wire.MessageKind.AUDIT_RESPONSE, bytes(msgpack.packb(doc, use_bin_type=True))

    # --- helpers ----------------------------------------------------------------------------------

    def _recover(self) -> int:
        """The last index on file (0 when none), after cutting off a torn tail; once per process."""
        if self._last_index is None:
            last = _repair_tail(self.path)
            if last is None:
                last = _repair_tail(self.rotated_path) if self.rotated_path.exists() else None
            self._last_index = last or 0
        return self._last_index

    def _rotate_if_full(self, incoming_bytes: int) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size and size + incoming_bytes > self._file_bytes_max:
            os.replace(self.path, self.rotated_path)
            fsync_dir(self.path.parent)
            log.info("audit: rotated %s to %s", self.path, self.rotated_path)


def encode_audit_request(limit: int) -> bytes:
    return bytes(msgpack.packb({"limit": limit}))


def decode_audit_request(payload: bytes) -> int:
    try:
        doc = msgpack.unpackb(payload, raw=False)
    except (ValueError, msgpack.UnpackException) as e:
        raise InvalidRequest(f"audit request is not MessagePack: {e}") from e
    limit = doc.get("limit", AUDIT_LIMIT_DEFAULT) if isinstance(doc, dict) else None
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidRequest("audit request must be a map with an integer 'limit'")
    if not 1 <= limit <= AUDIT_LIMIT_MAX:
        raise InvalidRequest(f"audit limit {limit} is outside 1..{AUDIT_LIMIT_MAX}")
    return limit


DAMAGED_LINE_CHARS_MAX: Final = 200
"""How much of a line that is not a record a reader is shown (`decode_audit_response`)."""


def decode_audit_response(payload: bytes) -> tuple[list[dict[str, Any]], bool]:
    """The records (parsed) and whether the node left older ones out to bound the reply. A
    line of the file that is not a JSON object (changed on disk) is kept in place as
    `{"damaged": <its start>}`, so one bad line hides none of the others."""
    try:
        doc = msgpack.unpackb(payload, raw=False)
    except (ValueError, msgpack.UnpackException) as e:
        raise ClusterError(f"malformed audit reply: {e}") from e
    records = doc.get("records") if isinstance(doc, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, str) for r in records):
        raise ClusterError("malformed audit reply: 'records' must be a list of lines")
    parsed: list[dict[str, Any]] = []
    for line in records:
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            value = {"damaged": line[:DAMAGED_LINE_CHARS_MAX]}
        parsed.append(value)
    return parsed, bool(doc.get("truncated"))


def _lines(index: int, entry: MetadataEntry, now_ms: int) -> list[str]:
    when = datetime.datetime.fromtimestamp(now_ms / 1000, tz=datetime.UTC)
    time_text = when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now_ms % 1000:03d}Z"
    proposer = entry.proposer if entry.proposer is not None else INSECURE_PROPOSER
    parts = len(entry.commands)
    return [
        json.dumps(
            {
                "time": time_text,
                "index": index,
                "part": part,
                "parts": parts,
                "command": command_name(command),
                "args": command_to_doc(command),
                "proposer": proposer,
            },
            default=_json_value,
            separators=(",", ":"),
        )
        + "\n"
        for part, command in enumerate(entry.commands)
    ]


def _json_value(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _record_index(line: bytes) -> tuple[int, int] | None:
    """(index, parts) of a line, None when it does not parse as a record."""
    try:
        doc = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    index, parts = doc.get("index"), doc.get("parts")
    if not isinstance(index, int) or not isinstance(parts, int):
        return None
    return index, parts


def _repair_tail(path: Path) -> int | None:
    """Cut a torn tail off `path` and return the last index on file, None when there is none.

    A crash inside `append`'s one write leaves a prefix of it: a partial last line, or complete
    lines of an entry with fewer than its `parts`, after complete lines of earlier entries. Both
    are cut (the replay writes them again). A complete line that is not a record was changed
    after it was written (a torn write leaves none): it is kept in place, shown by `audit` as
    damaged, and logged; the index is then the last one of a readable line before it.

    Reads the whole file: it is bounded by AUDIT_FILE_BYTES_MAX plus one batch, and this runs
    once per process."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    lines = data[: data.rfind(b"\n") + 1].splitlines(keepends=True)
    parsed = [_record_index(line) for line in lines]
    keep = len(lines)
    if parsed and parsed[-1] is not None:
        index, parts = parsed[-1]
        run = 0
        while run < keep and parsed[keep - 1 - run] == (index, parts):
            run += 1
        damaged_before = run < keep and parsed[keep - 1 - run] is None
        if run < parts and not damaged_before:
            keep -= run
    end = sum(len(line) for line in lines[:keep])
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
        log.warning("audit: cut a torn tail of %d bytes off %s", len(data) - end, path)
    damaged = [i for i in range(keep) if parsed[i] is None]
    if damaged:
        offset = sum(len(line) for line in lines[: damaged[-1]])
        log.warning(
            "audit: %s holds %d line(s) that are not records (changed on disk?), the last at "
            "offset %d: kept, shown as damaged",
            path,
            len(damaged),
            offset,
        )
    readable = [record for record in parsed[:keep] if record is not None]
    return readable[-1][0] if readable else None


def _last_lines(path: Path, limit: int) -> list[str]:
    """The last `limit` complete lines of `path`, reading back from its end chunk by chunk."""
    try:
        with open(path, "rb") as f:
            start = f.seek(0, os.SEEK_END)
            data = b""
            while start > 0 and data.count(b"\n") <= limit:
                step = min(TAIL_CHUNK_BYTES, start)
                start -= step
                f.seek(start)
                data = f.read(step) + data
    except FileNotFoundError:
        return []
    lines = data.splitlines(keepends=True)
    if start > 0 and lines:
        lines = lines[1:]  # the first may be the end of a longer line
    complete = [line for line in lines if line.endswith(b"\n")]
    return [line.decode("utf-8", errors="replace").rstrip("\n") for line in complete[-limit:]]
