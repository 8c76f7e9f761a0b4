"""The `nodedb-cluster` command: run a node, ask one for its status, make credentials, run the demo.

Exit codes (every command; `cli_support.EXIT_*`, README "Exit codes"): 0 success, 1 the operation
failed (the message says why), 2 bad usage or config, 3 the node at --addr did not answer.
With `--json` a result is one JSON object on stdout and a failure one JSON object on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

from nodedb_cluster import __version__, logsetup
from nodedb_cluster.admin_cli import add_admin_commands
from nodedb_cluster.cli_support import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    READY_PREFIX,
    add_client_arguments,
    add_client_credentials,
    client_credentials,
    fetch_status,
    format_status,
    no_answer,
    print_error,
    print_json,
)
from nodedb_cluster.client import Client
from nodedb_cluster.config import (
    LOG_FORMATS,
    LOG_LEVELS,
    ClusterConfig,
    add_config_arguments,
    config_from_args,
    name_config_error,
)
from nodedb_cluster.errors import (
    ClusterError,
    ConfigError,
    EngineStopped,
    FormationStopped,
    Timeout,
    Unreachable,
)
from nodedb_cluster.formation.credentials import node_cert_not_after, warn_before_expiry
from nodedb_cluster.kv import Unavailable
from nodedb_cluster.lifecycle import LifecycleTracker
from nodedb_cluster.placement_cli import add_placement_commands
from nodedb_cluster.transport import (
    LEAF_VALIDITY_DAYS_DEFAULT,
    Leaf,
    LeafRole,
    Mtls,
    ca_key_path,
    certificate_not_after,
    generate_cluster_credentials,
    issue_node_credentials,
    read_cert_identity,
    renew_node_credentials,
    revoke_node_credentials,
)

if TYPE_CHECKING:
    from nodedb_cluster.metrics import MetricsServer
    from nodedb_cluster.node import Node

log = logging.getLogger("nodedb_cluster.cli")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command; its exit code. `environ` (default os.environ) supplies the client
    commands' NODEDB_CLUSTER_* defaults: read here, at the boundary, and nowhere else."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args_in
    parser = _parser(os.environ if environ is None else environ, as_json)
    args = parser.parse_args(args_in)
    logsetup.configure(args.log_level or "info", args.log_format or "text")
    try:
        code: int = args.run(args)
    except ConfigError as e:
        print_error(e, EXIT_USAGE, as_json)
        return EXIT_USAGE
    except Unreachable as e:
        print_error(e, EXIT_UNREACHABLE, as_json)
        return EXIT_UNREACHABLE
    except ClusterError as e:
        print_error(e, EXIT_FAILED, as_json)
        return EXIT_FAILED
    return code


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error under --json is one JSON object on stderr (still exit 2)."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if not self.json_errors:
            super().error(message)
        print_error(ClusterError(f"{self.prog}: {message}"), EXIT_USAGE, True, kind="usage")
        sys.exit(EXIT_USAGE)


def _parser(environ: Mapping[str, str], json_errors: bool = False) -> argparse.ArgumentParser:
    parser_class = type("Parser", (_Parser,), {"json_errors": json_errors})
    parser: argparse.ArgumentParser = parser_class(
        prog="nodedb-cluster",
        description="Distributed coordination layer of NodeDB: vShards on Multi-Raft over QUIC.",
        epilog="Exit codes: 0 success, 1 the operation failed, 2 bad usage or config, 3 the node "
        "did not answer. Client commands read NODEDB_CLUSTER_ADDR, NODEDB_CLUSTER_CA, "
        "NODEDB_CLUSTER_CERT and NODEDB_CLUSTER_KEY as defaults for --addr, --ca, --cert, --key.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="log lines on stderr at this level and above (default: info, or the start "
        "command's log_level)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text, or json: one object per line with time, level, logger, message and the "
        "record's fields (default: text, or the start command's log_format)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    start = sub.add_parser("start", help="run a node in the foreground until SIGTERM/SIGINT")
    add_config_arguments(start)
    start.set_defaults(run=_cmd_start)

    status = sub.add_parser("status", help="ask a running node for its status")
    add_client_arguments(status, environ, "the node's listen address")
    status.set_defaults(run=_cmd_status)

    put = sub.add_parser("put", help="write VALUE under KEY in the replicated KV")
    put.add_argument("kv_key", metavar="KEY", help="the key (UTF-8)")
    put.add_argument("kv_value", metavar="VALUE", help="the value (UTF-8)")
    add_client_arguments(put, environ, "any node's listen address")
    put.set_defaults(run=_cmd_put)

    get = sub.add_parser("get", help="read KEY from the replicated KV (exit 1 if absent)")
    get.add_argument("kv_key", metavar="KEY", help="the key (UTF-8)")
    get.add_argument(
        "--read",
        default="linearizable",
        choices=("linearizable", "lease", "follower"),
        metavar="LEVEL",
        help="linearizable (default; the leader answers from its read lease while it holds), "
        "lease (the same), follower (this node's replica, may be stale)",
    )
    add_client_arguments(get, environ, "any node's listen address")
    get.set_defaults(run=_cmd_get)

    delete = sub.add_parser("delete", help="delete KEY from the replicated KV")
    delete.add_argument("kv_key", metavar="KEY", help="the key (UTF-8)")
    add_client_arguments(delete, environ, "any node's listen address")
    delete.set_defaults(run=_cmd_delete)

    bench = sub.add_parser("bench", help="KV load: N clients for D seconds, latency percentiles")
    _add_bench_arguments(bench)
    add_client_credentials(bench, environ)
    bench.set_defaults(run=_cmd_bench)

    certs = sub.add_parser(
        "gen-certs",
        help="mTLS credentials with identities: a cluster CA (or the one already in --out) and "
        "node, admin and client leaves",
    )
    certs.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="directory to write into"
    )
    certs.add_argument(
        "--cluster-name",
        default="nodedb-cluster",
        metavar="NAME",
        help="the trust domain of every identity: [a-z0-9._-], at most 255 characters",
    )
    for flag, what in (
        ("--node", "n<id>=IP: node <id>'s credential (n1, n2, ...); any other NAME is a client"),
        ("--admin", "an operator's credential (membership and placement operations)"),
        ("--client", "an application's credential (KV operations, status)"),
    ):
        certs.add_argument(
            flag, action="append", default=[], metavar="NAME=IP[,IP...]", help=what + "; repeat"
        )
    certs.add_argument(
        "--days",
        type=int,
        default=LEAF_VALIDITY_DAYS_DEFAULT,
        metavar="N",
        help=f"leaf validity (default {LEAF_VALIDITY_DAYS_DEFAULT}); the CA gets 3650",
    )
    certs.add_argument(
        "--renew",
        action="append",
        default=[],
        metavar="NAME[=IP,...]",
        help="a new NAME.pem in --out for the key NAME.key it has (peers pin a node's key, so "
        "a new one would cut the node off), same identity, from the CA there, valid --days, "
        "naming the IPs given (a node moved to another address) or else the same ones; "
        "restart the node to use it; repeat",
    )
    certs.add_argument("--json", action="store_true", help="print the files as one JSON object")
    certs.set_defaults(run=_cmd_gen_certs)

    revoke = sub.add_parser(
        "revoke", help="add certificates to the cluster CRL (nodes reload it on SIGHUP)"
    )
    revoke.add_argument(
        "--ca-dir",
        required=True,
        type=Path,
        metavar="DIR",
        help="the gen-certs folder (ca.pem, ca-key/ca.key)",
    )
    revoke.add_argument(
        "--cert",
        action="append",
        default=[],
        type=Path,
        metavar="PATH",
        help="a leaf to revoke; repeat (none: write the CRL with what it holds, e.g. an empty "
        "one to start nodes with --tls-crl-path before anything is revoked)",
    )
    revoke.add_argument(
        "--crl",
        required=True,
        type=Path,
        metavar="PATH",
        help="the CRL file (updated, or created); nodes' tls_crl_path",
    )
    revoke.add_argument("--json", action="store_true", help="print the CRL as one JSON object")
    revoke.set_defaults(run=_cmd_revoke)

    add_admin_commands(sub, environ)  # join-token, audit
    add_placement_commands(sub, environ)  # decommission, rebalance, locate

    demo = sub.add_parser("demo", help="a local 3-node cluster: form, replicate, fail over")
    demo.add_argument("--keep", action="store_true", help="keep the data directory")
    demo.set_defaults(run=_cmd_demo)

    chaos = sub.add_parser("chaos", help="fault-injection runs on a local cluster, then checks")
    _add_chaos_arguments(chaos)
    chaos.set_defaults(run=_cmd_chaos)
    return parser


# --- start ----------------------------------------------------------------------------------------


def _cmd_start(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    logsetup.configure(
        args.log_level or config.log_level, args.log_format or config.log_format, config.node_id
    )
    try:
        return asyncio.run(run_node(config))
    except ConfigError as e:
        # Found at start (a key others can read, a secret file): the node failed to start (1),
        # and the setting is named as the user gave it.
        named = name_config_error(e, args)
        print(f"nodedb-cluster: node {config.node_id} failed: {named}", file=sys.stderr)
        return EXIT_FAILED


class _NotFailedLines(logging.Filter):
    """The start command prints a failure itself, once: it drops the lifecycle's own line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "lifecycle_next", None) != "failed"


