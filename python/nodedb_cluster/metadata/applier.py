"""The metadata group's state machine: applies group 0's committed entries on every node.

Deterministic: the same entries in the same order give the same topology, routing and settings on
every node (no clock, no randomness, no local state consulted). An entry whose commands cannot all
apply (say, a node id reused with another address) is refused as a whole, identically everywhere,
and leaves the state untouched.

Saving is behind the apply: `apply_batch` runs on the engine's driver thread, which every Raft
group of the node waits on, so it only updates the state in memory and hands the batch to the
saver thread, which writes the audit lines, then the state and the last applied index in one
catalog transaction (fsynced: the catalog's own durability point), always the newest state (one
full state covers all before it). The durability point of a metadata entry is group 0's Raft log
(fsynced on a quorum before the entry commits): the catalog is a checkpoint that may lag it, which
a crash repairs by replay (the engine replays everything after its latest snapshot, and the
applier skips only what the catalog holds; the audit log skips indexes it already holds).
`flush` waits for the saver (a clean stop flushes).

A full disk (`CatalogNoSpace` from the save) neither stops the node nor loses a batch: the
state is applied in memory as usual (the log has moved on; dropping it would diverge from every
other node), and the saver retries with a bounded backoff, taking the newest state each time.
`no_space` and the `on_no_space` observer tell the node, which refuses writes meanwhile (its
NO_SPACE state).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from nodedb_cluster.errors import CatalogNoSpace, ClusterError
from nodedb_cluster.metadata.commands import (
    AbortVShardMove,
    AddGroupLearner,
    AddNode,
    AssignVShard,
    BeginVShardMove,
    DemoteGroupVoter,
    FinishVShardMove,
    MalformedCommand,
    MetadataCommand,
    MetadataEntry,
    PromoteGroupLearner,
    PutSetting,
    RemoveGroupMember,
    RemoveNode,
    ReplaceGroupVoter,
    SetGroupLeader,
    SetGroupMembers,
    SetNodeState,
    SettingValue,
)
from nodedb_cluster.metadata.vshard_moves import VShardMoves
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.topology import Topology

log = logging.getLogger(__name__)

NO_SPACE_RETRY_FIRST_S: Final = 0.05
NO_SPACE_RETRY_MAX_S: Final = 1.0
"""Backoff of the save retry while the disk is full: doubling from 50 ms, capped at 1 s, so writes
resume within about a second of space being freed at a cost of one failed commit per second."""
SAVER_JOIN_S: Final = 5.0
"""How long `close` waits for the saver to write what is pending (the rest is replayed)."""
SAVE_INTERVAL_S: Final = 0.1
"""The saver writes at most once per interval while changes keep coming, the newest state and
every audit line since in one save: a burst of vShard moves changes group 0 tens of times a
second on every node, and each save is a catalog commit and an audit append, each with its
fdatasync. `flush` and `close` cut the wait short; a crash loses nothing (the Raft log)."""


@dataclass(frozen=True, slots=True)
class Applied:
    """The entry at `index` took effect."""

    index: int


@dataclass(frozen=True, slots=True)
class Refused:
    """The entry at `index` was refused as a whole; the state is as before it."""

    index: int
    reason: str


ApplyResult = Applied | Refused


@dataclass(frozen=True, slots=True)
class MetadataState:
    """What group 0's log builds: the cluster's topology, routing and settings.

    Immutable once built, objects inside included (the applier mutates copies, then swaps the
    whole state in one reference assignment): readers on another thread than the applier's see
    either the old or the new state, never a mix. Readers must not mutate what they get.
    """

    topology: Topology
    routing: RoutingTable
    settings: dict[str, SettingValue]
    applied_index: int
    vshard_moves: VShardMoves = field(default_factory=VShardMoves)
    """vShard moves in flight (`metadata/vshard_moves.py`)."""


Persist = Callable[[MetadataState], None]
"""Writes the state durably (the catalog's `save_metadata_state`); called once per batch."""
Audit = Callable[[Sequence[tuple[int, MetadataEntry]]], None]
"""Records a batch's applied entries (`metadata/audit.py`); called once per batch that applied
any, BEFORE `Persist`, so a crash in between makes the replay write them again (the audit log
skips indexes it already holds) instead of losing them."""
NoSpaceObserver = Callable[[CatalogNoSpace | None], None]
"""Told of each change of the no-space condition: the error when saves start failing for lack of
space, None once a save lands again. Called on the engine's driver thread or the retry thread
(never the event loop's): it must only hand the news on (e.g. `loop.call_soon_threadsafe`),
never block or call back into the applier."""


class MetadataStateMachine:
    """Applies metadata entries in batches and persists the result once per batch."""

    def __init__(
        self,
        state: MetadataState,
        persist: Persist,
        audit: Audit | None = None,
        *,
        on_no_space: NoSpaceObserver | None = None,
    ) -> None:
        self._state = state
        self._persist = persist
        self._audit = audit
        self._on_no_space = on_no_space
        self._pending = threading.Condition()  # guards the two below; the saver waits on it
        self._unsaved: MetadataState | None = None  # applied, not yet in the catalog
        self._unaudited: list[tuple[int, MetadataEntry]] = []
        self._saving = False  # the saver holds a batch it has not written yet
        self._flushing = 0  # callers of `flush` waiting: the saver does not coalesce
        self._no_space: CatalogNoSpace | None = None
        self._failed: Exception | None = None  # a save failed for another reason than space
        self._closed = threading.Event()
        self._saver = threading.Thread(target=self._save_behind, name="metadata-saver", daemon=True)
        self._saver.start()

    @property
    def state(self) -> MetadataState:
        return self._state

    @property
    def no_space(self) -> bool:
        """True while the applied state could not be saved for lack of disk space (the retry
        runs); False once a save landed. The node's NO_SPACE state follows this."""
        return self._no_space is not None

    @property
    def no_space_error(self) -> CatalogNoSpace | None:
        """The last `CatalogNoSpace` while `no_space` (it names the catalog file), else None."""
        return self._no_space

    def close(self) -> None:
        """Write what is pending (bounded wait), then stop the saver. Whatever it could not
        write is re-applied from the Raft log at the next start."""
        self.flush(SAVER_JOIN_S)
        self._closed.set()
        with self._pending:
            self._pending.notify_all()
        if self._saver is not threading.current_thread():
            self._saver.join(SAVER_JOIN_S)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every applied batch is in the catalog; False if `timeout_s` passed or a
        save failed (other than for space: see `apply_batch`)."""
        with self._pending:
            self._flushing += 1
            self._pending.notify_all()
            try:
                done = self._pending.wait_for(
                    lambda: (
                        self._failed is not None or (self._unsaved is None and not self._saving)
                    ),
                    timeout_s,
                )
            finally:
                self._flushing -= 1
            return done and self._failed is None

    def apply_batch(self, entries: Sequence[tuple[int, bytes]]) -> list[ApplyResult]:
        """Apply committed `(index, data)` entries in log order; one result per entry.

        Empty data (the no-op a new Raft leader appends) and indexes already applied are
        acknowledged without effect.
        """
        if self._failed is not None:
            raise self._failed  # the catalog cannot be written: the node must stop, not linger
        results: list[ApplyResult] = []
        audited: list[tuple[int, MetadataEntry]] = []
        state = self._state
        for index, data in entries:
            if index <= state.applied_index:
                results.append(Applied(index))
                continue
            result: ApplyResult = Applied(index)
            if data:
                result, state, entry = _apply_entry(state, index, data)
                if entry is not None:
                    audited.append((index, entry))
            state = dataclasses.replace(state, applied_index=index)
            results.append(result)
        changed = bool(audited)
        before = self._state
        if entries:
            self._state = state
            self._save(state, audited)
        if changed:
            # INFO for membership; routing-only changes (vShard moves, tens a second while a
            # plan runs) are in the audit log and the mover's own line.
            membership = before.topology.version != state.topology.version
            log.log(
                logging.INFO if membership else logging.DEBUG,
                "metadata applied through %d: topology v%d, routing epoch %d",
                self._state.applied_index,
                self._state.topology.version,
                self._state.routing.epoch,
            )
        return results

    def replace_state(self, state: MetadataState) -> None:
        """Install a state wholesale (a restored snapshot), saved behind like a batch."""
        self._state = state
        self._save(state, [])

    # --- saving, and retrying while the disk is full -------------------------------------------

    def _save(self, state: MetadataState, audited: list[tuple[int, MetadataEntry]]) -> None:
        """Hand `state` (and the entries to audit) to the saver; never waits for the disk."""
        with self._pending:
            self._unsaved = state
            self._unaudited.extend(audited)
            self._pending.notify_all()

    def _save_behind(self) -> None:
        """The saver thread: writes the newest applied state (audit lines first, so a crash in
        between makes the replay write them again rather than lose them), retrying with a
        doubling, capped backoff while the disk is full; another error is logged and the next
        batch tries again (a restart replays what never landed)."""
        delay = NO_SPACE_RETRY_FIRST_S
        saved_at = -SAVE_INTERVAL_S
        while True:
            with self._pending:
                self._pending.wait_for(lambda: self._unsaved is not None or self._closed.is_set())
                coalesce_s = saved_at + SAVE_INTERVAL_S - time.monotonic()
                if coalesce_s > 0:
                    self._pending.wait_for(
                        lambda: self._flushing > 0 or self._closed.is_set(), coalesce_s
                    )
                state, audited = self._unsaved, self._unaudited
                if state is None:
                    return  # closed, nothing pending
                self._unsaved, self._unaudited, self._saving = None, [], True
            try:
                if audited and self._audit is not None:
                    self._audit(audited)
                    audited = []
                self._persist(state)
            except CatalogNoSpace as e:
                self._enter_no_space(e)
                self._requeue(state, audited)
                if self._closed.wait(delay):
                    return
                delay = min(delay * 2, NO_SPACE_RETRY_MAX_S)
                continue
            except Exception as e:  # a closed or damaged catalog: the next batch raises it
                log.error(
                    "metadata: could not save the state applied through %d: %s (a restart "
                    "replays it from the Raft log)",
                    state.applied_index,
                    e,
                )
                self._failed = e
                self._requeue(state, audited, retry=False)
                return
            delay = NO_SPACE_RETRY_FIRST_S
            saved_at = time.monotonic()
            self._leave_no_space(state)
            with self._pending:
                self._saving = False
                self._pending.notify_all()

    def _requeue(
        self, state: MetadataState, audited: list[tuple[int, MetadataEntry]], *, retry: bool = True
    ) -> None:
        """Put back what a failed save held: the audit lines before any newer ones, and the
        state unless a newer one came (`retry` False: the saver stops, nothing is pending)."""
        with self._pending:
            self._unaudited[:0] = audited
            if retry and self._unsaved is None:
                self._unsaved = state
            self._saving = False
            self._pending.notify_all()

    def _enter_no_space(self, error: CatalogNoSpace) -> None:
        first = self._no_space is None
        self._no_space = error
        if first:
            log.warning(
                "metadata: %s; the applied state stays in memory and its save is retried",
                error,
            )
            self._tell(error)

    def _leave_no_space(self, state: MetadataState) -> None:
        if self._no_space is None:
            return
        self._no_space = None
        log.warning(
            "metadata: the catalog has space again; state saved through index %d",
            state.applied_index,
        )
        self._tell(None)

    def _tell(self, error: CatalogNoSpace | None) -> None:
        if self._on_no_space is None:
            return
        try:
            self._on_no_space(error)
        except Exception:  # an observer's bug must not fail the apply or stop the retry
            log.exception("metadata: the no-space observer raised")


def _apply_entry(
    state: MetadataState, index: int, data: bytes
) -> tuple[ApplyResult, MetadataState, MetadataEntry | None]:
    """One entry applied to copies of `state`, and the entry when it applied and is to be
    audited; on refusal the state is returned unchanged."""
    try:
        entry = MetadataEntry.decode(data)
    except MalformedCommand as e:
        return Refused(index, f"malformed entry: {e}"), state, None
    topology = state.topology.copy()
    routing = state.routing.copy()
    settings = dict(state.settings)
    moves = state.vshard_moves
    try:
        for command in entry.commands:
            moves = _apply_command(command, topology, routing, settings, moves)
        _sync_node_groups(topology, routing)
    except (ClusterError, ValueError) as e:
        return Refused(index, str(e)), state, None
    applied = MetadataState(topology, routing, settings, state.applied_index, moves)
    if all(isinstance(c, SetGroupLeader) for c in entry.commands):
        return Applied(index), applied, None  # hints: not a change the audit log records
    return Applied(index), applied, entry


def _apply_command(
    command: MetadataCommand,
    topology: Topology,
    routing: RoutingTable,
    settings: dict[str, SettingValue],
    moves: VShardMoves,
) -> VShardMoves:
    """Applies `command` to the copies given; returns the vShard moves after it."""
    match command:
        case AddNode(node=node):
            existing = topology.get(node.node_id)
            if existing is None:
                topology.add(node)
            elif existing.addr != node.addr and existing.spki_pin != node.spki_pin:
                raise ClusterError(
                    f"node id {node.node_id} already belongs to {existing.addr} with another "
                    f"key, not {node.addr}"
                )
            elif (existing.addr, existing.swim_addr) != (node.addr, node.swim_addr):
                # A member restarted at another address (a re-IPed host, a rescheduled pod),
                # with the key the cluster pinned for it, or with SWIM turned on, moved or off:
                # the fields a member may change about itself. An address another member
                # holds is refused (TopologyError).
                topology.update(
                    dataclasses.replace(existing, addr=node.addr, swim_addr=node.swim_addr)
                )
        case SetNodeState(node_id=node_id, state=state):
            topology.set_state(node_id, state)
        case RemoveNode(node_id=node_id):
            if topology.get(node_id) is not None:
                topology.remove(node_id)
        case SetGroupMembers(group_id=group_id, voters=voters, learners=learners):
            for member in (*voters, *learners):
                if topology.get(member) is None:
                    raise ClusterError(f"group {group_id}: node {member} is not in the topology")
            if group_id in routing.group_ids:
                routing.set_members(group_id, voters, learners)
            else:
                routing.add_group(group_id, voters, learners)
        case AddGroupLearner(group_id=group_id, node_id=node_id, rf_cap=rf_cap):
            if topology.get(node_id) is None:
                raise ClusterError(f"group {group_id}: node {node_id} is not in the topology")
            route = routing.route(group_id)
            members = len(route.voters) + len(route.learners)
            if not route.has_member(node_id) and not (rf_cap and members >= rf_cap):
                routing.set_members(group_id, route.voters, (*route.learners, node_id))
        case PromoteGroupLearner(group_id=group_id, node_id=node_id, rf_cap=rf_cap):
            route = routing.route(group_id)
            if node_id in route.learners and len(route.voters) < rf_cap:
                learners = tuple(n for n in route.learners if n != node_id)
                routing.set_members(group_id, (*route.voters, node_id), learners)
        case RemoveGroupMember(group_id=group_id, node_id=node_id):
            route = routing.route(group_id)
            voters = tuple(n for n in route.voters if n != node_id)
            if route.has_member(node_id) and voters:
                learners = tuple(n for n in route.learners if n != node_id)
                routing.set_members(group_id, voters, learners)
        case DemoteGroupVoter(group_id=group_id, node_id=node_id):
            route = routing.route(group_id)
            voters = tuple(n for n in route.voters if n != node_id)
            if node_id in route.voters and voters:
                routing.set_members(group_id, voters, (*route.learners, node_id))
        case ReplaceGroupVoter(group_id=group_id, old=old, new=new):
            route = routing.route(group_id)
            if new in route.learners and route.has_member(old) and old != new:
                if old in route.voters:
                    voters = tuple(new if n == old else n for n in route.voters)
                    learners = tuple(n for n in route.learners if n != new)
                else:
                    voters = route.voters
                    learners = tuple(n for n in route.learners if n != old)
                routing.set_members(group_id, voters, learners)
        case AssignVShard(vshard=vshard, group_id=group_id):
            if moves.get(vshard) is not None:
                raise ClusterError(f"vshard {vshard} is moving: finish or abort the move first")
            routing.assign_vshard(vshard, group_id)
        case BeginVShardMove(vshard=v, source=source, target=target, in_flight_max=cap):
            return moves.begin(v, source, target, routing, cap)
        case FinishVShardMove(vshard=v, move_id=move_id):
            return moves.finish(v, move_id, routing)
        case AbortVShardMove(vshard=v, move_id=move_id):
            return moves.abort(v, move_id)
        case PutSetting(key=key, value=value):
            settings[key] = value
        case SetGroupLeader(group_id=group_id, node_id=node_id):
            # Never refused. A stale one (landing after a newer leader's) is mended by that
            # leader's next reconcile round, which proposes its own again.
            routing.note_leader(group_id, node_id)
    return moves


def _sync_node_groups(topology: Topology, routing: RoutingTable) -> None:
    """Keep every node's `raft_groups` equal to the groups the routing table gives it (metadata
    entries are rare and topologies small, so a full pass is cheaper than tracking what moved)."""
    for node in topology.nodes():
        groups = routing.groups_of_node(node.node_id)
        if node.raft_groups != groups:
            topology.update(dataclasses.replace(node, raft_groups=groups))
