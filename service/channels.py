"""Channel names and the `channels` claim patterns: pure functions, no I/O."""

from __future__ import annotations

import re

from .errors import BadRequest

BROADCAST = "broadcast"
MAX_NAME = 128
_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")


def is_valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def check_name(name: str) -> str:
    """Return `name` if it is a valid channel name, else raise BadRequest (400)."""
    if not is_valid_name(name):
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise BadRequest(f"invalid channel name {shown!r}: 1 to 128 of A-Z a-z 0-9 _ . : -")
    return name


def matches(pattern: str, channel: str) -> bool:
    """A `channels` claim entry: an exact name, `prefix.*` for anything under it, or `*`."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return channel.startswith(pattern[:-1])
    return pattern == channel


def permitted(patterns: tuple[str, ...] | None, channel: str) -> bool:
    """None means no restriction; otherwise the channel must match one pattern."""
    return patterns is None or any(matches(p, channel) for p in patterns)
