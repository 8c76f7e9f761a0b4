"""RoutingTable: vShard -> Raft group -> {leader, voters, learners}, with an epoch.

The table is the control-plane state; the hot path reads two flat arrays derived from it:

- `vshard_to_group`  uint32[1024]: the data group owning each vShard (never group 0);
- `vshard_to_leader` uint64[1024]: the leader node of that group (0 = leader unknown), fused so a
  key -> leader lookup is one hash and one gather (see `_kernels`).

Both arrays are read-only and replaced, never written in place, on every change (copy-on-write).
A kernel running without the GIL on an array it was handed therefore always sees one consistent
version, and a caller may keep an array as a snapshot of the epoch it read.

Group 0 is the metadata group: it is always present in the group map and owns no vShard. Data groups
own vShards. Every successful mutator call bumps `epoch` by one, even one that restates the current
value, so on replicas applying the same metadata commands the epoch counts the commands applied.

`encode()` / `RoutingTable.decode(data)` is the one serialisation (catalog and wire): a MessagePack
map with named fields, deterministic for equal tables.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import numpy as np
import numpy.typing as npt

from nodedb_cluster.errors import ClusterError, UnknownGroup
from nodedb_cluster.routing import _kernels
from nodedb_cluster.routing.vshard import NUM_VSHARDS, Key, KeyBatch, VShardIds, check_vshard

# --- limits, each with its reason -----------------------------------------------------------------

METADATA_GROUP_ID: Final = 0
"""The metadata group; present in every table, owns no vShard."""

UNKNOWN_LEADER: Final = 0
"""Leader value meaning "no leader known"; node ids start at 1."""

GROUP_ID_MAX: Final = 2**32 - 1
"""Group ids are stored as uint32 in `vshard_to_group`."""

NODE_ID_MAX: Final = 2**64 - 1
"""Node ids are stored as uint64 in `vshard_to_leader`."""

BOOTSTRAP_GROUPS_MAX: Final = NUM_VSHARDS
"""More data groups than vShards would leave groups that own nothing from the first day."""

GROUPS_MAX: Final = 4 * NUM_VSHARDS
"""Bound on groups in one table (decode refuses more): every vShard in its own group, plus room
for groups being created or drained by the rebalancer."""

MEMBERS_PER_GROUP_MAX: Final = 64
"""Bound on voters + learners of one group. Replication factors are 3-7; learners are transient."""

ENCODED_BYTES_MAX: Final = 8 * 1024 * 1024
"""Decode refuses larger input: GROUPS_MAX groups of MEMBERS_PER_GROUP_MAX 9-byte ids fit in ~2.5
MiB, so anything bigger is not a routing table."""

FORMAT_VERSION: Final = 1
"""Version of the encoded form; decode refuses any other (no silent downgrade)."""

# --- errors ---------------------------------------------------------------------------------------


class InvalidRoute(ClusterError, ValueError):
    """A routing change or route breaks an invariant (caller's fault; retrying will not help)."""


class MalformedRoutingTable(ClusterError, ValueError):
    """Encoded routing-table bytes (from the catalog or a peer) do not decode; says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed routing table: {reason}")
        self.reason = reason


# --- types ----------------------------------------------------------------------------------------


def _check_id(value: object, what: str, lo: int, hi: int) -> int:
    """`value` as an int in lo..hi, else InvalidRoute (bools are not ids)."""
    if type(value) is int:  # the common case, checked first: decode validates every id
        number = value
    elif isinstance(value, np.integer):
        number = operator.index(value)
    else:
        raise InvalidRoute(f"{what} must be an int, not {type(value).__name__}")
    if not lo <= number <= hi:
        raise InvalidRoute(f"{what} {number} is outside {lo}..{hi}")
    return number


def _check_members(values: Iterable[object], what: str) -> tuple[int, ...]:
    """Node ids as a tuple, each 1..NODE_ID_MAX, no duplicates, order kept."""
    members = tuple(_check_id(v, f"{what} node id", 1, NODE_ID_MAX) for v in values)
    if len(set(members)) != len(members):
        raise InvalidRoute(f"{what} contain a duplicate node id: {members}")
    return members


@dataclass(frozen=True, slots=True)
class GroupRoute:
    """Where one Raft group lives. Validated on construction; immutable."""

    group_id: int
    """0 is the metadata group; data groups are 1..GROUP_ID_MAX."""
    leader: int
    """Node id of the current leader, or UNKNOWN_LEADER (0). A known leader is always a voter."""
    voters: tuple[int, ...]
    """Voting members, at least one, in the order given (the order carries no meaning)."""
    learners: tuple[int, ...]
    """Non-voting members catching up; disjoint from voters."""

    def __post_init__(self) -> None:
        group_id = _check_id(self.group_id, "group id", 0, GROUP_ID_MAX)
        voters = _check_members(self.voters, f"group {group_id} voters")
        learners = _check_members(self.learners, f"group {group_id} learners")
        leader = _check_id(self.leader, f"group {group_id} leader", 0, NODE_ID_MAX)
        if not voters:
            raise InvalidRoute(f"group {group_id} must have at least one voter")
        if len(voters) + len(learners) > MEMBERS_PER_GROUP_MAX:
            raise InvalidRoute(
                f"group {group_id} has {len(voters) + len(learners)} members, "
                f"more than {MEMBERS_PER_GROUP_MAX}"
            )
        both = set(voters) & set(learners)
        if both:
            raise InvalidRoute(f"group {group_id}: nodes {sorted(both)} are voters and learners")
        if leader != UNKNOWN_LEADER and leader not in voters:
            raise InvalidRoute(f"group {group_id}: leader {leader} is not a voter {voters}")
        # Normalise numpy integers to int so equality, hashing and encoding are exact.
        object.__setattr__(self, "group_id", group_id)
        object.__setattr__(self, "leader", leader)
        object.__setattr__(self, "voters", voters)
        object.__setattr__(self, "learners", learners)

    def has_member(self, node_id: int) -> bool:
        """True when `node_id` is a voter or a learner of this group."""
        return node_id in self.voters or node_id in self.learners


# --- the table ------------------------------------------------------------------------------------


def _frozen(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    array.flags.writeable = False
    return array


class RoutingTable:
    """vShard -> group -> route, plus the derived hot-path arrays. See the module docstring."""

    __slots__ = (
        "_epoch",
        "_groups",
        "_leader_by_vshard",
        "_vshard_to_group",
        "_vshard_to_leader",
    )
    __hash__ = None  # type: ignore[assignment]  # mutable: equality by value, not hashable

    def __init__(
        self,
        vshard_to_group: npt.ArrayLike,
        groups: Iterable[GroupRoute],
        epoch: int,
    ) -> None:
        """A table from its parts, all invariants checked (InvalidRoute otherwise)."""
        routes: dict[int, GroupRoute] = {}
        for route in groups:
            if not isinstance(route, GroupRoute):
                raise InvalidRoute(f"groups must be GroupRoute, not {type(route).__name__}")
            if route.group_id in routes:
                raise InvalidRoute(f"group {route.group_id} appears twice")
            routes[route.group_id] = route
        if METADATA_GROUP_ID not in routes:
            raise InvalidRoute("the metadata group 0 is missing")
        if len(routes) > GROUPS_MAX:
            raise InvalidRoute(f"{len(routes)} groups, more than {GROUPS_MAX}")
        raw = np.asarray(vshard_to_group)
        if raw.shape != (NUM_VSHARDS,) or raw.dtype.kind not in "iu":
            raise InvalidRoute(
                f"vshard_to_group must be {NUM_VSHARDS} integers, got {raw.dtype} {raw.shape}"
            )
        known = np.fromiter(routes, dtype=np.int64, count=len(routes))
        misplaced = (raw == METADATA_GROUP_ID) | ~np.isin(raw, known)
        if misplaced.any():
            vshard = int(np.argmax(misplaced))
            group_id = int(raw[vshard])
            if group_id == METADATA_GROUP_ID:
                raise InvalidRoute(f"vShard {vshard} is assigned to the metadata group 0")
            raise InvalidRoute(f"vShard {vshard} is assigned to unknown group {group_id}")
        self._epoch = _check_id(epoch, "epoch", 0, 2**64 - 1)
        self._groups = dict(sorted(routes.items()))
        self._vshard_to_group = _frozen(raw.astype(np.uint32, copy=True))
        self._set_fused_leaders()

    @classmethod
    def bootstrap(cls, num_groups: int, node_id: int) -> RoutingTable:
        """The first table of a new cluster, formed by `node_id` alone (epoch 1).

        vShard v belongs to data group `1 + v % num_groups`; groups 0..num_groups each have
        `node_id` as sole voter and as leader: a sole voter is the only node that can ever win
        that group's election, so naming it now spares a fresh cluster a round of "leader
        unknown" handling.
        """
        count = _check_id(num_groups, "num_groups", 1, BOOTSTRAP_GROUPS_MAX)
        node = _check_id(node_id, "node_id", 1, NODE_ID_MAX)
        assignment = 1 + np.arange(NUM_VSHARDS, dtype=np.uint32) % count
        routes = (GroupRoute(g, node, (node,), ()) for g in range(count + 1))
        return cls(assignment, routes, epoch=1)

    # --- reads ----------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """Bumped by one on every mutator call."""
        return self._epoch

    @property
    def vshard_to_group(self) -> npt.NDArray[np.uint32]:
        """Read-only uint32[1024]; replaced (not modified) on change."""
        return self._vshard_to_group

    @property
    def vshard_to_leader(self) -> npt.NDArray[np.uint64]:
        """Read-only uint64[1024], 0 = leader unknown; replaced (not modified) on change."""
        return self._vshard_to_leader

    @property
    def group_ids(self) -> tuple[int, ...]:
        """Every group id, ascending, the metadata group 0 first."""
        return tuple(self._groups)

    def route(self, group_id: int) -> GroupRoute:
        """The route of `group_id`, else UnknownGroup."""
        route = self._groups.get(group_id)
        if route is None:
            raise UnknownGroup(group_id)
        return route

    def group_for_vshard(self, vshard: int) -> int:
        """The data group owning `vshard`; UnknownVShard outside 0..1023."""
        return int(self._vshard_to_group[check_vshard(vshard)])

    def leader_for_group(self, group_id: int) -> int:
        """Leader node id of `group_id`, 0 when unknown; UnknownGroup if there is no such group."""
        return self.route(group_id).leader

    def leader_for_key(self, key: Key) -> int:
        """Leader node id for one key (0 = unknown)."""
        return self._leader_by_vshard[_kernels.vshard_for_key(key)]

    def groups_of_node(self, node_id: int) -> tuple[int, ...]:
        """Ids of the groups `node_id` is a voter or learner of, ascending."""
        return tuple(g for g, route in self._groups.items() if route.has_member(node_id))

    def vshards_of_group(self, group_id: int) -> npt.NDArray[np.uint16]:
        """Ascending uint16 ids of the vShards `group_id` owns (none for the metadata group)."""
        self.route(group_id)
        return np.flatnonzero(self._vshard_to_group == group_id).astype(np.uint16)

    # --- batch reads (the compiled kernels over this table's arrays) ------------------------------

    def leaders_for_keys(
        self, keys: KeyBatch, out: npt.NDArray[np.uint64] | None = None
    ) -> npt.NDArray[np.uint64]:
        """uint64 leader per key (0 = unknown): hash and gather in one pass."""
        return _kernels.leaders_for_keys(keys, self._vshard_to_leader, out)

    def groups_for_vshards(
        self, vshards: VShardIds, out: npt.NDArray[np.uint32] | None = None
    ) -> npt.NDArray[np.uint32]:
        """uint32 group per vShard id; UnknownVShard on an id outside 0..1023."""
        return _kernels.groups_for_vshards(vshards, self._vshard_to_group, out)

    def leaders_for_vshards(
        self, vshards: VShardIds, out: npt.NDArray[np.uint64] | None = None
    ) -> npt.NDArray[np.uint64]:
        """uint64 leader per vShard id (0 = unknown); UnknownVShard outside 0..1023."""
        return _kernels.leaders_for_vshards(vshards, self._vshard_to_leader, out)

    def copy(self) -> RoutingTable:
        """An equal table to change apart from this one, without re-validating it (the metadata
        applier copies the table for every entry). The arrays are shared: a mutator replaces
        them, never writes into them."""
        table = RoutingTable.__new__(RoutingTable)
        table._epoch = self._epoch
        table._groups = dict(self._groups)
        table._vshard_to_group = self._vshard_to_group
        table._vshard_to_leader = self._vshard_to_leader
        table._leader_by_vshard = self._leader_by_vshard
        return table

    # --- mutators: validate, apply, bump the epoch, rebuild the fused array -----------------------

    def set_leader(self, group_id: int, node_id: int) -> None:
        """Record `node_id` (a voter, or 0 = unknown) as the leader of `group_id`."""
        route = self.route(group_id)
        self._replace(GroupRoute(route.group_id, node_id, route.voters, route.learners))

    def note_leader(self, group_id: int, node_id: int) -> None:
        """A leader's report of itself (`SetGroupLeader`): recorded when `node_id` is a voter of
        an existing group that names another leader; otherwise nothing changes, epoch included
        (a report may land after its group was removed or its sender left the voters)."""
        route = self._groups.get(group_id)
        if route is not None and node_id in route.voters and route.leader != node_id:
            self.set_leader(group_id, node_id)

    def set_members(
        self, group_id: int, voters: Iterable[int], learners: Iterable[int] = ()
    ) -> None:
        """Replace the members of an existing group.

        The leader is kept when it is still a voter and becomes unknown (0) otherwise: a removed
        leader steps down once the configuration change commits.
        """
        route = self.route(group_id)
        voter_ids = tuple(voters)
        leader = route.leader if route.leader in voter_ids else UNKNOWN_LEADER
        self._replace(GroupRoute(route.group_id, leader, voter_ids, tuple(learners)))

    def add_group(self, group_id: int, voters: Iterable[int], learners: Iterable[int] = ()) -> None:
        """Create a data group (owning no vShard until `assign_vshard`), leader unknown."""
        if group_id in self._groups:
            raise InvalidRoute(f"group {group_id} already exists")
        if len(self._groups) >= GROUPS_MAX:
            raise InvalidRoute(f"the table already holds {GROUPS_MAX} groups")
        self._replace(GroupRoute(group_id, UNKNOWN_LEADER, tuple(voters), tuple(learners)))

    def assign_vshard(self, vshard: int, group_id: int) -> None:
        """Move `vshard` to the data group `group_id` (never the metadata group)."""
        index = check_vshard(vshard)
        route = self.route(group_id)
        if route.group_id == METADATA_GROUP_ID:
            raise InvalidRoute(f"vShard {index} cannot be assigned to the metadata group 0")
        assignment = self._vshard_to_group.copy()
        assignment[index] = route.group_id
        self._vshard_to_group = _frozen(assignment)
        self._changed()

    def _replace(self, route: GroupRoute) -> None:
        self._groups[route.group_id] = route
        self._groups = dict(sorted(self._groups.items()))
        self._changed()

    def _changed(self) -> None:
        self._epoch += 1
        self._set_fused_leaders()

    def _set_fused_leaders(self) -> None:
        self._vshard_to_leader = self._fused_leaders()
        # A tuple mirror for the scalar path: indexing it is ~4x cheaper than a numpy scalar read.
        self._leader_by_vshard: tuple[int, ...] = tuple(self._vshard_to_leader.tolist())

    def _fused_leaders(self) -> npt.NDArray[np.uint64]:
        """vshard_to_leader rebuilt from scratch: one gather through a dense group index."""
        group_ids = np.fromiter(self._groups, dtype=np.uint32, count=len(self._groups))
        leaders = np.fromiter(
            (r.leader for r in self._groups.values()), dtype=np.uint64, count=len(self._groups)
        )
        # group_ids is ascending (the dict is kept sorted), so searchsorted is the dense index.
        return _frozen(leaders[np.searchsorted(group_ids, self._vshard_to_group)])

    # --- value semantics --------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RoutingTable):
            return NotImplemented
        return (
            self._epoch == other._epoch
            and self._groups == other._groups
            and bool(np.array_equal(self._vshard_to_group, other._vshard_to_group))
        )

    def __repr__(self) -> str:
        return (
            f"RoutingTable(epoch={self._epoch}, groups={len(self._groups)}, "
            f"data_groups_owning_vshards={len(np.unique(self._vshard_to_group))})"
        )

    # --- encoding ---------------------------------------------------------------------------------

    def encode(self) -> bytes:
        """MessagePack map, named fields in a fixed order; equal tables encode to equal bytes.

        {"format": 1, "epoch": int, "vshard_to_group": [1024 group ids],
         "groups": [{"group_id", "leader", "voters", "learners"}, ... ascending group_id]}
        """
        document = {
            "format": FORMAT_VERSION,
            "epoch": self._epoch,
            "vshard_to_group": self._vshard_to_group.tolist(),
            "groups": [
                {
                    "group_id": r.group_id,
                    "leader": r.leader,
                    "voters": list(r.voters),
                    "learners": list(r.learners),
                }
                for r in self._groups.values()
            ],
        }
        packed: bytes = msgpack.packb(document, use_bin_type=True)
        return packed

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> RoutingTable:
        """The table `encode()` wrote; MalformedRoutingTable on anything else (nothing is kept)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise MalformedRoutingTable(f"expected bytes, got {type(data).__name__}")
        if len(data) > ENCODED_BYTES_MAX:
            raise MalformedRoutingTable(f"{len(data)} bytes, more than {ENCODED_BYTES_MAX}")
        try:
            document = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                max_array_len=max(NUM_VSHARDS, GROUPS_MAX),
                max_map_len=8,
                max_bin_len=0,
                max_ext_len=0,
                max_str_len=64,
            )
        except (msgpack.UnpackException, ValueError, TypeError) as exc:
            raise MalformedRoutingTable(f"not MessagePack: {exc}") from exc
        try:
            return cls._from_document(document)
        except InvalidRoute as exc:
            raise MalformedRoutingTable(str(exc)) from exc

    @classmethod
    def _from_document(cls, document: object) -> RoutingTable:
        fields = _fields(document, "table", ("format", "epoch", "vshard_to_group", "groups"))
        version = fields["format"]
        if type(version) is not int or version != FORMAT_VERSION:
            raise MalformedRoutingTable(f"format {version!r} is not the supported {FORMAT_VERSION}")
        assignment = _int_list(fields["vshard_to_group"], "vshard_to_group")
        if len(assignment) != NUM_VSHARDS:
            raise MalformedRoutingTable(
                f"vshard_to_group has {len(assignment)} entries, not {NUM_VSHARDS}"
            )
        if min(assignment) < 0 or max(assignment) > GROUP_ID_MAX:
            raise MalformedRoutingTable(
                f"vshard_to_group holds a group id outside 0..{GROUP_ID_MAX}"
            )
        groups = fields["groups"]
        if not isinstance(groups, list):
            raise MalformedRoutingTable(f"groups must be an array, not {type(groups).__name__}")
        routes = []
        for index, item in enumerate(groups):
            group = _fields(item, f"groups[{index}]", ("group_id", "leader", "voters", "learners"))
            routes.append(
                GroupRoute(
                    group_id=group["group_id"],
                    leader=group["leader"],
                    voters=tuple(_int_list(group["voters"], f"groups[{index}].voters")),
                    learners=tuple(_int_list(group["learners"], f"groups[{index}].learners")),
                )
            )
        epoch = fields["epoch"]
        if type(epoch) is not int:
            raise MalformedRoutingTable(f"epoch must be an int, not {type(epoch).__name__}")
        return cls(np.array(assignment, dtype=np.uint32), routes, epoch)


def _fields(document: object, what: str, names: tuple[str, ...]) -> Mapping[str, Any]:
    """`document` as a map with exactly the keys `names`."""
    if not isinstance(document, dict):
        raise MalformedRoutingTable(f"{what} must be a map, not {type(document).__name__}")
    if set(document) != set(names):
        raise MalformedRoutingTable(
            f"{what} fields are {sorted(document)}, expected {sorted(names)}"
        )
    return document


def _int_list(value: object, what: str) -> list[int]:
    """`value` as a list of ints (bools refused: msgpack keeps them distinct)."""
    # set(map(type, ...)) runs in C: decode validates 1024 assignments per table load.
    if not isinstance(value, list) or not set(map(type, value)) <= {int}:
        raise MalformedRoutingTable(f"{what} must be an array of integers")
    return value
