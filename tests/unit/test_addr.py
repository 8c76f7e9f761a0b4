"""SocketAddr: strict parsing with typed errors, printed form round-trips, and the total order
docs/JOIN.md's bootstrap decision depends on (IPv4 before IPv6; numeric octets, then port)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodedb_cluster.addr import SocketAddr, parse_socket_addr
from nodedb_cluster.errors import InvalidAddress


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("1.2.3.4:9400", "1.2.3.4", 9400),
        ("127.0.0.1:1", "127.0.0.1", 1),
        ("10.0.0.10:65535", "10.0.0.10", 65535),
        ("[::1]:9400", "::1", 9400),
        ("[2001:db8::7]:80", "2001:db8::7", 80),
        ("[::ffff:1.2.3.4]:9", "::ffff:102:304", 9),
    ],
)
def test_parses_ipv4_and_bracketed_ipv6(text: str, host: str, port: int) -> None:
    addr = parse_socket_addr(text)
    assert addr.ip == ipaddress.ip_address(host)
    assert addr.port == port
    assert addr.as_tuple() == (str(ipaddress.ip_address(host)), port)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("1.2.3.4", "missing ':port'"),
        ("1.2.3.4:", "missing port"),
        ("1.2.3.4:0", "outside"),
        ("1.2.3.4:65536", "outside"),
        ("1.2.3.4:99999", "outside"),
        ("1.2.3.4:-1", "not a decimal"),
        ("1.2.3.4:+80", "not a decimal"),
        ("1.2.3.4:1_000", "not a decimal"),
        ("1.2.3.4: 80", "not a decimal"),
        ("1.2.3.4:\uff18\uff10", "not a decimal"),  # full-width digits: int() accepts them
        (" 1.2.3.4:80", "not an IPv4"),
        ("localhost:9400", "host names are refused"),
        ("node-1.example.com:9400", "host names are refused"),
        ("1.2.3:80", "not an IPv4"),
        ("256.0.0.1:80", "not an IPv4"),
        ("010.0.0.1:80", "not an IPv4"),
        (":9400", "missing host"),
        ("::1:9400", "brackets"),
        ("[::1]", "missing ':port'"),
        ("[::1]9400", "missing ':port'"),
        ("[::1:9400", "missing ']'"),
        ("[1.2.3.4]:80", "not an IPv6"),
        ("[fe80::1%eth0]:80", "zone ids"),
        ("[::1]:", "missing port"),
        ("9" * 100, "too long"),
    ],
)
def test_rejects_bad_text_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(InvalidAddress, match="invalid socket address") as info:
        parse_socket_addr(text)
    assert why in info.value.reason
    assert isinstance(info.value, ValueError)


def test_rejects_non_string() -> None:
    with pytest.raises(InvalidAddress, match="expected a string"):
        parse_socket_addr(9400)  # type: ignore[arg-type]


def test_constructor_validates_too() -> None:
    with pytest.raises(InvalidAddress, match="port"):
        SocketAddr(ipaddress.IPv4Address("1.2.3.4"), 0)
    with pytest.raises(InvalidAddress, match="port must be an integer"):
        SocketAddr(ipaddress.IPv4Address("1.2.3.4"), True)
    with pytest.raises(InvalidAddress, match="ipaddress"):
        SocketAddr("1.2.3.4", 80)  # type: ignore[arg-type]
    with pytest.raises(InvalidAddress, match="zone"):
        SocketAddr(ipaddress.IPv6Address("fe80::1%eth0"), 80)


@pytest.mark.parametrize("text", ["1.2.3.4:9400", "[::1]:9400", "[2001:db8::1]:1", "0.0.0.0:7"])
def test_str_round_trips(text: str) -> None:
    assert str(parse_socket_addr(text)) == text


def test_non_canonical_ipv6_normalises() -> None:
    assert str(parse_socket_addr("[0:0:0:0:0:0:0:1]:9400")) == "[::1]:9400"
    assert parse_socket_addr("[0::1]:9400") == parse_socket_addr("[::1]:9400")


def test_order_is_numeric_not_textual() -> None:
    a9, a10 = parse_socket_addr("10.0.0.9:9400"), parse_socket_addr("10.0.0.10:9400")
    assert a9 < a10
    assert str(a9) > str(a10)  # the textual order would get it wrong
    assert parse_socket_addr("2.0.0.0:1") < parse_socket_addr("10.0.0.0:1")


def test_order_compares_port_last() -> None:
    assert parse_socket_addr("10.0.0.1:9401") > parse_socket_addr("10.0.0.1:9400")
    assert parse_socket_addr("10.0.0.1:65535") < parse_socket_addr("10.0.0.2:1")


def test_every_ipv4_sorts_before_every_ipv6() -> None:
    v4_max = parse_socket_addr("255.255.255.255:65535")
    v6_min = parse_socket_addr("[::]:1")
    assert v4_max < v6_min
    assert v6_min > v4_max
    assert v4_max <= v6_min
    assert not v4_max >= v6_min


def test_sorting_a_seed_list() -> None:
    seeds = [
        parse_socket_addr(t)
        for t in ["[::1]:9400", "10.0.0.10:9400", "10.0.0.9:9401", "10.0.0.9:9400", "9.255.0.0:1"]
    ]
    assert [str(a) for a in sorted(seeds)] == [
        "9.255.0.0:1",
        "10.0.0.9:9400",
        "10.0.0.9:9401",
        "10.0.0.10:9400",
        "[::1]:9400",
    ]


def test_comparison_with_other_types_is_refused() -> None:
    with pytest.raises(TypeError):
        _ = parse_socket_addr("1.2.3.4:1") < "1.2.3.4:2"
    assert parse_socket_addr("1.2.3.4:1") != "1.2.3.4:1"  # type: ignore[comparison-overlap]


def test_hashable_and_equal_by_value() -> None:
    assert {parse_socket_addr("1.2.3.4:1"), parse_socket_addr("1.2.3.4:1")} == {
        parse_socket_addr("1.2.3.4:1")
    }


ipv4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
ipv6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))
addrs = st.builds(SocketAddr, st.one_of(ipv4, ipv6), st.integers(1, 65535))


@given(addrs)
def test_any_address_round_trips(addr: SocketAddr) -> None:
    assert parse_socket_addr(str(addr)) == addr


@given(addrs, addrs)
def test_order_is_total_and_matches_the_key(a: SocketAddr, b: SocketAddr) -> None:
    assert (a < b) + (a == b) + (a > b) == 1
    expected = (a.ip.version, int(a.ip), a.port) < (b.ip.version, int(b.ip), b.port)
    assert (a < b) == expected


@given(st.text(max_size=80))
def test_any_text_parses_or_raises_typed(text: str) -> None:
    try:
        addr = parse_socket_addr(text)
    except InvalidAddress:
        return
    assert parse_socket_addr(str(addr)) == addr