async def run_node(config: ClusterConfig) -> int:
    """Run one node until SIGTERM/SIGINT; 1 if formation fails (a config refusal found at
    start is raised, as `ConfigError`, for the caller to name the setting)."""
    stop = asyncio.Event()
    hangup = asyncio.Event()  # SIGHUP: reload the CRL (set early: a HUP during start is kept)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hangup.set)
    # The Rust core's records from the first handshake to the last close (the node forwards
    # them too once it serves; whichever drains first writes them).
    forwarder = asyncio.create_task(logsetup.forward_core_logs())
    try:
        code, failure = await _run_until_stopped(config, stop, hangup)
    finally:
        forwarder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await forwarder
    if failure is not None:  # after the core's last records: the reason is the last line
        verb = "stopped" if code == EXIT_OK else "failed"
        print(f"nodedb-cluster: node {config.node_id} {verb}: {failure}", file=sys.stderr)
    return code


async def _run_until_stopped(
    config: ClusterConfig, stop: asyncio.Event, hangup: asyncio.Event
) -> tuple[int, str | None]:
    """The exit code, and why the node failed or, exiting 0, why it stopped by itself (a
    decommissioned node; None when it was asked to stop). The metrics
    endpoint is bound first: a port in use fails the start before the node forms, and it shows
    the lifecycle while the node restarts or joins."""
    tracker = LifecycleTracker()
    metrics_server = None
    if config.metrics_addr is not None:
        from nodedb_cluster.metrics import MetricsServer

        try:
            metrics_server = MetricsServer(config.metrics_addr, tracker)
        except OSError as e:
            reason = e.strerror or str(e)
            return EXIT_FAILED, f"cannot serve metrics on {config.metrics_addr}: {reason}"
    try:
        return await _form_and_serve(config, tracker, metrics_server, stop, hangup)
    finally:
        if metrics_server is not None:
            metrics_server.close()


