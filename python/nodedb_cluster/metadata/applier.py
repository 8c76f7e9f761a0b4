"""The metadata group's state machine: applies group 0's committed entries on every node.

Deterministic: the same entries in the same order give the same topology, routing and settings on
every node (no clock, no randomness, no local state consulted). An entry whose commands cannot all
apply (say, a node id reused with another address) is refused as a whole, identically everywhere,
and leaves the state untouched. After each batch the state and the last applied index are written
to the catalog in one transaction: that commit is the durability point, and a restart resumes
after exactly the entries whose effects it holds (entries at or below it are skipped).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nodedb_cluster.errors import ClusterError
from nodedb_cluster.metadata.commands import (
    AddGroupLearner,
    AddNode,
    AssignVShard,
    MalformedCommand,
    MetadataCommand,
    MetadataEntry,
    PromoteGroupLearner,
    PutSetting,
    RemoveGroupMember,
    RemoveNode,
    SetGroupMembers,
    SetNodeState,
    SettingValue,
)
from nodedb_cluster.routing.table import RoutingTable
from nodedb_cluster.topology import Topology

log = logging.getLogger(__name__)


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


Persist = Callable[[MetadataState], None]
"""Writes the state durably (the catalog's `save_metadata_state`); called once per batch."""
Audit = Callable[[Sequence[tuple[int, MetadataEntry]]], None]
"""Records a batch's applied entries (`metadata/audit.py`); called once per batch that applied
any, BEFORE `Persist`, so a crash in between makes the replay write them again (the audit log
skips indexes it already holds) instead of losing them."""


class MetadataStateMachine:
    """Applies metadata entries in batches and persists the result once per batch."""

    def __init__(self, state: MetadataState, persist: Persist, audit: Audit | None = None) -> None:
        self._state = state
        self._persist = persist
        self._audit = audit

    @property
    def state(self) -> MetadataState:
        return self._state

    def apply_batch(self, entries: Sequence[tuple[int, bytes]]) -> list[ApplyResult]:
        """Apply committed `(index, data)` entries in log order; one result per entry.

        Empty data (the no-op a new Raft leader appends) and indexes already applied are
        acknowledged without effect.
        """
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
        if audited and self._audit is not None:
            self._audit(audited)
        if entries:
            self._persist(state)
            self._state = state
        if changed:
            log.info(
                "metadata applied through %d: topology v%d, routing epoch %d",
                self._state.applied_index,
                self._state.topology.version,
                self._state.routing.epoch,
            )
        return results

    def replace_state(self, state: MetadataState) -> None:
        """Install a state wholesale (a restored snapshot), persisted first."""
        self._persist(state)
        self._state = state


def _apply_entry(
    state: MetadataState, index: int, data: bytes
) -> tuple[ApplyResult, MetadataState, MetadataEntry | None]:
    """One entry applied to copies of `state`, and the entry when it applied; on refusal the
    state is returned unchanged."""
    try:
        entry = MetadataEntry.decode(data)
    except MalformedCommand as e:
        return Refused(index, f"malformed entry: {e}"), state, None
    topology = state.topology.copy()
    routing = RoutingTable.decode(state.routing.encode())
    settings = dict(state.settings)
    try:
        for command in entry.commands:
            _apply_command(command, topology, routing, settings)
        _sync_node_groups(topology, routing)
    except (ClusterError, ValueError) as e:
        return Refused(index, str(e)), state, None
    return Applied(index), MetadataState(topology, routing, settings, state.applied_index), entry


def _apply_command(
    command: MetadataCommand,
    topology: Topology,
    routing: RoutingTable,
    settings: dict[str, SettingValue],
) -> None:
    match command:
        case AddNode(node=node):
            existing = topology.get(node.node_id)
            if existing is None:
                topology.add(node)
            elif existing.addr != node.addr:
                raise ClusterError(
                    f"node id {node.node_id} already belongs to {existing.addr}, not {node.addr}"
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
        case AssignVShard(vshard=vshard, group_id=group_id):
            routing.assign_vshard(vshard, group_id)
        case PutSetting(key=key, value=value):
            settings[key] = value


def _sync_node_groups(topology: Topology, routing: RoutingTable) -> None:
    """Keep every node's `raft_groups` equal to the groups the routing table gives it (metadata
    entries are rare and topologies small, so a full pass is cheaper than tracking what moved)."""
    for node in topology.nodes():
        groups = routing.groups_of_node(node.node_id)
        if node.raft_groups != groups:
            topology.update(dataclasses.replace(node, raft_groups=groups))
