"""Frame codec and control payloads through the Python binding.

Goal: the Rust decoder never crashes the process on any input and always answers with a frame or a
typed `FrameError` carrying a stable code; Python's msgpack payloads and Rust's schemas agree.
Method: fixed cases for each error code, hypothesis for random and mutated frames.
"""

from __future__ import annotations

import msgpack
import nodedb_cluster_core as core
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodedb_cluster.errors import FrameError
from nodedb_cluster.wire import (
    HEADER_BYTES,
    PAYLOAD_BYTES_MAX,
    WIRE_VERSION,
    ErrorMsg,
    GroupMembers,
    JoinNode,
    JoinRequest,
    JoinResponse,
    MessageKind,
    Ping,
    Pong,
    RoutingSnapshot,
    decode_frame,
    encode_frame,
)

FRAME_ERROR_CODES = {
    "too_short",
    "wrong_version",
    "unknown_kind",
    "retired_kind",
    "oversize",
    "truncated",
    "checksum_mismatch",
    "trailing_bytes",
}


def test_python_kind_enum_mirrors_the_rust_table() -> None:
    rust = {number: name for number, name, active in core.message_kinds() if active}
    assert {k.value for k in MessageKind} == set(rust)
    for kind in MessageKind:
        assert kind.name.replace("_", "").lower() == rust[kind.value].lower()


def test_unknown_kind_number_is_refused_at_the_boundary() -> None:
    with pytest.raises(FrameError) as info:
        MessageKind(19)
    assert info.value.code == "unknown_kind"


def test_round_trip_and_header_layout() -> None:
    frame = encode_frame(MessageKind.JOIN_REQUEST, b"abc")
    assert len(frame) == HEADER_BYTES + 3
    assert frame[0] == 1  # format version
    assert frame[1:3] == (3).to_bytes(2, "little")
    assert frame[3:7] == (3).to_bytes(4, "little")
    assert decode_frame(frame) == (3, b"abc")


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "too_short"),
        (b"\x01\x01\x00", "too_short"),
        (b"\x02" + bytes(10), "wrong_version"),
        (b"\x01\xff\x00" + bytes(8), "unknown_kind"),
        (b"\x01\x01\x00" + (PAYLOAD_BYTES_MAX + 1).to_bytes(4, "little") + bytes(4), "oversize"),
        (encode_frame(1, b"abcd")[:-1], "truncated"),
        (encode_frame(1, b"abcd") + b"!", "trailing_bytes"),
        (encode_frame(1, b"abcd")[:-1] + b"X", "checksum_mismatch"),
    ],
)
def test_each_malformation_has_its_code(data: bytes, code: str) -> None:
    with pytest.raises(FrameError) as info:
        decode_frame(data)
    assert info.value.code == code
    assert str(info.value)


def test_encode_refuses_unknown_kind() -> None:
    with pytest.raises(FrameError) as info:
        encode_frame(999, b"")
    assert info.value.code == "unknown_kind"


def decode_or_code(data: bytes) -> tuple[int, bytes] | str:
    """The decoded frame, or the FrameError code (any other exception fails the test)."""
    try:
        return decode_frame(data)
    except FrameError as err:
        return err.code


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_frame_error(data: bytes) -> None:
    outcome = decode_or_code(data)
    if isinstance(outcome, str):
        assert outcome in FRAME_ERROR_CODES
    else:
        assert encode_frame(*outcome) == data


@settings(max_examples=2000, deadline=None)
@given(
    kind=st.sampled_from(list(MessageKind)),
    payload=st.binary(max_size=512),
    position=st.integers(min_value=0),
    flip=st.integers(min_value=1, max_value=255),
    mode=st.sampled_from(["flip", "cut", "append"]),
)
def test_mutated_frames_are_refused_with_a_code(
    kind: MessageKind, payload: bytes, position: int, flip: int, mode: str
) -> None:
    good = bytearray(encode_frame(kind, payload))
    if mode == "flip":
        good[position % len(good)] ^= flip
    elif mode == "cut":
        del good[position % len(good) :]
    else:
        good.append(flip)
    outcome = decode_or_code(bytes(good))
    if isinstance(outcome, str):
        assert outcome in FRAME_ERROR_CODES
    else:
        # Only a flip of the kind bytes into another valid kind can decode (the header is not
        # checksummed, the payload is).
        decoded_kind, decoded = outcome
        assert mode == "flip"
        assert position % len(good) in (1, 2)
        assert decoded == payload
        assert decoded_kind != kind


@settings(max_examples=300, deadline=None)
@given(
    node_id=st.integers(min_value=1, max_value=2**64 - 1),
    port=st.integers(min_value=1, max_value=65535),
    pin=st.none() | st.binary(min_size=32, max_size=32),
)
def test_join_request_python_and_rust_agree(node_id: int, port: int, pin: bytes | None) -> None:
    request = JoinRequest(node_id, f"10.0.0.1:{port}", WIRE_VERSION, pin)
    rust_bytes = core.check_control_payload(MessageKind.JOIN_REQUEST, request.encode())
    assert JoinRequest.decode(rust_bytes) == request


def test_join_response_python_and_rust_agree() -> None:
    response = JoinResponse(
        success=True,
        cluster_id="5f0c0ffee",
        state=b"\x81\xa1k\x01" * 100,
        nodes=(
            JoinNode(1, "127.0.0.1:9400", 1, 1, b"\x01" * 32),
            JoinNode(2, "127.0.0.2:9400", 0, 1),
        ),
        routing=RoutingSnapshot(
            epoch=7,
            vshard_to_group=tuple(1 + v % 4 for v in range(1024)),
            groups=(GroupMembers(1, 1, (1, 2), (3,)), GroupMembers(2, 0, (2,))),
        ),
    )
    rust_bytes = core.check_control_payload(MessageKind.JOIN_RESPONSE, response.encode())
    assert JoinResponse.decode(rust_bytes) == response
    rejection = JoinResponse(success=False, error="not leader; retry at 10.0.0.1:9400")
    assert JoinResponse.decode(core.check_control_payload(4, rejection.encode())) == rejection


def test_small_messages_round_trip_through_rust() -> None:
    ping, pong, error = Ping(1, 42), Pong(2, 42), ErrorMsg("boom", "it broke")
    assert Ping.decode(core.check_control_payload(MessageKind.PING, ping.encode())) == ping
    assert Pong.decode(core.check_control_payload(MessageKind.PONG, pong.encode())) == pong
    assert ErrorMsg.decode(core.check_control_payload(MessageKind.ERROR, error.encode())) == error


def test_schema_mismatch_is_a_typed_error_on_both_sides() -> None:
    wrong = msgpack.packb({"node_id": "one", "nonce": 1})
    with pytest.raises(FrameError) as info:
        core.check_control_payload(MessageKind.PING, wrong)
    assert info.value.code == "bad_payload"
    with pytest.raises(FrameError):
        Ping.decode(wrong)
    with pytest.raises(FrameError):
        JoinResponse.decode(b"\xc1")
    with pytest.raises(FrameError):
        JoinResponse.decode(msgpack.packb({"success": True, "nodes": [1]}))


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    newer = msgpack.packb({"node_id": 1, "nonce": 2, "added_later": [1, 2]})
    assert Ping.decode(core.check_control_payload(MessageKind.PING, newer)) == Ping(1, 2)
