"""ClusterConfig: every knob of a node, validated once at construction (docs/JOIN.md,
"Configuration").

A config that constructs is one the node can run with: each refusal is a `ConfigError` naming the
field. Addresses are parsed once, here, into `SocketAddr`. Sources, in increasing precedence: field
defaults, a TOML file (`from_toml`), explicit overrides (`from_toml(..., overrides=)`, CLI flags via
`config_from_args`). The mapping/TOML form uses the field names below; `join_retry` and `swim` are
nested tables. Relative paths are taken relative to the process's working directory, as given.

Nested tables (`_TABLES`): a group of knobs that already has its own validated dataclass
(`JoinRetryPolicy`, `SwimConfig`) is one TOML table named after the field (`[swim]`
`probe_interval_ms = 200`), one CLI flag per knob (`--swim-probe-interval-ms 200`), merged key
by key when overrides are applied, and every refusal names `table.knob`, exactly what the user
wrote. A table rather than flat `swim_*` fields: the knobs stay one value the SWIM layer takes as
is (no field list kept in sync in two places), and `join_retry` set the pattern the loader
already handles.

Timing defaults aim at leader failover within 2 s: the Raft tick is 100 ms, the leader heartbeats
every tick, and a follower that hears nothing campaigns after a randomized 500..1000 ms. Detection
therefore takes at most 1 s, a vote round a few LAN round trips, and even one split vote (another
randomized timeout) stays under 2 s. All Raft timings are whole multiples of the tick, because the
Raft core counts ticks, not milliseconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, cast

from nodedb_cluster.addr import SocketAddr, parse_socket_addr
from nodedb_cluster.docstrings import field_docs, first_sentence
from nodedb_cluster.errors import ConfigError, InvalidAddress
from nodedb_cluster.formation.join_token import TOKEN_HEX_CHARS, parse_token
from nodedb_cluster.formation.retry import JoinRetryPolicy
from nodedb_cluster.membership.config import SwimConfig
from nodedb_cluster.validate import check_int, require_int

# --- limits, each with its reason -----------------------------------------------------------------

U64_MAX: Final = 2**64 - 1
NUM_GROUPS_MAX: Final = 1024
"""There are 1024 vShards; a data group without a vShard would be pure overhead."""
REPLICATION_FACTOR_MAX: Final = 15
"""Quorum latency grows with voters; past 15 no failure model we target gains anything."""
SEED_NODES_MAX: Final = 64
"""A join attempt walks every seed once; the list must stay short enough to walk in a timeout."""
TICK_INTERVAL_MS_MAX: Final = 10_000
HEARTBEAT_INTERVAL_MS_MAX: Final = 60_000
ELECTION_TIMEOUT_MS_MAX: Final = 600_000
RPC_TIMEOUT_MS_MAX: Final = 600_000
"""Ten minutes: any RPC slower than that is a hang, not a slow peer."""
INSTALL_SNAPSHOT_CHUNK_BYTES_MAX: Final = 64 * 1024 * 1024
"""docs/WIRE.md caps a frame payload at 64 MiB; a chunk must fit in one frame."""
ORPHAN_PARTIAL_MAX_AGE_SECS_MAX: Final = 7 * 24 * 3600
DRIVER_STALL_MAX_MS_MAX: Final = 24 * 3600 * 1000
"""A day: a watchdog bound longer than that watches nothing a supervisor would not see first."""

DEFAULT_INSTALL_SNAPSHOT_CHUNK_BYTES: Final = 4 * 1024 * 1024
SWIM_PORT_OFFSET: Final = 1
"""SWIM's default UDP port is the listen port + 1, on the listen IP. QUIC owns the listen port's
UDP socket, so SWIM needs a port of its own; deriving it leaves nothing to configure, and a
fixed port would collide between nodes that share one IP."""
SWIM_OFF: Final = "off"
"""The `swim_udp_addr` value (TOML, `--swim-udp-addr off`) that turns SWIM off."""


class _DerivedSwimAddr:
    """Marker default of `swim_udp_addr`: replaced at construction by listen IP, port + 1."""

    def __repr__(self) -> str:
        return "<listen port + 1>"


SWIM_UDP_ADDR_DEFAULT: Final = cast(SocketAddr, _DerivedSwimAddr())
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
KV_QUOTA_BYTES_DEFAULT: Final = 2 << 30
"""etcd's default backend quota: a size its users know to plan memory for."""
KV_QUOTA_BYTES_MAX: Final = (1 << 63) - 1
LOG_FORMATS: Final = ("text", "json")

