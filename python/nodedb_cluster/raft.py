"""The node's Multi-Raft engine, driven from asyncio.

A thin shell over the Rust core (`nodedb_cluster_core.RaftEngine`): every Raft group of the node
(group 0 = metadata, applied by Python; data groups with the built-in KV state machine or a
Python one) runs in Rust behind one tick, one log fsync per round and one frame per peer per
round, over the node's `Transport` (Raft frames never reach Python). Python proposes single
payloads or batches and awaits `(index, result)` after commit AND apply; a Python state
machine receives committed entries in batches (`apply_batch`).

The engine belongs to the first event loop that uses it. Errors are the classes of
`nodedb_cluster.errors`: `RaftNotLeader` (a `NotLeader`), `Timeout`, `UnknownGroup`, `Busy`,
`LeadershipLost`, `EngineStopped`, `InvalidRequest`, `NoSpace`, `ConfigError`, `CorruptLog`,
`CorruptSnapshot`.

Disk full: the engine does not stop. In NO_SPACE (free space below the log's reserve, or the log
hit ENOSPC) writes fail with `NoSpace` naming the data dir, reads are served, and writes resume
by themselves once space is freed (`RaftEngine.no_space`, metrics `no_space`,
`no_space_entered`, `appends_dropped_no_space`, `proposals_no_space`, `log_stalls`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol, cast

import nodedb_cluster_core as _core

from nodedb_cluster.errors import ClusterError
from nodedb_cluster.loop_bridge import BridgeWatch
from nodedb_cluster.transport import Transport

TIMEOUT_MS_DEFAULT: Final = 5000
"""Deadline of a proposal / read / admin call unless given: docs/WIRE.md's 5 s RPC bound."""

Role = Literal["follower", "pre_candidate", "candidate", "leader"]
StateMachineKind = Literal["kv", "python"]
MembershipOp = Literal["add_learner", "add_voter", "remove"]


class StateMachine(Protocol):
    """A Python-applied group (group 0 always). Called on the engine's driver thread.

    `apply_batch` must be deterministic and return one result per entry (a bad command gets
    an error *result*). Raising, or another number of results, stops the engine and so the
    node: the machine's state after part of a batch is unknown, and batch boundaries differ
    between replicas. Entries are applied again from the last snapshot when it restarts.

    `snapshot()` runs on the driver thread, which ticks and applies every group: a state that
    takes long to serialize should also define `snapshot_view() -> Callable[[], bytes]`, a
    cheap capture of the state as applied so far (a copy-on-write handle, an immutable
    reference), whose callable the engine runs once on its snapshot thread, while
    `apply_batch` goes on, for what `restore` reads back. It must not see later changes.
    Likewise `restore` of a snapshot received from the leader: with `decode_snapshot(data) ->
    state` (run on the snapshot thread; it must not touch the live state) and `install(state)`
    (a swap on the driver thread), only the swap holds the driver. Raising in any of them
    stops the engine, as `apply_batch` does.
    """

    def apply_batch(self, entries: list[tuple[int, bytes]]) -> list[bytes]: ...
    def snapshot(self) -> bytes: ...
    def restore(self, data: bytes) -> None: ...


StateMachineFactory = Callable[[int], StateMachine]
"""group_id -> the state machine of that group (on add_group and for each group on restart)."""


