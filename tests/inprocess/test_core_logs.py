"""The Rust core's log records reach Python `logging` (`nodedb_cluster.logsetup`): real QUIC
handshakes refused for another CA and real malformed frames, on two transports in one process.

Goal: each side logs one WARN naming the peer (rate-limited: repeats are left out, not logged),
under `nodedb_cluster_core.transport`, with the peer as a structured field, and `--log-format
json` turns them into one parseable object per line. Nothing here sleeps: the records are queued
when the RPC fails, so one drain right after it sees them.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodedb_cluster.errors import HandshakeError
from nodedb_cluster.logsetup import CORE_LOGGER, CoreLogForwarder, JsonFormatter
from nodedb_cluster.transport import Peer, Reply, Transport, generate_cluster_credentials
from nodedb_cluster.wire import MessageKind, encode_frame

LOCAL = "127.0.0.1:0"
TRANSPORT_LOGGER = f"{CORE_LOGGER}.transport"


async def echo(peer: Peer, kind: int, payload: bytes) -> Reply:
    return (MessageKind.PONG, payload)


@pytest.fixture
def forwarder(caplog: pytest.LogCaptureFixture) -> Iterator[CoreLogForwarder]:
    caplog.set_level(logging.INFO, logger=CORE_LOGGER)
    forward = CoreLogForwarder()
    forward.sync_level()
    forward.forward()  # whatever earlier tests left queued
    caplog.clear()
    yield forward
    logging.getLogger(CORE_LOGGER).setLevel(logging.NOTSET)
    forward.sync_level()


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == TRANSPORT_LOGGER and r.levelno == logging.WARNING and text in r.getMessage()
    ]


async def test_a_foreign_ca_is_logged_once_per_peer_on_both_sides(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, forwarder: CoreLogForwarder
) -> None:
    ours = generate_cluster_credentials(tmp_path / "a", "a", [("n1", ["127.0.0.1"])])[0]
    theirs = generate_cluster_credentials(tmp_path / "b", "b", [("n2", ["127.0.0.1"])])[0]
    async with Transport(1, LOCAL, ours) as server, Transport(2, LOCAL, theirs) as client:
        server.serve(echo)
        for _ in range(4):  # a misconfigured peer retrying
            with pytest.raises(HandshakeError):
                await client.send_rpc_to_addr(server.local_addr, MessageKind.PING, b"")
        assert server.metrics()["inbound_handshake_failures"] >= 1
        forwarder.forward()
    inbound = _warnings(caplog, "inbound handshake failed")
    assert len(inbound) == 1, [r.getMessage() for r in inbound]
    assert inbound[0].__dict__["peer"] == client.local_addr
    assert f"peer={client.local_addr}" in inbound[0].getMessage(), "named in the text too"
    outbound = _warnings(caplog, "outbound handshake failed")
    assert len(outbound) == 1, [r.getMessage() for r in outbound]
    assert outbound[0].__dict__["peer"] == server.local_addr
    assert "is not issued by the CA we trust" in outbound[0].getMessage()


async def test_malformed_frames_are_logged_once_per_peer_as_json(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, forwarder: CoreLogForwarder
) -> None:
    creds = generate_cluster_credentials(
        tmp_path, "t", [("n1", ["127.0.0.1"]), ("n2", ["127.0.0.1"])]
    )
    async with Transport(1, LOCAL, creds[0]) as server, Transport(2, LOCAL, creds[1]) as client:
        server.serve(echo)
        for data in (b"\x01", encode_frame(MessageKind.PING, b"payload")[:-1] + b"?"):
            answer = await client.send_raw_for_tests(server.local_addr, data)
            assert isinstance(answer, int), "the server resets the stream"
        assert server.metrics()["decode_errors"] == 2
        forwarder.forward()
    malformed = _warnings(caplog, "malformed frame")
    assert len(malformed) == 1, [r.getMessage() for r in malformed]
    doc = json.loads(JsonFormatter().format(malformed[0]))
    assert doc["level"] == "WARNING"
    assert doc["logger"] == TRANSPORT_LOGGER
    assert doc["peer"] == client.local_addr
    assert doc["message"].startswith("malformed frame; stream reset")
    assert doc["time"].endswith("Z")


def test_json_lines_carry_the_fields_of_python_records_too() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("nodedb_cluster.test_json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(
            "node %d is %s", 3, "DEAD", extra={"node_id": 1, "peer": 3, "obj": Path("x")}
        )
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "node 3 is DEAD"
    assert (first["level"], first["logger"]) == ("WARNING", "nodedb_cluster.test_json")
    assert (first["node_id"], first["peer"], first["obj"]) == (1, 3, "x")
    assert "args" not in first, "only the record's own fields"
    assert "msg" not in first
    assert "ValueError: boom" in second["exception"]
