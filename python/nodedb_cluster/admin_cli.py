"""The operator commands of `nodedb-cluster` that need admin credentials: `join-token`, `audit`.

Both talk to one node over the cluster transport with the caller's certificate; the node's kind
table admits only admin certificates (anything else gets `PermissionDenied`, exit 1).

    nodedb-cluster join-token --node-id 4 [--ttl 3600] --addr HOST:PORT --ca … --cert … --key …
        prints the token (only the token on stdout, so `TOKEN=$(…)` works); its expiry on stderr.
    nodedb-cluster audit --addr HOST:PORT [--limit 100] [--json] --ca … --cert … --key …
        the node's audit log, newest last: a table, or {"records": [...], "truncated": bool}.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from collections.abc import Mapping
from typing import Any

from nodedb_cluster import wire
from nodedb_cluster.cli_support import (
    EXIT_OK,
    add_client_arguments,
    client_credentials,
    control_rpc,
    print_json,
    u64_arg,
)
from nodedb_cluster.errors import ConfigError
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


def add_admin_commands(sub: Any, environ: Mapping[str, str]) -> None:
    """Register `join-token` and `audit` on the CLI's subparsers (`sub`)."""
    token = sub.add_parser(
        "join-token", help="issue a token that lets one new node id join (admin credentials)"
    )
    token.add_argument(
        "--node-id", required=True, type=u64_arg, metavar="ID", help="the node id it admits"
    )
    token.add_argument(
        "--ttl",
        type=u64_arg,
        default=TTL_SECS_DEFAULT,
        metavar="SECS",
        help=f"seconds it stays valid (60..2592000, default {TTL_SECS_DEFAULT})",
    )
    add_client_arguments(token, environ, "any node's listen address")
    token.set_defaults(run=_cmd_join_token)

    audit = sub.add_parser(
        "audit", help="the membership and settings changes a node applied (admin credentials)"
    )
    audit.add_argument(
        "--limit",
        type=u64_arg,
        default=AUDIT_LIMIT_DEFAULT,
        metavar="N",
        help=f"the last N records (1..{AUDIT_LIMIT_MAX}, default {AUDIT_LIMIT_DEFAULT})",
    )
    add_client_arguments(audit, environ, "the node's listen address")
    audit.set_defaults(run=_cmd_audit)


def _cmd_join_token(args: argparse.Namespace) -> int:
    try:
        check_ttl(args.ttl)
    except ValueError as e:
        raise ConfigError("--ttl", str(e)) from e
    if not 1 <= args.node_id < 2**64:
        raise ConfigError("--node-id", f"{args.node_id} is not a non-zero u64")
    reply = asyncio.run(
        control_rpc(
            args.addr,
            client_credentials(args),
            args.timeout,
            wire.MessageKind.JOIN_TOKEN_REQUEST,
            encode_join_token_request(args.node_id, args.ttl),
            wire.MessageKind.JOIN_TOKEN_RESPONSE,
        )
    )
    token, node_id, expires_at_s = decode_join_token_response(reply)
    if args.json:
        print_json({"token": token, "node_id": node_id, "expires_at": expires_at_s})
        return EXIT_OK
    print(token)
    print(
        f"join token for node {node_id}, valid until {_utc(expires_at_s * 1000)}; start the node "
        "with --join-token <token>",
        file=sys.stderr,
    )
    return EXIT_OK


def _cmd_audit(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= AUDIT_LIMIT_MAX:
        raise ConfigError("--limit", f"{args.limit} is outside 1..{AUDIT_LIMIT_MAX}")
    reply = asyncio.run(
        control_rpc(
            args.addr,
            client_credentials(args),
            args.timeout,
            wire.MessageKind.AUDIT_REQUEST,
            encode_audit_request(args.limit),
            wire.MessageKind.AUDIT_RESPONSE,
        )
    )
    records, truncated = decode_audit_response(reply)
    if args.json:
        print_json({"records": records, "truncated": truncated})
        return EXIT_OK
    print(format_audit(records))
    if truncated:
        print("(older records left out to bound the reply; lower --limit)", file=sys.stderr)
    return EXIT_OK


def format_audit(records: list[dict[str, Any]]) -> str:
    """A readable table, oldest first: time, index, command, proposer, arguments."""
    lines = [f"{'TIME':<24} {'INDEX':>6}  {'COMMAND':<22} {'PROPOSER':<36} ARGS"]
    for r in records:
        if "damaged" in r:
            lines.append(f"{'DAMAGED LINE':<24} {'?':>6}  (not a record) {r['damaged']!r}")
            continue
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