async def _form_and_serve(
    config: ClusterConfig,
    tracker: LifecycleTracker,
    metrics_server: MetricsServer | None,
    stop: asyncio.Event,
    hangup: asyncio.Event,
) -> tuple[int, str | None]:
    from nodedb_cluster.formation.start import start_cluster  # the engine loads only here

    lifecycle_log = logging.getLogger("nodedb_cluster.lifecycle")
    once = _NotFailedLines()
    lifecycle_log.addFilter(once)
    try:
        node = await start_cluster(config, tracker=tracker, stop=stop)
    except ConfigError:
        raise
    except FormationStopped:
        log.info("node %d stopped before it joined the cluster", config.node_id)
        return EXIT_OK, None
    except ClusterError as e:
        return EXIT_FAILED, str(e)
    finally:
        lifecycle_log.removeFilter(once)
    if config.allow_bench_load:  # the bench tool's handler; the node alone refuses the kind
        from nodedb_cluster.bench import serve_embedded_load

        serve_embedded_load(node.control, lambda: node.kv)
    background = [
        asyncio.create_task(_reload_crl_on_hangup(node, hangup)),
        asyncio.create_task(warn_before_expiry(config, node_cert_not_after(config))),
    ]
    if metrics_server is not None:
        await metrics_server.attach(node)
    ready = {
        "node_id": config.node_id,
        "cluster_id": node.cluster_id,
        "listen_addr": str(config.listen_addr),
        "pid": os.getpid(),
    }
    print(READY_PREFIX + json.dumps(ready), flush=True)
    ends = [asyncio.create_task(e.wait()) for e in (stop, node.failed, node.retired)]
    await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
    for task in (*background, *ends):
        task.cancel()
    if node.failed.is_set():  # the node already logged why and stopped itself
        await node.shutdown()
        return EXIT_FAILED, str(EngineStopped(node.failure or "no reason given"))
    if node.retired.is_set():  # decommissioned: its work is done, so a supervisor leaves it
        await node.shutdown()
        return EXIT_OK, node.retirement
    log.info("node %d shutting down", config.node_id)
    await node.shutdown()
    return 0, None


