"""What one node's `/metrics` says, from a snapshot of its state: pure (no I/O, no engine), so the
names, kinds and units are checked without a node (`metrics.py` is the HTTP shell around it).

Naming (Prometheus conventions, `promtool check metrics` clean): every family starts with
`nodedb_`; counters end in `_total`, durations are histograms in seconds (`_seconds`), sizes in
`_bytes`; a count of things that can go down is a gauge without `_total`. docs/METRICS.md lists
the families.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from nodedb_cluster.status import NodeStatus

HistogramRow = tuple[str, Sequence[float], Sequence[int], float, int]
"""(name, bucket upper bounds in seconds, cumulative counts with +Inf last, sum_s, count): the
shape the Rust core's histograms come in (`nodedb_obs`)."""

BOUNDS_S: Final = (
    25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""The Rust histograms' bucket bounds (`nodedb_obs::BOUNDS_NS`), for the ones Python keeps."""
ROLES: Final = ("follower", "pre_candidate", "candidate", "leader")
SWIM_STATES: Final = ("alive", "suspect", "dead", "left")
ENGINE_GAUGES: Final = frozenset({"no_space"})
"""Engine entries that are states, not counts (1 while the engine refuses writes for lack of
disk space)."""
TRANSPORT_GAUGES: Final = frozenset(
    {
        "connections_pooled",
        "insecure",
        "inbound_shared_bytes_held",
        "client_connections",
        "admin_connections",
    }
)
"""Transport entries that go down: pooled connections now; 1 while this transport is insecure;
bytes of inbound frames the connections of non-node peers hold now (the clients' budget and the
admins' own, summed); client and admin connections open now."""
RENAMED: Final = {
    "wal_torn_tail_repairs_total": "wal_torn_tail_repairs",
    "wal_torn_tail_bytes_discarded_total": "wal_torn_tail_discarded_bytes",
    "insecure_transports_total": "insecure_transports_created",
}
"""Engine/transport entries whose exported name differs (unit suffix; `_total` added once)."""
PROPOSALS: Final = {
    "proposals": "accepted",
    "proposals_busy": "busy",
    "proposals_no_space": "no_space",
}
"""Engine proposal counters, exported as one family by result."""
SWIM_DROPS: Final = {
    "dropped_oversize": "oversize",
    "dropped_bad_mac": "bad_mac",
    "dropped_malformed": "malformed",
    "members_dropped_full": "members_full",
    "relays_dropped_full": "relays_full",
    "events_dropped": "events_full",
}
"""SWIM counters of datagrams or state dropped, exported as one family by reason."""


@dataclass(slots=True)
class Scrape:
    """Everything the families are made from, taken on the event loop (the engine's thread)."""

    lifecycle: str
    lifecycle_states: Sequence[str]
    status: NodeStatus | None = None
    node_counters: Mapping[str, int] = field(default_factory=dict)
    """`Node.metrics()` minus the engine's and transport's own entries."""
    engine_counters: Mapping[str, int] = field(default_factory=dict)
    transport_counters: Mapping[str, int] = field(default_factory=dict)
    refusals: Mapping[tuple[str, str], int] = field(default_factory=dict)
    engine_histograms: Sequence[HistogramRow] = ()
    served_histograms: Sequence[HistogramRow] = ()
    leader_changes: Mapping[int, int] = field(default_factory=dict)
    kv_requests: Sequence[tuple[str, str, int]] = ()
    swim_counters: Mapping[str, int] | None = None
    """None while SWIM is off."""
    swim_members: Mapping[str, int] = field(default_factory=dict)
    join_durations_s: Sequence[float] = ()
    cert_not_after_s: int | None = None
    """When this node's TLS certificate expires (Unix seconds); None when insecure."""


def families(s: Scrape, now_s: float | None = None) -> Iterator[Metric]:
    """Every family of `s`, each name once."""
    lifecycle = GaugeMetricFamily(
        "nodedb_lifecycle_state", "1 for the node's current lifecycle state", labels=["state"]
    )
    for label in s.lifecycle_states:
        lifecycle.add_metric([label], 1.0 if label == s.lifecycle else 0.0)
    yield lifecycle
    if s.status is not None:
        yield from _groups(s.status, s.leader_changes)
    if s.cert_not_after_s is not None:
        expiry = GaugeMetricFamily(
            "nodedb_tls_cert_expiry_seconds",
            "seconds until this node's TLS certificate expires (negative: expired)",
        )
        expiry.add_metric([], float(s.cert_not_after_s - (now_s or time.time())))
        yield expiry
    refused = CounterMetricFamily(
        "nodedb_requests_refused",
        "inbound requests refused by the authorization table or a handler's identity rule",
        labels=["kind", "reason"],
    )
    for (kind, reason), value in sorted(s.refusals.items()):
        refused.add_metric([kind, reason], float(value))
    yield refused
    yield from _engine(s)
    yield from _transport(s)
    kv = CounterMetricFamily(
        "nodedb_kv_requests", "KV requests served here, by op and result", labels=["op", "result"]
    )
    for op, result, value in s.kv_requests:
        kv.add_metric([op, result], float(value))
    yield kv
    if s.swim_counters is not None:
        yield from _swim(s.swim_counters, s.swim_members)
    yield _histogram_of(
        "nodedb_join_duration_seconds",
        "joining the cluster, from the first JoinRequest until admitted and caught up",
        s.join_durations_s,
    )
    for name, value in sorted(s.node_counters.items()):
        if name == "no_space":
            gauge = GaugeMetricFamily(
                "nodedb_no_space", "1 while the node is NO_SPACE (its log's or catalog's disk)"
            )
            gauge.add_metric([], float(value))
            yield gauge
        else:
            yield _counter(f"nodedb_{name}", f"{name} of this node", value)


def _groups(status: NodeStatus, leader_changes: Mapping[int, int]) -> Iterator[Metric]:
    role = GaugeMetricFamily(
        "nodedb_raft_role", "1 for the group's role here", labels=["group", "role"]
    )
    has_leader = GaugeMetricFamily(
        "nodedb_raft_has_leader", "1 while this replica knows a leader", labels=["group"]
    )
    is_leader = GaugeMetricFamily(
        "nodedb_raft_is_leader", "1 while this node leads the group", labels=["group"]
    )
    term = GaugeMetricFamily("nodedb_raft_term", "current term", labels=["group"])
    commit = GaugeMetricFamily("nodedb_raft_commit_index", "commit index", labels=["group"])
    applied = GaugeMetricFamily("nodedb_raft_applied_index", "applied index", labels=["group"])
    changes = CounterMetricFamily(
        "nodedb_raft_leader_changes",
        "leaders this node has seen take over the group (a new leader or a new term)",
        labels=["group"],
    )
    for g in status.groups:
        group = str(g.group_id)
        for r in ROLES:
            role.add_metric([group, r], 1.0 if g.role == r else 0.0)
        has_leader.add_metric([group], 1.0 if g.leader_id else 0.0)
        is_leader.add_metric([group], 1.0 if g.role == "leader" else 0.0)
        term.add_metric([group], float(g.term))
        commit.add_metric([group], float(g.commit_index))
        applied.add_metric([group], float(g.applied_index))
        changes.add_metric([group], float(leader_changes.get(g.group_id, 0)))
    kv_bytes = GaugeMetricFamily(
        "nodedb_kv_group_bytes",
        "keys, values and cached session results of a KV replica here (what the quota counts)",
        labels=["group"],
    )
    for group_id, used in sorted(status.kv_bytes.items()):
        kv_bytes.add_metric([str(group_id)], float(used))
    sessions = GaugeMetricFamily(
        "nodedb_kv_group_sessions",
        "client sessions a KV replica here keeps for exactly-once (at most 4096)",
        labels=["group"],
    )
    evicted = CounterMetricFamily(
        "nodedb_kv_sessions_evicted",
        "client sessions a KV replica here forgot to make room since it started or restored: "
        "a retry from one of them applies again",
        labels=["group"],
    )
    for group_id, (kept, gone) in sorted(status.kv_sessions.items()):
        sessions.add_metric([str(group_id)], float(kept))
        evicted.add_metric([str(group_id)], float(gone))
    quota = GaugeMetricFamily(
        "nodedb_kv_quota_bytes", "kv_quota_bytes: a KV group at it takes only deletes (0: none)"
    )
    quota.add_metric([], float(status.kv_quota_bytes))
    nodes = GaugeMetricFamily("nodedb_topology_nodes", "nodes in the topology")
    nodes.add_metric([], float(len(status.nodes)))
    yield from (role, has_leader, is_leader, term, commit, applied, changes, kv_bytes, quota)
    yield from (sessions, evicted)
    yield nodes


def _engine(s: Scrape) -> Iterator[Metric]:
    proposals = CounterMetricFamily(
        "nodedb_raft_proposals", "proposals taken or refused by this node's leaders",
        labels=["result"],
    )  # fmt: skip
    for name, value in sorted(s.engine_counters.items()):
        if name in PROPOSALS:
            proposals.add_metric([PROPOSALS[name]], float(value))
        elif name in ENGINE_GAUGES:
            gauge = GaugeMetricFamily(f"nodedb_raft_{name}", f"state {name} of the engine")
            gauge.add_metric([], float(value))
            yield gauge
        else:
            yield _counter(f"nodedb_raft_{RENAMED.get(name, name)}", f"engine: {name}", value)
    yield proposals
    docs = {
        "wal_fsync_duration_seconds": "the Raft log's fsync, one per round (durability point)",
        "proposal_commit_duration_seconds": "a proposal on the leader until applied and answered",
        "apply_batch_duration_seconds": "one batch of committed commands through the state machine",
        "snapshot_send_duration_seconds": "a snapshot sent to a follower, until its ack",
        "snapshot_apply_duration_seconds": "a received snapshot installed here",
    }
    for name, bounds, cumulative, sum_s, _count in s.engine_histograms:
        family = HistogramMetricFamily(f"nodedb_raft_{name}", docs.get(name, name))
        family.add_metric([], _buckets(bounds, cumulative), sum_s)
        yield family


def _transport(s: Scrape) -> Iterator[Metric]:
    decode = CounterMetricFamily(
        "nodedb_transport_decode_errors", "malformed inbound frames, by code", labels=["code"]
    )
    errors = CounterMetricFamily(
        "nodedb_transport_errors", "failed outbound operations, by type", labels=["type"]
    )
    for name, value in sorted(s.transport_counters.items()):
        prefix, _, label = name.partition(".")
        if prefix == "decode_errors" and label:
            decode.add_metric([label], float(value))
        elif prefix == "errors" and label:
            errors.add_metric([label], float(value))
        elif name == "decode_errors":
            continue  # the sum of the per-code series
        elif name in TRANSPORT_GAUGES:
            gauge = GaugeMetricFamily(f"nodedb_transport_{name}", f"transport: {name} now")
            gauge.add_metric([], float(value))
            yield gauge
        else:
            yield _counter(
                f"nodedb_transport_{RENAMED.get(name, name)}", f"transport: {name}", value
            )
    yield from (decode, errors)
    served = HistogramMetricFamily(
        "nodedb_transport_request_duration_seconds",
        "inbound requests served here, by kind: frame read until the reply was written",
        labels=["kind"],
    )
    for kind, bounds, cumulative, sum_s, _count in s.served_histograms:
        served.add_metric([kind], _buckets(bounds, cumulative), sum_s)
    yield served


def _swim(counters: Mapping[str, int], members: Mapping[str, int]) -> Iterator[Metric]:
    states = GaugeMetricFamily(
        "nodedb_swim_members", "other nodes by the SWIM state this node sees", labels=["state"]
    )
    for state in SWIM_STATES:
        states.add_metric([state], float(members.get(state, 0)))
    yield states
    dropped: dict[str, int] = {}
    for name, value in sorted(counters.items()):
        reason = SWIM_DROPS.get(name)
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + value
        else:
            yield _counter(f"nodedb_swim_{name}", f"SWIM: {name}", value)
    drops = CounterMetricFamily(
        "nodedb_swim_drops", "SWIM datagrams, members or events dropped, by reason",
        labels=["reason"],
    )  # fmt: skip
    for reason, value in sorted(dropped.items()):
        drops.add_metric([reason], float(value))
    yield drops


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation)
    family.add_metric([], float(value))
    return family


def _buckets(bounds: Sequence[float], cumulative: Sequence[int]) -> list[tuple[str, float]]:
    """Prometheus buckets from bounds and cumulative counts (the last count is +Inf's)."""
    labels = [_le(b) for b in bounds] + ["+Inf"]
    return [(le, float(c)) for le, c in zip(labels, cumulative, strict=True)]


def _le(bound: float) -> str:
    return repr(float(bound)) if math.isfinite(bound) else "+Inf"


def _histogram_of(name: str, documentation: str, values: Iterable[float]) -> Metric:
    """A histogram over `BOUNDS_S` of a few values Python measured (no live type needed)."""
    values = list(values)
    cumulative = [sum(v <= b for v in values) for b in BOUNDS_S] + [len(values)]
    family = HistogramMetricFamily(name, documentation)
    family.add_metric([], _buckets(BOUNDS_S, cumulative), float(sum(values)))
    return family
