"""Log settings and the pure parts of the node's log (issue 15 part 2): the `log_level` and
`log_format` settings (validated, round-tripped through TOML, on the CLI with their docstring),
`logsetup.configure`'s handler, and `leaders.changed_leaders`, the diff behind both the leader
INFO lines and the embedding API's `on_leader_change`.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodedb_cluster import logsetup
from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.cli import main
from nodedb_cluster.config import ClusterConfig
from nodedb_cluster.errors import ConfigError
from nodedb_cluster.leaders import LeaderView, changed_leaders


def config(**kwargs: object) -> ClusterConfig:
    return ClusterConfig(
        node_id=1,
        listen_addr=parse_socket_addr("127.0.0.1:9400"),
        data_dir=Path("/tmp/x"),
        insecure_transport=True,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_log_settings_are_checked_and_round_trip() -> None:
    assert (config().log_level, config().log_format) == ("info", "text")
    chosen = config(log_level="debug", log_format="json")
    assert ClusterConfig.from_mapping(chosen.to_mapping()) == chosen
    with pytest.raises(ConfigError) as info:
        config(log_format="xml")
    assert info.value.field == "log_format"
    assert "text, json" in str(info.value)
    with pytest.raises(ConfigError) as info:
        config(log_level="loud")
    assert info.value.field == "log_level"


def test_start_help_shows_the_log_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["start", "--help"], {})
    text = capsys.readouterr().out
    assert "--log-format text|json" in text
    assert "--log-level debug|info|warning|error" in text


def test_configure_json_stamps_the_node_id(restore_root: None) -> None:
    stream = io.StringIO()
    logsetup.configure("warning", "json", node_id=7, stream=stream)
    log = logging.getLogger("nodedb_cluster.test_configure")
    log.info("below the level")
    log.warning("peer %s is slow", "n2", extra={"peer": 2})
    (line,) = stream.getvalue().splitlines()
    doc = json.loads(line)
    assert doc["message"] == "peer n2 is slow"
    assert (doc["node_id"], doc["peer"], doc["level"]) == (7, 2, "WARNING")


def test_configure_text_keeps_the_classic_line(restore_root: None) -> None:
    stream = io.StringIO()
    logsetup.configure("info", "text", stream=stream)
    logging.getLogger("nodedb_cluster.test_configure").info("hello")
    assert stream.getvalue().rstrip().endswith(" INFO nodedb_cluster.test_configure: hello")


def test_changed_leaders_reports_new_leaders_not_new_terms() -> None:
    seen: LeaderView = {}
    assert changed_leaders(seen, [(0, 1, 2), (1, None, 1)]) == [(0, 1, 2, None), (1, None, 1, None)]
    assert changed_leaders(seen, [(0, 1, 3), (1, None, 1)]) == [], "a new term alone is no change"
    assert seen[0] == (1, 3), "but the term is taken"
    assert changed_leaders(seen, [(0, None, 4), (1, 2, 2)]) == [(0, None, 4, 1), (1, 2, 2, None)]
    assert changed_leaders(seen, [(0, 3, 4)]) == [(0, 3, 4, None)]


def test_changed_leaders_reports_a_replica_dropped_while_it_knew_no_leader() -> None:
    """Embedding probe, session 31: a stale replica dropped after 30 s without a leader went
    from (None, 2) to (None, 0), which compared as no change, so the host never heard it left."""
    seen: LeaderView = {}
    changed_leaders(seen, [(4, None, 2)])
    assert changed_leaders(seen, [(4, None, 0)]) == [(4, None, 0, None)], "the drop is a change"
    assert changed_leaders(seen, [(4, None, 0)]) == [], "once"
    assert changed_leaders(seen, [(4, None, 3)]) == [(4, None, 3, None)], "and a replica back"
