"""Every typed error of nodedb-cluster, in one place.

Each class says who is at fault and whether a retry can help (`retryable`). Errors raised by the
Rust core (`nodedb_cluster_core`) are mapped 1:1 onto these classes; see the sections below.
"""

from __future__ import annotations

import os


class ClusterError(Exception):
    """Base of every error this package raises on purpose."""

    retryable: bool = False


# --- configuration ------------------------------------------------------------------------------


class ConfigError(ClusterError, ValueError):
    """A configuration value or combination is invalid; names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        # A command-line flag is named as typed (`--tls-ca-path`); a config key is quoted.
        named = field if field.startswith("--") else f"config field {field!r}"
        super().__init__(f"invalid {named}: {reason}")
        self.field = field
        self.reason = reason


class InvalidAddress(ClusterError, ValueError):
    """A socket-address text is not `IPv4:port` or `[IPv6]:port`; says what is wrong with it."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"invalid socket address {text!r}: {reason}")
        self.text = text
        self.reason = reason


# --- persistence ----------------------------------------------------------------------------------


class CatalogError(ClusterError):
    """The LMDB catalog is missing data it must hold, or holds data it cannot read."""


class CatalogFormatError(CatalogError):
    """The catalog was written by a format version this build cannot open (no downgrades)."""

    def __init__(
        self, found: int, supported: int, path: str | os.PathLike[str] | None = None
    ) -> None:
        where = "" if path is None else f"{os.fspath(path)}: "
        super().__init__(
            f"catalog {where}format version {found} is newer than the supported version "
            f"{supported}; refusing to open it (downgrades are not supported)"
        )
        self.found = found
        self.supported = supported


class CatalogCorrupt(CatalogError):
    """The catalog file or a value in it is damaged; names the file and, for a value, the key.

    The data is left as is (nothing is repaired or dropped). `key` is None for damage to the file
    itself (truncated, damaged LMDB pages); `path` (the catalog's data.mdb) is None only when the
    error was raised below the layer that knows the file, which attaches it with `at`.
    """

    def __init__(
        self, key: str | None, reason: str, path: str | os.PathLike[str] | None = None
    ) -> None:
        where = "catalog" if path is None else f"catalog {os.fspath(path)}"
        if key is None:
            message = f"{where} is corrupt: {reason}"
        elif path is None:
            message = f"catalog key {key!r} is corrupt: {reason}"
        else:
            message = f"{where}: key {key!r} is corrupt: {reason}"
        super().__init__(" ".join(message.splitlines()))  # one line: it ends up in a log/terminal
        self.key = key
        self.reason = reason
        self.path = None if path is None else os.fspath(path)

    def at(self, path: str | os.PathLike[str]) -> CatalogCorrupt:
        """The same error naming the catalog file (self when it already names one)."""
        if self.path is not None:
            return self
        return CatalogCorrupt(self.key, self.reason, path)


class CatalogInUse(CatalogError):
    """Another process holds the catalog: a node runs on this data dir (`catalog/owner.py`)."""


class CatalogNoSpace(CatalogError):
    """A catalog write found no space left on its filesystem (ENOSPC). The write transaction was
    aborted, so the catalog holds exactly what it held before; retrying once space has been
    freed succeeds (unlike a full LMDB map, which needs a larger map_size_bytes)."""

    retryable = True

    def __init__(self, path: str | os.PathLike[str], detail: str) -> None:
        super().__init__(
            f"catalog {os.fspath(path)}: no space left on the device ({detail}); the write was "
            "rolled back and can be retried once space is freed on that filesystem"
        )
        self.path = os.fspath(path)
        self.detail = detail


class CorruptLog(ClusterError):
    """A durable file is corrupt before its tail: the node will not start rather than lose data."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(
            f"corrupt log {path} at offset {offset}: {reason}; refusing to start (entries this "
            "node acknowledged may be in the damaged part). Restore the file, or start with "
            "--rejoin to move this node's Raft log aside and rejoin as a fresh replica"
        )
        self.path = path
        self.offset = offset
        self.reason = reason


class CorruptSnapshot(ClusterError):
    """A group's snapshot file does not match the size and checksum its log recorded (damaged,
    replaced or missing): restoring it would give this node a state no other replica has."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"corrupt snapshot {path}: {reason}; refusing to start (this node's copy of the "
            "group would differ from the other replicas). Restore the file, or start with "
            "--rejoin to move this node's Raft state aside and rejoin as a fresh replica"
        )
        self.path = path
        self.reason = reason


