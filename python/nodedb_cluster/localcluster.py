"""Real node processes on loopback, for the demo and the multi-process tests.

Each node is its own `nodedb-cluster start` OS process on 127.0.0.N, with its own data_dir,
config file and log file under one base directory. Readiness is the `READY {...}` line a node
prints once its lifecycle reaches Ready: awaited with a deadline, never guessed with a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.cli_support import READY_PREFIX, fetch_status
from nodedb_cluster.config import SWIM_PORT_OFFSET, ClusterConfig
from nodedb_cluster.errors import ClusterError, Timeout
from nodedb_cluster.formation.retry import JoinRetryPolicy
from nodedb_cluster.routing.table import METADATA_GROUP_ID
from nodedb_cluster.transport import (
    Credentials,
    Insecure,
    Mtls,
    ca_key_path,
    generate_cluster_credentials,
    renew_node_credentials,
)

Status = dict[str, Any]
"""A node's status document (`Node.status().to_doc()` as sent over the wire)."""


PAUSE_TIMEOUT_S: Final = 2.0


def _wait_stopped(pid: int) -> None:
    """Poll /proc until each of `pid`'s threads is stopped (or the process is gone); Linux
    gives no awaitable event for a group stop that leaves the asyncio child watcher alone."""
    deadline = time.monotonic() + PAUSE_TIMEOUT_S
    while not all(s in "TtZX" for s in _thread_states(pid)):
        if time.monotonic() > deadline:
            raise Timeout(f"SIGSTOP of process {pid}", int(PAUSE_TIMEOUT_S * 1000))
        time.sleep(0.001)


def _thread_states(pid: int) -> list[str]:
    """Each thread's state letter (`man 5 proc`, field 3); [] once the process is gone."""
    states = []
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return []
    for t in threads:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # that thread exited
            states.append((t / "stat").read_text().rpartition(")")[2].split()[0])
    return states


def data_group_views(statuses: Mapping[int, Status]) -> dict[int, dict[str, Any]]:
    """Each data group as a node reporting itself its leader sees it (group id -> the group's
    row of that node's status)."""
    views: dict[int, dict[str, Any]] = {}
    for s in statuses.values():
        for g in s["groups"]:
            if g["group_id"] != 0 and g["role"] == "leader":
                views[int(g["group_id"])] = g
    return views


def leader_of(statuses: Mapping[int, Status], group_id: int) -> int:
    """The node that reports itself leader of `group_id` with the highest term (0 if none): a
    deposed leader that has not heard of the new term yet may still say it leads."""
    best = (-1, 0)
    for node_id, doc in statuses.items():
        for g in doc.get("groups", []):
            if int(g["group_id"]) == group_id and g["role"] == "leader":
                best = max(best, (int(g["term"]), node_id))
    return best[1]


def leader_views(
    statuses: Mapping[int, Mapping[str, Any]],
) -> dict[int, tuple[int, Mapping[str, Any]]]:
    """group id -> (leader node, its view of the group) for every group some node leads, the
    highest term winning. The leader's configuration is the group's: a replica removed while
    it could not hear of it keeps an older one (and may campaign forever) without counting."""
    best: dict[int, tuple[int, int, Mapping[str, Any]]] = {}
    for node_id, doc in statuses.items():
        for g in doc.get("groups", []):
            gid = int(g["group_id"])
            if g["role"] == "leader" and (gid not in best or int(g["term"]) > best[gid][0]):
                best[gid] = (int(g["term"]), node_id, g)
    return {gid: (node, view) for gid, (_, node, view) in best.items()}


def groups_formed(statuses: Mapping[int, Mapping[str, Any]], voters_per_group: int) -> bool:
    """Every group (metadata and KV) has a leader whose view holds `voters_per_group` voters
    (min(nodes, RF)), data groups no learner (the metadata group keeps nodes beyond RF as
    learners), and every voter reports a replica. Before this, followers may still be learners,
    which never campaign: a fault then tests formation, not failover."""
    present: dict[int, set[int]] = {}
    for node_id, doc in statuses.items():
        for g in doc.get("groups", []):
            present.setdefault(int(g["group_id"]), set()).add(node_id)
    views = leader_views(statuses)
    return bool(present) and all(
        gid in views
        and len(views[gid][1]["voters"]) == voters_per_group
        and (gid == METADATA_GROUP_ID or not views[gid][1]["learners"])
        and {int(v) for v in views[gid][1]["voters"]} <= present[gid]
        for gid in present
    )


