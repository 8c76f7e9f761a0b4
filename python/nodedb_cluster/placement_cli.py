"""The placement commands of `nodedb-cluster` (issue 16): `decommission` and `rebalance` (admin
credentials, PLACEMENT_REQUEST) and `locate` (any client: routing only).

    nodedb-cluster decommission --node-id 4 --addr HOST:PORT [--no-wait] [--json] <admin creds>
        drains the node (DRAINING in status), waits until the rebalancer moved every replica off
        and retired it (DECOMMISSIONED), printing progress; then it can be stopped.
    nodedb-cluster rebalance --addr HOST:PORT [--dry-run] [--json] <admin creds>
        prints the plan and, unless --dry-run, starts it.
    nodedb-cluster move-vshard --vshard V --to-group G --addr HOST:PORT [--no-wait] [--json]
        <admin creds>
        moves vShard V into group G (copy, a short write pause, the route's flip) and waits for
        the outcome: moved, or aborted with the vShard where it was.
    nodedb-cluster add-groups --count N --addr HOST:PORT [--json] <admin creds>
        adds N data groups on the least loaded nodes; the rebalancer fills them with vShards.
    nodedb-cluster locate KEY --addr HOST:PORT [--json] <client creds>
        vShard, group, leader, voters and learners of KEY.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Mapping
from typing import Any

from nodedb_cluster import wire
from nodedb_cluster.cli_support import (
    EXIT_FAILED,
    EXIT_OK,
    add_client_arguments,
    client_credentials,
    control_rpc,
    fetch_status,
    move_phase,
    print_json,
    u64_arg,
)
from nodedb_cluster.client import Client
from nodedb_cluster.errors import ConfigError, Timeout, Unreachable
from nodedb_cluster.placement_control import encode_placement_request
from nodedb_cluster.routing import vshard_for_key

DRAIN_WAIT_S_DEFAULT = 600.0
MOVE_WAIT_S_DEFAULT = 120.0
POLL_S = 0.5


def add_placement_commands(sub: Any, environ: Mapping[str, str]) -> None:
    """Register `decommission`, `rebalance` and `locate` on the CLI's subparsers (`sub`)."""
    decommission = sub.add_parser(
        "decommission",
        help="move every replica off a node, then retire it (admin credentials)",
    )
    decommission.add_argument(
        "--node-id", required=True, type=u64_arg, metavar="ID", help="the node to retire"
    )
    decommission.add_argument("--no-wait", action="store_true", help="return once draining started")
    decommission.add_argument(
        "--wait-timeout",
        type=float,
        default=DRAIN_WAIT_S_DEFAULT,
        metavar="SECS",
        help=f"give up waiting after this long (default {DRAIN_WAIT_S_DEFAULT:.0f})",
    )
    add_client_arguments(decommission, environ, "any node's listen address")
    decommission.set_defaults(run=_cmd_decommission)

    rebalance = sub.add_parser(
        "rebalance", help="plan replica moves now and start them (admin credentials)"
    )
    rebalance.add_argument("--dry-run", action="store_true", help="print the plan only")
    add_client_arguments(rebalance, environ, "any node's listen address")
    rebalance.set_defaults(run=_cmd_rebalance)

    move = sub.add_parser(
        "move-vshard", help="move one vShard into another group (admin credentials)"
    )
    move.add_argument("--vshard", required=True, type=u64_arg, metavar="V", help="the vShard")
    move.add_argument(
        "--to-group", required=True, type=u64_arg, metavar="G", help="the data group to move it to"
    )
    move.add_argument("--no-wait", action="store_true", help="return once the move began")
    move.add_argument(
        "--wait-timeout",
        type=float,
        default=MOVE_WAIT_S_DEFAULT,
        metavar="SECS",
        help=f"give up waiting after this long (default {MOVE_WAIT_S_DEFAULT:.0f})",
    )
    add_client_arguments(move, environ, "any node's listen address")
    move.set_defaults(run=_cmd_move_vshard)

    grow = sub.add_parser(
        "add-groups",
        help="add data groups to the cluster; the rebalancer moves vShards into them when "
        "they run the built-in KV (admin)",
    )
    grow.add_argument(
        "--count", required=True, type=u64_arg, metavar="N", help="how many groups to add"
    )
    add_client_arguments(grow, environ, "any node's listen address")
    grow.set_defaults(run=_cmd_add_groups)

    locate = sub.add_parser("locate", help="where KEY lives: vShard, group, leader, members")
    locate.add_argument("locate_key", metavar="KEY", help="the key (UTF-8)")
    add_client_arguments(locate, environ, "any node's listen address")
    locate.set_defaults(run=_cmd_locate)