@dataclass(frozen=True, slots=True)
class RaftSettings:
    """Engine limits; defaults aim at failover p99 ≤ 2 s (election timeout randomized in
    [election_ticks, 2 * election_ticks) ticks = [0.8, 1.6) s)."""

    tick_interval_ms: int = 100
    heartbeat_ticks: int = 1
    election_ticks: int = 8
    snapshot_threshold_entries: int = 20_000
    snapshot_threshold_bytes: int = 32 << 20
    """A group also snapshots (and compacts its log) after this many bytes of applied entries.
    Either threshold waits, besides, until the log since the last snapshot holds a quarter of
    that snapshot's size: a large state is not serialized again for every 32 MiB written."""
    install_snapshot_chunk_bytes: int = 4 << 20
    orphan_partial_max_age_secs: int = 300
    max_uncommitted_bytes: int = 32 << 20
    rejoin: bool = False
    """Forget (instead of refusing to open) groups whose log lost acknowledged entries; they
    are listed by `RaftEngine.discarded_groups` and rejoined by the control plane."""
    free_space_reserve_bytes: int | None = None
    """Free bytes the Raft log keeps on its disk: below it the node is in NO_SPACE (writes
    refused) and segment preallocation stops. None: min(2 segments, 10 % of the filesystem)."""
    driver_stall_max_ms: int | None = None
    """A driver thread that begins no loop for this long (an `apply_batch`, `snapshot` or
    `restore` that does not return, a hung disk) stops the engine, and so the node, with that
    reason, instead of leaving it up and serving nothing. None: the engine's default (60 s);
    0: not watched."""


@dataclass(frozen=True, slots=True)
class GroupStatus:
    """One group as this node sees it."""

    group_id: int
    role: Role
    term: int
    leader_id: int | None
    commit_index: int
    applied_index: int
    last_index: int
    snapshot_index: int
    voters: tuple[int, ...] = field(default=())
    learners: tuple[int, ...] = field(default=())
    voters_outgoing: tuple[int, ...] = field(default=())
    """Non-empty while a joint configuration is in effect."""
    matched: tuple[tuple[int, int], ...] = field(default=())
    """On the leader: (node_id, highest index known replicated there), itself included; empty
    elsewhere. A learner whose matched index reached `commit_index` has caught up."""


@dataclass(frozen=True, slots=True)
class LogRepair:
    """A repair the Raft log's recovery made at open: the bytes of a write that never
    completed (a torn tail), discarded."""

    file: str
    offset_bytes: int
    """Where the valid records end: the bytes from here were discarded."""
    discarded_bytes: int
    reason: str


@dataclass(frozen=True, slots=True)
class Proposed:
    """A committed and applied proposal: its log index and the state machine's result."""

    index: int
    result: bytes


@dataclass(frozen=True, slots=True)
class KvSummary:
    """A "kv" group's replica on this node, read at one moment."""

    applied_index: int
    keys: int
    digest: int
    """Equal on two replicas = same state."""
    usage_bytes: int
    """Keys, values and cached session results: what `ClusterConfig.kv_quota_bytes` bounds."""
    sessions: int
    sessions_evicted: int
    """Since this replica started or restored: a retry from an evicted session applies again."""

    def digest_triple(self) -> tuple[int, int, int]:
        """(applied_index, keys, digest): what replicas compare."""
        return (self.applied_index, self.keys, self.digest)


@dataclass(frozen=True, slots=True)
class ProposedBatch:
    """A committed and applied batch (one log entry): its index and one result per payload."""

    index: int
    results: tuple[bytes, ...]


