"""A published message, its WebSocket frame built once, and its broker envelope.

Fan-out writes the same bytes to every subscriber: server frames are unmasked and we send
no extensions, so one frame serves all of them (what `websockets.broadcast()` does).
"""

from __future__ import annotations

import struct
import time

OP_TEXT = 0x1
OP_BINARY = 0x2
_FIN = 0x80
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")
_STAMP = struct.Struct("!d")
_KIND_TEXT = b"t"
_KIND_BINARY = b"b"


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One unfragmented, unmasked server-to-client frame (RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        header = _SHORT.pack(_FIN | opcode, n)
    elif n < 65536:
        header = _MEDIUM.pack(_FIN | opcode, 126, n)
    else:
        header = _LONG.pack(_FIN | opcode, 127, n)
    return header + payload


class Message:
    """One message: UTF-8 bytes for text (never re-encoded), raw bytes for binary."""

    __slots__ = ("_frame", "data", "published_at", "text")
    count = 1

    def __init__(self, data: bytes, *, text: bool, published_at: float | None = None) -> None:
        self.data = data
        self.text = text
        self.published_at = time.time() if published_at is None else published_at
        self._frame: bytes | None = None

    @classmethod
    def of(cls, value: str | bytes) -> Message:
        if isinstance(value, str):
            return cls(value.encode(), text=True)
        return cls(bytes(value), text=False)

    @property
    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = encode_frame(OP_TEXT if self.text else OP_BINARY, self.data)
        return self._frame

    def as_asgi(self) -> dict[str, object]:
        if self.text:
            return {"type": "websocket.send", "text": self.data.decode()}
        return {"type": "websocket.send", "bytes": self.data}

    def envelope(self) -> bytes:
        """Broker wire format: kind byte, publish time, payload; no base64, no JSON."""
        kind = _KIND_TEXT if self.text else _KIND_BINARY
        return kind + _STAMP.pack(self.published_at) + self.data

    @classmethod
    def from_envelope(cls, raw: bytes) -> Message:
        if len(raw) < 9 or raw[:1] not in (_KIND_TEXT, _KIND_BINARY):
            raise ValueError("not a ws-service envelope")
        (stamp,) = _STAMP.unpack_from(raw, 1)
        return cls(raw[9:], text=raw[:1] == _KIND_TEXT, published_at=stamp)

    def __repr__(self) -> str:
        kind = "text" if self.text else "binary"
        return f"<Message {kind} {len(self.data)} bytes>"


class Batch:
    """Several messages of one channel that fan-out writes as one joined frame string.

    When the pump finds messages waiting, each subscriber gets them in one write (one
    syscall) instead of one write per message: under load the per-recipient cost is paid
    once per batch. Idle or lightly loaded, batches are single messages and add no delay.
    """

    __slots__ = ("frame", "messages")

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self.frame = b"".join(m.frame for m in messages)

    @property
    def count(self) -> int:
        return len(self.messages)
