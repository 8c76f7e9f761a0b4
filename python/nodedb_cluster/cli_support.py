"""What the `nodedb-cluster` command shares with the tools built on it (bench, demo, the local
cluster harness): exit codes, client flags (with their environment defaults), one control RPC to
a node, the `start` command's READY line, and a node's status fetched and printed. Kept apart
from `cli` so a tool never imports the command itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import msgpack

from nodedb_cluster import wire
from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.client import CLIENT_NODE_ID
from nodedb_cluster.errors import (
    ClusterError,
    ConfigError,
    InvalidAddress,
    NotServing,
    RemoteError,
    Timeout,
    Unreachable,
)
from nodedb_cluster.transport import Credentials, Insecure, Mtls, Transport

READY_PREFIX: Final = "READY "
"""`start` prints this plus a JSON object on stdout once the node is Ready: a parent process
awaits that line instead of guessing with sleeps."""

# --- exit codes (README "Exit codes"): the same meaning for every command -------------------------

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
"""The operation failed and the message says why: refused (permission, token), a key not found,
a node that answered with an error, a start that failed."""
EXIT_USAGE: Final = 2
"""Bad flags or config: nothing was attempted."""
EXIT_UNREACHABLE: Final = 3
"""No answer from the node at --addr within --timeout."""

# --- flag types -----------------------------------------------------------------------------------

U64_MAX: Final = (1 << 64) - 1


def u64_arg(text: str) -> int:
    """argparse `type=` for an id or count sent to a node: an integer that fits the wire's u64
    (which node ids, groups and vShards exist is the node's to say). Anything else is a usage
    error naming the value, not a traceback from the encoder."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= U64_MAX:
        raise argparse.ArgumentTypeError(f"{text} is outside 0..{U64_MAX}")
    return value


def seconds_arg(text: str) -> float:
    """argparse `type=` for a bound in seconds: a finite number above 0 (a usage error naming
    the flag, not the transport's own field)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds above 0")
    return value


# --- client flags ---------------------------------------------------------------------------------

ENV_ADDR: Final = "NODEDB_CLUSTER_ADDR"
ENV_CA: Final = "NODEDB_CLUSTER_CA"
ENV_CERT: Final = "NODEDB_CLUSTER_CERT"
ENV_KEY: Final = "NODEDB_CLUSTER_KEY"
TIMEOUT_S_DEFAULT: Final = 5.0


def add_client_arguments(
    parser: argparse.ArgumentParser, environ: Mapping[str, str], addr_help: str
) -> None:
    """`--addr` (default $NODEDB_CLUSTER_ADDR; required without it), the credentials, `--json`."""
    addr = environ.get(ENV_ADDR) or None
    parser.add_argument(
        "--addr",
        default=addr,
        required=addr is None,
        metavar="IP:PORT",
        help=f"{addr_help} (default: ${ENV_ADDR}{', required when unset' if addr is None else ''})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the result as one JSON object; errors as one JSON object on stderr",
    )
    add_client_credentials(parser, environ)


def add_client_credentials(
    parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None
) -> None:
    """--insecure, --ca/--cert/--key (defaults from $NODEDB_CLUSTER_CA/_CERT/_KEY), --timeout."""
    env = environ or {}
    group = parser.add_argument_group("client credentials (mTLS unless --insecure)")
    group.add_argument("--insecure", action="store_true", help="the node runs without TLS")
    for flag, var, what in (
        ("--ca", ENV_CA, "cluster CA certificate (PEM)"),
        ("--cert", ENV_CERT, "client certificate issued by the cluster CA (PEM)"),
        ("--key", ENV_KEY, "its private key (PEM)"),
    ):
        value = env.get(var) or None
        group.add_argument(
            flag,
            type=Path,
            metavar="PATH",
            default=None if value is None else Path(value),
            help=f"{what} (default: ${var})",
        )
    group.add_argument(
        "--timeout",
        type=seconds_arg,
        default=TIMEOUT_S_DEFAULT,
        metavar="SECS",
        help=f"give up on the node after this long (default: {TIMEOUT_S_DEFAULT:g})",
    )


def client_credentials(args: argparse.Namespace) -> Credentials:
    if args.insecure:
        return Insecure()
    if not (args.ca and args.cert and args.key):
        missing = [f for f in ("ca", "cert", "key") if not getattr(args, f)]
        raise ConfigError(
            f"--{missing[0]}",
            f"give --ca, --cert and --key (or ${ENV_CA}, ${ENV_CERT}, ${ENV_KEY}), or --insecure",
        )
    return Mtls(args.ca, args.cert, args.key)


# --- talking to one node --------------------------------------------------------------------------


NO_HANDLER_CODE: Final = "no_handler"
"""What a transport that serves nothing answers (a node shutting down, or one from before
`NotServing`)."""
NOT_SERVING_YET: Final = (
    "it serves no requests: it is still starting, restarting or joining its cluster, or "
    "shutting down (its log says which, and so does nodedb_lifecycle_state on its --metrics-addr)"
)


def no_answer(addr: str, timeout_s: float) -> Unreachable:
    """The one wording every command uses for a node that did not answer."""
    return Unreachable(addr, f"no answer within {timeout_s:g} s")


async def control_rpc(
    addr: str,
    credentials: Credentials,
    timeout_s: float,
    kind: wire.MessageKind,
    payload: bytes,
    expected: wire.MessageKind,
) -> bytes:
    """One request to the node at `addr` on a throwaway endpoint; the reply's payload. A node
    that does not answer in time is `Unreachable(addr)` (`no_answer`), and so is one that does
    not serve requests (still restarting or joining: it answers only once Ready)."""
    try:
        target = parse_socket_addr(addr)
    except InvalidAddress as e:
        raise ConfigError("--addr", str(e)) from e
    client = Transport(CLIENT_NODE_ID, "127.0.0.1:0", credentials, rpc_timeout=timeout_s)
    try:
        kind_in, reply = await client.send_rpc_to_addr(target, kind, payload)
    except Timeout as e:
        raise no_answer(addr, timeout_s) from e
    except Unreachable as e:
        raise Unreachable(addr, e.reason) from e
    except RemoteError as e:
        if e.code == NotServing.code:  # the node names its lifecycle
            raise Unreachable(addr, e.message) from e
        if e.code == NO_HANDLER_CODE:  # a bare transport cannot
            raise Unreachable(addr, NOT_SERVING_YET) from e
        raise
    finally:
        await client.close()
    if kind_in != expected:
        raise ClusterError(f"node {addr} answered {kind.name} with message kind {kind_in}")
    return reply


# --- printing -------------------------------------------------------------------------------------


def print_json(doc: object) -> None:
    """One JSON object on stdout (bytes as hex)."""
    print(json.dumps(doc, sort_keys=True, default=_json_bytes))


def print_error(
    error: ClusterError, exit_code: int, as_json: bool, kind: str | None = None
) -> None:
    """The failure on stderr, once: `nodedb-cluster: <message>`, or one JSON object with the
    message, the error's type (or `kind`), the exit code and what it names (field, addr)."""
    if not as_json:
        print(f"nodedb-cluster: {error}", file=sys.stderr)
        return
    doc: dict[str, object] = {
        "error": str(error),
        "type": kind or type(error).__name__,
        "exit_code": exit_code,
    }
    for attr in ("field", "addr"):
        value = getattr(error, attr, None)
        if isinstance(value, str):
            doc[attr] = value
    print(json.dumps(doc, sort_keys=True), file=sys.stderr)


def _json_bytes(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


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


def move_phase(row: Sequence[object]) -> str:
    """A `vshard_moves` status row's phase in words: only the node running the move (the source
    group's leader) knows it; the others say "elsewhere", which says nothing to an operator."""
    source, phase, done, chunks = row[1], row[4], row[5], row[6]
    if phase == "elsewhere":
        return f"in flight: group {source}'s leader runs it and its status shows the phase"
    return f"{phase}, {done}/{chunks} chunks" if chunks else str(phase)


def format_status(doc: dict[str, object]) -> str:
    """A human-readable status: the node, the members (with SWIM's verdict), the groups (a group
    with a member SWIM declares DEAD is flagged: it runs on fewer replicas than it lists): this
    node's replicas, then the groups it holds none of ("elsewhere", as group 0 records them)."""
    lines = [
        f"node {doc['node_id']}  lifecycle {doc['lifecycle']}  cluster {doc['cluster_id']}",
        f"topology v{doc['topology_version']}  routing epoch {doc['routing_epoch']}  "
        f"metadata applied {doc['metadata_applied_index']}",
    ]
    if doc.get("no_space"):
        lines.append(f"NO_SPACE: {doc['no_space']}")
    swim = {int(m[0]): m for m in doc.get("members") or ()}  # type: ignore[attr-defined]
    placed = {int(p[0]): p for p in doc.get("placement") or ()}  # type: ignore[attr-defined]
    lines += [
        "",
        f"{'NODE':>6}  {'ADDRESS':<22} {'MEMBER':<14} {'REPLICAS':>8} {'LEADS':>5}  "
        f"{'SWIM':<8} LAST CONTACT",
    ]
    for node_id, addr, state in doc["nodes"]:  # type: ignore[attr-defined]
        if node_id == doc["node_id"]:
            health, contact = "self", "-"
        elif node_id in swim:
            health, contact = str(swim[node_id][1]), _ago(swim[node_id][3])
        else:
            health, contact = "-", "-"  # SWIM off here, or the node has no SWIM address
        replicas, leads = (
            (placed[node_id][1], placed[node_id][2]) if node_id in placed else ("-", "-")
        )
        lines.append(
            f"{node_id:>6}  {addr:<22} {state:<14} {replicas:>8} {leads:>5}  {health:<8} {contact}"
        )
    leaders = {
        int(g["group_id"]): g["leader"]
        for g in [*doc["groups"], *(doc.get("elsewhere") or [])]  # type: ignore[misc]
    }
    for group_id, learners in doc.get("moving") or []:  # type: ignore[attr-defined]
        named = ",".join(map(str, learners))
        if leaders.get(group_id):
            lines.append(f"moving: group {group_id} is filling learner(s) {named}")
        else:  # a group with no leader fills nobody: say what it waits for
            lines.append(f"moving: group {group_id} has learner(s) {named} to fill, no leader")
    for row in doc.get("vshard_moves") or []:  # type: ignore[attr-defined]
        vshard, source, target, move_id = row[:4]
        lines.append(
            f"moving: vShard {vshard} group {source} -> {target} "
            f"(move {move_id}, {move_phase(row)})"
        )
    lines += [
        "",
        f"{'GROUP':>5}  {'ROLE':<13} {'LEADER':>6} {'TERM':>5} {'COMMIT':>7} "
        f"{'APPLIED':>7} {'VSHARDS':>7} {'KV BYTES':>9}  VOTERS / LEARNERS",
    ]
    quota = doc.get("kv_quota_bytes") or 0
    for g in doc["groups"]:  # type: ignore[attr-defined]
        members, flag = _members_and_dead(g)
        used = g.get("kv_bytes")
        if isinstance(used, int) and isinstance(quota, int) and 0 < quota <= used:
            flag += f"  AT QUOTA ({_size(quota)}): writes refused"
        sessions = g.get("kv_sessions") or []
        if len(sessions) == 2 and isinstance(sessions[1], int) and sessions[1] > 0:
            flag += f"  {sessions[1]} SESSIONS EVICTED: a retry of theirs may apply twice"
        lines.append(
            f"{g['group_id']:>5}  {g['role']:<13} {g['leader']:>6} {g['term']:>5} "
            f"{g['commit']:>7} {g['applied']:>7} {g['vshards']:>7} {_size(used):>9}  "
            f"{members}{flag}"
        )
    for g in doc.get("elsewhere") or []:  # type: ignore[attr-defined]
        # No replica here: group 0's record of it (the leader is the one it last reported).
        members, flag = _members_and_dead(g)
        leader = g["leader"] or "-"
        lines.append(
            f"{g['group_id']:>5}  {'elsewhere':<13} {leader:>6} {'-':>5} {'-':>7} {'-':>7} "
            f"{g['vshards']:>7} {'-':>9}  {members}{flag}"
        )
    return "\n".join(lines)


def _members_and_dead(group: dict[str, Any]) -> tuple[str, str]:
    """A group row's `voters / learners` and its DEAD flag ("" when no member is dead)."""
    members = ",".join(map(str, group["voters"])) + " / "
    members += ",".join(map(str, group["learners"])) or "-"
    dead = group.get("dead") or []
    return members, f"  DEAD: {','.join(map(str, dead))}" if dead else ""


def _size(n: object) -> str:
    """Bytes for a reader: 812 B, 4.0 KiB, 1.5 GiB; '-' when not known here."""
    if not isinstance(n, int):
        return "-"
    if n < 1024:
        return f"{n} B"
    size, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.1f} {unit}"


def _ago(ms: object) -> str:
    if not isinstance(ms, int):
        return "never"
    return f"{ms / 1000:.1f} s ago"
