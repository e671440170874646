"""One exception hierarchy: each class carries the HTTP status or close code it ends in.

Handlers raise `PolicyViolation("rate limit exceeded")` and the connection's single
`try/except` turns it into the right close frame; refusals before the upgrade become the
status in the contract. Messages are short facts, never a secret.
"""

from __future__ import annotations

from .closecodes import CloseCode


class ServiceError(Exception):
    """Base of every error the service raises on purpose."""


class ConfigError(ServiceError):
    """The configuration is unusable; `lines` has one entry per problem, each naming a variable."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class HandshakeRefused(ServiceError):
    """Refuse a WebSocket handshake (or an HTTP request) with `status` and a short body."""

    status = 400
    reason = "bad_request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(HandshakeRefused):
    status, reason = 400, "bad_request"


class Unauthorized(HandshakeRefused):
    status, reason = 401, "unauthorized"


class Forbidden(HandshakeRefused):
    status, reason = 403, "forbidden"


class OriginNotAllowed(Forbidden):
    reason = "origin"


class ChannelNotPermitted(Forbidden):
    reason = "channel"


class NotFound(HandshakeRefused):
    status, reason = 404, "not_found"


class PayloadTooLarge(HandshakeRefused):
    status, reason = 413, "too_large"


class TooManyFromAddress(HandshakeRefused):
    status, reason = 429, "per_ip_limit"


class Unavailable(HandshakeRefused):
    status, reason = 503, "unavailable"


class ConnectionLimit(Unavailable):
    reason = "max_connections"


class Draining(Unavailable):
    reason = "draining"


class ConnectionClosing(ServiceError):
    """End an open connection with `code`; `str(self)` is the reason sent in the close frame."""

    code = CloseCode.INTERNAL_ERROR


class PolicyViolation(ConnectionClosing):
    code = CloseCode.POLICY_VIOLATION


class SlowConsumer(PolicyViolation):
    """The connection's outbound queue overflowed: it is not reading fast enough."""

    def __init__(self, detail: str = "slow consumer") -> None:
        super().__init__(detail)


class MessageTooBig(ConnectionClosing):
    code = CloseCode.MESSAGE_TOO_BIG
