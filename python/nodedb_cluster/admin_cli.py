"""The operator commands of `nodedb-cluster` that need admin credentials: `join-token`, `audit`.

Both talk to one node over the cluster transport with the caller's certificate; the node's kind
table admits only admin certificates (anything else gets `PermissionDenied`, exit 1).

    nodedb-cluster join-token --node-id 4 [--ttl 3600] --addr HOST:PORT --ca … --cert … --key …
        prints the token (only the token on stdout, so `TOKEN=$(…)` works); its expiry on stderr.
    nodedb-cluster audit --addr HOST:PORT [--limit 100] [--json] --ca … --cert … --key …
        the node's audit log, newest last: a table, or the JSON lines as written.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
from collections.abc import Callable
from typing import Any

from nodedb_cluster import wire
from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.client import CLIENT_NODE_ID
from nodedb_cluster.errors import ClusterError, ConfigError, InvalidAddress
from nodedb_cluster.formation.admission import (
    decode_join_token_response,
    encode_join_token_request,
)
from nodedb_cluster.formation.join_token import TTL_SECS_DEFAULT, check_ttl
from nodedb_cluster.metadata.audit import (
    AUDIT_LIMIT_DEFAULT,
    AUDIT_LIMIT_MAX,
    decode_audit_response,
    encode_audit_request,
)
from nodedb_cluster.transport import Credentials, Transport

AddCredentials = Callable[[argparse.ArgumentParser], None]
CredentialsOf = Callable[[argparse.Namespace], Credentials]


def add_admin_commands(
    sub: Any, add_credentials: AddCredentials, credentials_of: CredentialsOf
) -> None:
    """Register `join-token` and `audit` on the CLI's subparsers (`sub`)."""
    token = sub.add_parser(
        "join-token", help="issue a token that lets one new node id join (admin credentials)"
    )
    token.add_argument("--addr", required=True, help="any node's listen address HOST:PORT")
    token.add_argument("--node-id", required=True, type=int, help="the node id it admits")
    token.add_argument(
        "--ttl",
        type=int,
        default=TTL_SECS_DEFAULT,
        help=f"seconds it stays valid (60..2592000, default {TTL_SECS_DEFAULT})",
    )
    add_credentials(token)
    token.set_defaults(run=lambda args: _cmd_join_token(args, credentials_of(args)))

    audit = sub.add_parser(
        "audit", help="the membership and settings changes a node applied (admin credentials)"
    )
    audit.add_argument("--addr", required=True, help="the node's listen address HOST:PORT")
    audit.add_argument("--json", action="store_true", help="print the JSON lines as written")
    audit.add_argument(
        "--limit",
        type=int,
        default=AUDIT_LIMIT_DEFAULT,
        help=f"the last N records (1..{AUDIT_LIMIT_MAX}, default {AUDIT_LIMIT_DEFAULT})",
    )
    add_credentials(audit)
    audit.set_defaults(run=lambda args: _cmd_audit(args, credentials_of(args)))


async def control_rpc(
    addr: str,
    credentials: Credentials,
    timeout_s: float,
    kind: wire.MessageKind,
    payload: bytes,
    expected: wire.MessageKind,
) -> bytes:
    """One request to the node at `addr` on a throwaway endpoint; the reply's payload."""
    try:
        target = parse_socket_addr(addr)
    except InvalidAddress as e:
        raise ConfigError("--addr", str(e)) from e
    client = Transport(CLIENT_NODE_ID, "127.0.0.1:0", credentials, rpc_timeout=timeout_s)
    try:
        kind_in, reply = await client.send_rpc_to_addr(target, kind, payload)
    finally:
        await client.close()
    if kind_in != expected:
        raise ClusterError(f"node {addr} answered {kind.name} with message kind {kind_in}")
    return reply


def _cmd_join_token(args: argparse.Namespace, credentials: Credentials) -> int:
    try:
        check_ttl(args.ttl)
    except ValueError as e:
        raise ConfigError("--ttl", str(e)) from e
    if not 1 <= args.node_id < 2**64:
        raise ConfigError("--node-id", f"{args.node_id} is not a non-zero u64")
    reply = asyncio.run(
        control_rpc(
            args.addr,
            credentials,
            args.timeout,
            wire.MessageKind.JOIN_TOKEN_REQUEST,
            encode_join_token_request(args.node_id, args.ttl),
            wire.MessageKind.JOIN_TOKEN_RESPONSE,
        )
    )
    token, node_id, expires_at_s = decode_join_token_response(reply)
    print(token)
    print(
        f"join token for node {node_id}, valid until {_utc(expires_at_s * 1000)}; start the node "
        "with --join-token <token>",
        file=sys.stderr,
    )
    return 0


def _cmd_audit(args: argparse.Namespace, credentials: Credentials) -> int:
    if not 1 <= args.limit <= AUDIT_LIMIT_MAX:
        raise ConfigError("--limit", f"{args.limit} is outside 1..{AUDIT_LIMIT_MAX}")
    reply = asyncio.run(
        control_rpc(
            args.addr,
            credentials,
            args.timeout,
            wire.MessageKind.AUDIT_REQUEST,
            encode_audit_request(args.limit),
            wire.MessageKind.AUDIT_RESPONSE,
        )
    )
    records, truncated = decode_audit_response(reply)
    if args.json:
        for record in records:
            print(json.dumps(record, separators=(",", ":")))
    else:
        print(format_audit(records))
    if truncated:
        print("(older records left out to bound the reply; lower --limit)", file=sys.stderr)
    return 0


def format_audit(records: list[dict[str, Any]]) -> str:
    """A readable table, oldest first: time, index, command, proposer, arguments."""
    lines = [f"{'TIME':<24} {'INDEX':>6}  {'COMMAND':<22} {'PROPOSER':<36} ARGS"]
    for r in records:
        args = r.get("args")
        args_text = (
            " ".join(f"{k}={_short(v)}" for k, v in args.items()) if isinstance(args, dict) else ""
        )
        lines.append(
            f"{r.get('time', '?'):<24} {r.get('index', '?'):>6}  {r.get('command', '?'):<22} "
            f"{r.get('proposer', '?'):<36} {args_text}"
        )
    return "\n".join(lines)


def _short(value: object) -> str:
    if isinstance(value, dict):
        keep = ("node_id", "addr")
        return "{" + ",".join(f"{k}={value[k]}" for k in keep if k in value) + "}"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return str(value)


def _utc(ms: int) -> str:
    when = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")