class RaftEngine:
    """One node's Multi-Raft engine (log under `data_dir/raft/`, snapshots under
    `data_dir/snapshots/`), sharing `transport`'s QUIC endpoint."""

    __slots__ = ("_bridge", "_core")

    def __init__(
        self,
        node_id: int,
        data_dir: str | Path,
        transport: Transport,
        state_machine_factory: StateMachineFactory | None = None,
        settings: RaftSettings | None = None,
    ) -> None:
        s = settings or RaftSettings()
        # The engine registers its Rust handlers (kinds 16-18) on the transport's own endpoint.
        self._core = _core.RaftEngine(
            node_id,
            str(data_dir),
            transport._core,
            state_machine_factory,
            tick_interval_ms=s.tick_interval_ms,
            heartbeat_ticks=s.heartbeat_ticks,
            election_ticks=s.election_ticks,
            snapshot_threshold_entries=s.snapshot_threshold_entries,
            snapshot_threshold_bytes=s.snapshot_threshold_bytes,
            install_snapshot_chunk_bytes=s.install_snapshot_chunk_bytes,
            orphan_partial_max_age_secs=s.orphan_partial_max_age_secs,
            max_uncommitted_bytes=s.max_uncommitted_bytes,
            rejoin=s.rejoin,
            free_space_reserve_bytes=s.free_space_reserve_bytes,
            driver_stall_max_ms=s.driver_stall_max_ms,
        )
        self._bridge = BridgeWatch(self._core, "RaftEngine")

    def discarded_groups(self) -> list[tuple[int, int, int]]:
        """(group_id, commit_index, last_index) of each group forgotten at open (`rejoin`)."""
        return list(self._core.discarded_groups())

    def _future(self) -> asyncio.Future[Any]:
        """A future on the owning loop (bound on first use; any other loop is refused)."""
        return self._bridge.attach().create_future()

    @property
    def node_id(self) -> int:
        return self._core.node_id

    @property
    def no_space(self) -> bool:
        """True while the node is in its NO_SPACE state: writes raise `NoSpace` until space is
        freed on the data dir's disk, then resume by themselves; reads are served."""
        return self._core.no_space

    def recovery_repairs(self) -> list[LogRepair]:
        """What the Raft log's recovery repaired at open (torn tails discarded); counted in
        the metrics `wal_torn_tail_repairs_total` and `wal_torn_tail_bytes_discarded_total`."""
        return [
            LogRepair(
                file=str(r["file"]),
                offset_bytes=int(r["offset_bytes"]),
                discarded_bytes=int(r["discarded_bytes"]),
                reason=str(r["reason"]),
            )
            for r in self._core.recovery_repairs()
        ]

    async def add_group(
        self, group_id: int, voters: Sequence[int] | None, kind: StateMachineKind = "kv"
    ) -> None:
        """Create a group on this node, durably: `voters` = the founding members (identical on
        each of them, this node included), or None to start as an empty learner that the leader
        fills (after `change_membership(group, [("add_learner", this node)])` there)."""
        fut: asyncio.Future[None] = self._future()
        self._core.add_group(group_id, None if voters is None else list(voters), kind, fut)
        await fut

    async def remove_group(self, group_id: int) -> None:
        fut: asyncio.Future[None] = self._future()
        self._core.remove_group(group_id, fut)
        await fut

    async def propose(
        self, group_id: int, data: bytes, timeout_ms: int = TIMEOUT_MS_DEFAULT
    ) -> Proposed:
        """Replicate `data` as one entry; returns after it is committed and applied here."""
        fut: asyncio.Future[tuple[int, bytes]] = self._future()
        self._core.propose(group_id, data, timeout_ms, fut)
        index, result = await fut
        return Proposed(index, result)

    async def propose_batch(
        self,
        group_id: int,
        payloads: Sequence[bytes],
        timeout_ms: int = TIMEOUT_MS_DEFAULT,
        *,
        kind: StateMachineKind | None = None,
    ) -> ProposedBatch:
        """Many payloads as ONE entry (one boundary crossing, one log record). With `kind`, the
        payloads are that state machine's commands: `InvalidRequest` unless the group runs it
        (the KV path never feeds group 0 or a host's group)."""
        fut: asyncio.Future[tuple[int, list[bytes]]] = self._future()
        self._core.propose_batch(group_id, list(payloads), timeout_ms, fut, kind)
        index, results = await fut
        return ProposedBatch(index, tuple(results))

    async def propose_each(
        self,
        group_id: int,
        payloads: Sequence[bytes],
        timeout_ms: int = TIMEOUT_MS_DEFAULT,
        *,
        kind: StateMachineKind | None = None,
    ) -> list[Proposed | ClusterError]:
        """Each payload as its OWN entry (its own index), in one boundary crossing and one
        raft proposal: one `Proposed`, or the error its proposal failed with, per payload, in
        order. A deadline for the whole raises `Timeout`."""
        begun = self.propose_each_nowait(group_id, payloads, timeout_ms, kind=kind)
        return proposed_each(await begun)

    def propose_each_nowait(
        self,
        group_id: int,
        payloads: Sequence[bytes],
        timeout_ms: int = TIMEOUT_MS_DEFAULT,
        *,
        kind: StateMachineKind | None = None,
    ) -> asyncio.Future[list[tuple[int, bytes] | BaseException]]:
        """`propose_each` begun now; `proposed_each` reads its future's result (for a caller
        that settles many waiters in a callback, with no task of its own)."""
        fut: asyncio.Future[list[tuple[int, bytes] | BaseException]] = self._future()
        self._core.propose_each(group_id, list(payloads), timeout_ms, fut, kind)
        return fut

    def serve_kv_requests(
        self, transport: Transport, *, read_lease: bool = True, quota_bytes: int = 0
    ) -> None:
        """Answer every KV_REQUEST of `transport` in Rust from now on (nodedb-kv's server: group
        commit per group, shared ReadIndex rounds, lease and follower reads, routing as set by
        `set_kv_routing`). `read_lease`: linearizable reads may use the leader's lease
        (`ClusterConfig.read_lease`); `quota_bytes`: `ClusterConfig.kv_quota_bytes`. Undone by
        `close`."""
        self._core.serve_kv_requests(transport._core, read_lease, quota_bytes)

    def serve_host_proposals(self, transport: Transport) -> None:
        """Answer every HOST_PROPOSE of `transport` in Rust from now on: commands other nodes
        forwarded for groups that run the host's state machine (nodedb-multiraft's
        `HostProposeServer`). Undone by `close`."""
        self._core.serve_host_proposals(transport._core)

    def set_kv_routing(self, routing: bytes, nodes: list[tuple[int, str, bytes | None]]) -> None:
        """What the KV server answers a `Client` asking for routing from now on: the encoded
        routing table and the members (id, "ip:port", SPKI pin or None)."""
        self._core.set_kv_routing(routing, nodes)

    async def read_index(self, group_id: int, timeout_ms: int = TIMEOUT_MS_DEFAULT) -> int:
        """Confirm leadership with a quorum (ReadIndex) and wait until this node applied
        through it; a local read after this is linearizable. Works on followers too."""
        fut: asyncio.Future[int] = self._future()
        self._core.read_index(group_id, timeout_ms, fut)
        return await fut

    def leader(self, group_id: int) -> int | None:
        """The leader of `group_id` this node knows (itself included), as of the last round."""
        leader: int | None = self._core.leader(group_id)
        return leader

    def leaders(self) -> tuple[int, list[tuple[int, int | None, int]]]:
        """`(epoch, [(group, leader or None, term)])` for every group here; `epoch` is what
        `wait_leaders_changed` waits to see change."""
        epoch, leaders = self._core.leaders()
        return int(epoch), [(int(g), leader, int(term)) for g, leader, term in leaders]

    async def wait_leaders_changed(self, since: int, timeout_ms: int = TIMEOUT_MS_DEFAULT) -> int:
        """The leader epoch once it differs from `since` (some group's leader changed here), or
        `since` after `timeout_ms` or once the engine stopped."""
        fut: asyncio.Future[int] = self._future()
        self._core.wait_leaders_changed(since, fut, timeout_ms)
        return await fut

    async def wait_stopped(self) -> str:
        """The reason, once the engine's driver thread has ended for any reason (a shutdown, a
        fatal log error, a panic); from then on the engine serves nothing."""
        fut: asyncio.Future[str] = self._future()
        self._core.wait_stopped(fut)
        return await fut

    async def status(self, group_id: int) -> GroupStatus:
        fut: asyncio.Future[dict[str, object]] = self._future()
        self._core.status(group_id, fut)
        return _group_status(await fut)

    async def statuses(self) -> list[GroupStatus]:
        """Every group's status, in group order, in one engine request (not one per group)."""
        fut: asyncio.Future[list[dict[str, object]]] = self._future()
        self._core.statuses(fut)
        return [_group_status(d) for d in await fut]

    async def groups(self) -> list[int]:
        fut: asyncio.Future[list[int]] = self._future()
        self._core.groups(fut)
        return await fut

    async def change_membership(
        self,
        group_id: int,
        changes: Sequence[tuple[MembershipOp, int]],
        timeout_ms: int = TIMEOUT_MS_DEFAULT,
    ) -> list[int]:
        """ConfChangeV2 on the leader: several changes at once go through a joint
        configuration. Returns the voters once the change applied here."""
        fut: asyncio.Future[list[int]] = self._future()
        self._core.change_membership(
            group_id, [(op, node) for op, node in changes], timeout_ms, fut
        )
        return await fut

    async def add_learner(self, group_id: int, node_id: int) -> list[int]:
        return await self.change_membership(group_id, [("add_learner", node_id)])

    async def promote(self, group_id: int, node_id: int) -> list[int]:
        """Learner → voter (the control plane calls this once the learner caught up)."""
        return await self.change_membership(group_id, [("add_voter", node_id)])

    async def remove_node(self, group_id: int, node_id: int) -> list[int]:
        return await self.change_membership(group_id, [("remove", node_id)])

    async def transfer_leader(
        self, group_id: int, to_node_id: int, timeout_ms: int = TIMEOUT_MS_DEFAULT
    ) -> None:
        """Ask the leader to hand over; watch `status` for the outcome."""
        fut: asyncio.Future[None] = self._future()
        self._core.transfer_leader(group_id, to_node_id, timeout_ms, fut)
        await fut

    async def campaign(self, group_id: int) -> None:
        """Start an election now (a sole founding voter need not wait an election timeout)."""
        fut: asyncio.Future[None] = self._future()
        self._core.campaign(group_id, fut)
        await fut

    async def snapshot_now(self, group_id: int) -> None:
        fut: asyncio.Future[None] = self._future()
        self._core.snapshot_now(group_id, fut)
        await fut

    def kv_get(self, group_id: int, key: bytes) -> bytes | None:
        """Local read of a "kv" group (pair with `read_index` for a linearizable read)."""
        return self._core.kv_get(group_id, key)

    async def kv_read(
        self, group_id: int, key: bytes, timeout_ms: int = TIMEOUT_MS_DEFAULT
    ) -> bytes | None:
        """Linearizable read: ReadIndex, then the local state."""
        await self.read_index(group_id, timeout_ms)
        return self._core.kv_get(group_id, key)

    def kv_vshard_export(
        self, group_id: int, vshard: int, move_id: int, delta: bool, chunk_bytes: int
    ) -> list[bytes]:
        """Import commands (of move `move_id`) holding this replica's keys of `vshard`: all of
        them, or with `delta` those changed since the vShard's `track` plus the write sessions;
        each at most `chunk_bytes` unless one key is larger."""
        return list(self._core.kv_vshard_export(group_id, vshard, move_id, delta, chunk_bytes))

    def kv_vshard_states(self, group_id: int) -> dict[int, tuple[str, int, int]]:
        """vShard -> (mark, group, move id) for this replica's vShards that are not plainly
        owned (incoming, tracking, frozen, moved)."""
        return dict(self._core.kv_vshard_states(group_id))

    def kv_vshard_stats(self, group_id: int) -> list[tuple[int, int, int]]:
        """(vShard, keys, bytes of keys and values) for each vShard with keys in this replica."""
        return list(self._core.kv_vshard_stats(group_id))

    def kv_summary(self, group_id: int) -> KvSummary:
        """A "kv" group's replica here, read at one moment."""
        return KvSummary(*self._core.kv_summary(group_id))

    def kv_digest(self, group_id: int) -> tuple[int, int, int]:
        """(applied_index, key_count, digest) of a "kv" group: equal on two nodes = same state."""
        return self.kv_summary(group_id).digest_triple()

    def metrics(self) -> dict[str, int]:
        return self._core.metrics()

    def histograms(self) -> list[_core.HistogramRow]:
        """Latency histograms (WAL fsync, proposal commit, apply, snapshot send/apply)."""
        return self._core.histograms()

    def leader_changes(self) -> dict[int, int]:
        """Leader changes this node has seen, by group."""
        return self._core.leader_changes()

    def kv_requests(self) -> list[tuple[str, str, int]]:
        """(op, result, count) of the KV requests this node served."""
        return self._core.kv_requests()

    async def close(self) -> None:
        """Stop the engine; pending calls fail with `EngineStopped` (the bridge stays watched
        until the last one has). Idempotent."""
        await asyncio.get_running_loop().run_in_executor(None, self._core.close)
        self._bridge.close()

    async def __aenter__(self) -> RaftEngine:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def kv_put(key: bytes, value: bytes) -> bytes:
    """A put command for a "kv" group (encoded by the core: one format, one place)."""
    return _core.kv_command("put", key, value)