class LostLogTail(ClusterError):
    """A group's Raft log ends before its persisted commit index: entries this node
    acknowledged are gone. The node refuses to start; `start --rejoin` re-replicates them."""

    def __init__(self, message: str, groups: list[tuple[int, int, int]]) -> None:
        super().__init__(message)
        self.groups = [tuple(g) for g in groups]
        """(group_id, commit_index, last_index) of each damaged group."""


# --- topology and routing -------------------------------------------------------------------------


class UnknownNodeState(ClusterError, ValueError):
    """A NodeState code outside the stable table of docs/WIRE.md arrived at a boundary."""

    def __init__(self, code: int) -> None:
        super().__init__(f"unknown NodeState code {code}")
        self.code = code


class TopologyError(ClusterError, ValueError):
    """A topology change contradicts the current topology (duplicate id or address)."""


class UnknownNode(TopologyError, KeyError):
    """A node id the topology does not hold."""

    def __init__(self, node_id: int) -> None:
        super().__init__(f"unknown node {node_id}")
        self.node_id = node_id

    def __str__(self) -> str:  # KeyError would otherwise print the repr of the message
        return str(self.args[0])


class MalformedTopology(ClusterError, ValueError):
    """Encoded topology bytes (from a peer or the catalog) do not decode; says where and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed topology: {reason}")
        self.reason = reason


class UnknownVShard(ClusterError, KeyError):
    """A vShard id outside 0..1023."""

    def __init__(self, vshard: int) -> None:
        super().__init__(f"unknown vShard {vshard} (valid: 0..1023)")
        self.vshard = vshard


class UnknownGroup(ClusterError, KeyError):
    """A Raft group id the routing table does not hold."""

    def __init__(self, group_id: int) -> None:
        super().__init__(f"unknown Raft group {group_id}")
        self.group_id = group_id


# --- network and consensus ----------------------------------------------------------------------


class NotLeader(ClusterError):
    """This node does not lead the group; `leader_addr` is the hint, when one is known."""

    retryable = True

    def __init__(self, leader_addr: str | None, detail: str = "") -> None:
        hint = f"; leader is {leader_addr}" if leader_addr else "; leader unknown"
        super().__init__(f"not leader{hint}{'; ' + detail if detail else ''}")
        self.leader_addr = leader_addr


class Timeout(ClusterError, TimeoutError):
    """An operation did not finish within its deadline."""

    retryable = True

    def __init__(self, op: str, timeout_ms: int) -> None:
        super().__init__(f"{op} timed out after {timeout_ms} ms")
        self.op = op
        self.timeout_ms = timeout_ms


class Unreachable(ClusterError, ConnectionError):
    """A peer could not be reached (connect failed, connection lost)."""

    retryable = True

    def __init__(self, addr: str, reason: str) -> None:
        super().__init__(f"peer {addr} unreachable: {reason}")
        self.addr = addr
        self.reason = reason


class WireVersionError(ClusterError):
    """A peer speaks a wire version outside our supported range; names both."""

    def __init__(self, peer_version: int, supported_min: int, supported_max: int) -> None:
        super().__init__(
            f"peer wire version {peer_version} is outside the supported range "
            f"{supported_min}..{supported_max}"
        )
        self.peer_version = peer_version
        self.supported_min = supported_min
        self.supported_max = supported_max


class NodeRetired(ClusterError):
    """This node was decommissioned: a restart of it has nothing to serve and is refused."""


class NotEmbedded(ClusterError):
    """The API of one kind of data group was used on a node whose data groups run the other:
    `node.kv` where a host state machine applies the data groups, or `node.data` (and
    HOST_PROPOSE) where the built-in KV does."""


# --- transport and wire (raised by nodedb_cluster_core; mapping in rust/py/src/errors.rs) --------


class HandshakeError(ClusterError, ConnectionError):
    """The TLS handshake with a peer failed: another CA, insecure vs mTLS, SPKI pin mismatch."""

    def __init__(self, addr: str, reason: str) -> None:
        super().__init__(f"TLS handshake with {addr} failed: {reason}")
        self.addr = addr
        self.reason = reason


class FrameError(ClusterError, ValueError):
    """Bytes are not a valid frame (or a peer reset our stream for that). `code` is stable:
    too_short, wrong_version, unknown_kind, retired_kind, oversize, truncated, checksum_mismatch,
    trailing_bytes, bad_payload."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RemoteError(ClusterError):
    """The peer answered with an Error message {code, message} (e.g. its handler raised)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"peer error {code}: {message}")
        self.code = code
        self.message = message


class PermissionDenied(ClusterError, PermissionError):
    """The node refused the request: this certificate's role may not send it (the node's kind
    table), or the node does not allow it at all. Not retryable: another attempt, node or
    leader gets the same answer; a certificate with another role is needed."""

    code = "permission_denied"
    """The Error-message code (a handler raising this answers with it)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"permission denied: {message}")
        self.message = message


