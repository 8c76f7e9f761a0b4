"""What a node refuses to start with: its credential files and its certificate's identity.

One place for every start-time credential check (issue 12, "Trust boundaries"), so the start path
calls one function and the rules are tested here on plain values:

- the TLS key and the cluster-secret file must be readable by their owner only: a key others can
  read is a key others may have copied, and a node that runs with it anyway hides the leak;
- the certificate must carry the node role and this node's id in its `spiffe://` URI SAN: the
  authorization table trusts that identity, so a node started with another node's (or a client's)
  certificate would speak for someone else;
- an expired certificate is refused (every peer would refuse it anyway, with a vaguer error), and
  one that expires within `EXPIRY_WARNING_SECS` is logged at WARN.
- a restarting node must present the key its cluster pinned when it joined (the topology's
  SPKI pin): every peer refuses any other (`unknown_sender`), so it would run cut off for good.

A certificate without the URI SAN is refused by `read_cert_identity`, which names the file and
`nodedb-cluster gen-certs`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from nodedb_cluster.addr import names_ip
from nodedb_cluster.config import ClusterConfig
from nodedb_cluster.errors import ClusterError, ConfigError, CredentialsError
from nodedb_cluster.transport import (
    CertIdentity,
    Transport,
    certificate_addresses,
    certificate_not_after,
    read_cert_identity,
)

log = logging.getLogger(__name__)

EXPIRY_WARNING_SECS: Final = 30 * 86_400
"""Warn this long before the node's certificate expires: a month leaves time to issue and roll
out a new one through the usual change process."""
EXPIRY_CHECK_INTERVAL_S: Final = 86_400.0
"""While a node runs, the expiry warning is repeated daily: a node runs for months, and the
warning logged at its start scrolled away long ago."""
PRIVATE_MODE_MASK: Final = 0o077
"""Any group or other permission bit on a key file refuses the start (owner-only: 0600 or 0400)."""


@dataclass(frozen=True, slots=True)
class CredentialFacts:
    """What the checks look at, gathered from the disk by `check_node_credentials`."""

    key_path: Path | None = None
    key_mode: int | None = None
    """Permission bits of the TLS key file; None when insecure or unreadable (the transport
    then reports the file itself)."""
    secret_path: Path | None = None
    secret_mode: int | None = None
    """Permission bits of the cluster-secret file; None when unset or missing (its reader
    reports a missing file)."""
    cert_path: Path | None = None
    identity: CertIdentity | None = None
    """The certificate's identity; None when insecure."""
    cert_not_after_s: int | None = None
    """When the certificate expires, seconds since the Unix epoch; None when insecure."""
    cert_addresses: tuple[str, ...] | None = None
    """The IPs and DNS names the certificate names; None when insecure."""


def check_credentials(config: ClusterConfig, facts: CredentialFacts, now_s: float) -> str | None:
    """Raise if the node must not start with these credentials; otherwise the expiry warning to
    log, if any. Pure: `facts` and `now_s` are all it reads."""
    for field, path, mode in (
        ("tls_key_path", facts.key_path, facts.key_mode),
        ("cluster_secret_path", facts.secret_path, facts.secret_mode),
    ):
        if path is not None and mode is not None and mode & PRIVATE_MODE_MASK:
            raise ConfigError(
                field,
                f"{path} is readable by users other than its owner (mode {mode:04o}); "
                f"run `chmod 600 {path}` and start again",
            )
    identity, cert = facts.identity, facts.cert_path
    if identity is not None:
        if identity.role != "node":
            raise CredentialsError(
                f"{cert} carries {identity.uri}, a {identity.role} certificate: a node needs a "
                f"node certificate (spiffe://<cluster>/node/{config.node_id}); make one with "
                f"`nodedb-cluster gen-certs --node n{config.node_id}=IP`"
            )
        if identity.node_id != config.node_id:
            raise CredentialsError(
                f"{cert} is node {identity.node_id}'s certificate ({identity.uri}) but this "
                f"node's node_id is {config.node_id}: give node {config.node_id} its own "
                f"certificate, or start node {identity.node_id}'s config"
            )
    named = facts.cert_addresses
    if named is not None and not names_ip(named, config.listen_addr.ip):
        ip = config.listen_addr.ip
        raise CredentialsError(
            f"{cert} names {', '.join(named) or 'no address'}, not {ip}, the listen address: "
            f"peers and clients check the address they dial against the certificate and would "
            f"refuse this node. Issue it again for {ip} over the key it has (`nodedb-cluster "
            f"gen-certs --out <its gen-certs folder> --renew n{config.node_id}={ip}`)"
        )
    return expiry_warning(cert, facts.cert_not_after_s, now_s)


