"""ClusterConfig: defaults as docs/JOIN.md states them, every refusal names its field (constructor,
TOML, mapping and CLI paths), addresses are parsed once, and CLI flags override TOML values."""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.config import ClusterConfig, add_config_arguments, config_from_args
from nodedb_cluster.errors import ConfigError
from nodedb_cluster.formation.retry import JoinRetryPolicy

BASE: dict[str, object] = {
    "node_id": 1,
    "listen_addr": "127.0.0.1:9400",
    "seed_nodes": ["127.0.0.1:9400", "127.0.0.2:9400"],
    "data_dir": "/tmp/nodedb-test",
    "insecure_transport": True,
}


def make(**changes: object) -> ClusterConfig:
    raw = {**BASE, **changes}
    return ClusterConfig.from_mapping({k: v for k, v in raw.items() if v is not None})


def refused(field: str, **changes: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        make(**changes)
    assert info.value.field == field, info.value
    assert field in str(info.value)
    return info.value


def test_defaults() -> None:
    cfg = make()
    assert cfg.node_id == 1
    assert cfg.listen_addr == parse_socket_addr("127.0.0.1:9400")
    assert cfg.seed_nodes == (
        parse_socket_addr("127.0.0.1:9400"),
        parse_socket_addr("127.0.0.2:9400"),
    )
    assert cfg.data_dir == Path("/tmp/nodedb-test")
    assert cfg.catalog_dir == Path("/tmp/nodedb-test/catalog")
    assert cfg.num_groups == 4
    assert cfg.replication_factor == 3
    assert cfg.force_bootstrap is False
    assert cfg.join_retry == JoinRetryPolicy(8, 32)
    assert cfg.swim_udp_addr == parse_socket_addr("127.0.0.1:9401")  # SWIM on: listen port + 1
    assert cfg.install_snapshot_chunk_bytes == 4 * 1024 * 1024
    assert cfg.orphan_partial_max_age_secs == 300
    assert cfg.rpc_timeout_ms == 5000
    assert cfg.metrics_addr is None
    assert (cfg.tick_interval_ms, cfg.heartbeat_interval_ms) == (100, 100)
    assert (cfg.election_timeout_min_ms, cfg.election_timeout_max_ms) == (500, 1000)
    assert (
        cfg.heartbeat_ticks,
        cfg.election_timeout_min_ticks,
        cfg.election_timeout_max_ticks,
    ) == (
        1,
        5,
        10,
    )
    # failover budget: detection at worst election_timeout_max, plus one split-vote retry
    assert 2 * cfg.election_timeout_max_ms <= 2000


def test_frozen() -> None:
    cfg = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.node_id = 2  # type: ignore[misc]


def test_direct_construction_with_typed_values() -> None:
    addr = parse_socket_addr("[::1]:9400")
    cfg = ClusterConfig(
        node_id=2**64 - 1,
        listen_addr=addr,
        data_dir=Path("d"),
        seed_nodes=[addr],  # type: ignore[arg-type]  # a list is accepted and stored as a tuple
        force_bootstrap=True,
        tls_ca_path=Path("ca.pem"),
        tls_cert_path=Path("node.pem"),
        tls_key_path=Path("node.key"),
    )
    assert cfg.seed_nodes == (addr,)
    assert cfg.insecure_transport is False


def test_direct_construction_refuses_unparsed_address() -> None:
    with pytest.raises(ConfigError) as info:
        ClusterConfig(
            node_id=1,
            listen_addr="127.0.0.1:9400",  # type: ignore[arg-type]
            data_dir=Path("d"),
            insecure_transport=True,
        )
    assert info.value.field == "listen_addr"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("node_id", 0),
        ("node_id", -1),
        ("node_id", 2**64),
        ("node_id", "1"),
        ("node_id", True),
        ("node_id", 1.0),
        ("num_groups", 0),
        ("num_groups", 1025),
        ("replication_factor", 0),
        ("replication_factor", 16),
        ("tick_interval_ms", 0),
        ("heartbeat_interval_ms", 0),
        ("install_snapshot_chunk_bytes", 0),
        ("install_snapshot_chunk_bytes", 64 * 1024 * 1024 + 1),
        ("orphan_partial_max_age_secs", 0),
        ("rpc_timeout_ms", 0),
        ("rpc_timeout_ms", 600_001),
        ("listen_addr", "localhost:9400"),
        ("listen_addr", "127.0.0.1"),
        ("listen_addr", 9400),
        ("listen_addr", "0.0.0.0:9400"),
        ("listen_addr", "[::]:9400"),
        ("swim_udp_addr", "0.0.0.0:9401"),
        ("seed_nodes", ["0.0.0.0:9400"]),
        ("swim_udp_addr", "127.0.0.1:0"),
        ("metrics_addr", "[::1]"),
        ("seed_nodes", "127.0.0.1:9400"),
        ("seed_nodes", ["127.0.0.1:9400", "nope"]),
        ("seed_nodes", [f"127.0.0.1:{p}" for p in range(1, 66)]),
        ("data_dir", ""),
        ("data_dir", 5),
        ("force_bootstrap", "yes"),
        ("insecure_transport", 1),
        ("join_retry", 5),
    ],
)
def test_bad_values_name_the_field(field: str, value: object) -> None:
    refused(field, **{field: value})