def _placement(args: argparse.Namespace, op: str, **fields: object) -> dict[str, Any]:
    """One placement request. No answer in time does not mean nothing happened: the node may
    have proposed the change and then waited on a metadata group that lost its leader; the
    error says so (exit 3, as any node that did not answer)."""
    try:
        reply = asyncio.run(
            control_rpc(
                args.addr,
                client_credentials(args),
                args.timeout,
                wire.MessageKind.PLACEMENT_REQUEST,
                encode_placement_request(op, **fields),
                wire.MessageKind.PLACEMENT_RESPONSE,
            )
        )
    except Unreachable as e:
        if not isinstance(e.__cause__, Timeout):
            raise  # never reached (control_rpc's no_answer comes from a Timeout): nothing began
        raise Unreachable(
            e.addr,
            f"{e.reason}; the {op.replace('_', '-')} may have begun before it stopped answering "
            "(a node waits on the metadata group's leader): `nodedb-cluster status` and "
            "`nodedb-cluster audit` show what happened",
        ) from e
    return wire.decode_map(reply, "placement response")


def _cmd_decommission(args: argparse.Namespace) -> int:
    if not 1 <= args.node_id < 2**64:
        raise ConfigError("--node-id", f"{args.node_id} is not a non-zero u64")
    started = time.monotonic()
    answer = _placement(args, "decommission", node_id=args.node_id)
    if not args.json:
        print(f"node {args.node_id}: {answer.get('state')}", file=sys.stderr)
    state = str(answer.get("state"))
    if not args.no_wait:
        state = asyncio.run(_wait_retired(args, started))
    took_s = round(time.monotonic() - started, 1)
    if args.json:
        print_json({"node_id": args.node_id, "state": state, "seconds": took_s})
    else:
        print(f"node {args.node_id}: {state} after {took_s} s")
    return EXIT_OK


async def _wait_retired(args: argparse.Namespace, started: float) -> str:
    """Poll status until the node is DECOMMISSIONED, printing its replica count as it falls."""
    credentials = client_credentials(args)
    last = ""
    while True:
        doc = await fetch_status(args.addr, credentials, args.timeout)
        states = {int(n[0]): str(n[2]) for n in doc.get("nodes") or ()}  # type: ignore[attr-defined]
        placed = {int(p[0]): int(p[1]) for p in doc.get("placement") or ()}  # type: ignore[attr-defined]
        state = states.get(args.node_id, "REMOVED")
        line = f"node {args.node_id}: {state}, {placed.get(args.node_id, 0)} data replicas left"
        if line != last and not args.json:
            print(line, file=sys.stderr)
            last = line
        if state in ("DECOMMISSIONED", "REMOVED"):
            return state
        if time.monotonic() - started > args.wait_timeout:
            raise Timeout(f"node {args.node_id} still {state}", int(args.wait_timeout * 1000))
        await asyncio.sleep(POLL_S)  # status has no push channel: poll, bounded above