RENEW_HINT: Final = (
    "renew it over the key it has (`nodedb-cluster gen-certs --out <its gen-certs folder> "
    "--renew <its name>`: peers pin a node's key, so a new key pair would be refused)"
)


def expiry_warning(cert: Path | None, not_after_s: int | None, now_s: float) -> str | None:
    """The warning for a certificate within `EXPIRY_WARNING_SECS` of expiry; raises when it has
    expired already."""
    if not_after_s is None:
        return None
    left_s = not_after_s - now_s
    expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(not_after_s))
    if left_s <= 0:
        raise CredentialsError(
            f"{cert} expired at {expires}: peers refuse it; {RENEW_HINT} and start again"
        )
    if left_s > EXPIRY_WARNING_SECS:
        return None
    return (
        f"TLS certificate {cert} expires at {expires} (in {left_s / 86_400:.1f} days), then "
        f"peers refuse this node: {RENEW_HINT} and restart it before then"
    )


def check_pinned_key(
    config: ClusterConfig, pinned: bytes | None, presented: bytes | None, catalog: Path
) -> None:
    """Refuse a restart whose key is not the one the cluster pinned for this node (None on
    either side: an insecure transport then or now, nothing to compare)."""
    if pinned is None or presented is None or pinned == presented:
        return
    node = config.node_id
    raise CredentialsError(
        f"{config.tls_key_path} is not the key node {node}'s cluster pinned when it joined "
        f"(catalog {catalog}): every peer would refuse this node. Renew the certificate of the "
        f"key it had (`nodedb-cluster gen-certs --out <its gen-certs folder> --renew n{node}`), "
        f"or, to change the key, decommission node {node} and add a new node in its place"
    )


def check_node_credentials(config: ClusterConfig, now_s: float) -> CredentialFacts:
    """Gather the facts from the disk, refuse a start `check_credentials` refuses, log the
    expiry warning; returns the facts (the certificate's expiry feeds the metrics)."""
    facts = CredentialFacts(
        secret_path=config.cluster_secret_path,
        secret_mode=_mode(config.cluster_secret_path),
    )
    cert, key = config.tls_cert_path, config.tls_key_path
    if not config.insecure_transport and cert is not None and key is not None:
        facts = CredentialFacts(
            key_path=key,
            key_mode=_mode(key),
            secret_path=facts.secret_path,
            secret_mode=facts.secret_mode,
            cert_path=cert,
            identity=read_cert_identity(cert),
            cert_not_after_s=certificate_not_after(cert),
            cert_addresses=certificate_addresses(cert),
        )
    warning = check_credentials(config, facts, now_s)
    if warning is not None:
        log.warning("node %d: %s", config.node_id, warning)
    return facts


def node_cert_not_after(config: ClusterConfig) -> int | None:
    """When the certificate in `tls_cert_path` expires (Unix seconds); None when insecure. Read
    once at start by its users: a file replaced on disk is not what the running node presents."""
    if config.insecure_transport or config.tls_cert_path is None:
        return None
    return certificate_not_after(config.tls_cert_path)


def _mode(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None


async def warn_before_expiry(
    config: ClusterConfig, not_after_s: int | None, interval_s: float = EXPIRY_CHECK_INTERVAL_S
) -> None:
    """Every `interval_s` while the node runs, log the expiry warning (ERROR once expired);
    the check at start logged the first. Runs until cancelled."""
    if not_after_s is None:
        return
    while True:
        await asyncio.sleep(interval_s)  # a timer, not a wait for something to happen
        try:
            warning = expiry_warning(config.tls_cert_path, not_after_s, time.time())
        except CredentialsError as e:
            log.error("node %d: %s", config.node_id, e)
        else:
            if warning is not None:
                log.warning("node %d: %s", config.node_id, warning)


def reload_crl(config: ClusterConfig, transport: Transport) -> int:
    """Read `tls_crl_path` again and put it in force (the `start` command does on SIGHUP):
    new handshakes are checked against it and live connections of peers it revokes are
    closed. Returns how many were closed. A file that cannot be read or parsed raises
    `CredentialsError` (logged here) and the CRL in force stays."""
    path = config.tls_crl_path
    if config.insecure_transport:
        return 0
    try:
        closed = transport.set_crls([] if path is None else [path])
    except ClusterError as e:
        log.error(
            "node %d: CRL %s not reloaded, the one in force stays: %s",
            config.node_id,
            path,
            e,
        )
        raise
    log.info(
        "node %d: CRL %s reloaded; %d connection(s) of revoked peers closed",
        config.node_id,
        path,
        closed,
    )
    return closed