async def _reload_crl_on_hangup(node: Node, hangup: asyncio.Event) -> None:
    """Reload the CRL on every SIGHUP; a broken file is logged by `reload_crl` and the CRL in
    force stays (the node keeps running)."""
    while True:
        await hangup.wait()
        hangup.clear()
        with contextlib.suppress(ClusterError):
            node.reload_crl()


# --- status ---------------------------------------------------------------------------------------


def _cmd_status(args: argparse.Namespace) -> int:
    doc = asyncio.run(fetch_status(args.addr, client_credentials(args), args.timeout))
    if args.json:
        print_json(doc)
    else:
        print(format_status(doc))
    return EXIT_OK


# --- put / get / delete -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _client(args: argparse.Namespace) -> AsyncIterator[Client]:
    """A KV client connected through --addr; a node that did not answer at all (the endpoint
    counted only timeouts) is `no_answer`, one that refused (a handshake, an error) keeps its
    own message."""
    client = Client([args.addr], client_credentials(args), args.timeout)
    try:
        try:
            await client.connect()
        except (Unavailable, Unreachable, Timeout) as e:
            errors = client.transport.metrics()
            answered = sum(
                n
                for name, n in errors.items()
                if name.startswith("errors.") and name not in _NO_ANSWER_ERRORS
            )
            if answered:
                raise
            raise no_answer(args.addr, args.timeout) from e
        yield client
    finally:
        await client.close()


_NO_ANSWER_ERRORS: Final = frozenset({"errors.timeout", "errors.unreachable"})
"""Transport error counters that mean the node never answered (anything else: it did)."""


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="backslashreplace")


def _cmd_put(args: argparse.Namespace) -> int:
    async def run() -> None:
        async with _client(args) as client:
            await client.put(args.kv_key.encode(), args.kv_value.encode(), timeout_s=args.timeout)

    asyncio.run(run())
    if args.json:
        print_json({"key": args.kv_key, "written": True})
    return EXIT_OK