def kv_vshard_command(op: str, vshard: int, group: int, move_id: int) -> bytes:
    """A placement command of the KV state machine (`vshard_mover.py`): incoming (group = the
    source), track, freeze and release (group = the target), unfreeze, activate, drop."""
    return bytes(_core.kv_vshard_command(op, vshard, group, move_id))


def kv_check_result(result: bytes) -> None:
    """Raise the error a placement command's result holds, if it did not apply."""
    _core.kv_check_result(result)


def kv_delete(key: bytes) -> bytes:
    return _core.kv_command("delete", key)


def kv_cas(key: bytes, expected: bytes | None, value: bytes) -> bytes:
    """Set `key` to `value` iff it currently holds `expected` (None = absent)."""
    return _core.kv_command("cas", key, value, expected)


def kv_session(client: int, seq: int, acked_below: int, command: bytes) -> bytes:
    """`command` as client `client`'s write `seq` (exactly-once: docs/KV.md, "Sessions")."""
    return _core.kv_session(client, seq, acked_below, command)


def kv_get_command(key: bytes) -> bytes:
    """A read through the log (linearizable without ReadIndex, at the cost of an entry)."""
    return _core.kv_command("get", key)


KvStatus = Literal["ok", "not_found", "cas_mismatch", "duplicate", "paused", "moved", "invalid"]


