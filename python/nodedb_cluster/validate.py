"""Integer checks for configuration values, shared by `ClusterConfig`, `JoinRetryPolicy` and
`SwimConfig`: every refusal is a `ConfigError` naming the field, and `bool` (an `int` subclass
in Python) is never taken for a number."""

from __future__ import annotations

from nodedb_cluster.errors import ConfigError


def require_int(field: str, value: object) -> int:
    """`value` if it is an integer (not a bool), else a `ConfigError` naming `field`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, f"expected an integer, got {type(value).__name__} {value!r}")
    return value


def check_int(field: str, value: object, lo: int, hi: int) -> int:
    """`value` if it is an integer within lo..hi (inclusive)."""
    number = require_int(field, value)
    if not lo <= number <= hi:
        raise ConfigError(field, f"{number} is outside {lo}..{hi}")
    return number