def test_metrics_may_bind_every_interface() -> None:
    """Only the addresses peers dial must be a host's own; Prometheus may scrape any."""
    assert str(make(metrics_addr="0.0.0.0:9100").metrics_addr) == "0.0.0.0:9100"


def test_max_chunk_bytes_is_allowed() -> None:
    assert make(install_snapshot_chunk_bytes=64 * 1024 * 1024).install_snapshot_chunk_bytes == (
        64 * 1024 * 1024
    )


def test_required_fields() -> None:
    for key in ("node_id", "listen_addr", "data_dir"):
        raw = {k: v for k, v in BASE.items() if k != key}
        with pytest.raises(ConfigError) as info:
            ClusterConfig.from_mapping(raw)
        assert info.value.field == key
        assert info.value.reason == "required"


def test_unknown_keys_are_refused_by_name() -> None:
    err = refused("listen_address", listen_address="127.0.0.1:1")
    assert "unknown" in err.reason
    refused("join_retry.max_attempt", join_retry={"max_attempt": 3})


def test_join_retry_nested() -> None:
    cfg = make(join_retry={"max_attempts": 3})
    assert cfg.join_retry == JoinRetryPolicy(max_attempts=3, max_backoff_secs=32)
    refused("join_retry.max_attempts", join_retry={"max_attempts": 0})
    refused("join_retry.max_backoff_secs", join_retry={"max_backoff_secs": "2"})


def test_duplicate_seeds_refused() -> None:
    err = refused("seed_nodes", seed_nodes=["127.0.0.1:1", "127.0.0.2:1", "127.0.0.1:1"])
    assert "127.0.0.1:1" in err.reason


def test_force_bootstrap_requires_listen_addr_among_seeds() -> None:
    assert make(force_bootstrap=True).force_bootstrap
    err = refused("force_bootstrap", force_bootstrap=True, seed_nodes=["127.0.0.2:9400"])
    assert "127.0.0.1:9400" in err.reason
    refused("force_bootstrap", force_bootstrap=True, seed_nodes=[])


def test_empty_seed_list_is_a_valid_config() -> None:
    # A restart ignores seeds; "no seed nodes configured" is the join path's error, not config's.
    assert make(seed_nodes=[]).seed_nodes == ()


def test_swim_must_not_share_the_quic_port() -> None:
    refused("swim_udp_addr", swim_udp_addr="127.0.0.1:9400")
    assert make(swim_udp_addr="127.0.0.1:9401").swim_udp_addr == parse_socket_addr("127.0.0.1:9401")


