"""The cluster secret that keys SWIM's HMAC, read from `ClusterConfig.cluster_secret_path`.

Why a separate secret rather than one derived from the TLS material: every node holds only its own
key and the CA *certificate*, which is public; nothing secret is shared by all nodes. The file
holds raw bytes (at least 16; e.g. `head -c 32 /dev/urandom > cluster.secret`, mode 0600), the
same file on every node. Running SWIM unauthenticated must be asked for by name:
`swim_insecure = true`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from nodedb_cluster.errors import ConfigError

if TYPE_CHECKING:
    from nodedb_cluster.config import ClusterConfig

SECRET_BYTES_MIN: Final = 16
SECRET_BYTES_MAX: Final = 4096


def read_cluster_secret(config: ClusterConfig) -> bytes | None:
    """The secret bytes, or None for an explicitly insecure SWIM; refusals name the field."""
    path = config.cluster_secret_path
    if path is None:
        if config.swim_insecure:
            return None
        raise ConfigError(
            "cluster_secret_path",
            "SWIM (swim_udp_addr) needs a cluster secret file to authenticate datagrams, "
            "or swim_insecure = true to run it unauthenticated",
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