class UnknownPeer(ClusterError, KeyError):
    """send_rpc to a node id that was never registered with register_peer."""

    def __init__(self, node_id: int) -> None:
        super().__init__(f"unknown peer node {node_id}: register_peer it first")
        self.node_id = node_id

    def __str__(self) -> str:
        return str(self.args[0])


class TransportClosed(ClusterError):
    """The transport was closed; it sends and accepts nothing more."""

    def __init__(self) -> None:
        super().__init__("transport is closed")


class BindError(ClusterError, OSError):
    """The transport's UDP socket could not be bound (address in use, not local, ...)."""

    def __init__(self, addr: str, reason: str) -> None:
        super().__init__(f"cannot bind {addr}: {reason}")
        self.addr = addr
        self.reason = reason


class CredentialsError(ClusterError, ValueError):
    """TLS credentials could not be read, parsed or generated."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"credentials: {reason}")
        self.reason = reason


# --- lifecycle ------------------------------------------------------------------------------------


class IllegalTransition(ClusterError):
    """A lifecycle transition the transition table does not allow (a programming error upstream)."""

    def __init__(
        self, previous: str, requested: str, reason: str = "not in the transition table"
    ) -> None:
        super().__init__(f"illegal lifecycle transition {previous} -> {requested}: {reason}")
        self.previous = previous
        self.requested = requested


class FormationFailed(ClusterError):
    """The node reached lifecycle Failed; `reason` is the last concrete error text."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"cluster formation failed: {reason}")
        self.reason = reason


class FormationStopped(ClusterError):
    """Asked to stop (`start_cluster`'s `stop` event) while still trying to join: nothing of
    the cluster was written here yet."""

    def __init__(self) -> None:
        super().__init__("asked to stop while joining the cluster")


# --- Multi-Raft engine (nodedb_cluster_core.RaftEngine; Rust `RaftError` maps 1:1) -------------
# GroupNotFound -> UnknownGroup, Timeout -> Timeout, a corrupt log at open -> CorruptLog, a
# snapshot file that does not match its mark -> CorruptSnapshot.


class RaftNotLeader(NotLeader):
    """This node does not lead `group_id`; `leader_id` is the leader it knows of, if any.

    The core knows node ids, not addresses: `leader_addr` is None unless a caller resolved it.
    """

    def __init__(self, group_id: int, leader_id: int | None) -> None:
        super().__init__(None, f"group {group_id}; leader node {leader_id}")
        self.group_id = group_id
        self.leader_id = leader_id


class Busy(ClusterError):
    """A bounded queue or the uncommitted-entries limit is full; back off and retry."""

    retryable = True

    def __init__(self, reason: str) -> None:
        super().__init__(f"busy: {reason}")
        self.reason = reason


class LeadershipLost(ClusterError):
    """The leader stepped down before the entry applied: it may or may not have committed.

    Not blindly retryable: a retry of a non-idempotent command may apply it twice.
    """

    def __init__(self, group_id: int, leader_id: int | None) -> None:
        super().__init__(
            f"leadership of group {group_id} lost before apply (outcome unknown); "
            f"new leader node {leader_id}"
        )
        self.group_id = group_id
        self.leader_id = leader_id


