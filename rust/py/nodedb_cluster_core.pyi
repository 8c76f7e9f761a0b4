"""Type stubs of the Rust core module (maturin ships this file with the wheel).

Each concern's section mirrors one file of rust/py/src/ (transport.rs, wire.rs, ...).
"""

from asyncio import Future
from collections.abc import Awaitable, Callable
from os import PathLike
from pathlib import Path
from typing import Final

__version__: Final[str]

def build_profile() -> str:
    """ "release" or "debug": benchmarks refuse debug builds."""

def _probe_async_runtimes() -> Awaitable[None]:
    """DIAGNOSTICS: one trip through pyo3-async-runtimes (the bridging we did not take)."""

# --- Rust log records (rust/py/src/hostlog.rs) ----------------------------------------------------

def set_log_level(level: int) -> None:
    """Queue Rust records at this Python level and above (the first call routes them here)."""

def take_log_records() -> list[tuple[float, int, str, str, list[tuple[str, str]], int]]:
    """(unix time, level, component, message, fields, left out before it), oldest first."""

def log_records_dropped() -> int: ...

# --- wire (rust/py/src/wire.rs) ------------------------------------------------------------------

FORMAT_VERSION: Final[int]
HEADER_BYTES: Final[int]
HOST_ITEMS_MAX: Final[int]
HOST_VERSION: Final[int]
PAYLOAD_BYTES_MAX: Final[int]
WIRE_VERSION: Final[int]
WIRE_VERSION_MIN: Final[int]

def encode_frame(kind: int, payload: bytes) -> bytes: ...
def decode_frame(data: bytes) -> tuple[int, bytes]:
    """Raises nodedb_cluster.errors.FrameError (with `.code`) on malformed input."""

def message_kinds() -> list[tuple[int, str, bool]]:
    """The kind table: (number, name, active)."""

def check_control_payload(kind: int, payload: bytes) -> bytes:
    """Decode with the Rust schema of `kind`, re-encode (named fields)."""

# --- transport (rust/py/src/transport.rs) --------------------------------------------------------

ALPN: Final[str]

class Credentials:
    @staticmethod
    def mtls(
        ca: str | PathLike[str],
        cert: str | PathLike[str],
        key: str | PathLike[str],
        crls: list[str | PathLike[str]] = ...,
    ) -> Credentials: ...
    @staticmethod
    def insecure() -> Credentials: ...
    @property
    def is_insecure(self) -> bool: ...
    def spki_pin(self) -> bytes | None: ...

class Peer:
    @property
    def addr(self) -> str: ...
    @property
    def spki_pin(self) -> bytes | None: ...
    @property
    def identity(self) -> str | None: ...
    @property
    def cert_addresses(self) -> list[str] | None: ...
    @property
    def role(self) -> str | None: ...
    @property
    def node_id(self) -> int | None: ...

class Responder:
    """Answers one inbound request, once."""

    @property
    def kind(self) -> int: ...
    def reply(self, kind: int, payload: bytes) -> bool: ...
    def fail(self, code: str, message: str) -> bool: ...
    def done(self) -> bool: ...

Dispatch = Callable[[Responder, Peer, int, bytes], None]

HistogramRow = tuple[str, list[float], list[int], float, int]
"""(name, bucket upper bounds in seconds, cumulative counts with +Inf last, sum_s, count)."""

