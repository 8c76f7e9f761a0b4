"""The `nodedb-cluster` command line without a cluster: help on every flag, required flags
marked, environment defaults for the client commands, JSON results and JSON errors.

Method: the parser is built with an explicit environment (`_parser(environ)`, `main(argv,
environ)`), so no test depends on the variables of the shell that runs it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from nodedb_cluster.cli import _parser, main
from nodedb_cluster.cli_support import EXIT_UNREACHABLE, print_error, print_json
from nodedb_cluster.errors import ConfigError, Unreachable

ENV = {
    "NODEDB_CLUSTER_ADDR": "127.0.0.9:9400",
    "NODEDB_CLUSTER_CA": "/certs/ca.pem",
    "NODEDB_CLUSTER_CERT": "/certs/client.pem",
    "NODEDB_CLUSTER_KEY": "/certs/client.key",
}


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


BENCH_OWNED = "bench"
"""`bench`'s flags are the bench tool's (bench.py, its own help); not covered here yet."""
FLAG_ACTIONS = (argparse._StoreTrueAction, argparse.BooleanOptionalAction, argparse._HelpAction)


def test_every_flag_of_every_command_has_help_and_a_readable_metavar() -> None:
    for name, command in commands(_parser({})).items():
        if name == BENCH_OWNED:
            continue
        for action in command._actions:
            if not action.option_strings:
                continue
            assert action.help, (name, action.option_strings)
            if isinstance(action, FLAG_ACTIONS):
                continue
            # A placeholder that says what to give (PATH, IP:PORT, MS), never CFG_* or DEST.
            assert isinstance(action.metavar, str), (name, action.option_strings)
            assert not action.metavar.startswith("CFG_"), (name, action.option_strings)


def test_start_help_describes_each_setting_from_its_docstring(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["start", "--help"], {})
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "CFG_" not in text
    # The field docstring's first sentence, the metavar and the default, for one of each kind.
    assert "--tls-ca-path PATH" in text
    assert "Cluster CA (PEM) (default: none)" in text
    assert "--rpc-timeout-ms MS" in text
    assert "(default: 5000)" in text
    assert "--swim-udp-addr IP:PORT|off" in text
    assert "listen port + 1" in text
    assert "--swim-probe-interval-ms MS" in text
    # Required settings are grouped and marked (here or in --config).
    required = text[text.index("required (as flags, or in the --config file)") :]
    for flag in ("--node-id ID", "--listen-addr IP:PORT", "--data-dir DIR"):
        assert flag in required.split("cluster configuration:")[0]


def test_client_flags_default_to_the_environment() -> None:
    parser = _parser(ENV)
    for argv in (["status"], ["get", "k"], ["put", "k", "v"], ["delete", "k"], ["audit"]):
        args = parser.parse_args(argv)
        assert args.addr == "127.0.0.9:9400", argv
        assert args.ca == Path("/certs/ca.pem")
        assert args.cert == Path("/certs/client.pem")
        assert args.key == Path("/certs/client.key")
    # A flag beats the environment.
    args = parser.parse_args(["status", "--addr", "127.0.0.1:1", "--ca", "/other.pem"])
    assert args.addr == "127.0.0.1:1"
    assert args.ca == Path("/other.pem")


def test_without_the_environment_addr_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["status"], {})
    assert done.value.code == 2
    assert "--addr" in capsys.readouterr().err


def test_a_usage_error_under_json_is_one_json_object_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["get", "--json"], {})
    assert done.value.code == 2
    out = capsys.readouterr()
    assert out.out == ""
    doc = json.loads(out.err)
    assert doc["type"] == "usage"
    assert doc["exit_code"] == 2
    assert "KEY" in doc["error"]


def test_missing_credentials_name_the_flag_and_the_variables(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["status", "--addr", "127.0.0.1:1", "--cert", "/c.pem"], {}) == 2
    err = capsys.readouterr().err
    assert err.startswith("nodedb-cluster: invalid --ca: give --ca, --cert and --key")
    assert "NODEDB_CLUSTER_CA" in err


def test_error_and_result_formats(capsys: pytest.CaptureFixture[str]) -> None:
    error = Unreachable("127.0.0.1:1", "no answer within 5 s")
    print_error(error, EXIT_UNREACHABLE, as_json=False)
    assert (
        capsys.readouterr().err
        == "nodedb-cluster: peer 127.0.0.1:1 unreachable: no answer within 5 s\n"
    )
    print_error(error, EXIT_UNREACHABLE, as_json=True)
    assert json.loads(capsys.readouterr().err) == {
        "error": "peer 127.0.0.1:1 unreachable: no answer within 5 s",
        "type": "Unreachable",
        "exit_code": 3,
        "addr": "127.0.0.1:1",
    }
    print_error(ConfigError("--ttl", "too long"), 2, as_json=True)
    assert json.loads(capsys.readouterr().err)["field"] == "--ttl"
    print_json({"key": "k", "value": b"\x01"})
    assert json.loads(capsys.readouterr().out) == {"key": "k", "value": "01"}


def test_gen_certs_and_revoke_print_one_json_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["gen-certs", "--out", str(tmp_path), "--node", "n1=127.0.0.1", "--json"]
    assert main([*argv, "--admin", "ops=127.0.0.1"], {}) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ca"] == str(tmp_path / "ca.pem")
    assert [(leaf["name"], leaf["identity"]) for leaf in doc["leaves"]] == [
        ("n1", "spiffe://nodedb-cluster/node/1"),
        ("ops", "spiffe://nodedb-cluster/admin/ops"),
    ]
    assert all(Path(leaf["cert"]).exists() and Path(leaf["key"]).exists() for leaf in doc["leaves"])
    crl = tmp_path / "crl.pem"
    revoke = ["revoke", "--ca-dir", str(tmp_path), "--cert", str(tmp_path / "ops.pem")]
    assert main([*revoke, "--crl", str(crl), "--json"], {}) == 0
    assert json.loads(capsys.readouterr().out) == {
        "crl": str(crl),
        "crl_number": 1,
        "newly_revoked": 1,
        "revoked_total": 1,
    }


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["move-vshard", "--vshard", "99999999999999999999999", "--to-group", "2"], "outside 0.."),
        (["move-vshard", "--vshard", "-1", "--to-group", "2"], "-1 is outside 0.."),
        (["add-groups", "--count", "1e3"], "expected a whole number, got '1e3'"),
        (["decommission", "--node-id", str(1 << 64)], "outside 0..18446744073709551615"),
        (["join-token", "--node-id", "four"], "expected a whole number"),
    ],
)
def test_an_id_or_count_the_wire_cannot_carry_is_a_usage_error(
    argv: list[str], why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: a msgpack OverflowError traceback, exit 1, after connecting."""
    with pytest.raises(SystemExit) as done:
        main([*argv, "--addr", "127.0.0.1:1", "--insecure"], {})
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert why in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf", "soon"])
def test_a_timeout_that_is_no_time_names_the_flag(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["status", "--addr", "127.0.0.1:1", "--insecure", "--timeout", bad], {})
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "argument --timeout" in err, err
    assert "rpc_timeout" not in err
