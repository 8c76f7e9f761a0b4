"""Socket addresses: one parser, one printed form, one total order.

The order is load-bearing: the smallest seed bootstraps the cluster (docs/JOIN.md "Who
bootstraps"), so every node must sort the same seed list the same way. All IPv4 addresses come
before all IPv6 ones; within a family addresses compare by their bytes numerically (10.0.0.9 <
10.0.0.10, never as text), then by port.

Host names are refused rather than resolved: resolution would make the bootstrap decision depend on
DNS answers, which may differ between nodes and over time.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from nodedb_cluster.errors import InvalidAddress

PORT_MIN: Final = 1
"""Port 0 means "let the OS pick" when binding; it is not an address a peer can reach."""
PORT_MAX: Final = 65535
ADDR_TEXT_MAX_CHARS: Final = 64
"""The longest address, `[ffff:...:ffff]:65535`, is 47 chars; longer text is not an address."""

_PORT_RE: Final = re.compile(r"[0-9]{1,5}")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class SocketAddr:
    """An IP address (v4 or v6, no zone id) and a port in 1..65535."""

    ip: IPAddress
    port: int

    def __post_init__(self) -> None:
        if not isinstance(self.ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise InvalidAddress(
                repr(self.ip), "ip must be an ipaddress.IPv4Address or IPv6Address"
            )
        if isinstance(self.ip, ipaddress.IPv6Address) and self.ip.scope_id is not None:
            raise InvalidAddress(str(self.ip), "IPv6 zone ids are not supported")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise InvalidAddress(repr(self.port), "port must be an integer")
        if not PORT_MIN <= self.port <= PORT_MAX:
            raise InvalidAddress(str(self.port), f"port must be in {PORT_MIN}..{PORT_MAX}")

    @property
    def is_ipv6(self) -> bool:
        return isinstance(self.ip, ipaddress.IPv6Address)

    @property
    def host(self) -> str:
        """The address without brackets or port, as socket APIs want it."""
        return str(self.ip)

    def as_tuple(self) -> tuple[str, int]:
        """`(host, port)` for `socket`/`asyncio` calls."""
        return (str(self.ip), self.port)

    def sort_key(self) -> tuple[int, bytes, int]:
        """(family rank, address bytes, port): IPv4 first, then numeric bytes, then port."""
        return (6 if self.is_ipv6 else 4, self.ip.packed, self.port)

    def __str__(self) -> str:
        if self.is_ipv6:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, SocketAddr):
            return NotImplemented
        return self.sort_key() < other.sort_key()

    def __le__(self, other: object) -> bool:
        if not isinstance(other, SocketAddr):
            return NotImplemented
        return self.sort_key() <= other.sort_key()

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, SocketAddr):
            return NotImplemented
        return self.sort_key() > other.sort_key()

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, SocketAddr):
            return NotImplemented
        return self.sort_key() >= other.sort_key()


def parse_socket_addr(text: str) -> SocketAddr:
    """Parse `1.2.3.4:9400` or `[::1]:9400`; anything else raises `InvalidAddress` saying why.

    Strict on purpose: no surrounding whitespace, no host names, no bare IPv6 without brackets
    (`::1:9400` is ambiguous), no zone ids, decimal port digits only.
    """
    if not isinstance(text, str):
        raise InvalidAddress(repr(text), "expected a string")
    if not text:
        raise InvalidAddress(text, "empty")
    if len(text) > ADDR_TEXT_MAX_CHARS:
        raise InvalidAddress(text[:ADDR_TEXT_MAX_CHARS] + "...", "too long to be an address")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise InvalidAddress(text, "missing ']' after the IPv6 address")
        host, rest = text[1:close], text[close + 1 :]
        if not rest.startswith(":"):
            raise InvalidAddress(text, "missing ':port' after ']'")
        port_text = rest[1:]
        ip: IPAddress = _parse_ipv6(text, host)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise InvalidAddress(text, "missing ':port'")
        if ":" in host:
            raise InvalidAddress(text, "IPv6 addresses must be written in brackets: [addr]:port")
        ip = _parse_ipv4(text, host)
    return SocketAddr(ip, _parse_port(text, port_text))


def _parse_ipv4(text: str, host: str) -> ipaddress.IPv4Address:
    if not host:
        raise InvalidAddress(text, "missing host before ':port'")
    try:
        return ipaddress.IPv4Address(host)
    except ValueError as e:
        raise InvalidAddress(
            text, f"{host!r} is not an IPv4 address (host names are refused)"
        ) from e


def _parse_ipv6(text: str, host: str) -> ipaddress.IPv6Address:
    if "%" in host:
        raise InvalidAddress(text, "IPv6 zone ids are not supported")
    try:
        return ipaddress.IPv6Address(host)
    except ValueError as e:
        raise InvalidAddress(text, f"{host!r} is not an IPv6 address") from e


def _parse_port(text: str, port_text: str) -> int:
    if not port_text:
        raise InvalidAddress(text, "missing port after ':'")
    if _PORT_RE.fullmatch(port_text) is None:
        raise InvalidAddress(text, f"port {port_text!r} is not a decimal number")
    port = int(port_text)
    if not PORT_MIN <= port <= PORT_MAX:
        raise InvalidAddress(text, f"port {port} is outside {PORT_MIN}..{PORT_MAX}")
    return port


def names_ip(named: Iterable[str], ip: IPAddress) -> bool:
    """Whether one of a certificate's names is `ip` (its DNS names never are: peers dial IPs)."""
    for name in named:
        try:
            if ipaddress.ip_address(name) == ip:
                return True
        except ValueError:
            continue  # a DNS name
    return False