class EngineStopped(ClusterError):
    """The Raft engine was closed, or stopped after a fatal log/snapshot error."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"raft engine stopped: {reason}")
        self.reason = reason


class InvalidRequest(ClusterError, ValueError):
    """A malformed request to the engine (e.g. an impossible membership change)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid request: {reason}")
        self.reason = reason


class NotServing(ClusterError):
    """A node that is still starting, restarting or joining answers only `status` (with its
    lifecycle); any other request is refused with this, its message naming the lifecycle. A
    state of the node, not a fault: the node does not log it."""

    code = "not_serving"
    """The Error-message code (a transport that serves nothing at all answers `no_handler`)."""


class QuotaExceeded(ClusterError):
    """A write into a data group whose keys, values and cached session results reached its
    quota (`ClusterConfig.kv_quota_bytes`, checked by the group's leader). Nothing of the
    request was proposed; reads and deletes are still served, and writes resume once deletes
    bring the group below its quota. Not retryable by a client: every replica holds the same."""

    code = "QuotaExceeded"
    """The Error-message code a KV server answers with (the message says which group and why)."""

    def __init__(self, group: int, message: str) -> None:
        super().__init__(message)
        self.group = group


class NoSpace(ClusterError):
    """The node is in its NO_SPACE state: the disk holding `data_dir` is full, or below the Raft
    log's free-space reserve. Writes are refused; reads are still served. The state ends by
    itself, with no restart, once space is freed on that disk.

    Not retryable by a client (a definite refusal: the write was not taken); a remote node's
    refusal is raised as this class too (Error-message code "NoSpace", message = `data_dir`).
    """

    code = "NoSpace"
    """The Error-message code (a handler raising this answers with it; the message is
    `data_dir`)."""

    def __init__(self, data_dir: str) -> None:
        super().__init__(
            f"no space left on the device holding {data_dir}: writes are refused until space is "
            "freed there, then resume by themselves (no restart needed); reads are still served"
        )
        self.data_dir = data_dir


class Unavailable(ClusterError):
    """No leader of the key's group could be reached before the deadline."""

    def __init__(self, group_id: int, reason: str) -> None:
        super().__init__(f"group {group_id} unavailable: {reason}")
        self.group_id = group_id
        self.reason = reason


class VShardPaused(Timeout):
    """The key's vShard is paused in its group for a move between groups (nothing was applied):
    a KV call that met it until its deadline, or a command result `kv_check_result` read."""

    def __init__(self, group_id: int, vshard: int | None = None) -> None:
        ClusterError.__init__(
            self, f"group {group_id}: vshard {vshard} paused for a move (nothing applied)"
        )
        self.op = "kv"
        self.timeout_ms = 0
        self.group_id = group_id
        self.vshard = vshard


class VShardMoved(ClusterError):
    """The key's vShard moved to group `group_id` (nothing was applied): send it there."""

    retryable = True

    def __init__(self, group_id: int) -> None:
        super().__init__(f"vshard moved to group {group_id} (nothing applied)")
        self.group_id = group_id


class OutcomeUnknown(ClusterError):
    """A write was handed to a leader but whether it was applied is not known: a KV write whose
    retry found its first copy's cached result already dropped (the session's window
    overflowed, or the session was evicted), or a host command whose leader failed or timed out
    after taking it (`nodedb_cluster.embedding`). Applied at most once either way."""

    def __init__(self, group_id: int, reason: str = "session result dropped") -> None:
        super().__init__(f"group {group_id}: write outcome unknown ({reason})")
        self.group_id = group_id
        self.reason = reason


class StaleRead(ClusterError):
    """A follower read refused: this replica was last confirmed current `age_s` ago."""

    def __init__(self, group_id: int, age_s: float, max_staleness_s: float) -> None:
        super().__init__(
            f"group {group_id}: replica last confirmed {age_s:.3f} s ago, "
            f"more than the allowed {max_staleness_s:.3f} s"
        )
        self.group_id = group_id
        self.age_s = age_s
        self.max_staleness_s = max_staleness_s