READY_TIMEOUT_S: Final = 30.0
REQUEST_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 10.0
LOG_TAIL_BYTES: Final = 4000
LOG_POLL_S: Final = 0.05
"""How often `wait_log` reads the log again."""


class NodeProcessError(ClusterError):
    """A node process exited or never became ready; carries the tail of its log."""


def free_port(hosts: Iterable[str]) -> int:
    """A UDP port free on every one of `hosts` right now, and so is the next one (SWIM's default
    port, listen port + 1: `config.SWIM_PORT_OFFSET`); the OS may hand them out again later."""
    hosts = list(hosts)
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        if port + SWIM_PORT_OFFSET > 65535:
            continue
        try:
            for host in hosts:
                for p in (port, port + SWIM_PORT_OFFSET):
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                        s.bind((host, p))
        except OSError:
            continue
        return port
    raise ClusterError("no UDP port free on every loopback address")


@dataclass(slots=True)
class NodeProcess:
    """One node process and the files it owns."""

    config: ClusterConfig
    config_path: Path
    log_path: Path
    program: tuple[str, ...] = ()
    """A host program to run instead of `nodedb-cluster start` (script path and arguments; it
    gets `--config PATH`, prints the READY line, then answers one JSON line on stdout per JSON
    line on stdin: `request`). Lines with an "event" key are kept in `events`."""
    env: dict[str, str] = field(default_factory=dict)
    """Set in the process's environment on top of this one's (at the next start)."""
    proc: asyncio.subprocess.Process | None = None
    ready: dict[str, object] | None = None
    starts: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def node_id(self) -> int:
        return self.config.node_id

    @property
    def addr(self) -> str:
        return str(self.config.listen_addr)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        """Spawn the process (its config file is written first)."""
        if self.running:
            raise NodeProcessError(f"node {self.node_id} is already running")
        self.config_path.write_text(self.config.to_toml())
        self.starts += 1
        self.ready = None
        log = self.log_path.open("ab")
        argv = self.program or ("-m", "nodedb_cluster.cli", "start")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *argv,
                "--config",
                str(self.config_path),
                stdin=asyncio.subprocess.PIPE if self.program else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # a Ctrl-C at the terminal reaches the parent only
                env={**os.environ, **self.env} if self.env else None,
            )
        finally:
            log.close()

    async def request(
        self, doc: dict[str, Any], timeout_s: float = REQUEST_TIMEOUT_S
    ) -> dict[str, Any]:
        """Send one JSON command to a host program and return its answer (event lines that
        come first are appended to `events`)."""
        proc = self.proc
        if proc is None or proc.stdin is None or proc.stdout is None or not self.program:
            raise NodeProcessError(f"node {self.node_id} runs no host program")
        proc.stdin.write((json.dumps(doc) + "\n").encode())
        await proc.stdin.drain()
        async with asyncio.timeout(timeout_s):
            while True:
                line = await proc.stdout.readline()
                if not line:
                    raise NodeProcessError(
                        f"node {self.node_id} exited before answering {doc}:\n" + self.log_tail()
                    )
                answer = json.loads(line)
                if not isinstance(answer, dict):
                    raise NodeProcessError(f"node {self.node_id} answered {answer!r}")
                if "event" not in answer:
                    return answer
                self.events.append(answer)

    async def wait_event(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = REQUEST_TIMEOUT_S
    ) -> dict[str, Any]:
        """The first event (seen or still to come) that satisfies `predicate`."""
        proc = self.proc
        if proc is None or proc.stdout is None or not self.program:
            raise NodeProcessError(f"node {self.node_id} runs no host program")
        async with asyncio.timeout(timeout_s):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                line = await proc.stdout.readline()
                if not line:
                    raise NodeProcessError(f"node {self.node_id} exited:\n" + self.log_tail())
                answer = json.loads(line)
                if isinstance(answer, dict) and "event" in answer:
                    self.events.append(answer)

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> dict[str, object]:
        """The READY document, once the node printed it; raises with the log tail otherwise."""
        proc = self.proc
        if proc is None or proc.stdout is None:
            raise NodeProcessError(f"node {self.node_id} was not started")
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    line = await proc.stdout.readline()
                    if not line:
                        await proc.wait()
                        raise NodeProcessError(
                            f"node {self.node_id} exited with {proc.returncode} before Ready:\n"
                            + self.log_tail()
                        )
                    text = line.decode(errors="replace").strip()
                    if text.startswith(READY_PREFIX):
                        doc = json.loads(text[len(READY_PREFIX) :])
                        assert isinstance(doc, dict)
                        self.ready = doc
                        return doc
        except TimeoutError:
            raise NodeProcessError(
                f"node {self.node_id} not Ready within {timeout_s} s:\n" + self.log_tail()
            ) from None

    def kill(self) -> None:
        """SIGKILL: no shutdown path runs (the crash the tests are about)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    def pause(self) -> None:
        """SIGSTOP, and return once every thread of the process has stopped: the signal is
        delivered asynchronously, and a thread still running could answer one more request."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)
            _wait_stopped(self.proc.pid)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    async def wait_exit(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        if self.proc is None:
            return 0
        async with asyncio.timeout(timeout_s):
            return await self.proc.wait()

    async def stop(self) -> int:
        """SIGTERM and wait (clean shutdown); SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.returncode is not None:
            return 0 if self.proc is None else int(self.proc.returncode or 0)
        self.resume()
        self.proc.terminate()
        try:
            return await self.wait_exit()
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()

    async def wait_log(self, needle: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until `needle` is in the node's log (its tail), bounded: for a state the node only
        reports in its log, such as a join attempt under way."""
        async with asyncio.timeout(timeout_s):
            while needle not in self.log_tail():  # noqa: ASYNC110 - a log file has no event
                await asyncio.sleep(LOG_POLL_S)

    def log_tail(self) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return "(no log)"
        return data[-LOG_TAIL_BYTES:].decode(errors="replace")


@dataclass(slots=True)
class LocalCluster:
    """N node processes on 127.0.0.1..N sharing one port, mTLS by default."""

    base_dir: Path
    size: int
    secure: bool = True
    overrides: dict[str, object] = field(default_factory=dict)
    program: tuple[str, ...] = ()
    """Run this host program on every node instead of `nodedb-cluster start` (NodeProcess)."""
    port: int = 0
    """The port every node listens on (SWIM on the next); 0 = one free right now. A data
    directory written earlier records its peers' addresses, so a cluster restarted on one
    needs the port it was written with."""
    nodes: dict[int, NodeProcess] = field(default_factory=dict)
    client_credentials: Credentials = field(default_factory=Insecure)
    """A client-role certificate (KV operations, status), as an application holds."""
    admin_credentials: Credentials = field(default_factory=Insecure)
    """An admin-role certificate (membership operations, the bench load RPC), as an operator
    holds."""

    def __post_init__(self) -> None:
        hosts = [f"127.0.0.{i}" for i in range(1, self.size + 1)]
        port = self.port or free_port(hosts)
        seeds = tuple(parse_socket_addr(f"{h}:{port}") for h in hosts)
        creds: list[Mtls] = []
        if self.secure:
            creds = self._credentials(hosts)
            self.client_credentials, self.admin_credentials = creds[-2], creds[-1]
        for i, seed in enumerate(seeds, start=1):
            tls: dict[str, object] = {"insecure_transport": True}
            if self.secure:
                tls = {
                    "tls_ca_path": creds[i - 1].ca,
                    "tls_cert_path": creds[i - 1].cert,
                    "tls_key_path": creds[i - 1].key,
                }
            config = ClusterConfig(
                node_id=i,
                listen_addr=seed,
                seed_nodes=seeds,
                data_dir=self.base_dir / f"node{i}",
                join_retry=JoinRetryPolicy(max_attempts=8, max_backoff_secs=2),
                **tls,  # type: ignore[arg-type]
            )
            if self.overrides:
                config = replace(config, **self.overrides)  # type: ignore[arg-type]
            self.nodes[i] = NodeProcess(
                config,
                self.base_dir / f"node{i}.toml",
                self.base_dir / f"node{i}.log",
                program=self.program,
            )

    def node_credentials(self, node_id: int) -> Mtls:
        """Node `node_id`'s own certificate (tests that speak as a node from another port)."""
        c = self.nodes[node_id].config
        if c.tls_ca_path is None or c.tls_cert_path is None or c.tls_key_path is None:
            raise ValueError(f"node {node_id} runs without TLS")
        return Mtls(c.tls_ca_path, c.tls_cert_path, c.tls_key_path)

    def _credentials(self, hosts: list[str]) -> list[Mtls]:
        """The nodes', the client's and the admin's, in that order: those `base_dir/certs`
        already holds (a cluster restarted on its old directories keeps its keys, which its
        peers pin), else new ones."""
        out = self.base_dir / "certs"
        names = [f"n{i}" for i in range(1, len(hosts) + 1)]
        if (out / "ca.pem").exists():
            ca = out / "ca.pem"
            return [
                Mtls(ca, out / f"{n}.pem", out / f"{n}.key") for n in [*names, "client", "admin"]
            ]
        return generate_cluster_credentials(
            out,
            "localcluster",
            [*((n, [h]) for n, h in zip(names, hosts, strict=True)), ("client", ["127.0.0.1"])],
            admins=[("admin", ["127.0.0.1"])],
        )

    async def start(self, node_ids: Iterable[int] | None = None) -> None:
        """Start the given nodes (default all) at once and wait until each is Ready."""
        chosen = [self.nodes[i] for i in (node_ids or self.nodes)]
        for node in chosen:
            await node.start()
        await asyncio.gather(*(node.wait_ready() for node in chosen))

    async def status(self, node_id: int, timeout_s: float = 2.0) -> Status:
        return await fetch_status(self.nodes[node_id].addr, self.client_credentials, timeout_s)

    async def wait_for(
        self,
        predicate: Callable[[dict[int, Status]], bool],
        node_ids: Iterable[int],
        timeout_s: float,
        what: str,
    ) -> dict[int, Status]:
        """Poll the nodes' status until `predicate(statuses)` holds; bounded by `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        ids = list(node_ids)
        last_error = ""
        while loop.time() < deadline:
            statuses: dict[int, Status] = {}
            for i in ids:
                try:
                    statuses[i] = await self.status(i)
                except ClusterError as e:
                    last_error = str(e)
            if len(statuses) == len(ids) and predicate(statuses):
                return statuses
            await asyncio.sleep(0.1)  # remote state has no push channel: poll, bounded
        raise Timeout(f"waiting for {what} ({last_error})", int(timeout_s * 1000))

    async def wait_formed(self, timeout_s: float = 60.0) -> dict[int, Status]:
        """Until every node sees all `size` nodes and every group has a leader and
        min(size, RF) voters (`groups_formed`: the state a bench or a test of the formed
        cluster starts from)."""
        size = self.size
        voters = min(size, self.nodes[1].config.replication_factor)
        return await self.wait_for(
            lambda s: (
                all(len(st["nodes"]) == size for st in s.values()) and groups_formed(s, voters)
            ),
            self.nodes,
            timeout_s,
            f"every node to see {size} nodes and every group {voters} voters and a leader",
        )

    def readdress(self, node_id: int, host: str, port: int | None = None) -> None:
        """Point a stopped node's config at `host` (and `port`, default its own; SWIM on the
        next port when it runs SWIM) and issue its certificate again for `host` over the same
        key, as an operator moving a node does (`gen-certs --renew n<id>=IP`). Its next start
        records the address through the cluster."""
        node = self.nodes[node_id]
        if node.running:
            raise NodeProcessError(f"node {node_id} is running: stop it first")
        port = node.config.listen_addr.port if port is None else port
        swim = node.config.swim_udp_addr
        node.config = replace(
            node.config,
            listen_addr=parse_socket_addr(f"{host}:{port}"),
            swim_udp_addr=None
            if swim is None
            else parse_socket_addr(f"{host}:{port + SWIM_PORT_OFFSET}"),
        )
        if isinstance(self.client_credentials, Mtls):
            certs = self.base_dir / "certs"
            renew_node_credentials(
                certs / "ca.pem",
                ca_key_path(certs),
                certs / f"n{node_id}.pem",
                certs / f"n{node_id}.key",
                sans=[host],
            )

    async def close(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL) — also after a failure or Ctrl-C."""
        await asyncio.gather(*(n.stop() for n in self.nodes.values()), return_exceptions=True)
        for node in self.nodes.values():
            with contextlib.suppress(ProcessLookupError):
                if node.proc is not None and node.proc.returncode is None:
                    os.kill(node.proc.pid, signal.SIGKILL)