class Transport:
    """Async operations take an asyncio future and resolve it through the loop bridge: the
    owning loop must `add_reader(bridge_fd(), drain)`."""

    def __init__(
        self,
        node_id: int,
        listen_addr: str,
        credentials: Credentials,
        rpc_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        keep_alive_interval: float = 1.0,
        idle_timeout: float = 5.0,
    ) -> None: ...
    def bridge_fd(self) -> int: ...
    def drain(self) -> int: ...
    @property
    def calls_unresolved(self) -> int: ...
    @property
    def node_id(self) -> int: ...
    @property
    def local_addr(self) -> str: ...
    @property
    def spki_pin(self) -> bytes | None: ...
    @property
    def identity(self) -> str | None: ...
    def refusal_counts(self) -> dict[tuple[str, str], int]: ...
    def take_refusal_lines(self) -> list[tuple[str, str, str, str, str, int]]: ...
    def record_refusal(self, peer: Peer, kind: int, reason: str, message: str) -> None: ...
    @property
    def closed(self) -> bool: ...
    def set_crls(self, paths: list[str | PathLike[str]]) -> int: ...
    def register_peer(self, node_id: int, addr: str, spki_pin: bytes | None = None) -> None: ...
    def unregister_peer(self, node_id: int) -> bool: ...
    def dial_peers(self) -> None: ...
    def announce_address(self) -> None: ...
    def announce_address_to(self, addrs: list[str]) -> None: ...
    def send_rpc(
        self,
        node_id: int,
        kind: int,
        payload: bytes,
        future: Future[tuple[int, bytes]],
        answer_within_ms: int | None = None,
    ) -> None: ...
    def send_rpc_to_addr(
        self, addr: str, kind: int, payload: bytes, future: Future[tuple[int, bytes]]
    ) -> None: ...
    def send_rpc_fresh(
        self, addr: str, kind: int, payload: bytes, future: Future[tuple[int, bytes]]
    ) -> None: ...
    def send_rpc_many(
        self,
        node_id: int,
        kind: int,
        payloads: list[bytes],
        future: Future[list[tuple[int, bytes]]],
    ) -> None: ...
    def send_oneway(
        self, node_id: int, kind: int, payload: bytes, future: Future[None]
    ) -> None: ...
    def serve(self, dispatch: Dispatch | None) -> None: ...
    def register_echo_handler(self, kind: int) -> None: ...
    def close(self, future: Future[None]) -> None: ...
    def metrics(self) -> dict[str, int]: ...
    def served_histograms(self) -> list[HistogramRow]:
        """Inbound requests served, by kind name (kinds served at least once)."""
    def pooled_connection_id(self, addr: str) -> int | None: ...
    def _probe_bridge(self, future: Future[None]) -> None: ...
    def _send_raw_to_addr(
        self, addr: str, data: bytes, future: Future[tuple[int, bytes] | int]
    ) -> None: ...

def generate_cluster_credentials(
    dir: str | PathLike[str],
    cluster_name: str,
    leaves: list[tuple[str, str, list[str]]],
    days: int,
) -> list[tuple[Path, Path, Path]]: ...
def certificate_not_after(path: str | PathLike[str]) -> int: ...
def cert_identity(path: str | PathLike[str]) -> tuple[str, str, str, int | None]: ...
def revoke_node_credentials(
    ca_cert: str | PathLike[str],
    ca_key: str | PathLike[str],
    revoked: list[str | PathLike[str]],
    out: str | PathLike[str],
) -> tuple[int, int, int]: ...
def issue_node_credentials(
    ca_cert: str | PathLike[str],
    ca_key: str | PathLike[str],
    role: str,
    name: str,
    sans: list[str],
    days: int,
    dir: str | PathLike[str],
) -> tuple[Path, Path, Path]: ...
def renew_node_credentials(
    ca_cert: str | PathLike[str],
    ca_key: str | PathLike[str],
    cert: str | PathLike[str],
    key: str | PathLike[str],
    days: int,
    sans: list[str] | None = None,
) -> tuple[Path, Path, Path]: ...
def certificate_addresses(path: str | PathLike[str]) -> list[str]: ...

# --- Multi-Raft engine (rust/py/src/raft.rs) -----------------------------------------------------

def check_raft_timings(
    tick_interval_ms: int,
    heartbeat_ticks: int,
    election_ticks: int,
    driver_stall_max_ms: int | None = None,
) -> None:
    """The engine's rules on its timings; `ConfigError` naming the engine's field."""

