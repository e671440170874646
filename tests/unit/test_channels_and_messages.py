"""Channel names, claim patterns, frames and broker envelopes: pure functions."""

from __future__ import annotations

import pytest
from websockets.frames import Frame
from websockets.streams import StreamReader

from service.channels import check_name, is_valid_name, permitted
from service.errors import BadRequest
from service.messages import Message, encode_frame


@pytest.mark.parametrize("name", ["a", "room-1", "org.team:chat_2", "A" * 128, "x.y.z"])
def test_valid_channel_names(name: str) -> None:
    """1 to 128 of A-Z a-z 0-9 _ . : - are accepted."""
    assert is_valid_name(name) and check_name(name) == name


@pytest.mark.parametrize("name", ["", "A" * 129, "with space", "slash/x", "é", "a*", "a\n"])
def test_invalid_channel_names_are_bad_requests(name: str) -> None:
    """Anything else is a 400 naming the rule."""
    with pytest.raises(BadRequest) as info:
        check_name(name)
    assert info.value.status == 400 and "1 to 128" in str(info.value)


def test_claim_patterns() -> None:
    """Exact names, `prefix.*` wildcards and None (no restriction)."""
    assert permitted(None, "anything")
    assert permitted(("chat.*",), "chat.room1")
    assert not permitted(("chat.*",), "chatroom")
    assert not permitted(("chat.*",), "other")
    assert permitted(("a", "b"), "b") and not permitted(("a",), "ab")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_frames_decode_with_the_websockets_parser(size: int) -> None:
    """Our pre-built frames are what an RFC 6455 client parses, at every length boundary."""
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for opcode, text in ((0x1, True), (0x2, False)):
        reader = StreamReader()
        reader.feed_data(encode_frame(opcode, payload))
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            frame = done.value
        assert frame.fin and frame.data == payload
        assert (frame.opcode.name == "TEXT") is text


def test_message_frame_is_built_once() -> None:
    """Fan-out reuses one frame object for every subscriber."""
    message = Message.of("hello")
    assert message.frame is message.frame


@pytest.mark.parametrize("value", ["héllo", b"\x00\xffbinary", ""])
def test_envelope_round_trip_keeps_kind_and_time(value: str | bytes) -> None:
    """Text stays text, binary stays binary, and the publish time survives the broker."""
    original = Message.of(value)
    copy = Message.from_envelope(original.envelope())
    assert (copy.text, copy.data) == (original.text, original.data)
    assert copy.published_at == original.published_at


def test_garbage_envelope_is_rejected() -> None:
    """Foreign payloads on a shared Redis are refused, not delivered as garbage."""
    with pytest.raises(ValueError):
        Message.from_envelope(b"hello")
