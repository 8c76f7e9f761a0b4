"""The `/metrics` server's bounds (metrics_http.py), on real sockets: a connection that sends half
a request is closed after the request timeout, and one beyond the cap is closed unread, while a
scrape is still answered. Found by an attack probe: 400 half-sent requests held 400 threads for
as long as they stayed open."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import Counter
from prometheus_client.registry import CollectorRegistry

from nodedb_cluster import metrics_http
from nodedb_cluster.addr import parse_socket_addr
from nodedb_cluster.localcluster import free_port

TIMEOUT_S = 0.5


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[metrics_http._BoundedServer]:
    monkeypatch.setattr(metrics_http._Handler, "timeout", TIMEOUT_S)
    registry = CollectorRegistry()
    Counter("probe", "a counter to see", registry=registry).inc()
    addr = parse_socket_addr(f"127.0.0.1:{free_port(['127.0.0.1'])}")
    served, _thread = metrics_http.serve_registry(addr, registry)
    try:
        yield served
    finally:
        served.shutdown()
        served.server_close()


def scrape(server: metrics_http._BoundedServer) -> str:
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode())


def half_request(server: metrics_http._BoundedServer) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", server.server_port), timeout=5)
    conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never the blank line
    return conn


def closed_within(conn: socket.socket, bound_s: float) -> bool:
    """Whether the server closed `conn` within `bound_s` (a read sees the end)."""
    conn.settimeout(bound_s)
    try:
        return conn.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_a_half_sent_request_is_closed_after_the_timeout(
    server: metrics_http._BoundedServer,
) -> None:
    assert "probe_total 1.0" in scrape(server)
    with half_request(server) as conn:
        began = time.monotonic()
        assert closed_within(conn, 5 * TIMEOUT_S + 2), "held with no timeout"
        assert time.monotonic() - began >= TIMEOUT_S * 0.8


def test_connections_beyond_the_cap_are_closed_unread_and_scrapes_go_on_after(
    server: metrics_http._BoundedServer,
) -> None:
    held = [half_request(server) for _ in range(metrics_http.CONNECTIONS_MAX)]
    try:
        deadline = time.monotonic() + 5
        while server.serving < metrics_http.CONNECTIONS_MAX:  # every one accepted (bounded)
            assert time.monotonic() < deadline, server.serving
            time.sleep(0.01)
        with half_request(server) as extra:
            assert closed_within(extra, TIMEOUT_S / 2), "a connection past the cap was served"
        assert server.refused >= 1
        for conn in held:  # the held ones time out and free their slots
            assert closed_within(conn, 5 * TIMEOUT_S + 2)
        assert "probe_total 1.0" in scrape(server)
    finally:
        for conn in held:
            conn.close()