def _cmd_rebalance(args: argparse.Namespace) -> int:
    answer = _placement(args, "rebalance", dry_run=bool(args.dry_run))
    if args.json:
        print_json(answer)
        return EXIT_OK
    moves = answer.get("moves") or []
    assert isinstance(moves, list)
    for m in moves:
        fields = " ".join(f"{k}={v}" for k, v in m.items() if k != "move")
        print(f"{m.get('move')} {fields}")
    if not moves:
        print("balanced: nothing to move")
    held_lines = answer.get("held") or []
    assert isinstance(held_lines, list)
    for held in held_lines:
        print(f"held: {held}")
    if moves and not args.dry_run:
        print("started (the group leaders carry the moves out; see `status`)", file=sys.stderr)
    return EXIT_OK


def _cmd_move_vshard(args: argparse.Namespace) -> int:
    started = time.monotonic()
    answer = _placement(args, "move_vshard", vshard=args.vshard, to_group=args.to_group)
    move_id = int(answer.get("move_id") or 0)
    if not args.json:
        print(
            f"vShard {args.vshard}: move {move_id} from group {answer.get('source')} to group "
            f"{args.to_group} begun",
            file=sys.stderr,
        )
    outcome = "begun"
    if not args.no_wait:
        outcome = asyncio.run(_wait_moved(args, move_id, started))
    doc = {
        **answer,
        "outcome": outcome,
        "seconds": round(time.monotonic() - started, 2),
    }
    if args.json:
        print_json(doc)
    else:
        print(f"vShard {args.vshard}: {outcome} after {doc['seconds']} s")
    return EXIT_OK if outcome in ("moved", "begun") else EXIT_FAILED


async def _wait_moved(args: argparse.Namespace, move_id: int, started: float) -> str:
    """Poll status until move `move_id` is no longer in flight; then the routing says whether it
    moved or aborted."""
    credentials = client_credentials(args)
    last = ""
    while True:
        doc = await fetch_status(args.addr, credentials, args.timeout)
        rows = [m for m in doc.get("vshard_moves") or () if int(m[3]) == move_id]  # type: ignore[attr-defined]
        if not rows:
            break
        phase = move_phase(rows[0])
        if phase != last and not args.json:
            print(f"vShard {args.vshard}: {phase}", file=sys.stderr)
            last = phase
        if time.monotonic() - started > args.wait_timeout:
            raise Timeout(f"move {move_id} of vShard {args.vshard}", int(args.wait_timeout * 1000))
        await asyncio.sleep(POLL_S)  # status has no push channel: poll, bounded above
    async with Client([args.addr], credentials, timeout_s=args.timeout) as c:
        group = c.routing.group_for_vshard(args.vshard)
    return "moved" if group == args.to_group else f"aborted (still in group {group})"


def _cmd_add_groups(args: argparse.Namespace) -> int:
    answer = _placement(args, "add_groups", count=args.count)
    if args.json:
        print_json(answer)
        return EXIT_OK
    for group, voters, learners in answer.get("groups") or []:
        print(f"group {group}: voter {voters}, joining {learners}")
    print(
        "added; each starts with one voter and takes its others as they catch up (`status`). "
        "On the built-in KV the rebalancer moves vShards into them (`rebalance` starts that "
        "now); an embedding host's new groups hold no vShard: propose into them by group",
        file=sys.stderr,
    )
    return EXIT_OK


def _cmd_locate(args: argparse.Namespace) -> int:
    key = args.locate_key.encode()

    async def routing() -> dict[str, Any]:
        async with Client([args.addr], client_credentials(args), timeout_s=args.timeout) as c:
            table = c.routing
        vshard = vshard_for_key(key)
        group = table.group_for_vshard(vshard)
        route = table.route(group)
        return {
            "key": args.locate_key,
            "vshard": vshard,
            "group": group,
            "leader": route.leader,
            "voters": list(route.voters),
            "learners": list(route.learners),
        }

    doc = asyncio.run(routing())
    if args.json:
        print_json(doc)
    else:
        print(
            f"key {args.locate_key!r}: vShard {doc['vshard']}, group {doc['group']}, leader "
            f"{doc['leader'] or 'unknown'}, voters {doc['voters']}, learners {doc['learners']}"
        )
    return EXIT_OK


__all__ = ["add_placement_commands"]