def test_swim_is_on_by_default_at_listen_port_plus_one_and_off_by_name(tmp_path: Path) -> None:
    # On by default (issue 15): the listen IP, listen port + 1, so nodes sharing a port on
    # different IPs (LocalCluster) get distinct sockets and nothing has to be configured.
    assert make().swim_udp_addr == parse_socket_addr("127.0.0.1:9401")
    v6 = make(listen_addr="[::1]:7000", seed_nodes=["[::1]:7000"])
    assert v6.swim_udp_addr == parse_socket_addr("[::1]:7001")
    direct = ClusterConfig(
        node_id=1,
        listen_addr=parse_socket_addr("10.0.0.5:9400"),
        data_dir=tmp_path,
        insecure_transport=True,
    )
    assert direct.swim_udp_addr == parse_socket_addr("10.0.0.5:9401")
    # Off only when asked for, in every source; and it stays off through TOML and the mapping.
    off = make(swim_udp_addr="off")
    assert off.swim_udp_addr is None
    assert off.to_mapping()["swim_udp_addr"] == "off"
    assert ClusterConfig.from_mapping(tomllib.loads(off.to_toml())) == off
    assert config_from_args(parse([*_BASE_FLAGS, "--swim-udp-addr", "off"])).swim_udp_addr is None
    assert config_from_args(parse(_BASE_FLAGS)).swim_udp_addr == parse_socket_addr("127.0.0.1:9401")
    err = refused("swim_udp_addr", listen_addr="127.0.0.1:65535", seed_nodes=[])
    assert "65535" in str(err)
    assert (
        make(listen_addr="127.0.0.1:65535", seed_nodes=[], swim_udp_addr="off").swim_udp_addr
        is None
    )


_BASE_FLAGS = ["--node-id", "1", "--listen-addr", "127.0.0.1:9400", "--data-dir", "/tmp/x"]
_BASE_FLAGS += ["--insecure-transport"]


def test_raft_timing_relations() -> None:
    refused("election_timeout_min_ms", heartbeat_interval_ms=500, election_timeout_min_ms=500)
    refused("election_timeout_max_ms", election_timeout_min_ms=500, election_timeout_max_ms=500)
    refused("election_timeout_max_ms", election_timeout_min_ms=800, election_timeout_max_ms=700)
    refused("heartbeat_interval_ms", heartbeat_interval_ms=150)  # not a multiple of the tick
    refused("election_timeout_max_ms", election_timeout_max_ms=1050)
    cfg = make(
        tick_interval_ms=10,
        heartbeat_interval_ms=30,
        election_timeout_min_ms=150,
        election_timeout_max_ms=300,
    )
    assert (cfg.heartbeat_ticks, cfg.election_timeout_min_ticks) == (3, 15)
    assert cfg.election_timeout_max_ticks == 30


def test_transport_credentials_are_explicit() -> None:
    err = refused("tls_ca_path", insecure_transport=None)
    assert "insecure_transport" in err.reason
    tls = {"tls_ca_path": "ca.pem", "tls_cert_path": "n.pem", "tls_key_path": "n.key"}
    cfg = make(insecure_transport=None, **tls)
    assert cfg.tls_key_path == Path("n.key")
    assert not cfg.insecure_transport
    refused("insecure_transport", **tls)
    refused("tls_key_path", insecure_transport=None, tls_ca_path="ca.pem", tls_cert_path="n.pem")
    refused("tls_ca_path", insecure_transport=None, tls_cert_path="n.pem", tls_key_path="n.key")
    refused("insecure_transport", tls_ca_path="ca.pem")


def test_mapping_round_trip() -> None:
    cfg = make(
        swim_udp_addr="[::1]:7946",
        metrics_addr="127.0.0.1:9100",
        join_retry={"max_attempts": 4, "max_backoff_secs": 2},
        num_groups=16,
    )
    assert ClusterConfig.from_mapping(cfg.to_mapping()) == cfg
    assert cfg.to_mapping()["seed_nodes"] == ["127.0.0.1:9400", "127.0.0.2:9400"]


