"""SWIM knobs in ClusterConfig (issue 7: "all configurable"): the `[swim]` table and the
`--swim-*` flags build a `SwimConfig`, survive a TOML round trip, merge key by key under
overrides, and every refusal names the knob as the user wrote it (`swim.probe_interval_ms`), from
the mapping, the TOML file, the CLI flags and the real `nodedb-cluster start` command."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from nodedb_cluster.config import ClusterConfig, add_config_arguments, config_from_args
from nodedb_cluster.errors import ConfigError
from nodedb_cluster.membership import SwimConfig

BASE: dict[str, object] = {
    "node_id": 1,
    "listen_addr": "127.0.0.1:9400",
    "data_dir": "/tmp/nodedb-test",
    "insecure_transport": True,
}
TOML = """
node_id = 1
listen_addr = "127.0.0.1:9400"
data_dir = "/tmp/nodedb-test"
insecure_transport = true

[swim]
probe_interval_ms = 200
probe_timeout_ms = 100
suspicion_min_ms = 400
"""
SWIM_KNOBS = [f.name for f in dataclasses.fields(SwimConfig)]


def refused(field: str, swim: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        ClusterConfig.from_mapping({**BASE, "swim": swim})
    assert info.value.field == field, info.value
    assert repr(field) in str(info.value)  # the message a user reads names it too
    return info.value


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_args(argv)


def test_default_is_issue_7s_defaults() -> None:
    swim = ClusterConfig.from_mapping(BASE).swim
    assert swim == SwimConfig()
    assert (swim.probe_interval_ms, swim.probe_timeout_ms, swim.indirect_probes) == (1000, 500, 3)
    assert (swim.suspicion_mult, swim.suspicion_min_ms, swim.piggyback_updates_max) == (4, 2000, 6)


def test_toml_table_builds_a_swim_config_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(TOML)
    cfg = ClusterConfig.from_toml(path)
    assert cfg.swim == SwimConfig(probe_interval_ms=200, probe_timeout_ms=100, suspicion_min_ms=400)
    text = cfg.to_toml()
    assert "[swim]" in text
    out = tmp_path / "out.toml"
    out.write_text(text)
    assert ClusterConfig.from_toml(out) == cfg
    assert ClusterConfig.from_mapping(cfg.to_mapping()) == cfg


def test_every_knob_is_settable_and_round_trips() -> None:
    # A value other than the default for each knob, all valid together.
    changed = {
        "probe_interval_ms": 250,
        "probe_timeout_ms": 80,
        "indirect_probes": 5,
        "suspicion_mult": 6,
        "suspicion_min_ms": 900,
        "piggyback_updates_max": 9,
        "retransmit_mult": 3,
        "datagram_bytes_max": 1200,
        "event_queue_max": 77,
    }
    assert sorted(changed) == sorted(SWIM_KNOBS)  # a new SwimConfig knob must be added here
    cfg = ClusterConfig.from_mapping({**BASE, "swim": changed})
    assert dataclasses.asdict(cfg.swim) == changed
    assert ClusterConfig.from_mapping(cfg.to_mapping()) == cfg


def test_overrides_merge_into_the_toml_table_key_by_key(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(TOML)
    cfg = ClusterConfig.from_toml(path, {"swim": {"indirect_probes": 1}})
    assert cfg.swim == SwimConfig(
        probe_interval_ms=200, probe_timeout_ms=100, suspicion_min_ms=400, indirect_probes=1
    )


BAD_KNOBS: list[tuple[str, object]] = [
    ("probe_interval_ms", 9),
    ("probe_interval_ms", 60_001),
    ("probe_timeout_ms", 0),
    ("probe_timeout_ms", 1000),  # not below the 1 s default interval
    ("indirect_probes", -1),
    ("indirect_probes", 17),
    ("suspicion_mult", 0),
    ("suspicion_min_ms", 0),
    ("piggyback_updates_max", 65),
    ("retransmit_mult", 0),
    ("datagram_bytes_max", 511),
    ("datagram_bytes_max", 65_508),
    ("event_queue_max", 0),
    ("probe_interval_ms", "200"),
    ("probe_interval_ms", 200.0),
    ("indirect_probes", True),
]


@pytest.mark.parametrize(("knob", "value"), BAD_KNOBS)
def test_each_bad_knob_is_refused_by_its_table_name(knob: str, value: object) -> None:
    refused(f"swim.{knob}", {knob: value})


def test_every_knob_has_a_refusal_case() -> None:
    assert {knob for knob, _ in BAD_KNOBS} == set(SWIM_KNOBS)


def test_unknown_knob_and_a_non_table_are_refused_by_name() -> None:
    assert "unknown" in refused("swim.probe_intervl_ms", {"probe_intervl_ms": 200}).reason
    refused("swim", 5)
    refused("swim", "fast")


def test_bad_knob_in_a_toml_file_names_the_table_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(TOML.replace("probe_timeout_ms = 100", "probe_timeout_ms = 300"))
    with pytest.raises(ConfigError) as info:
        ClusterConfig.from_toml(path)
    assert info.value.field == "swim.probe_timeout_ms"  # 300 is not below the 200 ms interval
    path.write_text(TOML.replace("suspicion_min_ms = 400", 'suspicion_min_ms = "400"'))
    with pytest.raises(ConfigError) as info:
        ClusterConfig.from_toml(path)
    assert info.value.field == "swim.suspicion_min_ms"


def test_cli_flags_set_swim_knobs_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(TOML)
    cfg = config_from_args(
        parse([f"--config={path}", "--swim-suspicion-min-ms=700", "--swim-suspicion-mult=2"])
    )
    assert cfg.swim == SwimConfig(
        probe_interval_ms=200, probe_timeout_ms=100, suspicion_min_ms=700, suspicion_mult=2
    )
    flagged = config_from_args(
        parse(
            [
                "--node-id=2",
                "--listen-addr=127.0.0.2:9400",
                "--data-dir=/tmp/n2",
                "--insecure-transport",
                "--swim-probe-interval-ms=2000",
            ]
        )
    )
    assert flagged.swim == SwimConfig(probe_interval_ms=2000)


@pytest.mark.parametrize(
    ("flag", "field"),
    [
        ("--swim-indirect-probes=x", "--swim-indirect-probes"),
        ("--swim-probe-interval-ms=5", "--swim-probe-interval-ms"),
        ("--swim-probe-timeout-ms=200", "--swim-probe-timeout-ms"),  # == the file's interval
    ],
)
def test_cli_bad_swim_flags_name_the_knob(tmp_path: Path, flag: str, field: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(TOML)
    with pytest.raises(ConfigError) as info:
        config_from_args(parse([f"--config={path}", flag]))
    assert info.value.field == field


def test_start_command_refuses_a_bad_swim_flag_naming_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nodedb_cluster.cli",
            "start",
            "--node-id=1",
            "--listen-addr=127.0.0.1:9400",
            f"--data-dir={tmp_path}",
            "--insecure-transport",
            "--swim-probe-timeout-ms=1500",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "invalid --swim-probe-timeout-ms: " in result.stderr  # the flag, as typed
    assert not (tmp_path / "catalog").exists()  # refused before anything was written
