"""The cluster secret that keys SWIM's HMAC: the catalog's, or `ClusterConfig.cluster_secret_path`.

Why a separate secret rather than one derived from the TLS material: every node holds only its own
key and the CA *certificate*, which is public; nothing secret is shared by all nodes. The cluster
makes one at bootstrap (32 random bytes in the catalog) and hands it to every admitted node in its
JoinResponse over mTLS, so SWIM is authenticated with no file at all. `cluster_secret_path`
overrides it: a file of raw bytes (at least 16; e.g. `head -c 32 /dev/urandom > cluster.secret`,
mode 0600), the same file on every node (e.g. for a cluster formed before the catalog held one).
Running SWIM unauthenticated must be asked for by name: `swim_insecure = true`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from nodedb_cluster.errors import ConfigError

if TYPE_CHECKING:
    from nodedb_cluster.config import ClusterConfig

SECRET_BYTES_MIN: Final = 16
SECRET_BYTES_MAX: Final = 4096


def read_cluster_secret(config: ClusterConfig, stored: bytes | None = None) -> bytes | None:
    """The secret bytes: the file at `cluster_secret_path` when set, else `stored` (the catalog's
    cluster secret); None for an explicitly insecure SWIM. Refusals name the field."""
    path = config.cluster_secret_path
    if path is None:
        if config.swim_insecure:
            return None
        if stored is not None:
            return stored
        raise ConfigError(
            "cluster_secret_path",
            "SWIM (swim_udp_addr) needs a cluster secret to authenticate datagrams: this node's "
            "catalog holds none (the cluster was formed before it kept one), so give a secret "
            "file, or swim_insecure = true to run it unauthenticated",
        )
    try:
        with open(path, "rb") as f:
            secret = f.read(SECRET_BYTES_MAX + 1)
    except OSError as e:
        raise ConfigError("cluster_secret_path", f"cannot read {path}: {e.strerror or e}") from e
    if not SECRET_BYTES_MIN <= len(secret) <= SECRET_BYTES_MAX:
        raise ConfigError(
            "cluster_secret_path",
            f"{path} holds {len(secret)} bytes; a secret is {SECRET_BYTES_MIN}..{SECRET_BYTES_MAX}",
        )
    return secret
