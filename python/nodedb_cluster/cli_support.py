"""What the `nodedb-cluster` command shares with the tools built on it (bench, demo, the local
cluster harness): client credentials from flags, the `start` command's READY line, and a node's
status fetched and printed. Kept apart from `cli` so a tool never imports the command itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Final

import msgpack

from nodedb_cluster import wire
from nodedb_cluster.admin_cli import control_rpc
from nodedb_cluster.errors import ClusterError, ConfigError
from nodedb_cluster.transport import Credentials, Insecure, Mtls

READY_PREFIX: Final = "READY "
"""`start` prints this plus a JSON object on stdout once the node is Ready: a parent process
awaits that line instead of guessing with sleeps."""


def add_client_credentials(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("client credentials (mTLS unless --insecure)")
    group.add_argument("--insecure", action="store_true", help="the node runs without TLS")
    group.add_argument("--ca", type=Path, help="cluster CA certificate (PEM)")
    group.add_argument("--cert", type=Path, help="client certificate issued by the cluster CA")
    group.add_argument("--key", type=Path, help="client private key")
    group.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")


def client_credentials(args: argparse.Namespace) -> Credentials:
    if args.insecure:
        return Insecure()
    if not (args.ca and args.cert and args.key):
        raise ConfigError("credentials", "give --ca, --cert and --key, or --insecure")
    return Mtls(args.ca, args.cert, args.key)


async def fetch_status(addr: str, credentials: Credentials, timeout_s: float) -> dict[str, object]:
    """Ask the node at `addr` for its status over the cluster transport."""
    payload = await control_rpc(
        addr,
        credentials,
        timeout_s,
        wire.MessageKind.STATUS_REQUEST,
        b"",
        wire.MessageKind.STATUS_RESPONSE,
    )
    doc = msgpack.unpackb(payload, raw=False)
    if not isinstance(doc, dict):
        raise ClusterError(f"node {addr} sent a malformed status")
    return doc


def format_status(doc: dict[str, object]) -> str:
    """A human-readable status: the node, the members (with SWIM's verdict), the groups (a group
    with a member SWIM declares DEAD is flagged: it runs on fewer replicas than it lists)."""
    lines = [
        f"node {doc['node_id']}  lifecycle {doc['lifecycle']}  cluster {doc['cluster_id']}",
        f"topology v{doc['topology_version']}  routing epoch {doc['routing_epoch']}  "
        f"metadata applied {doc['metadata_applied_index']}",
    ]
    if doc.get("no_space"):
        lines.append(f"NO_SPACE: {doc['no_space']}")
    swim = {int(m[0]): m for m in doc.get("members") or ()}  # type: ignore[attr-defined]
    lines += ["", f"{'NODE':>6}  {'ADDRESS':<22} {'MEMBER':<9} {'SWIM':<8} LAST CONTACT"]
    for node_id, addr, state in doc["nodes"]:  # type: ignore[attr-defined]
        if node_id == doc["node_id"]:
            health, contact = "self", "-"
        elif node_id in swim:
            health, contact = str(swim[node_id][1]), _ago(swim[node_id][3])
        else:
            health, contact = "-", "-"  # SWIM off here, or the node has no SWIM address
        lines.append(f"{node_id:>6}  {addr:<22} {state:<9} {health:<8} {contact}")
    lines += [
        "",
        f"{'GROUP':>5}  {'ROLE':<13} {'LEADER':>6} {'TERM':>5} {'COMMIT':>7} "
        f"{'APPLIED':>7} {'VSHARDS':>7}  VOTERS / LEARNERS",
    ]
    for g in doc["groups"]:  # type: ignore[attr-defined]
        members = (
            ",".join(map(str, g["voters"])) + " / " + (",".join(map(str, g["learners"])) or "-")
        )
        dead = g.get("dead") or []
        flag = f"  DEAD: {','.join(map(str, dead))}" if dead else ""
        lines.append(
            f"{g['group_id']:>5}  {g['role']:<13} {g['leader']:>6} {g['term']:>5} "
            f"{g['commit']:>7} {g['applied']:>7} {g['vshards']:>7}  {members}{flag}"
        )
    return "\n".join(lines)


def _ago(ms: object) -> str:
    if not isinstance(ms, int):
        return "never"
    return f"{ms / 1000:.1f} s ago"