class RaftEngine:
    """One node's Multi-Raft engine over its Transport. Async operations take an asyncio future
    and resolve it through this engine's loop bridge (`add_reader(bridge_fd(), drain)`)."""

    def __init__(
        self,
        node_id: int,
        data_dir: str | PathLike[str],
        transport: Transport,
        state_machine_factory: Callable[[int], object] | None = None,
        tick_interval_ms: int = 100,
        heartbeat_ticks: int = 1,
        election_ticks: int = 8,
        snapshot_threshold_entries: int = 20000,
        snapshot_threshold_bytes: int = 33554432,
        install_snapshot_chunk_bytes: int = 4194304,
        orphan_partial_max_age_secs: int = 300,
        max_uncommitted_bytes: int = 33554432,
        rejoin: bool = False,
        free_space_reserve_bytes: int | None = None,
        share_bridge: bool = False,
        driver_stall_max_ms: int | None = None,
    ) -> None:
        """`share_bridge=True`: use `transport`'s loop bridge (then `bridge_fd()` is the
        transport's fd and `drain()` drains it: watch that fd once, not once per object)."""
    def discarded_groups(self) -> list[tuple[int, int, int]]: ...
    def leader(self, group_id: int) -> int | None: ...
    def leaders(self) -> tuple[int, list[tuple[int, int | None, int]]]: ...
    def wait_leaders_changed(
        self, since: int, future: Future[int], timeout_ms: int = 5000
    ) -> None: ...
    @property
    def no_space(self) -> bool: ...
    def recovery_repairs(self) -> list[dict[str, str | int]]: ...
    def bridge_fd(self) -> int: ...
    def drain(self) -> int: ...
    @property
    def calls_unresolved(self) -> int: ...
    @property
    def node_id(self) -> int: ...
    def add_group(
        self,
        group_id: int,
        voters: list[int] | None,
        kind: str,
        future: Future[None],
        timeout_ms: int = 5000,
    ) -> None: ...
    def remove_group(self, group_id: int, future: Future[None], timeout_ms: int = 5000) -> None: ...
    def propose(
        self, group_id: int, data: bytes, timeout_ms: int, future: Future[tuple[int, bytes]]
    ) -> None: ...
    def serve_kv_requests(
        self, transport: Transport, read_lease: bool, quota_bytes: int
    ) -> None:
        """Answer every KV_REQUEST of `transport` in Rust (none reaches Python); undone by
        `close`. `read_lease`: linearizable reads may use the leader's lease; `quota_bytes`:
        a group at it takes only deletes (0: no quota)."""
    def serve_host_proposals(self, transport: Transport) -> None:
        """Answer every HOST_PROPOSE of `transport` in Rust (none reaches Python); undone by
        `close`."""
    def set_kv_routing(
        self, routing: bytes, nodes: list[tuple[int, str, bytes | None]]
    ) -> None:
        """The snapshot KV_REQUEST `routing` is answered with: `RoutingTable.encode()` and
        (node_id, "ip:port", spki pin or None) per member. Call on every metadata change; until
        the first call `routing` answers an Error (code "Unavailable"). Needs
        `serve_kv_requests` first (else ClusterError)."""
    def propose_batch(
        self,
        group_id: int,
        payloads: list[bytes],
        timeout_ms: int,
        future: Future[tuple[int, list[bytes]]],
        kind: str | None = None,
    ) -> None: ...
    def propose_each(
        self,
        group_id: int,
        payloads: list[bytes],
        timeout_ms: int,
        future: Future[list[tuple[int, bytes] | BaseException]],
        kind: str | None = None,
    ) -> None: ...
    def read_index(self, group_id: int, timeout_ms: int, future: Future[int]) -> None: ...
    def wait_stopped(self, future: Future[str]) -> None: ...
    def status(
        self, group_id: int, future: Future[dict[str, object]], timeout_ms: int = 5000
    ) -> None: ...
    def groups(self, future: Future[list[int]], timeout_ms: int = 5000) -> None: ...
    def statuses(
        self, future: Future[list[dict[str, object]]], timeout_ms: int = 5000
    ) -> None: ...
    def change_membership(
        self,
        group_id: int,
        changes: list[tuple[str, int]],
        timeout_ms: int,
        future: Future[list[int]],
    ) -> None: ...
    def transfer_leader(
        self, group_id: int, to_node_id: int, timeout_ms: int, future: Future[None]
    ) -> None: ...
    def campaign(self, group_id: int, future: Future[None], timeout_ms: int = 5000) -> None: ...
    def snapshot_now(
        self, group_id: int, future: Future[None], timeout_ms: int = 30000
    ) -> None: ...
    def kv_get(self, group_id: int, key: bytes) -> bytes | None: ...
    def kv_summary(self, group_id: int) -> tuple[int, int, int, int, int, int]: ...
    def kv_vshard_export(
        self, group_id: int, vshard: int, move_id: int, delta: bool, chunk_bytes: int = 1 << 20
    ) -> list[bytes]: ...
    def kv_vshard_stats(self, group_id: int) -> list[tuple[int, int, int]]: ...
    def kv_vshard_states(self, group_id: int) -> dict[int, tuple[str, int, int]]: ...
    def metrics(self) -> dict[str, int]: ...
    def histograms(self) -> list[HistogramRow]:
        """WAL fsync, proposal commit, apply batch, snapshot send and apply durations."""
    def leader_changes(self) -> dict[int, int]: ...
    def kv_requests(self) -> list[tuple[str, str, int]]:
        """(op, result, count) of the KV requests served here."""
    def close(self) -> None: ...

