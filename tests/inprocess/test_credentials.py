"""Credentials with identities (issue 12, parts 1 and 4): what gen-certs writes, what revoke
keeps, and what a node refuses to start with (pure checks, then the real start path)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.config import ClusterConfig
from nodedb_cluster.errors import ConfigError, CredentialsError
from nodedb_cluster.formation.credentials import (
    EXPIRY_WARNING_SECS,
    CredentialFacts,
    check_credentials,
    check_pinned_key,
)
from nodedb_cluster.formation.start import start_cluster
from nodedb_cluster.localcluster import free_port
from nodedb_cluster.metrics import serve_metrics
from nodedb_cluster.transport import (
    CertIdentity,
    Mtls,
    ca_key_path,
    certificate_addresses,
    generate_cluster_credentials,
    revoke_node_credentials,
)

CLI = [sys.executable, "-m", "nodedb_cluster.cli"]
DAY_S = 86_400


def run(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- gen-certs and revoke -------------------------------------------------------------------------


def test_gen_certs_issues_identities_with_bounded_validity_and_private_files(
    tmp_path: Path,
) -> None:
    out = tmp_path / "certs"
    result = run(
        "gen-certs", "--out", str(out), "--cluster-name", "prod.eu-1", "--days", "10",
        "--node", "n1=127.0.0.1", "--node", "client=127.0.0.1",
        "--admin", "ops=127.0.0.2", "--client", "app=127.0.0.3,127.0.0.4",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    now = datetime.datetime.now(datetime.UTC)
    expected = {
        "n1": ("spiffe://prod.eu-1/node/1", ["127.0.0.1"]),
        "client": ("spiffe://prod.eu-1/client/client", ["127.0.0.1"]),
        "ops": ("spiffe://prod.eu-1/admin/ops", ["127.0.0.2"]),
        "app": ("spiffe://prod.eu-1/client/app", ["127.0.0.3", "127.0.0.4"]),
    }
    for name, (uri, ips) in expected.items():
        cert = load(out / f"{name}.pem")
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [uri]
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ips
        lifetime = cert.not_valid_after_utc - now
        assert abs(lifetime.total_seconds() - 10 * DAY_S) < 60, name
        head_start = now - cert.not_valid_before_utc
        assert abs(head_start.total_seconds() - 3600) < 60, "valid from an hour ago (skew)"
        assert f"{name}: {uri}" in result.stdout
        for suffix in ("pem", "key"):
            assert mode(out / f"{name}.{suffix}") == 0o600
            assert str(out / f"{name}.{suffix}") in result.stdout
    ca = load(out / "ca.pem")
    assert abs((ca.not_valid_after_utc - now).total_seconds() - 3650 * DAY_S) < 60
    assert not (out / "ca.key").exists(), "the CA key is not beside the node files"
    assert mode(out / "ca-key") == 0o700
    assert mode(out) == 0o700
    assert mode(out / "ca-key" / "ca.key") == 0o600
    assert f"CA key: {out / 'ca-key' / 'ca.key'}" in result.stdout


def test_gen_certs_refuses_bad_names_and_an_existing_leaf(tmp_path: Path) -> None:
    for args, words in [
        (["--cluster-name", "Prod", "--node", "n1=127.0.0.1"], "cluster name"),
        (["--node", "n0=127.0.0.1"], "not a node id"),
        (["--node", "ca=127.0.0.1"], "reserved"),
        (["--node", "n1=127.0.0.1", "--admin", "n1=127.0.0.1"], "twice"),
        (["--node", "n1"], "NAME=IP"),
    ]:
        result = run("gen-certs", "--out", str(tmp_path / "x"), *args)
        assert result.returncode != 0, args
        assert words in result.stderr, (args, result.stderr)
    assert run("gen-certs", "--out", str(tmp_path / "c"), "--node", "n1=127.0.0.1").returncode == 0
    # Into a folder with the CA: new leaves come from it; an existing leaf is never replaced.
    again = run("gen-certs", "--out", str(tmp_path / "c"), "--node", "n1=127.0.0.1")
    assert again.returncode != 0
    assert "n1.pem exists" in again.stderr


def test_a_restart_with_another_key_than_the_pinned_one_is_refused(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog"
    pin, other = bytes(32), b"\x01" * 32
    for pinned, presented in [(pin, pin), (None, pin), (pin, None), (None, None)]:
        check_pinned_key(config(tmp_path), pinned, presented, catalog)  # nothing to refuse
    with pytest.raises(CredentialsError, match=r"not the key node 1's cluster pinned.*--renew n1"):
        check_pinned_key(config(tmp_path), pin, other, catalog)


def test_gen_certs_renew_refuses_without_the_ca_a_missing_leaf_and_another_key(
    tmp_path: Path,
) -> None:
    out = tmp_path / "c"
    assert run("gen-certs", "--out", str(out), "--node", "n1=127.0.0.1").returncode == 0
    assert run("gen-certs", "--out", str(out), "--node", "n2=127.0.0.2").returncode == 0
    cases = [
        (tmp_path / "elsewhere", "n1", "no CA in"),
        (out, "n9", "n9.pem"),
    ]
    for folder, name, words in cases:
        result = run("gen-certs", "--out", str(folder), "--renew", name)
        assert result.returncode != 0, name
        assert words in result.stderr, (name, result.stderr)
    n1 = (out / "n1.pem").read_bytes()
    (out / "n1.key").write_bytes((out / "n2.key").read_bytes())
    result = run("gen-certs", "--out", str(out), "--renew", "n1")
    assert result.returncode != 0
    assert "is not the key of" in result.stderr, result.stderr
    assert (out / "n1.pem").read_bytes() == n1, "nothing written"


def test_gen_certs_renew_with_addresses_names_them_over_the_same_key(tmp_path: Path) -> None:
    """A node moved to another address: the renewed certificate names the new one, the pin its
    peers hold still matches, and `--renew NAME` alone keeps what it names."""
    out = tmp_path / "c"
    assert run("gen-certs", "--out", str(out), "--node", "n1=127.0.0.1").returncode == 0
    creds = Mtls(out / "ca.pem", out / "n1.pem", out / "n1.key")
    pin = creds.spki_pin()
    result = run("gen-certs", "--out", str(out), "--renew", "n1=10.0.0.7,db1.example")
    assert result.returncode == 0, result.stderr
    assert certificate_addresses(out / "n1.pem") == ("10.0.0.7", "db1.example")
    assert creds.spki_pin() == pin
    assert run("gen-certs", "--out", str(out), "--renew", "n1").returncode == 0
    assert certificate_addresses(out / "n1.pem") == ("10.0.0.7", "db1.example")
    refused = run("gen-certs", "--out", str(out), "--renew", "n1=")
    assert refused.returncode != 0
    assert "NAME=IP" in refused.stderr, refused.stderr


def test_revoke_keeps_earlier_entries(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    nodes = [(f"n{i}", ["127.0.0.1"]) for i in (1, 2, 3)]
    creds = generate_cluster_credentials(out, "c", nodes)
    crl_path = tmp_path / "crl.pem"
    empty = run("revoke", "--ca-dir", str(out), "--crl", str(crl_path))  # to start nodes with
    assert empty.returncode == 0, empty.stderr
    assert list(x509.load_pem_x509_crl(crl_path.read_bytes())) == []
    for cert in (creds[0].cert, creds[1].cert, creds[0].cert):
        result = run("revoke", "--ca-dir", str(out), "--cert", str(cert), "--crl", str(crl_path))
        assert result.returncode == 0, result.stderr
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    serials = {entry.serial_number for entry in crl}
    assert serials == {load(creds[0].cert).serial_number, load(creds[1].cert).serial_number}
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 4
    assert crl.is_signature_valid(load(creds[0].ca).public_key())  # type: ignore[arg-type]
    summary = revoke_node_credentials(creds[0].ca, ca_key_path(out), [creds[2].cert], crl_path)
    assert (summary.crl_number, summary.revoked_total, summary.newly_revoked) == (5, 3, 1)


# --- the pure start checks ------------------------------------------------------------------------


def config(tmp_path: Path, node_id: int = 1, **kw: object) -> ClusterConfig:
    fields: dict[str, object] = {
        "node_id": node_id,
        "listen_addr": parse_socket_addr("127.0.0.1:9400"),
        "data_dir": tmp_path / "data",
        "tls_ca_path": tmp_path / "ca.pem",
        "tls_cert_path": tmp_path / "n1.pem",
        "tls_key_path": tmp_path / "n1.key",
        **kw,
    }
    return ClusterConfig(**fields)  # type: ignore[arg-type]


NOW_S = 1_800_000_000
NODE_1 = CertIdentity("spiffe://c/node/1", "node", "1", 1)


def facts(**kw: object) -> CredentialFacts:
    base: dict[str, object] = {
        "key_path": Path("/k/n1.key"),
        "key_mode": 0o600,
        "cert_path": Path("/k/n1.pem"),
        "identity": NODE_1,
        "cert_not_after_s": NOW_S + 365 * DAY_S,
    }
    return CredentialFacts(**{**base, **kw})  # type: ignore[arg-type]


def test_check_accepts_private_files_and_the_right_identity(tmp_path: Path) -> None:
    assert check_credentials(config(tmp_path), facts(key_mode=0o400), NOW_S) is None


@pytest.mark.parametrize(
    ("field", "kw"),
    [
        ("tls_key_path", {"key_mode": 0o644}),
        ("tls_key_path", {"key_mode": 0o640}),
        ("cluster_secret_path", {"secret_path": Path("/k/secret"), "secret_mode": 0o604}),
    ],
)
def test_check_refuses_files_others_can_read(
    tmp_path: Path, field: str, kw: dict[str, object]
) -> None:
    with pytest.raises(ConfigError) as info:
        check_credentials(config(tmp_path), facts(**kw), NOW_S)
    assert info.value.field == field
    path = kw.get("secret_path", Path("/k/n1.key"))
    assert f"chmod 600 {path}" in str(info.value)


def test_check_refuses_another_identity(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError) as info:
        check_credentials(config(tmp_path, node_id=2), facts(), NOW_S)
    assert "node 1's certificate" in str(info.value)
    assert "node_id is 2" in str(info.value)
    client = CertIdentity("spiffe://c/client/app", "client", "app", None)
    with pytest.raises(CredentialsError, match="a client certificate"):
        check_credentials(config(tmp_path), facts(identity=client), NOW_S)


def test_check_refuses_a_certificate_that_does_not_name_the_listen_address(
    tmp_path: Path,
) -> None:
    """Peers and clients check the address they dial against the certificate (its DNS names
    never match: peers dial IPs), so a node it does not name would be refused by all."""
    for named in ((), ("127.0.0.9", "db1.example"), ("::1",)):
        with pytest.raises(CredentialsError) as info:
            check_credentials(config(tmp_path), facts(cert_addresses=named), NOW_S)
        assert "not 127.0.0.1, the listen address" in str(info.value)
        assert "--renew n1=127.0.0.1" in str(info.value)
    named = ("db1.example", "127.0.0.1")
    assert check_credentials(config(tmp_path), facts(cert_addresses=named), NOW_S) is None


def test_check_warns_a_month_ahead_and_refuses_an_expired_certificate(tmp_path: Path) -> None:
    soon = facts(cert_not_after_s=NOW_S + EXPIRY_WARNING_SECS - DAY_S)
    warning = check_credentials(config(tmp_path), soon, NOW_S)
    assert warning is not None
    assert "expires" in warning
    assert "29.0 days" in warning
    assert "--renew" in warning, "the way that keeps the key its peers pin"
    with pytest.raises(CredentialsError, match=r"expired.*--renew"):
        check_credentials(config(tmp_path), facts(cert_not_after_s=NOW_S - 1), NOW_S)


# --- through the real start path ------------------------------------------------------------------


def node_files(tmp_path: Path, days: int = 365) -> list[Mtls]:
    return generate_cluster_credentials(
        tmp_path / "certs", "c", [("n1", ["127.0.0.1"]), ("n2", ["127.0.0.1"])], days=days
    )


def test_start_refuses_a_world_readable_key(tmp_path: Path) -> None:
    """The `start` command, as an operator runs it: exit 1, the file and the chmod to run."""
    creds = node_files(tmp_path)[0]
    creds.key.chmod(0o644)
    port = free_port(["127.0.0.1"])
    result = run(
        "start", "--node-id", "1", "--listen-addr", f"127.0.0.1:{port}",
        "--seed-nodes", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data"),
        "--tls-ca-path", str(creds.ca), "--tls-cert-path", str(creds.cert),
        "--tls-key-path", str(creds.key),
    )  # fmt: skip
    assert result.returncode == 1
    assert f"chmod 600 {creds.key}" in result.stderr, result.stderr
    assert "node 1 failed: invalid --tls-key-path: " in result.stderr  # the flag, as typed
    assert result.stderr.count("chmod 600") == 1  # the reason, once


def mtls_config(tmp_path: Path, creds: Mtls, node_id: int = 1, **kw: object) -> ClusterConfig:
    addr = parse_socket_addr(f"127.0.0.1:{free_port(['127.0.0.1'])}")
    return config(
        tmp_path,
        node_id,
        listen_addr=addr,
        seed_nodes=(addr,),
        tls_ca_path=creds.ca,
        tls_cert_path=creds.cert,
        tls_key_path=creds.key,
        num_groups=1,
        replication_factor=1,
        **kw,
    )


async def test_start_refuses_another_nodes_certificate(tmp_path: Path) -> None:
    creds = node_files(tmp_path)[1]  # node 2's
    with pytest.raises(CredentialsError) as info:
        await start_cluster(mtls_config(tmp_path, creds, node_id=1))
    assert str(creds.cert) in str(info.value)
    assert "node 2's certificate" in str(info.value)


async def test_start_refuses_a_certificate_without_the_uri_san(tmp_path: Path) -> None:
    """A leaf from the cluster CA with only an IP SAN (as before identities, or from another
    tool) is refused with a pointer at gen-certs."""
    ca = node_files(tmp_path)[0]
    ca_key = serialization.load_pem_private_key(ca_key_path(tmp_path / "certs").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")]))
        .issuer_name(load(ca.ca).subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    old = Mtls(ca.ca, tmp_path / "old.pem", tmp_path / "old.key")
    old.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    old.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    old.key.chmod(0o600)
    with pytest.raises(CredentialsError) as info:
        await start_cluster(mtls_config(tmp_path, old))
    assert str(old.cert) in str(info.value)
    assert "gen-certs" in str(info.value)


async def test_expiry_metric_warning_and_a_broken_crl_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node whose certificate expires in 10 days warns at start and exports the seconds left;
    a CRL reload with a broken file raises, is logged, and keeps the CRL in force."""
    creds = node_files(tmp_path, days=10)[0]
    crl = revoke_node_credentials(creds.ca, ca_key_path(tmp_path / "certs"), [], tmp_path / "c.pem")
    metrics_addr = parse_socket_addr(f"127.0.0.1:{free_port(['127.0.0.1'])}")
    cfg = mtls_config(tmp_path, creds, tls_crl_path=crl.path, metrics_addr=metrics_addr)
    with caplog.at_level(logging.WARNING):
        node = await start_cluster(cfg)
    try:
        assert any("expires" in r.getMessage() for r in caplog.records)
        server = await serve_metrics(node, metrics_addr)
        try:
            text = await asyncio.to_thread(_scrape, server.port)
        finally:
            server.close()
        line = next(x for x in text.splitlines() if x.startswith("nodedb_tls_cert_expiry_seconds"))
        left_s = float(line.split()[-1])
        assert abs(left_s - 10 * DAY_S) < 120, line
        assert node.reload_crl() == 0
        crl.path.write_text("not a CRL")
        with pytest.raises(CredentialsError):
            node.reload_crl()
        assert any("not reloaded" in r.getMessage() for r in caplog.records)
    finally:
        await node.shutdown()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        body: bytes = reply.read()
    return body.decode()