def kv_result(data: bytes) -> tuple[KvStatus, bytes | None]:
    """Decode a "kv" group's result: ("ok", value|None), ("not_found", None),
    ("cas_mismatch", current), ("duplicate", None) (a session write answered before: not
    applied again), ("paused", None) / ("moved", group u64 LE) (its vShard is moving / moved:
    not applied), ("invalid", reason)."""
    status, value = _core.kv_result(data)
    return cast(KvStatus, status), value


def proposed_each(items: list[tuple[int, bytes] | BaseException]) -> list[Proposed | ClusterError]:
    """What a `propose_each_nowait` future resolved with, one `Proposed` or error per payload."""
    out: list[Proposed | ClusterError] = []
    for item in items:
        if isinstance(item, ClusterError):
            out.append(item)
        elif isinstance(item, BaseException):  # the binding answers only ClusterErrors
            raise item
        else:
            out.append(Proposed(*item))
    return out


def _group_status(d: dict[str, object]) -> GroupStatus:
    return GroupStatus(
        group_id=cast(int, d["group_id"]),
        role=cast(Role, d["role"]),
        term=cast(int, d["term"]),
        leader_id=cast("int | None", d["leader_id"]),
        commit_index=cast(int, d["commit_index"]),
        applied_index=cast(int, d["applied_index"]),
        last_index=cast(int, d["last_index"]),
        snapshot_index=cast(int, d["snapshot_index"]),
        voters=tuple(cast("list[int]", d["voters"])),
        learners=tuple(cast("list[int]", d["learners"])),
        voters_outgoing=tuple(cast("list[int]", d["voters_outgoing"])),
        matched=tuple(cast("list[tuple[int, int]]", d["matched"])),
    )