TOML = """
node_id = 7
listen_addr = "10.0.0.9:9400"
seed_nodes = ["10.0.0.10:9400", "10.0.0.9:9400"]
data_dir = "/var/lib/nodedb"
num_groups = 8
insecure_transport = true

[join_retry]
max_attempts = 5
max_backoff_secs = 4
"""


def test_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(TOML)
    cfg = ClusterConfig.from_toml(path)
    assert cfg.node_id == 7
    assert cfg.num_groups == 8
    assert cfg.join_retry == JoinRetryPolicy(5, 4)
    assert min(cfg.seed_nodes) == cfg.listen_addr  # 10.0.0.9 < 10.0.0.10 numerically


def test_from_toml_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(TOML)
    cfg = ClusterConfig.from_toml(path, {"num_groups": 2, "join_retry": {"max_attempts": 9}})
    assert cfg.num_groups == 2
    assert cfg.join_retry == JoinRetryPolicy(9, 4)  # merged key by key, not replaced


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('num_groups = "eight"', "num_groups"),
        ("num_groups = 2000", "num_groups"),
        ("replication_factor = 0", "replication_factor"),
        ("node_id = 1.5", "node_id"),
        ('listen_addr = "nodedb-1:9400"', "listen_addr"),
        ("seed_nodes = 3", "seed_nodes"),
        ('force_bootstrap = "true"', "force_bootstrap"),
        ("rpc_timeout_ms = -5", "rpc_timeout_ms"),
        ("colour = 3", "colour"),
        ("election_timeout_max_ms = 400", "election_timeout_max_ms"),
    ],
)
def test_bad_toml_values_name_the_field(tmp_path: Path, line: str, field: str) -> None:
    base = "\n".join(ln for ln in TOML.splitlines() if not ln.startswith(line.split(" ")[0] + " "))
    top, _, table = base.partition("[join_retry]")
    path = tmp_path / "bad.toml"
    path.write_text(f"{top}\n{line}\n[join_retry]{table}")
    with pytest.raises(ConfigError) as info:
        ClusterConfig.from_toml(path)
    assert info.value.field == field


def test_bad_toml_nested_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(TOML + "max_backoff = 3\n")
    with pytest.raises(ConfigError) as info:
        ClusterConfig.from_toml(path)
    assert info.value.field == "join_retry.max_backoff"


