"""The `/metrics` HTTP server: prometheus_client's WSGI app on a server whose connections are
bounded in number and in time.

The endpoint has no authentication, so anyone who reaches it is served. prometheus_client's own
server (`start_http_server`) starts a thread per connection and waits on each without a timeout:
400 connections that sent half a request held 400 threads for as long as they stayed open
(attack probe, session 31). Here a connection that has not sent its request within
`REQUEST_TIMEOUT_S` is closed, and one beyond `CONNECTIONS_MAX` open at once is closed unread; a
scraper holds one, for milliseconds.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.registry import CollectorRegistry

from nodedb_cluster.addr import SocketAddr

CONNECTIONS_MAX: Final = 16
"""Connections served at once; more are closed as they are accepted."""
REQUEST_TIMEOUT_S: Final = 5.0
"""How long a connection may take to send its request (and to read its answer)."""


class _Handler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT_S  # socket timeout on every read and write of the connection

    def log_message(self, format: str, *args: Any) -> None:
        """No line per scrape."""


class _BoundedServer(WSGIServer):
    """A thread per connection, at most `CONNECTIONS_MAX` of them."""

    daemon_threads = True
    request_queue_size = 64  # the listen backlog (5 by default)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(CONNECTIONS_MAX)
        self._lock = threading.Lock()
        self.serving = 0
        """Connections being served now."""
        self.refused = 0
        """Connections closed unread because every slot was taken."""
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        with self._lock:
            self.serving += 1
        thread = threading.Thread(
            target=self._serve, args=(request, client_address), daemon=True, name="metrics-http"
        )
        thread.start()

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self._lock:
                self.serving -= 1
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out or went away: nothing to report."""


def serve_registry(
    addr: SocketAddr, registry: CollectorRegistry
) -> tuple[_BoundedServer, threading.Thread]:
    """Serve `registry` at `addr` on a daemon thread; bound when this returns (`OSError` if it
    cannot be)."""
    family = socket.AF_INET6 if addr.is_ipv6 else socket.AF_INET

    class Server(_BoundedServer):
        address_family = family

    server = make_server(
        addr.host, addr.port, make_wsgi_app(registry), Server, handler_class=_Handler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="metrics-server")
    thread.start()
    return server, thread