def _cmd_get(args: argparse.Namespace) -> int:
    async def run() -> bytes | None:
        async with _client(args) as client:
            return await client.get(args.kv_key.encode(), read=args.read, timeout_s=args.timeout)

    value = asyncio.run(run())
    if args.json:
        text = None if value is None else _text(value)
        print_json({"key": args.kv_key, "found": value is not None, "value": text})
        return EXIT_FAILED if value is None else EXIT_OK
    if value is None:
        print(f"nodedb-cluster: key {args.kv_key!r} not found", file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.buffer.write(value + b"\n")
    sys.stdout.flush()
    return EXIT_OK


def _cmd_delete(args: argparse.Namespace) -> int:
    async def run() -> bool:
        async with _client(args) as client:
            return await client.delete(args.kv_key.encode(), timeout_s=args.timeout)

    existed = asyncio.run(run())
    if args.json:
        print_json({"key": args.kv_key, "deleted": existed})
    else:
        print("deleted" if existed else "not found")
    return EXIT_OK


# --- bench ----------------------------------------------------------------------------------------


def _add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    from nodedb_cluster.bench import add_bench_arguments

    add_bench_arguments(parser)


def _cmd_bench(args: argparse.Namespace) -> int:
    from nodedb_cluster.bench import run_bench_command

    return run_bench_command(args)


# --- gen-certs ------------------------------------------------------------------------------------


def _leaves(flag: str, specs: list[str]) -> list[Leaf]:
    leaves: list[Leaf] = []
    for spec in specs:
        name, _, sans = spec.partition("=")
        addrs = [s.strip() for s in sans.split(",") if s.strip()]
        if not name or not addrs:
            raise ConfigError(flag, f"expected NAME=IP[,IP...], got {spec!r}")
        leaves.append((name, addrs))
    return leaves


def _renewal(spec: str) -> tuple[str, list[str] | None]:
    """`--renew NAME` (same addresses) or `--renew NAME=IP[,IP...]` (these instead)."""
    name, sep, _ = spec.partition("=")
    if not sep:
        return name, None
    [(name, addrs)] = _leaves("--renew", [spec])
    return name, addrs


def _cmd_gen_certs(args: argparse.Namespace) -> int:
    nodes = _leaves("--node", args.node)
    admins = _leaves("--admin", args.admin)
    clients = _leaves("--client", args.client)
    renew = [_renewal(spec) for spec in args.renew]
    if not (nodes or admins or clients or renew):
        raise ConfigError(
            "--node", "give at least one --node, --admin or --client NAME=IP, or --renew NAME"
        )
    out: Path = args.out
    ca_cert, ca_key = out / "ca.pem", ca_key_path(out)
    has_ca = ca_key.exists() and ca_cert.exists()
    if renew and not has_ca:
        raise ConfigError(
            "--renew", f"no CA in {out} (ca.pem, ca-key/ca.key): give gen-certs' folder"
        )
    renewed = [
        (
            name,
            renew_node_credentials(
                ca_cert, ca_key, out / f"{name}.pem", out / f"{name}.key", days=args.days, sans=sans
            ),
        )
        for name, sans in renew
    ]
    if not (nodes or admins or clients):
        files: list[Mtls] = []
    elif has_ca:
        # The cluster's CA is already here (adding a node, an operator, an application): issue
        # from it, never over an existing leaf.
        leaves: list[tuple[LeafRole, tuple[str, list[str]]]] = [
            *(("auto", leaf) for leaf in nodes),
            *(("admin", leaf) for leaf in admins),
            *(("client", leaf) for leaf in clients),
        ]
        for _, (name, _) in leaves:
            for existing in (out / f"{name}.pem", out / f"{name}.key"):
                if existing.exists():
                    raise ConfigError(
                        "--out", f"{existing} exists; choose another name or remove it first"
                    )
        if not args.json:
            print(
                f"issuing from the existing CA in {out} (its cluster name; --cluster-name unused)"
            )
        files = [
            issue_node_credentials(ca_cert, ca_key, name, sans, out, role=role, days=args.days)
            for role, (name, sans) in leaves
        ]
    else:
        files = generate_cluster_credentials(
            out, args.cluster_name, nodes, admins=admins, clients=clients, days=args.days
        )
    named = [
        *(
            (name, creds)
            for (name, _), creds in zip([*nodes, *admins, *clients], files, strict=True)
        ),
        *renewed,
    ]
    if args.json:
        print_json(
            {
                "ca": str(ca_cert),
                "ca_key": str(ca_key_path(out)),
                "leaves": [
                    {
                        "name": name,
                        "identity": read_cert_identity(creds.cert).uri,
                        "cert": str(creds.cert),
                        "key": str(creds.key),
                    }
                    for name, creds in named
                ],
            }
        )
        return EXIT_OK
    print(f"CA certificate: {ca_cert}  (every node and client needs it)")
    print(
        f"CA key: {ca_key_path(args.out)}  (keep it off the nodes: it signs certificates and CRLs)"
    )
    for name, creds in named:
        identity = read_cert_identity(creds.cert)
        print(f"{name}: {identity.uri} ca={creds.ca} cert={creds.cert} key={creds.key}")
    for name, creds in renewed:
        until = time.strftime("%Y-%m-%d", time.gmtime(certificate_not_after(creds.cert)))
        print(f"{name}: renewed until {until}, same key; restart its node to use it")
    return EXIT_OK


# --- revoke ---------------------------------------------------------------------------------------


def _cmd_revoke(args: argparse.Namespace) -> int:
    ca_dir: Path = args.ca_dir
    summary = revoke_node_credentials(
        ca_dir / "ca.pem", ca_key_path(ca_dir), list(args.cert), args.crl
    )
    if args.json:
        print_json(
            {
                "crl": str(summary.path),
                "crl_number": summary.crl_number,
                "newly_revoked": summary.newly_revoked,
                "revoked_total": summary.revoked_total,
            }
        )
        return EXIT_OK
    print(
        f"{summary.path}: CRL number {summary.crl_number}, {summary.newly_revoked} newly "
        f"revoked, {summary.revoked_total} in total; send SIGHUP to every node whose "
        "tls_crl_path is this file (or copy it there first)"
    )
    return EXIT_OK


# --- demo -----------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from nodedb_cluster.demo import run_demo

    return asyncio.run(run_demo(keep=args.keep))


# --- chaos ----------------------------------------------------------------------------------------


def _add_chaos_arguments(parser: argparse.ArgumentParser) -> None:
    from nodedb_cluster.faults.command import add_chaos_arguments

    add_chaos_arguments(parser)


def _cmd_chaos(args: argparse.Namespace) -> int:
    from nodedb_cluster.faults.command import run_chaos_command

    return run_chaos_command(args)


if __name__ == "__main__":
    sys.exit(main())