_TLS_FIELDS: Final = ("tls_ca_path", "tls_cert_path", "tls_key_path")
_ADDR_FIELDS: Final = frozenset({"listen_addr", "swim_udp_addr", "metrics_addr"})
_PATH_FIELDS: Final = frozenset({"data_dir", "cluster_secret_path", "tls_crl_path", *_TLS_FIELDS})
_BOOL_FIELDS: Final = frozenset(
    {
        "force_bootstrap",
        "insecure_transport",
        "swim_insecure",
        "balance_leaders",
        "allow_bench_load",
        "rejoin",
        "read_lease",
    }
)
_STR_FIELDS: Final = frozenset({"join_token", "log_level", "log_format"})
_CHOICES: Final = {"log_level": LOG_LEVELS, "log_format": LOG_FORMATS}
"""String fields that take one of a few words."""
_REQUIRED_FIELDS: Final = ("node_id", "listen_addr", "data_dir")
_INT_RE: Final = re.compile(r"-?[0-9]{1,20}")
_TABLES: Final[dict[str, type[JoinRetryPolicy] | type[SwimConfig]]] = {
    "join_retry": JoinRetryPolicy,
    "swim": SwimConfig,
}
"""Fields that are a nested table of integer knobs, and the dataclass each table builds."""
_ENGINE_KEYS: Final = {
    "tick_interval": "tick_interval_ms",
    "heartbeat_ticks": "heartbeat_interval_ms",
    "election_ticks": "election_timeout_min_ms",
    "driver_stall_max": "driver_stall_max_ms",
}
"""The engine's field (its `check_raft_timings` refusal) -> this config's key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    """One node's configuration. Construct with keywords; invalid values raise `ConfigError`."""

    node_id: int
    """This node's id: a non-zero u64, unique in the cluster for the cluster's whole life."""
    listen_addr: SocketAddr
    """The QUIC address peers reach this node on (also its identity in the seed order)."""
    data_dir: Path
    """This node's directory: `catalog/`, `raft/`, `snapshots/`, the audit log."""
    seed_nodes: tuple[SocketAddr, ...] = ()
    """Addresses to join through; the smallest bootstraps. Ignored once the catalog is formed."""
    num_groups: int = 4
    """Data groups (1..1024) a bootstrap creates; group 0, the metadata group, comes on top.
    Read at bootstrap only (a restart asking for more warns): `add-groups` adds groups later."""
    replication_factor: int = 3
    """Voters per data group (1..15), capped at the number of live nodes."""
    force_bootstrap: bool = False
    """Bootstrap even if this is not the smallest seed; requires listen_addr to be a seed."""
    rejoin: bool = False
    """Start even though this node's Raft log lost entries it acknowledged (or its catalog is
    gone): discard this node's copy of the damaged groups (all of them without a catalog) and
    rejoin as a fresh replica the leaders re-replicate, keeping the node id. Without it such a
    node refuses to start."""
    balance_leaders: bool = False
    """Hand data-group leaderships to nodes that lead fewer (reconcile.plan_leader_balance).
    Off by default: with every node on one host (shared cores and disk) spreading leaders cut
    64-client writes/s to 0.40x (benches/compare/leader_balance.py, BENCHMARKS.md); turn it on
    when nodes have hosts of their own, so each leader's work lands on its own CPU and disk."""
    rebalance_interval_ms: int = 30_000
    """How often the rebalancer plans (metadata/rebalance.py): replicas onto nodes that have
    few, off DRAINING nodes and nodes dead longer than dead_node_grace_ms; 0 turns it off."""
    rebalance_moves_max: int = 10
    """Replica moves one plan may start."""
    rebalance_concurrent_moves_max: int = 4
    """Replica moves (and joins) in flight at once, cluster-wide."""
    rebalance_imbalance_percent: int = 20
    """Replicas per node (or bytes per group) are balanced once max - min exceeds this share of
    the mean (and one replica)."""
    vshard_move_pause_budget_ms: int = 500
    """How long a vShard move may pause its vShard's writes (from the freeze to the route's
    flip); a move that cannot flip within it aborts and leaves the vShard where it was."""
    vshard_move_duty_percent: int = 15
    """vShard moves are background work: a node's mover spends at most this share of the time
    moving. After a move that took d, its next move starts no sooner than d x (100 / duty - 1)
    later (a move's Raft rounds in three groups and two group 0 changes on every node cost about
    as much CPU as the move lasts; BENCHMARKS.md); the rest is at most 2 s. 100: back to back."""
    dead_node_grace_ms: int = 300_000
    """A node SWIM has reported dead for this long gets its replicas re-created on live nodes
    (when a node outside the group can take them); until then they wait for it."""
    join_retry: JoinRetryPolicy = field(default_factory=JoinRetryPolicy)
    join_token: str | None = field(default=None, repr=False)
    """The operator's token admitting this node id (`nodedb-cluster join-token`, 96 hex
    characters); needed to join an mTLS cluster that does not list this node's address among its
    seeds. Ignored once the node belongs to a cluster. A bearer credential: kept out of repr."""
    swim_udp_addr: SocketAddr | None = SWIM_UDP_ADDR_DEFAULT
    """UDP address of SWIM, the failure detector (default: the listen IP, listen port + 1;
    `off` turns it off). Its datagrams are keyed by the cluster secret. From Python, None is
    off."""
    cluster_secret_path: Path | None = None
    """File with the cluster secret (16..4096 raw bytes, same on every node) keying SWIM's HMAC;
    required to run SWIM unless swim_insecure (checked when SWIM starts: membership/secret.py)."""
    swim_insecure: bool = False
    """Run SWIM without datagram authentication; must be asked for by name, excludes the secret."""
    swim: SwimConfig = field(default_factory=SwimConfig)
    """SWIM timings and bounds (the `[swim]` table: probe_interval_ms, probe_timeout_ms,
    indirect_probes, suspicion_mult, suspicion_min_ms, piggyback_updates_max, ...)."""
    tick_interval_ms: int = 100
    """One Raft tick; every Raft timing below is a whole number of ticks."""
    heartbeat_interval_ms: int = 100
    """Leader heartbeat period (>= one tick)."""
    election_timeout_min_ms: int = 500
    """Lower end of the randomized election timeout; must exceed the heartbeat interval."""
    election_timeout_max_ms: int = 1000
    """Upper end (exclusive) of the randomized election timeout; must exceed the lower end."""
    read_lease: bool = True
    """A leader answers linearizable KV reads from its lease (no quorum round) while one holds:
    clocks of the nodes may run at rates up to 10 % apart (docs/KV.md, "Read levels"). False:
    every linearizable read takes a ReadIndex round and nothing is assumed of clocks."""
    kv_quota_bytes: int = KV_QUOTA_BYTES_DEFAULT
    """A data group whose keys, values and cached session results reach this many bytes takes no
    more writes but deletes (`QuotaExceeded`, not retried; reads go on) until deletes bring it
    below: a group's state lives in every replica's memory. 0: no quota. Set it alike on every
    node (the leader checks it); memory use is higher than the count by the maps' overhead."""
    install_snapshot_chunk_bytes: int = DEFAULT_INSTALL_SNAPSHOT_CHUNK_BYTES
    """Snapshot transfer chunk size (1 B..64 MiB)."""
    orphan_partial_max_age_secs: int = 300
    """A `*.partial` snapshot file older than this, with no transfer behind it, is removed."""
    driver_stall_max_ms: int | None = None
    """The Raft engine's driver thread beginning no loop for this long (a host state machine's
    `apply_batch`, `snapshot` or `restore` that does not return, a disk whose sync hangs) stops
    the node with that reason instead of leaving it up and serving nothing. None: 60 s (the
    engine's default); 0: not watched; else at least two ticks."""
    rpc_timeout_ms: int = 5000
    """Bound on connect plus a whole request/response (join, forwarding, ...)."""
    tls_ca_path: Path | None = None
    """Cluster CA (PEM). The three TLS paths come together, or none with insecure_transport."""
    tls_cert_path: Path | None = None
    """This node's certificate chain (PEM)."""
    tls_key_path: Path | None = None
    """This node's private key (PEM); refused at start unless only its owner can read it."""
    tls_crl_path: Path | None = None
    """Certificate revocation list (PEM, signed by the cluster CA; `nodedb-cluster revoke`):
    peers it revokes are refused. Read at start and again on SIGHUP (`Node.reload_crl`), which
    also closes live connections of newly revoked peers; mTLS only."""
    insecure_transport: bool = False
    """Run without TLS; must be asked for by name (docs/WIRE.md) and excludes the TLS paths."""
    metrics_addr: SocketAddr | None = None
    """TCP address for the metrics endpoint; None disables it."""
    allow_bench_load: bool = False
    """Serve BENCH_LOAD (load generation inside this node, writing `bench:*` keys into the
    user's keyspace) to admin certificates. Off by default: the CLI's self-started bench and demo
    clusters turn it on; a production node never needs it. The `start` command installs the
    bench tool's handler (`bench.serve_embedded_load`); `start_cluster` alone only refuses it."""
    log_level: str = "info"
    """The `start` command's log lines on stderr at this level and above: debug, info, warning or
    error (the top-level `--log-level`, when given, wins). Also the Rust core's level: its
    records below it are dropped before they are formatted."""
    log_format: str = "text"
    """The `start` command's log format: text (`time LEVEL logger: message`) or json (one object
    per line: time, level, logger, message and the record's fields such as node_id, group,
    peer); the top-level `--log-format`, when given, wins."""

    def __post_init__(self) -> None:
        self._normalise()
        self._check_identity()
        self._check_groups()
        self._check_raft_timing()
        self._check_sizes()
        self._check_engine_timings()
        self._check_transport()
        self._check_choices()

    # --- derived values --------------------------------------------------------------------------

    @property
    def heartbeat_ticks(self) -> int:
        return self.heartbeat_interval_ms // self.tick_interval_ms

    @property
    def election_timeout_min_ticks(self) -> int:
        return self.election_timeout_min_ms // self.tick_interval_ms

    @property
    def election_timeout_max_ticks(self) -> int:
        return self.election_timeout_max_ms // self.tick_interval_ms

    @property
    def catalog_dir(self) -> Path:
        return self.data_dir / "catalog"

    # --- sources ---------------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object]) -> ClusterConfig:
        """Build from plain values (TOML-shaped: strings for addresses and paths, nested
        `join_retry` and `swim` mappings). Unknown keys are refused by name."""
        if not isinstance(raw, Mapping):
            raise ConfigError("config", f"expected a table of settings, got {type(raw).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in raw:
            if key not in known:
                raise ConfigError(str(key), "unknown config key")
        for key in _REQUIRED_FIELDS:
            if raw.get(key) is None:
                raise ConfigError(key, "required")
        kwargs: dict[str, object] = {}
        for key, value in raw.items():
            if value is not None:
                kwargs[key] = _convert(key, value)
        return cls(**kwargs)  # type: ignore[arg-type]  # each value was type-checked by _convert

    @classmethod
    def from_toml(
        cls, path: str | Path, overrides: Mapping[str, object] | None = None
    ) -> ClusterConfig:
        """Read a TOML file, apply `overrides` on top (nested tables merged key by key)."""
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except OSError as e:
            raise ConfigError("config", f"cannot read {path}: {e.strerror or e}") from e
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError("config", f"{path} is not valid TOML (UTF-8): {e}") from e
        return cls.from_mapping(_merge(raw, overrides or {}))

    def to_mapping(self) -> dict[str, object]:
        """The TOML-shaped form `from_mapping` accepts (None fields left out, but SWIM off is
        written `"off"`); round-trips."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "swim_udp_addr":
                out[f.name] = SWIM_OFF  # absent would mean the default: on
                continue
            if value is None:
                continue
            if isinstance(value, SocketAddr | Path):
                out[f.name] = str(value)
            elif f.name == "seed_nodes":
                out[f.name] = [str(a) for a in value]
            elif f.name in _TABLES:
                out[f.name] = {t.name: getattr(value, t.name) for t in dataclasses.fields(value)}
            else:
                out[f.name] = value
        return out

    def to_toml(self) -> str:
        """A TOML document `from_toml` reads back to an equal config (e.g. for spawned nodes)."""
        top: list[str] = []
        tables: list[str] = []
        for key, value in self.to_mapping().items():
            if isinstance(value, dict):
                tables.append(f"\n[{key}]")
                tables.extend(f"{k} = {_toml_value(v)}" for k, v in value.items())
            else:
                top.append(f"{key} = {_toml_value(value)}")
        return "\n".join(top + tables) + "\n"

    # --- validation ------------------------------------------------------------------------------

    def _normalise(self) -> None:
        """Accept a list for seed_nodes and str paths from Python callers; store canonical types."""
        if isinstance(self.seed_nodes, list):
            object.__setattr__(self, "seed_nodes", tuple(self.seed_nodes))
        for name in _PATH_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str):
                if not value:
                    raise ConfigError(name, "empty path")
                object.__setattr__(self, name, Path(value))
            elif value is not None and not isinstance(value, Path):
                raise ConfigError(name, f"expected a path, got {type(value).__name__}")
        if self.data_dir is None:
            raise ConfigError("data_dir", "required")
        if self.swim_udp_addr is SWIM_UDP_ADDR_DEFAULT:
            object.__setattr__(self, "swim_udp_addr", _derived_swim_addr(self.listen_addr))

    def _check_identity(self) -> None:
        check_int("node_id", self.node_id, 1, U64_MAX)
        for name in _ADDR_FIELDS:
            value = getattr(self, name)
            if not (isinstance(value, SocketAddr) or (value is None and name != "listen_addr")):
                raise ConfigError(name, f"expected a SocketAddr, got {type(value).__name__}")
        if not isinstance(self.seed_nodes, tuple) or not all(
            isinstance(a, SocketAddr) for a in self.seed_nodes
        ):
            raise ConfigError("seed_nodes", "expected a sequence of SocketAddr")
        if len(self.seed_nodes) > SEED_NODES_MAX:
            raise ConfigError(
                "seed_nodes", f"{len(self.seed_nodes)} seeds; at most {SEED_NODES_MAX}"
            )
        # What peers dial must be a host's address: a wildcard would be recorded in the
        # topology, and every peer dialling it would reach itself (the metrics may bind one).
        for name, addr in (
            ("listen_addr", self.listen_addr),
            ("swim_udp_addr", self.swim_udp_addr),
            *(("seed_nodes", a) for a in self.seed_nodes),
        ):
            if addr is not None and addr.ip.is_unspecified:
                raise ConfigError(
                    name,
                    f"{addr} is no address a peer can dial: give this host's own IP "
                    "(peers and clients reach the node at the address it listens on)",
                )
        if len(set(self.seed_nodes)) != len(self.seed_nodes):
            dup = next(a for a in self.seed_nodes if self.seed_nodes.count(a) > 1)
            raise ConfigError("seed_nodes", f"{dup} is listed twice")
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, "expected true or false")
        if self.force_bootstrap and self.listen_addr not in self.seed_nodes:
            raise ConfigError(
                "force_bootstrap",
                f"requires listen_addr {self.listen_addr} to be one of seed_nodes",
            )
        if self.join_token is not None and (
            not isinstance(self.join_token, str) or parse_token(self.join_token) is None
        ):
            raise ConfigError(
                "join_token",
                f"expected {TOKEN_HEX_CHARS} hex characters as printed by "
                "`nodedb-cluster join-token`",
            )
        if self.swim_udp_addr is not None and self.swim_udp_addr == self.listen_addr:
            raise ConfigError(
                "swim_udp_addr", "must differ from listen_addr (QUIC already uses that UDP port)"
            )

    def _check_groups(self) -> None:
        check_int("num_groups", self.num_groups, 1, NUM_GROUPS_MAX)
        check_int("replication_factor", self.replication_factor, 1, REPLICATION_FACTOR_MAX)
        check_int("rebalance_interval_ms", self.rebalance_interval_ms, 0, 86_400_000)
        check_int("rebalance_moves_max", self.rebalance_moves_max, 1, 1024)
        check_int("rebalance_concurrent_moves_max", self.rebalance_concurrent_moves_max, 1, 1024)
        check_int("rebalance_imbalance_percent", self.rebalance_imbalance_percent, 1, 1000)
        check_int("dead_node_grace_ms", self.dead_node_grace_ms, 0, 30 * 86_400_000)
        check_int("vshard_move_pause_budget_ms", self.vshard_move_pause_budget_ms, 1, 3_600_000)
        check_int("vshard_move_duty_percent", self.vshard_move_duty_percent, 1, 100)
        for name, table in _TABLES.items():
            if not isinstance(getattr(self, name), table):
                raise ConfigError(name, f"expected a {table.__name__}")

    def _check_raft_timing(self) -> None:
        tick = self.tick_interval_ms
        check_int("tick_interval_ms", tick, 1, TICK_INTERVAL_MS_MAX)
        check_int("heartbeat_interval_ms", self.heartbeat_interval_ms, 1, HEARTBEAT_INTERVAL_MS_MAX)
        check_int(
            "election_timeout_min_ms", self.election_timeout_min_ms, 1, ELECTION_TIMEOUT_MS_MAX
        )
        check_int(
            "election_timeout_max_ms", self.election_timeout_max_ms, 1, ELECTION_TIMEOUT_MS_MAX
        )
        for name in ("heartbeat_interval_ms", "election_timeout_min_ms", "election_timeout_max_ms"):
            value = getattr(self, name)
            if value % tick:
                raise ConfigError(
                    name, f"{value} ms is not a multiple of tick_interval_ms ({tick})"
                )
        if self.election_timeout_max_ms <= self.election_timeout_min_ms:
            raise ConfigError(
                "election_timeout_max_ms",
                f"{self.election_timeout_max_ms} ms must exceed election_timeout_min_ms "
                f"({self.election_timeout_min_ms} ms): the timeout is drawn from [min, max), and "
                "an empty range would leave split votes unbroken",
            )
        check_int("rpc_timeout_ms", self.rpc_timeout_ms, 1, RPC_TIMEOUT_MS_MAX)

    def _check_sizes(self) -> None:
        check_int("kv_quota_bytes", self.kv_quota_bytes, 0, KV_QUOTA_BYTES_MAX)
        check_int(
            "install_snapshot_chunk_bytes",
            self.install_snapshot_chunk_bytes,
            1,
            INSTALL_SNAPSHOT_CHUNK_BYTES_MAX,
        )
        check_int(
            "orphan_partial_max_age_secs",
            self.orphan_partial_max_age_secs,
            1,
            ORPHAN_PARTIAL_MAX_AGE_SECS_MAX,
        )
        if self.driver_stall_max_ms is not None:
            check_int("driver_stall_max_ms", self.driver_stall_max_ms, 0, DRIVER_STALL_MAX_MS_MAX)

    def _check_engine_timings(self) -> None:
        """The engine's own rules on its timings (`MultiRaftConfig::validate`, through the
        binding), named by this config's keys."""
        import nodedb_cluster_core as _core  # loaded by the package anyway; not at import

        try:
            _core.check_raft_timings(
                self.tick_interval_ms,
                self.heartbeat_ticks,
                self.election_timeout_min_ticks,
                self.driver_stall_max_ms,
            )
        except ConfigError as e:
            key = _ENGINE_KEYS.get(e.field, e.field)
            raise ConfigError(key, e.reason) from None

    def _check_choices(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(
                    name, f"expected one of {', '.join(choices)}, got {getattr(self, name)!r}"
                )

    def _check_transport(self) -> None:
        if self.swim_insecure and self.cluster_secret_path is not None:
            raise ConfigError(
                "swim_insecure", "conflicts with cluster_secret_path: choose one for SWIM"
            )
        given = [name for name in _TLS_FIELDS if getattr(self, name) is not None]
        if self.insecure_transport:
            if self.tls_crl_path is not None:
                given.append("tls_crl_path")
            if given:
                raise ConfigError(
                    "insecure_transport",
                    f"conflicts with {given[0]}: choose TLS or insecure, not both",
                )
            return
        if not given:
            raise ConfigError(
                "tls_ca_path",
                "transport credentials required: set tls_ca_path, tls_cert_path and tls_key_path, "
                "or insecure_transport = true to run without TLS",
            )
        missing = [name for name in _TLS_FIELDS if name not in given]
        if missing:
            raise ConfigError(missing[0], f"required together with {', '.join(given)}")


# --- CLI ------------------------------------------------------------------------------------------


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--config PATH` and one flag per field (`--node-id`, `--seed-nodes A,B`, ...), each with
    the first sentence of the field's docstring as its help (`docstrings.field_docs`).

    Flags left out keep the TOML value (or the default); given flags override it.
    """
    required = parser.add_argument_group(
        "required (as flags, or in the --config file)",
    )
    group = parser.add_argument_group("cluster configuration")
    group.add_argument(
        "--config",
        dest="config_path",
        metavar="PATH",
        help="TOML file with these settings (keys: the flag names with '_'); flags override it",
    )
    docs = field_docs(ClusterConfig)
    for f in dataclasses.fields(ClusterConfig):
        if f.name in _TABLES:
            continue
        target = required if f.name in _REQUIRED_FIELDS else group
        help_text = _help(docs.get(f.name, ""), _default_text(f))
        if f.name in _BOOL_FIELDS:
            target.add_argument(
                _flag(f.name),
                dest=_dest(f.name),
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            target.add_argument(
                _flag(f.name), dest=_dest(f.name), metavar=_metavar(f.name), help=help_text
            )
    for name, table in _TABLES.items():
        table_docs = field_docs(table)
        defaults = table()
        for t in dataclasses.fields(table):
            key = f"{name}.{t.name}"
            group.add_argument(
                _flag(key),
                dest=_dest(key),
                metavar=_metavar(t.name),
                help=_help(table_docs.get(t.name, ""), f"default: {getattr(defaults, t.name)}"),
            )


def config_from_args(namespace: argparse.Namespace) -> ClusterConfig:
    """The config the parsed flags describe: `--config` file (if given) overlaid by every flag.
    A refusal names the flag when the value came from one (`name_config_error`)."""
    overrides: dict[str, object] = {}
    try:
        for f in dataclasses.fields(ClusterConfig):
            if f.name in _TABLES:
                continue
            value = getattr(namespace, _dest(f.name), None)
            if value is None:
                continue
            if f.name in _BOOL_FIELDS:
                overrides[f.name] = value
            elif f.name == "seed_nodes":
                overrides[f.name] = [part.strip() for part in str(value).split(",") if part.strip()]
            elif f.name in _ADDR_FIELDS or f.name in _PATH_FIELDS or f.name in _STR_FIELDS:
                overrides[f.name] = str(value)
            else:
                overrides[f.name] = _int_from_text(f.name, str(value))
        tables: dict[str, dict[str, object]] = {}
        for key in _table_keys():
            value = getattr(namespace, _dest(key), None)
            if value is not None:
                name, _, sub = key.partition(".")
                tables.setdefault(name, {})[sub] = _int_from_text(key, str(value))
        overrides.update(tables)
        config_path = getattr(namespace, "config_path", None)
        if config_path is not None:
            return ClusterConfig.from_toml(config_path, overrides)
        return ClusterConfig.from_mapping(overrides)
    except ConfigError as e:
        raise name_config_error(e, namespace) from e


def name_config_error(error: ConfigError, namespace: argparse.Namespace) -> ConfigError:
    """`error` as the user wrote the value: `--tls-ca-path` when it came from a flag (or there is
    no config file, so every setting is a flag or a default), `tls_ca_path in node.toml` when it
    came from the file. Also for refusals at start (key modes, certificate identity)."""
    if error.field.startswith("--") or error.field == "config":
        return error
    config_path = getattr(namespace, "config_path", None)
    from_flag = getattr(namespace, _dest(error.field), None) is not None
    if config_path is None:
        reason = _field_names_re().sub(lambda m: _flag(m.group(0)), error.reason)
        return ConfigError(_flag(error.field), reason)
    if from_flag:
        return ConfigError(_flag(error.field), error.reason)
    return ConfigError(f"{error.field} in {config_path}", error.reason)


# --- helpers --------------------------------------------------------------------------------------


def _dest(name: str) -> str:
    return "cfg_" + name.replace(".", "_")


@functools.cache
def _field_names_re() -> re.Pattern[str]:
    """Any setting's name (`tls_ca_path`, `swim.probe_interval_ms`) as a whole word."""
    names = [f.name for f in dataclasses.fields(ClusterConfig)] + _table_keys()
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![\w.-])(?:{alternatives})(?![\w-])")


def _flag(name: str) -> str:
    """`tls_ca_path` -> `--tls-ca-path`, `swim.probe_interval_ms` -> `--swim-probe-interval-ms`."""
    return "--" + name.replace("_", "-").replace(".", "-")


_METAVARS: Final = {
    "node_id": "ID",
    "seed_nodes": "IP:PORT,...",
    "swim_udp_addr": "IP:PORT|off",
    "data_dir": "DIR",
    "join_token": "TOKEN",
}
_UNIT_METAVARS: Final = (("_ms", "MS"), ("_secs", "SECS"), ("_bytes", "BYTES"))


def _metavar(name: str) -> str:
    """A readable placeholder: what the value is (an address, a path, a unit), not CFG_*."""
    if name in _METAVARS:
        return _METAVARS[name]
    if name in _CHOICES:
        return "|".join(_CHOICES[name])
    if name in _ADDR_FIELDS:
        return "IP:PORT"
    if name in _PATH_FIELDS:
        return "PATH"
    for suffix, metavar in _UNIT_METAVARS:
        if name.endswith(suffix):
            return metavar
    return "N"


_NONE_MEANS: Final[dict[str, str]] = {"driver_stall_max_ms": "60000, the engine's"}
"""What a field left None means, for its help (`start --help` said "none" for a 60 s bound)."""


def _default_text(f: dataclasses.Field[object]) -> str:
    if f.name in _REQUIRED_FIELDS:
        return "required"
    if f.name == "swim_udp_addr":
        return ""  # its docstring says it
    if f.default is None and f.name in _NONE_MEANS:
        return f"default: {_NONE_MEANS[f.name]}"
    if f.default is dataclasses.MISSING or f.default is None or f.default == ():
        return "default: none"
    if isinstance(f.default, bool):
        return "default: on" if f.default else "default: off"
    return f"default: {f.default}"


def _help(doc: str, suffix: str) -> str:
    """One line of help from a docstring, with the default; '%' escaped for argparse."""
    text = first_sentence(doc) if doc else ""
    if suffix:
        text = f"{text} ({suffix})" if text else suffix
    return text.replace("%", "%%")


def _table_keys() -> list[str]:
    """`table.knob` for every knob of every nested table (one CLI flag each)."""
    return [f"{name}.{f.name}" for name, t in _TABLES.items() for f in dataclasses.fields(t)]


def _int_from_text(name: str, text: str) -> int:
    if _INT_RE.fullmatch(text) is None:
        raise ConfigError(name, f"expected an integer, got {text!r}")
    return int(text)


def _convert(key: str, value: object) -> object:
    """One raw (TOML-shaped) value to the field's type; type mismatches name the field."""
    if key == "swim_udp_addr" and value == SWIM_OFF:
        return None  # from_mapping passes it on: SWIM off, not the default
    if key in _ADDR_FIELDS:
        return _addr(key, value)
    if key == "seed_nodes":
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"expected a list of addresses, got {type(value).__name__}")
        if len(value) > SEED_NODES_MAX:
            raise ConfigError(key, f"{len(value)} seeds; at most {SEED_NODES_MAX}")
        return tuple(_addr(key, v) for v in value)
    if key in _PATH_FIELDS:
        if isinstance(value, Path):
            return value
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a path string, got {type(value).__name__}")
        return value  # ClusterConfig._normalise turns it into a Path (and refuses "")
    if key in _TABLES:
        return _table(key, value)
    if key in _STR_FIELDS:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {type(value).__name__}")
        return value
    if key in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {type(value).__name__} {value!r}")
        return value
    return require_int(key, value)


def _derived_swim_addr(listen_addr: object) -> SocketAddr | None:
    """The default SWIM address for `listen_addr` (left for `_check_identity` to refuse when
    listen_addr is not an address)."""
    if not isinstance(listen_addr, SocketAddr):
        return None
    port = listen_addr.port + SWIM_PORT_OFFSET
    if port > 65535:
        raise ConfigError(
            "swim_udp_addr",
            f"listen port {listen_addr.port} leaves no default SWIM port (listen port + "
            f"{SWIM_PORT_OFFSET}): give swim_udp_addr, or {SWIM_OFF!r}",
        )
    return dataclasses.replace(listen_addr, port=port)


def _addr(key: str, value: object) -> SocketAddr:
    if isinstance(value, SocketAddr):
        return value
    if not isinstance(value, str):
        raise ConfigError(key, f"expected an address string, got {type(value).__name__}")
    try:
        return parse_socket_addr(value)
    except InvalidAddress as e:
        raise ConfigError(key, str(e)) from e


def _table(key: str, value: object) -> JoinRetryPolicy | SwimConfig:
    """A nested table (all integer knobs) to its dataclass; every refusal names `key.knob`."""
    table = _TABLES[key]
    if isinstance(value, table):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a table, got {type(value).__name__}")
    known = {f.name for f in dataclasses.fields(table)}
    for sub in value:
        if sub not in known:
            raise ConfigError(f"{key}.{sub}", "unknown config key")
    for sub, sub_value in value.items():
        require_int(f"{key}.{sub}", sub_value)
    try:
        return table(**value)
    except ConfigError as e:
        # SwimConfig names its own knobs bare (it is also built directly); the user wrote key.knob.
        if e.field.startswith(key + "."):
            raise
        raise ConfigError(f"{key}.{e.field}", e.reason) from e


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic-string escapes; TOML also wants DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")  # to_mapping yields none such


def _merge(base: Mapping[str, object], overrides: Mapping[str, object]) -> dict[str, object]:
    merged = dict(base)
    for key, value in overrides.items():
        old = merged.get(key)
        if key in _TABLES and isinstance(old, Mapping) and isinstance(value, Mapping):
            merged[key] = {**old, **value}
        else:
            merged[key] = value
    return merged
