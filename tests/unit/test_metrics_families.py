"""`metrics_families`: the names, kinds and units `/metrics` exports, from a hand-made snapshot
(no node): counters end in `_total` exactly once, things that go down are gauges, drops and
proposals are one family each with a reason/result label, histograms keep Rust's buckets."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from nodedb_cluster.metrics_families import BOUNDS_S, Scrape, families
from nodedb_cluster.raft import GroupStatus, Role
from nodedb_cluster.status import NodeStatus


class _Fixed(Collector):
    def __init__(self, scrape: Scrape) -> None:
        self.scrape = scrape

    def collect(self) -> list[Metric]:
        return list(families(self.scrape, now_s=1000.0))


def render(scrape: Scrape) -> str:
    registry = CollectorRegistry()
    registry.register(_Fixed(scrape))
    return generate_latest(registry).decode()


def types(text: str) -> dict[str, str]:
    return {
        line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE")
    }


def group(group_id: int, role: Role, leader: int | None) -> GroupStatus:
    return GroupStatus(group_id, role, 3, leader, 10, 9, 10, 0)


def status(*groups: GroupStatus) -> NodeStatus:
    return NodeStatus(
        node_id=1,
        lifecycle="ready",
        cluster_id="c",
        topology_version=1,
        routing_epoch=1,
        metadata_applied_index=1,
        nodes=((1, "127.0.0.1:9400", "active"),),
        groups=groups,
        vshards_per_group={},
        settings={},
        kv_bytes={1: 4096},
        kv_sessions={1: (4096, 17)},
        kv_quota_bytes=2 << 30,
    )


def scrape() -> Scrape:
    cumulative = [0] * 5 + [2] * (len(BOUNDS_S) - 5) + [3]  # 2 within 1 ms, 1 above 60 s
    return Scrape(
        lifecycle="ready",
        lifecycle_states=("starting", "ready"),
        status=status(group(0, "leader", 1), group(1, "follower", None)),
        node_counters={"join_attempts": 1, "no_space": 0},
        engine_counters={
            "fsyncs": 7,
            "no_space": 1,
            "proposals": 5,
            "proposals_busy": 2,
            "proposals_no_space": 1,
            "wal_torn_tail_repairs_total": 1,
            "wal_torn_tail_bytes_discarded_total": 512,
        },
        transport_counters={
            "rpcs_sent": 4,
            "connections_pooled": 2,
            "insecure": 1,
            "insecure_transports_total": 1,
            "decode_errors": 3,
            "decode_errors.bad_crc": 3,
            "errors.timeout": 1,
        },
        refusals={("JoinRequest", "no_token"): 2},
        engine_histograms=[("wal_fsync_duration_seconds", BOUNDS_S, cumulative, 61.0, 3)],
        served_histograms=[("KvRequest", BOUNDS_S, cumulative, 61.0, 3)],
        leader_changes={0: 2},
        kv_requests=[("propose_many", "ok", 9), ("read", "Timeout", 1)],
        swim_counters={
            "probes": 3,
            "dropped_bad_mac": 2,
            "dropped_malformed": 1,
            "relays_dropped_full": 1,
            "events_dropped": 4,
        },
        swim_members={"alive": 2, "dead": 1},
        join_durations_s=(0.3,),
        cert_not_after_s=1000 + 86400,
    )


def test_counters_gauges_and_histograms_are_named_by_their_kind_and_unit() -> None:
    kinds = types(render(scrape()))
    for name, kind in kinds.items():
        assert name.startswith("nodedb_"), name
        assert (kind == "counter") == name.endswith("_total"), (name, kind)
        assert "_total_total" not in name
        if kind == "histogram":
            assert name.endswith("_seconds"), name
    assert kinds["nodedb_transport_connections_pooled"] == "gauge"
    assert kinds["nodedb_transport_insecure"] == "gauge"
    assert kinds["nodedb_raft_no_space"] == "gauge"
    assert kinds["nodedb_no_space"] == "gauge"
    assert kinds["nodedb_raft_wal_torn_tail_discarded_bytes_total"] == "counter"
    assert kinds["nodedb_raft_wal_torn_tail_repairs_total"] == "counter"
    assert kinds["nodedb_transport_insecure_transports_created_total"] == "counter"
    assert "nodedb_raft_proposals_busy_total" not in kinds  # a label of proposals_total


def test_labelled_families_split_by_reason_result_and_state() -> None:
    text = render(scrape())
    for line in (
        'nodedb_raft_proposals_total{result="accepted"} 5.0',
        'nodedb_raft_proposals_total{result="busy"} 2.0',
        'nodedb_raft_proposals_total{result="no_space"} 1.0',
        'nodedb_swim_drops_total{reason="bad_mac"} 2.0',
        'nodedb_swim_drops_total{reason="malformed"} 1.0',
        'nodedb_swim_drops_total{reason="relays_full"} 1.0',
        'nodedb_swim_drops_total{reason="events_full"} 4.0',
        'nodedb_swim_members{state="dead"} 1.0',
        'nodedb_swim_members{state="suspect"} 0.0',
        'nodedb_kv_requests_total{op="read",result="Timeout"} 1.0',
        'nodedb_transport_decode_errors_total{code="bad_crc"} 3.0',
        'nodedb_transport_errors_total{type="timeout"} 1.0',
        'nodedb_requests_refused_total{kind="JoinRequest",reason="no_token"} 2.0',
        'nodedb_raft_has_leader{group="0"} 1.0',
        'nodedb_raft_has_leader{group="1"} 0.0',
        'nodedb_raft_is_leader{group="0"} 1.0',
        'nodedb_raft_is_leader{group="1"} 0.0',
        'nodedb_raft_leader_changes_total{group="0"} 2.0',
        'nodedb_raft_leader_changes_total{group="1"} 0.0',
        "nodedb_tls_cert_expiry_seconds 86400.0",
        'nodedb_kv_group_bytes{group="1"} 4096.0',
        "nodedb_kv_quota_bytes 2.147483648e+09",
        'nodedb_kv_group_sessions{group="1"} 4096.0',
        'nodedb_kv_sessions_evicted_total{group="1"} 17.0',
    ):
        assert line in text, line
    assert "nodedb_swim_dropped_bad_mac_total" not in text
    assert "nodedb_transport_decode_errors_total 3.0" not in text  # only the per-code series


def test_histograms_keep_the_rust_buckets_and_python_ones_use_the_same() -> None:
    text = render(scrape())
    assert 'nodedb_raft_wal_fsync_duration_seconds_bucket{le="0.0005"} 0.0' in text
    assert 'nodedb_raft_wal_fsync_duration_seconds_bucket{le="0.001"} 2.0' in text
    assert 'nodedb_raft_wal_fsync_duration_seconds_bucket{le="60.0"} 2.0' in text
    assert 'nodedb_raft_wal_fsync_duration_seconds_bucket{le="+Inf"} 3.0' in text
    assert "nodedb_raft_wal_fsync_duration_seconds_count 3.0" in text
    assert "nodedb_raft_wal_fsync_duration_seconds_sum 61.0" in text
    assert 'nodedb_transport_request_duration_seconds_count{kind="KvRequest"} 3.0' in text
    assert 'nodedb_join_duration_seconds_bucket{le="0.25"} 0.0' in text
    assert 'nodedb_join_duration_seconds_bucket{le="0.5"} 1.0' in text
    assert "nodedb_join_duration_seconds_count 1.0" in text


def test_swim_off_and_no_status_leave_their_families_out() -> None:
    kinds = types(render(Scrape(lifecycle="starting", lifecycle_states=("starting",))))
    assert "nodedb_swim_members" not in kinds
    assert "nodedb_raft_has_leader" not in kinds
    assert "nodedb_tls_cert_expiry_seconds" not in kinds
    assert kinds["nodedb_lifecycle_state"] == "gauge"