def test_toml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("node_id = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        ClusterConfig.from_toml(path)
    assert info.value.field == "config"
    with pytest.raises(ConfigError, match="cannot read") as info:
        ClusterConfig.from_toml(tmp_path / "absent.toml")
    assert info.value.field == "config"
    path.write_bytes(b'node_id = 1\ndata_dir = "\xff"\n')
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        ClusterConfig.from_toml(path)
    with pytest.raises(ConfigError, match="cannot read"):
        ClusterConfig.from_toml(tmp_path)  # a directory


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_args(argv)


def test_cli_without_file() -> None:
    cfg = config_from_args(
        parse(
            [
                "--node-id=3",
                "--listen-addr=127.0.0.3:9400",
                "--seed-nodes=127.0.0.1:9400, 127.0.0.2:9400",
                "--data-dir=/tmp/n3",
                "--insecure-transport",
                "--join-retry-max-backoff-secs=1",
                "--rpc-timeout-ms=250",
            ]
        )
    )
    assert cfg.node_id == 3
    assert len(cfg.seed_nodes) == 2
    assert cfg.join_retry == JoinRetryPolicy(8, 1)
    assert cfg.rpc_timeout_ms == 250


def test_cli_flags_override_toml(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        TOML.replace(
            "insecure_transport = true", "force_bootstrap = true\ninsecure_transport = true"
        )
    )
    args = parse(
        [
            f"--config={path}",
            "--num-groups=3",
            "--no-force-bootstrap",
            "--join-retry-max-attempts=2",
        ]
    )
    cfg = config_from_args(args)
    assert cfg.num_groups == 3
    assert cfg.force_bootstrap is False
    assert cfg.join_retry == JoinRetryPolicy(2, 4)
    assert cfg.node_id == 7  # untouched TOML value
    assert config_from_args(parse([f"--config={path}"])).force_bootstrap is True


@pytest.mark.parametrize(
    ("flag", "field"),
    [
        ("--node-id=abc", "--node-id"),
        ("--num-groups=0", "--num-groups"),
        ("--join-retry-max-attempts=x", "--join-retry-max-attempts"),
        ("--listen-addr=host:1", "--listen-addr"),
    ],
)
def test_cli_bad_values_name_the_flag(tmp_path: Path, flag: str, field: str) -> None:
    # The value came from a flag: the error names the flag the user typed, not the config key.
    path = tmp_path / "node.toml"
    path.write_text(TOML)
    with pytest.raises(ConfigError) as info:
        config_from_args(parse([f"--config={path}", flag]))
    assert info.value.field == field
    assert str(info.value).startswith(f"invalid {field}: ")


def test_a_bad_value_from_the_file_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(TOML.replace("num_groups = 8", "num_groups = 0"))
    assert "num_groups = 0" in path.read_text()
    with pytest.raises(ConfigError) as info:
        config_from_args(parse([f"--config={path}"]))
    assert info.value.field == f"num_groups in {path}"
    assert "--num-groups" not in str(info.value)


def test_without_a_file_every_setting_named_in_an_error_is_a_flag() -> None:
    # A relation between two settings: both are flags here, so the reason names flags too.
    with pytest.raises(ConfigError) as info:
        config_from_args(parse([*_BASE_FLAGS[:-1], "--tls-cert-path", "/c.pem"]))
    assert info.value.field == "--tls-ca-path"
    assert "--tls-cert-path" in info.value.reason
    assert "tls_cert_path" not in str(info.value)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(["127.0.0.1:9400", "[::1]:1", "ca.pem", "/tmp/x"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=8,
)
field_names = st.sampled_from([f.name for f in dataclasses.fields(ClusterConfig)] + ["bogus"])


@given(st.dictionaries(field_names, values, max_size=6))
def test_any_mapping_builds_or_raises_config_error(changes: dict[str, object]) -> None:
    try:
        cfg = ClusterConfig.from_mapping({**BASE, **changes})
    except ConfigError:
        return  # the typed refusal; anything else (TypeError, KeyError, ...) fails the test
    assert ClusterConfig.from_mapping(cfg.to_mapping()) == cfg
    assert ClusterConfig.from_mapping(tomllib.loads(cfg.to_toml())) == cfg


def test_toml_round_trip(tmp_path: Path) -> None:
    cfg = make(
        data_dir='/tmp/odd "dir"\\with\ttab\x7fdel and é',
        swim_udp_addr="[::1]:7946",
        join_retry={"max_attempts": 4, "max_backoff_secs": 2},
        force_bootstrap=True,
    )
    path = tmp_path / "out.toml"
    path.write_text(cfg.to_toml(), encoding="utf-8")
    assert ClusterConfig.from_toml(path) == cfg
    assert "[join_retry]" in cfg.to_toml()


def test_join_token_is_checked_at_load_and_kept_out_of_repr(tmp_path: Path) -> None:
    from nodedb_cluster.formation.join_token import issue_token

    token = issue_token(bytes(32), 4, 2_000_000_000)
    cfg = make(join_token=token)
    assert cfg.join_token == token
    assert token not in repr(cfg)  # a bearer credential
    path = tmp_path / "n.toml"
    path.write_text(cfg.to_toml())
    assert ClusterConfig.from_toml(path) == cfg
    flags = parse([f"--config={path}", "--join-token", token.upper()])
    assert config_from_args(flags).join_token == token.upper()
    refused("join_token", join_token="abc")
    refused("join_token", join_token=7)
