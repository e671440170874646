"""Every WebSocket close code the service sends, named once with its reason."""

from __future__ import annotations

import enum


class CloseCode(enum.IntEnum):
    """Close codes from RFC 6455 section 7.4.1 and the IANA registry that we use."""

    NORMAL = 1000
    """The conversation is over: client or server finished on purpose."""
    GOING_AWAY = 1001
    """The server is stopping (or the browser navigated away)."""
    NO_STATUS = 1005
    """Reserved: a close frame arrived without a code; never sent."""
    ABNORMAL = 1006
    """Reserved: the TCP connection dropped without a close frame; never sent."""
    POLICY_VIOLATION = 1008
    """Rate limit exceeded, slow consumer, or credentials expired."""
    MESSAGE_TOO_BIG = 1009
    """An inbound message was larger than WS_MAX_MESSAGE_BYTES."""
    INTERNAL_ERROR = 1011
    """The server hit an unexpected error; details are in the server log only."""
    SERVICE_RESTART = 1012
    """The worker is restarting (reload, rolling restart): reconnect."""

    @property
    def is_error(self) -> bool:
        """True for codes a client should treat as a failure, not a normal end."""
        return self not in (CloseCode.NORMAL, CloseCode.GOING_AWAY, CloseCode.SERVICE_RESTART)
