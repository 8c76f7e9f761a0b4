"""The identity beside the Raft log and the start-time decision (issue 13 part 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodedb_cluster.formation.log_identity import (
    LogIdentity,
    LogIdentityError,
    Verdict,
    decide,
    discard_raft_state,
    has_raft_log,
    identity_path,
    read_identity,
    write_identity,
)

A = LogIdentity("cluster-a", 3)


def _decide(
    tmp_path: Path,
    catalog: LogIdentity | None,
    log: LogIdentity | None,
    has_log: bool,
    *,
    rejoin: bool = False,
    force_bootstrap: bool = False,
    log_opened: bool = False,
) -> Verdict:
    return decide(
        catalog,
        log,
        has_log,
        rejoin=rejoin,
        force_bootstrap=force_bootstrap,
        catalog_path=tmp_path / "catalog",
        data_dir=tmp_path,
        log_opened=log_opened,
    )


def test_agreeing_catalog_and_log_proceed_and_a_missing_identity_is_stamped(tmp_path: Path) -> None:
    assert _decide(tmp_path, A, A, True) is Verdict.PROCEED
    assert _decide(tmp_path, A, None, True) is Verdict.STAMP
    assert _decide(tmp_path, None, None, False) is Verdict.PROCEED
    # an identity without a log: an aborted formation, formed over
    assert _decide(tmp_path, None, A, False) is Verdict.PROCEED


def test_a_log_of_another_cluster_or_node_is_refused_naming_both(tmp_path: Path) -> None:
    for other in (LogIdentity("cluster-b", 3), LogIdentity("cluster-a", 4)):
        with pytest.raises(LogIdentityError) as e:
            _decide(tmp_path, A, other, True)
        text = str(e.value)
        assert str(A) in text
        assert str(other) in text
        assert "--rejoin" in text
        assert _decide(tmp_path, A, other, True, rejoin=True) is Verdict.DISCARD
    with pytest.raises(LogIdentityError, match="check --node-id and --data-dir"):
        _decide(tmp_path, A, LogIdentity("cluster-a", 4), True)  # another node's data dir


def test_a_log_without_a_catalog_is_never_formed_over_without_an_explicit_way_out(
    tmp_path: Path,
) -> None:
    with pytest.raises(LogIdentityError) as e:
        _decide(tmp_path, None, A, True)
    text = str(e.value)
    assert "--rejoin" in text
    assert "--force-bootstrap" in text
    assert str(A) in text
    assert _decide(tmp_path, None, A, True, rejoin=True) is Verdict.DISCARD
    assert _decide(tmp_path, None, None, True, force_bootstrap=True) is Verdict.DISCARD


def test_identity_round_trips_and_any_changed_byte_is_refused(tmp_path: Path) -> None:
    assert read_identity(tmp_path) is None
    write_identity(tmp_path, A)
    assert read_identity(tmp_path) == A
    raw = identity_path(tmp_path).read_bytes()
    for at in range(len(raw)):
        damaged = bytearray(raw)
        damaged[at] ^= 0x01
        identity_path(tmp_path).write_bytes(bytes(damaged))
        with pytest.raises(LogIdentityError, match="IDENTITY"):
            read_identity(tmp_path)
    identity_path(tmp_path).write_bytes(raw[:-1])
    with pytest.raises(LogIdentityError):
        read_identity(tmp_path)


def test_discard_moves_the_raft_state_aside(tmp_path: Path) -> None:
    (tmp_path / "raft").mkdir()
    (tmp_path / "raft" / "0000000000000001.wal").write_bytes(b"x")
    (tmp_path / "snapshots").mkdir()
    assert has_raft_log(tmp_path)
    moved = discard_raft_state(tmp_path)
    assert not has_raft_log(tmp_path)
    assert (moved / "raft" / "0000000000000001.wal").read_bytes() == b"x"
    assert (moved / "snapshots").is_dir()
    assert discard_raft_state(tmp_path) != moved  # a second discard never overwrites the first


def test_a_log_once_opened_and_now_gone_is_refused_unless_rejoining(tmp_path: Path) -> None:
    """Operator probe, session 31: every segment deleted, the node came back an empty replica
    without a word (and with every node's gone, a cluster Ready with no leader anywhere)."""
    for identity in (A, None):  # the segments deleted, or the whole raft/ directory
        with pytest.raises(LogIdentityError, match=r"holds no Raft log segment.*--rejoin"):
            _decide(tmp_path, A, identity, False, log_opened=True)
        assert _decide(tmp_path, A, identity, False, log_opened=True, rejoin=True) is (
            Verdict.DISCARD
        )
    # A catalog that never recorded an opened log (a crash before the engine first opened it,
    # or a data dir from before the record) goes on as before.
    assert _decide(tmp_path, A, A, False) is Verdict.PROCEED