def kv_command(
    op: str, key: bytes, value: bytes | None = None, expected: bytes | None = None
) -> bytes: ...
def kv_session(client: int, seq: int, acked_below: int, inner: bytes) -> bytes: ...
def kv_result(data: bytes) -> tuple[str, bytes | None]: ...
def kv_vshard_command(op: str, vshard: int, group: int = 0, move_id: int = 0) -> bytes: ...
def kv_check_result(result: bytes) -> None: ...
def kv_routing_request() -> bytes: ...
def kv_routing_answer(payload: bytes) -> tuple[bytes, list[tuple[int, str, bytes | None]]]: ...
def kv_read_here_request(
    group: int, keys: list[bytes], level: str, stale_s: float, timeout_ms: int
) -> bytes: ...
def kv_results_answer(payload: bytes) -> list[bytes | None]: ...

# --- native load driver (rust/py/src/kv_load.rs) ------------------------------------------------

class NativeLoad:
    """A running `run_native_load`."""

    @property
    def counts(self) -> tuple[int, int, int]: ...

def run_native_load(
    client: KvClient,
    clients: int,
    duration_s: float,
    value_bytes: int,
    keyspace: int,
    read_fraction: float,
    seed: int,
    timeout_s: float,
    future: Future[dict[str, object]],
) -> NativeLoad: ...

# --- KV client core (rust/py/src/kv_client.rs) ---------------------------------------------------

class KvClient:
    """`nodedb_cluster.Client`'s request path. Call methods take an asyncio future (resolved
    through this object's loop bridge: `add_reader(bridge_fd(), drain)`) and return True when
    the caller must schedule `flush()` for this loop iteration."""

    def __init__(
        self,
        transport: Transport,
        node_id: int,
        timeout_s: float = 5.0,
        client_id: int | None = None,
        share_bridge: bool = False,
    ) -> None:
        """`share_bridge=True`: use `transport`'s loop bridge, as for `RaftEngine`."""
    def serve_locally(self, engine: RaftEngine) -> None:
        """Serve this node's own share (proposals, reads at every level of the groups it leads
        or serves) in process through `engine`'s KV server; `engine.serve_kv_requests` must
        have run."""
    def bridge_fd(self) -> int: ...
    def drain(self) -> int: ...
    def watch_routing(self, future: Future[None]) -> None:
        """Resolve `future` once the routing table is stale: a group answered Moved, or none of
        a group's members found a leader (paced)."""
    def routing_stale(self) -> bool: ...
    def set_routing(
        self, vshard_to_group: list[int], routes: list[tuple[int, int, list[int]]]
    ) -> None: ...
    retry_unknown_writes: bool
    @property
    def client_id(self) -> int: ...
    @property
    def acked_below(self) -> int: ...
    @property
    def writes_in_flight(self) -> int: ...
    @property
    def requests_sent(self) -> int: ...
    @property
    def calls_unresolved(self) -> int: ...
    def group_of(self, key: bytes) -> int: ...
    def leader_hint(self, group: int) -> int: ...
    def set_dead(self, node_id: int, dead: bool) -> None:
        """SWIM's verdict (True: dead or departed): the node is tried last and forgotten as the
        learned leader of its groups."""
    def put(
        self, key: bytes, value: bytes, timeout_s: float | None, future: Future[None]
    ) -> bool: ...
    def delete(self, key: bytes, timeout_s: float | None, future: Future[bool]) -> bool: ...
    def cas(
        self,
        key: bytes,
        expected: bytes | None,
        new: bytes,
        timeout_s: float | None,
        future: Future[bool],
    ) -> bool: ...
    def put_many(
        self, items: list[tuple[bytes, bytes]], timeout_s: float | None, future: Future[None]
    ) -> bool: ...
    def get_many(
        self,
        keys: list[bytes],
        level: str,
        max_staleness_s: float,
        timeout_s: float | None,
        future: Future[list[bytes | None]] | Future[bytes | None],
        single: bool = False,
    ) -> bool:
        """True when the caller must flush. Inside a node, a read the node may answer now
        (lease, fresh follower read) has `future` resolved before this returns (and False)."""
    def flush(self) -> None: ...
    def close(self) -> None: ...
